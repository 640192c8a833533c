//! What both builders need of a registry: the client options of a plan (plain HTTP for
//! loopback and listed hosts, extra CAs, the Docker config), and tagging a pushed manifest.

use anyhow::{Context as _, Result};
use fastbuild_oci::{RegistryClient, RegistryOptions};

use crate::settings::{Destination, ServicePlan};

/// Registry client options for a plan: loopback and listed hosts may use plain HTTP.
pub fn registry_options(plan: &ServicePlan) -> RegistryOptions {
    let mut opts = RegistryOptions::default();
    if let Destination::Registry {
        host,
        insecure: true,
        ..
    } = &plan.destination
    {
        opts.insecure_hosts.push(host.clone());
    }
    opts.insecure_hosts
        .extend(plan.insecure_registries.iter().cloned());
    opts.ca_files.extend(plan.registry_ca_files.iter().cloned());
    opts.docker_config.clone_from(&plan.docker_config);
    opts
}

/// Tags an already pushed manifest: fetches it by digest and PUTs the same bytes under `tag`
/// (the digest does not change; nothing is looked up that the build did not already report).
pub async fn tag_manifest(
    plan: &ServicePlan,
    repository: &str,
    digest: &str,
    tag: &str,
) -> Result<()> {
    let client =
        RegistryClient::new(registry_options(plan)).context("cannot set up the registry client")?;
    let by_digest: fastbuild_oci::Reference = format!("{repository}@{digest}")
        .parse()
        .with_context(|| format!("bad image reference `{repository}@{digest}`"))?;
    let by_tag: fastbuild_oci::Reference = format!("{repository}:{tag}")
        .parse()
        .with_context(|| format!("bad image reference `{repository}:{tag}`"))?;
    client.tag_manifest(&by_digest, &by_tag).await?;
    Ok(())
}
