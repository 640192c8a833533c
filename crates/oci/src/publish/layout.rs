//! Publishing into an OCI image layout directory: blobs by digest, `index.json` updated with
//! the image under its tag, every file written atomically.

use std::path::Path;

use oci_spec::image::Descriptor;

use super::{Blob, PushStats, Source, json_err};
use crate::client::{BlobData, RegistryClient};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Assembled, media};

pub(super) async fn write_layout(
    client: &RegistryClient,
    dir: &Path,
    blobs: &[Blob],
    images: &[Assembled],
    top: &Descriptor,
    top_bytes: &bytes::Bytes,
    tag: &str,
) -> Result<PushStats> {
    let blob_dir = dir.join("blobs").join("sha256");
    fs_err::create_dir_all(&blob_dir).map_err(|e| Error::io("create the OCI layout", e))?;
    fs_err::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| Error::io("write the OCI layout", e))?;
    let mut stats = PushStats::default();
    let write_bytes = |digest: &Digest, bytes: &[u8]| -> Result<()> {
        let path = blob_dir.join(digest.hex());
        if !path.exists() {
            atomic_write(&path, bytes)?;
        }
        Ok(())
    };
    for blob in blobs {
        let path = blob_dir.join(blob.digest.hex());
        if path.exists() {
            stats.blobs_skipped += 1;
            continue;
        }
        match &blob.source {
            Source::Local(BlobData::Bytes(b)) => write_bytes(&blob.digest, b)?,
            Source::Local(BlobData::File(src)) => {
                let mut tmp = layout_temp_file(&blob_dir)
                    .map_err(|e| Error::io("create a temp file in the OCI layout", e))?;
                // Copies the bytes only: `fs::copy` would also copy the mode of the built blob
                // (a 0600 temp file in the work dir).
                let mut from = fs_err::File::open(src).map_err(|e| Error::io("copy a blob", e))?;
                std::io::copy(&mut from, tmp.as_file_mut()).map_err(|e| {
                    Error::io(format!("copy `{}` into the OCI layout", src.display()), e)
                })?;
                tmp.persist(&path)
                    .map_err(|e| Error::io(format!("store `{}`", path.display()), e.error))?;
            }
            Source::Base(base) => {
                client
                    .download_blob(base, &blob.digest, blob.size, &path)
                    .await?;
            }
            // Streamed copies go registry to registry (`copy_image`); a build never makes one.
            Source::Local(BlobData::Remote(remote)) => {
                return Err(Error::Task(format!(
                    "{remote:?} cannot be written to an OCI layout"
                )));
            }
        }
        stats.blobs_uploaded += 1;
        stats.bytes_uploaded += blob.size;
    }
    for image in images {
        write_bytes(&image.manifest_digest, &image.manifest)?;
    }
    write_bytes(&Digest::try_from(top.digest())?, top_bytes)?;

    // index.json: keep other entries, replace the one carrying the same ref name.
    let index_path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = match fs_err::read(&index_path) {
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b)
                .map_err(json_err(format!("`{}`", index_path.display())))?;
            v["manifests"].as_array().cloned().unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    let ref_key = "org.opencontainers.image.ref.name";
    manifests
        .retain(|m| m["annotations"][ref_key] != tag && m["digest"] != top.digest().to_string());
    let mut entry = serde_json::to_value(top).map_err(json_err("a descriptor".to_owned()))?;
    entry["annotations"] = serde_json::json!({ ref_key: tag });
    manifests.push(entry);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    });
    atomic_write(&index_path, &crate::image::canonical_json(&index)?)?;
    Ok(stats)
}

/// A temp file in `dir` for a file of an OCI layout (renamed into place once written): mode
/// 0644 less the umask, as files created with `File::create` are (the BuildKit `oci:DIR` output,
/// the values files) — not the 0600 of temp files, which left layouts unreadable to other users
/// (a scanner or a server run as another user).
/// Directories come from `create_dir_all`: 0755 less the umask.
pub(crate) fn layout_temp_file(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = layout_temp_file(dir)
        .map_err(|e| Error::io(format!("create a temp file in `{}`", dir.display()), e))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .map_err(|e| Error::io(format!("write `{}`", tmp.path().display()), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(format!("store `{}`", path.display()), e.error))?;
    Ok(())
}
