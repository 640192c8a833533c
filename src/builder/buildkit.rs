//! The `buildkit` builder: a Dockerfile solved on a BuildKit daemon over gRPC.
// INTEGRATION PENDING: wired to fastbuild-buildkit once its API lands.

use anyhow::{Result, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ImageResult;
use crate::printer::Event;
use crate::settings::{BuildkitPlan, ServicePlan};

/// Builds with BuildKit.
pub async fn build(
    _plan: &ServicePlan,
    _b: &BuildkitPlan,
    _events: mpsc::UnboundedSender<Event>,
    _cancel: CancellationToken,
) -> Result<ImageResult> {
    bail!("buildkit builder not wired yet")
}

/// Whether `rel` (relative to the context) is excluded by the service's `.dockerignore`.
pub fn is_excluded(_b: &BuildkitPlan, _rel: &std::path::Path) -> bool {
    false
}

/// Connects and describes the daemon.
pub async fn probe(_b: &BuildkitPlan) -> Result<String> {
    bail!("not wired")
}
