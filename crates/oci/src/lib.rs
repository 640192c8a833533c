//! OCI images for fastbuild: digests, deterministic layers, image assembly, the registry
//! publisher and its auth — the daemonless "native" builder.
//!
//! Data flows one way: [`LayerSpec`]s are streamed into compressed blobs (tar → compression →
//! file, hashing both sides in one pass), the base image is resolved per [`Platform`], configs
//! and manifests are assembled and serialized canonically, then [`build_and_push`] uploads only
//! the blobs the registry lacks (mounting base layers across repositories), pushes the manifest
//! last and returns its digest — sha256 of the exact bytes pushed.
//!
//! With [`ImageSpec::layer_cache`] set, a layer whose sources are unchanged (judged by their
//! metadata, like `make`) is taken from a persistent [`LayerCache`] instead of being rebuilt.
//!
//! ```no_run
//! use fastbuild_oci::{
//!     build_and_push, BaseImage, ConfigOverrides, ImageSpec, LayerSpec, RegistryClient,
//!     RegistryOptions, Target,
//! };
//!
//! # async fn demo() -> Result<(), fastbuild_oci::Error> {
//! let client = RegistryClient::new(RegistryOptions::default())?;
//! let spec = ImageSpec {
//!     base: BaseImage::Reference("127.0.0.1:5000/base/busybox:latest".into()),
//!     platforms: vec!["linux/amd64".parse()?],
//!     layers: vec![LayerSpec::new([("./dist", "/app")])],
//!     config: ConfigOverrides {
//!         entrypoint: Some(vec!["/app/server".into()]),
//!         ..ConfigOverrides::default()
//!     },
//!     source_date_epoch: ImageSpec::source_date_epoch_from_env()?,
//!     ..ImageSpec::default()
//! };
//! let target = Target::Registry("127.0.0.1:5000/team/app".parse()?);
//! let pushed = build_and_push(&spec, &target, &client).await?;
//! // e.g. "127.0.0.1:5000/team/app@sha256:…", tagged `fb-<12 hex>`
//! tracing::info!(reference = pushed.reference, uploaded = pushed.stats.bytes_uploaded);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod auth;
pub mod beneath;
mod client;
mod copy;
mod digest;
mod error;
pub mod image;
pub mod layer;
pub mod layer_cache;
mod publish;
mod reference;
pub mod transport;

pub use auth::{Challenge, Credential, DockerConfig};
pub use client::{
    FetchedManifest, GrantedToken, RegistryClient, RegistryOptions, RetryPolicy, ca_certificates,
    resolve_location,
};
pub use copy::CopyResult;
pub use digest::Digest;
pub use error::{Error, Result, error_chain};
pub use image::{BaseImage, ConfigOverrides, ImageSpec, MediaTypes, Platform, canonical_json};
pub use layer::{Compression, Layer, LayerSpec, build_layer};
pub use layer_cache::{LayerCache, build_layer_cached};
pub use oci_spec::image::Descriptor;
pub use publish::{PushResult, PushStats, Target, build_and_push, default_tag, get_manifest};
pub use reference::{
    DOCKER_HUB, Reference, api_host as reference_api_host, valid_tag as is_valid_tag,
};

/// `RegistryClient` under the shorter name the CLI uses.
pub type Registry = RegistryClient;
