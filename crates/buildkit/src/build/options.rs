//! What a build is asked for and what it answers: [`BuildOptions`], cache specs, named
//! contexts, the exporter's response keys, and the [`BuildResult`].

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use fastbuild_oci::Compression;
use fastbuild_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::filesync::DirSyncStats;
use crate::secrets::SecretSource;

/// A cache import or export (`--cache-from` / `--cache-to`): a type and its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSpec {
    /// `registry`, `inline`, `local`, …
    #[serde(rename = "Type")]
    pub kind: String,
    /// Attributes, e.g. `ref`, `mode`.
    #[serde(rename = "Attrs")]
    pub attrs: BTreeMap<String, String>,
}

impl CacheSpec {
    /// A registry cache at `reference` (import, or export with `mode=max` when `max`).
    pub fn registry(reference: &str) -> Self {
        Self {
            kind: "registry".to_owned(),
            attrs: BTreeMap::from([("ref".to_owned(), reference.to_owned())]),
        }
    }

    /// Inline cache (export only: cache metadata embedded in the image config).
    pub fn inline() -> Self {
        Self {
            kind: "inline".to_owned(),
            attrs: BTreeMap::new(),
        }
    }
}

/// What to build and where to put it.
// Each flag maps to one BuildKit attribute; grouping them would hide that.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile; `<context>/Dockerfile` when `None`. May lie outside the context.
    pub dockerfile: Option<PathBuf>,
    /// The stage to build (`--target`).
    pub target: Option<String>,
    /// `ARG` values.
    pub build_args: BTreeMap<String, String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Target platforms, e.g. `linux/amd64`; the daemon's when empty.
    pub platforms: Vec<String>,
    /// Ignore the build cache for every step.
    pub no_cache: bool,
    /// Secrets available to `RUN --mount=type=secret,id=…`.
    pub secrets: BTreeMap<String, SecretSource>,
    /// SSH agents available to `RUN --mount=type=ssh[,id=…]`, by ID (`default` when the mount
    /// names none).
    pub ssh: BTreeMap<String, crate::SshSource>,
    /// Paths never sent to the daemon even inside a synced directory and not excluded by its
    /// `.dockerignore` — the client's own state (fastbuild's `.fastbuild/`, rewritten by every
    /// build: sending it would change the context, and a `COPY .` digest, on every build).
    pub withheld: Vec<PathBuf>,
    /// Named contexts (`--build-context NAME=…`): `COPY --from=NAME`, `FROM NAME`.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// SBOM attestation (`attest:sbom`): `Some("")` for the default scanner, or its
    /// attributes (`generator=IMAGE`); `None` for none.
    pub sbom: Option<String>,
    /// Provenance attestation (`attest:provenance`): `Some("mode=min")` / `Some("mode=max")`;
    /// `None` for none (attestations change the index digest on every build).
    pub provenance: Option<String>,
    /// Image names (`registry/repo:tag`) to tag and push.
    pub image_names: Vec<String>,
    /// Push the image to the registry of its names.
    pub push: bool,
    /// Push by digest only (`repo@sha256:…`, no tag); the names give the repository.
    pub push_by_digest: bool,
    /// The registry speaks plain HTTP (or has an untrusted certificate).
    pub registry_insecure: bool,
    /// Layer compression (BuildKit's default, gzip, when `None`).
    pub compression: Option<Compression>,
    /// Compression level (gzip 0-9, zstd 0-22); `None`: the level of a [`Compression::Zstd`]
    /// other than BuildKit's own default (3), none otherwise.
    pub compression_level: Option<u32>,
    /// Recompress layers that exist with another compression.
    pub force_compression: bool,
    /// Use OCI media types (`Some(true)`), Docker ones (`Some(false)`), or the daemon's default.
    pub oci_mediatypes: Option<bool>,
    /// `SOURCE_DATE_EPOCH` for reproducible images: passed as build arg and exporter attribute,
    /// and exporter attribute (image config and history times).
    pub source_date_epoch: Option<i64>,
    /// With `source_date_epoch`: also `rewrite-timestamp=true`, so file times inside layers are
    /// clamped and a fresh checkout with other mtimes gives the same digest. It costs the daemon
    /// a rewrite of every layer on every build (measured: 0.5–2 s for a 30 MB image even when
    /// nothing changed), so it is for CI; the inner loop leaves it off and still gets stable
    /// digests for unchanged inputs from BuildKit's cache.
    pub rewrite_timestamp: bool,
    /// Cache sources.
    pub cache_imports: Vec<CacheSpec>,
    /// Cache destinations.
    pub cache_exports: Vec<CacheSpec>,
    /// Docker config directory for registry credentials (`$DOCKER_CONFIG` or `~/.docker` when `None`).
    pub docker_config_dir: Option<PathBuf>,
    /// How the session reaches token services when it fetches registry tokens for the daemon
    /// (CA files, insecure hosts, timeouts; see [`crate::DockerAuth`]); defaults when `None`.
    pub token_registry: Option<fastbuild_oci::RegistryOptions>,
    /// Leave token fetching to the daemon (it then gets the raw credentials):
    /// `BUILDKIT_NO_CLIENT_TOKEN=1`.
    pub no_client_tokens: bool,
    /// Export with the `oci` exporter into this OCI image layout directory instead of the
    /// `image` exporter (no push). The daemon streams the layout back as a tar over the
    /// session; it is unpacked here, merged with an existing layout's `index.json`, and the
    /// image named `fb-<digest prefix>` in it. Needs a daemon with the `oci` exporter
    /// (standalone buildkitd, or dockerd with the containerd image store).
    pub oci_layout: Option<PathBuf>,
}

/// The keys of the image exporter's response (and of buildx's `--metadata-file`).
pub mod exporter_keys {
    /// The manifest or index digest.
    pub const DIGEST: &str = "containerimage.digest";
    /// The image config digest (single-platform images).
    pub const CONFIG_DIGEST: &str = "containerimage.config.digest";
    /// The OCI descriptor of the manifest or index, as JSON.
    pub const DESCRIPTOR: &str = "containerimage.descriptor";
    /// The image names, comma-separated (`--metadata-file`'s `image.name`).
    pub const IMAGE_NAME: &str = "image.name";
}

/// What a named context is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, synced over the session with its own `.dockerignore`.
    Dir(PathBuf),
    /// An image (`docker-image://REF`).
    Image(String),
}

/// The OCI descriptor of the exported image (`containerimage.descriptor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDescriptor {
    /// Manifest or index media type.
    pub media_type: String,
    /// `sha256:…`.
    pub digest: Digest,
    /// Size in bytes of the manifest or index.
    pub size: i64,
    /// Annotations, if any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The outcome of a successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// Manifest (or index) digest from `containerimage.digest`: what the registry serves,
    /// parsed here at the boundary.
    pub digest: Digest,
    /// Image config digest (`containerimage.config.digest`).
    pub config_digest: Option<Digest>,
    /// The decoded `containerimage.descriptor`.
    pub descriptor: Option<ImageDescriptor>,
    /// `image.name`: the names the image was exported as (comma-joined by BuildKit).
    pub image_name: Option<String>,
    /// Everything the exporter reported.
    pub exporter_response: BTreeMap<String, String>,
    /// What the file sync sent, per local name (`context`, `dockerfile`).
    pub sync_stats: BTreeMap<String, DirSyncStats>,
}
