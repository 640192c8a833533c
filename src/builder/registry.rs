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
    } = &plan.registry.destination
    {
        opts.insecure_hosts.push(host.clone());
    }
    opts.insecure_hosts
        .extend(plan.registry.insecure_registries.iter().cloned());
    opts.ca_files
        .extend(plan.registry.registry_ca_files.iter().cloned());
    opts.docker_config.clone_from(&plan.registry.docker_config);
    opts
}

/// A registry client for `plan`, kept for the life of the process per set of options: a
/// resident `watch` keeps its registry connections (and tokens) between builds.
pub fn client(plan: &ServicePlan) -> Result<RegistryClient> {
    static CLIENTS: std::sync::LazyLock<
        std::sync::Mutex<std::collections::BTreeMap<String, RegistryClient>>,
    > = std::sync::LazyLock::new(Default::default);
    let options = registry_options(plan);
    // The options hold paths and knobs, never credentials (those are read through them).
    let key = format!("{options:?}");
    let mut clients = CLIENTS.lock().expect("registry clients lock");
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let c = RegistryClient::new(options).context("cannot set up the registry client")?;
    clients.insert(key, c.clone());
    Ok(c)
}

/// Tags an already pushed manifest: fetches it by digest and PUTs the same bytes under `tag`
/// (the digest does not change; nothing is looked up that the build did not already report).
pub async fn tag_manifest(
    plan: &ServicePlan,
    repository: &str,
    digest: &fastbuild_oci::Digest,
    tag: &str,
) -> Result<()> {
    let client = client(plan)?;
    let by_digest: fastbuild_oci::Reference = format!("{repository}@{digest}")
        .parse()
        .with_context(|| format!("bad image reference `{repository}@{digest}`"))?;
    let by_tag: fastbuild_oci::Reference = format!("{repository}:{tag}")
        .parse()
        .with_context(|| format!("bad image reference `{repository}:{tag}`"))?;
    client.tag_manifest(&by_digest, &by_tag).await?;
    Ok(())
}
