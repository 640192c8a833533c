//! CI outputs: `--digest-out` (`sha256:…` or `repo@sha256:…`), `--metadata-file` (the JSON
//! `docker buildx bake --metadata-file` writes, keyed by service, or the flat object of
//! `docker buildx build --metadata-file`), `--image-refs` (one `repo@sha256:…` per service,
//! like ko's) and `--image-ref-out` (`repo:tag` for Tilt's `outputs_image_ref_to`, which
//! rejects a bare digest reference).

use fastbuild_buildkit::exporter_keys as keys;
use serde_json::{Value, json};

use crate::builder::ImageResult;
use crate::cli::DigestFormat;

/// The `--digest-out` content.
pub fn digest_line(image: &ImageResult, format: DigestFormat) -> String {
    match format {
        DigestFormat::Digest => format!("{}\n", image.digest),
        DigestFormat::Ref => format!("{}@{}\n", image.repository, image.digest),
    }
}

/// The buildx-compatible metadata JSON.
pub fn metadata_json(image: &ImageResult) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(keys::DIGEST.into(), json!(image.digest));
    m.insert(keys::DESCRIPTOR.into(), image.descriptor.clone());
    if let Some(c) = &image.config_digest {
        m.insert(keys::CONFIG_DIGEST.into(), json!(c));
    }
    m.insert(keys::IMAGE_NAME.into(), json!(image.image_name()));
    Value::Object(m)
}

/// `docker buildx bake`'s metadata: one [`metadata_json`] object per service, keyed by name.
pub fn bake_metadata_json(built: &[(&str, &ImageResult)]) -> Value {
    Value::Object(
        built
            .iter()
            .map(|(name, image)| ((*name).to_owned(), metadata_json(image)))
            .collect(),
    )
}

/// `repo:tag` for Tilt, when there is a tag.
pub fn image_ref_line(image: &ImageResult) -> Option<String> {
    image
        .tag
        .as_ref()
        .map(|t| format!("{}:{t}\n", image.repository))
}
