//! The `native` builder: layers from local files on a base image, no daemon.
// INTEGRATION PENDING: wired to fastbuild-oci once its API lands.

use anyhow::{Result, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ImageResult;
use crate::printer::Event;
use crate::settings::{NativePlan, ServicePlan};

/// Builds natively.
pub async fn build(
    _plan: &ServicePlan,
    _n: &NativePlan,
    _events: mpsc::UnboundedSender<Event>,
    _cancel: CancellationToken,
) -> Result<ImageResult> {
    bail!("native builder not wired yet")
}

/// TEMP until integration.
pub fn docker_config() -> Result<Creds> {
    bail!("x")
}
/// TEMP
pub struct Creds;
impl Creds {
    /// TEMP
    pub async fn credential_for(&self, _h: &str) -> Result<Option<()>> {
        Ok(None)
    }
}
