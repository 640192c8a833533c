//! Builders: turn a [`ServicePlan`] into a pushed (or stored) image and say where it is.
//!
//! Stage: build + publish. Two builders share one result type: `buildkit` (a Dockerfile solved
//! on a BuildKit daemon whose image exporter pushes) and `native` (layers assembled here and
//! uploaded by fastbuild's own registry client). The digest always comes from the build itself
//! — never from a registry lookup afterwards.

pub mod buildkit;
pub mod buildx;
pub mod docker_endpoint;
pub mod native;
pub mod registry;

use fastbuild_oci::Digest;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::printer::Event;
use crate::settings::{BuilderPlan, ServicePlan};

/// A built image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageResult {
    /// Manifest (or index) digest, as the build reported it (serialized `sha256:…`).
    pub digest: Digest,
    /// Media type of the manifest or index.
    pub media_type: String,
    /// Size of the manifest or index in bytes.
    pub size: u64,
    /// Config digest (single-platform images).
    pub config_digest: Option<Digest>,
    /// OCI descriptor of the manifest or index, as JSON.
    pub descriptor: serde_json::Value,
    /// Repository as the host pushed it (`localhost:5000/app`).
    pub repository: String,
    /// Tag pushed, if any.
    pub tag: Option<String>,
    /// Blob bytes uploaded by fastbuild itself (native builder), when known.
    pub bytes_uploaded: Option<u64>,
    /// Not built this time: the inputs were those of an earlier build whose image the registry
    /// still serves (see [`crate::reuse`]).
    #[serde(default)]
    pub reused: bool,
}

impl ImageResult {
    /// `repo:tag` when tagged, else `repo@digest`.
    pub fn image_name(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.repository),
            None => format!("{}@{}", self.repository, self.digest),
        }
    }

    /// `repo@sha256:…`.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// Builds `plan`, sending progress events, until done or `cancel` fires.
pub async fn build(
    plan: &ServicePlan,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) -> anyhow::Result<ImageResult> {
    let pending = match crate::reuse::check(plan, &events).await {
        crate::reuse::Decision::Reuse(image) => return Ok(image),
        crate::reuse::Decision::Build(pending) => pending,
    };
    let image = match &plan.builder {
        BuilderPlan::Buildkit(b) => buildkit::build(plan, b, events, cancel).await,
        BuilderPlan::Native(n) => native::build(plan, n, events, cancel).await,
    }?;
    if let Some(pending) = pending {
        crate::reuse::record(plan, pending, &image);
    }
    Ok(image)
}
