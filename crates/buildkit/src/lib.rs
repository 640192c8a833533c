//! BuildKit client over gRPC, shaped like BuildKit's Go client: connect to a daemon by address,
//! run a Dockerfile build with the `dockerfile.v0` frontend and the `image` exporter (or the
//! `oci` exporter into a local OCI image layout, [`BuildOptions::oci_layout`]), serve the
//! build's session (file sync of the local dirs, registry credentials, secrets, the exported
//! layout coming back) and report progress from `Control.Status`.
//!
//! ```no_run
//! use fastbuild_buildkit::{BuildOptions, Client, ProgressEvent};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), fastbuild_buildkit::Error> {
//! // `docker-unix:///var/run/docker.sock`, `unix:///run/buildkit/buildkitd.sock`, `tcp://…`
//! let client = Client::connect("docker://", None).await?;
//! let opts = BuildOptions {
//!     context: "services/inference".into(),
//!     image_names: vec!["127.0.0.1:5000/inference:dev".into()],
//!     push: true,
//!     registry_insecure: true,
//!     source_date_epoch: Some(0),
//!     rewrite_timestamp: true, // reproducible across checkouts (CI); slower

//!     ..BuildOptions::default()
//! };
//! let (tx, mut rx) = tokio::sync::mpsc::channel::<ProgressEvent>(256);
//! tokio::spawn(async move {
//!     while let Some(event) = rx.recv().await {
//!         tracing::info!(?event);
//!     }
//! });
//! let result = client.build(opts, tx, CancellationToken::new()).await?;
//! println!("pushed {}", result.digest); // the manifest digest the registry serves
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`transport`] (addresses, docker `/grpc` upgrade, TLS), [`patterns`]
//! (`.dockerignore` semantics), [`proto`] (generated code); the session, file sync, auth and
//! secrets services are internal. Wire facts follow BuildKit v0.13.2 (Docker 26.1) and stay
//! compatible with v0.23.
#![deny(missing_docs)]

mod auth;
mod build;
mod client;
pub mod connhelper;
mod error;
mod filesend;
mod filesync;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod patterns;
mod progress;
pub mod proto;
mod secrets;
mod session;
mod ssh;
pub mod transport;

pub use auth::{Credentials, DockerAuth};
pub use build::{
    BuildOptions, BuildResult, CacheSpec, Compression, ImageDescriptor, NamedContext, SolveRequest,
    exporter_keys, solve_request, validate,
};
pub use client::{ActiveBuild, Client, ServerInfo, WorkerInfo};
pub use error::{Error, Result};
pub use filesync::{DirSyncStats, ScannedEntry, scan_dir};
pub use progress::{LogStream, ProgressEvent};
pub use secrets::SecretSource;
pub use ssh::{DEFAULT_ID as SSH_DEFAULT_ID, SshSource};
pub use transport::{Address, TlsOptions};
