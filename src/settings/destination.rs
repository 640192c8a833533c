//! Where a service's image goes: the registry it is pushed to (or none), its repository and
//! tags, the registry the cluster pulls from, layer compression, and what registry TLS and
//! credentials use.

use std::path::PathBuf;

use anyhow::{Result, anyhow};

use super::merge::{Sources, added, first, replaced};
use fastbuild_oci::Compression;

use crate::error::UsageError;

/// Where the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A registry.
    Registry {
        /// `host[:port]`.
        host: String,
        /// Full repository as the host pushes to it: `localhost:5000/prefix/app`.
        repository: String,
        /// Tag to push; `None` = content-derived.
        tag: Option<String>,
        /// More tags for the same manifest (`--tag` repeated, `tags:` in the project file).
        extra_tags: Vec<String>,
        /// Plain HTTP allowed.
        insecure: bool,
    },
    /// An OCI image layout directory.
    Layout(PathBuf),
    /// Build only.
    None,
}

/// The registry side of a service's plan: where its image goes, and how registries are
/// reached.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryPlan {
    /// Where the image goes.
    pub destination: Destination,
    /// Registry as the cluster pulls from it.
    pub pull_registry: String,
    /// Where the registry came from when it was not configured (the cluster's ConfigMap).
    pub registry_source: Option<String>,
    /// Repository as the cluster pulls it: `<pull registry>/<repository>`.
    pub pull_repository: String,
    /// Layer compression.
    pub compression: Compression,
    /// Registries allowed over plain HTTP besides loopback.
    pub insecure_registries: Vec<String>,
    /// Extra CA bundles for registry TLS.
    pub registry_ca_files: Vec<PathBuf>,
    /// Docker config directory or file for credentials (`None`: the default).
    pub docker_config: Option<PathBuf>,
}

/// Resolves where the image of service `name` goes. `EXPECTED_REF` (Tilt's `custom_build`)
/// wins for the repository and tag; with no registry configured anywhere, the one a local
/// cluster advertises (KEP-1755) is used, as Tilt does.
pub(super) fn resolve(src: Sources<'_>, name: &str) -> Result<RegistryPlan> {
    let Sources {
        flags,
        svc,
        file: cfg,
        ..
    } = src;
    let expected_ref = std::env::var("EXPECTED_REF").ok().filter(|s| !s.is_empty());
    let configured_registry = first([
        flags.registry.as_ref(),
        svc.registry.as_ref(),
        cfg.registry.as_ref(),
    ]);
    // None configured: the registry a local cluster advertises (KEP-1755), as Tilt does. A
    // BuildKit inside the cluster (`kube-pod://`) pushes where pods reach it.
    let cluster = if configured_registry.is_none() && std::env::var_os("EXPECTED_REF").is_none() {
        crate::cluster_registry::discover()
    } else {
        None
    };
    let in_cluster_builder = flags
        .buildkit
        .clone()
        .or_else(|| {
            cfg.buildkit
                .as_ref()
                .and_then(|a| a.list().into_iter().next())
        })
        .is_some_and(|a| a.starts_with("kube-pod://"));
    let registry = configured_registry.or_else(|| {
        cluster.map(|c| match &c.host_from_cluster_network {
            Some(h) if in_cluster_builder && !h.is_empty() => h.clone(),
            _ => c.host.clone(),
        })
    });
    let registry_source = cluster.map(|_| {
        "the cluster's `local-registry-hosting` ConfigMap (kube-public, KEP-1755), through \
         kubectl's current context"
            .to_owned()
    });
    let repo_name = first([flags.repository.as_ref(), svc.repository.as_ref()])
        .unwrap_or_else(|| name.to_owned());
    // `--tag` (repeatable) replaces the project file's `tag` + `tags`; the first is the one
    // printed and written for Tilt, all point at the one digest.
    let file_tags = added([svc.tag.as_slice(), svc.tags.as_slice()]);
    let mut tags = replaced(&flags.tags, &file_tags).to_vec();
    tags.dedup();
    let mut tags = tags.into_iter();
    let tag = tags.next();
    let mut extra_tags: Vec<String> = tags.collect();
    let insecure_registries = added([
        cfg.insecure_registries.as_slice(),
        flags.insecure_registries.as_slice(),
    ]);
    let (push_repo, tag, push_host, push_registry) = if let Some(er) = &expected_ref {
        let (repo, t) = split_tag(er);
        let host = repo.split('/').next().unwrap_or(&repo).to_owned();
        let reg = repo
            .rsplit_once('/')
            .map_or(host.clone(), |(r, _)| r.to_owned());
        // Tilt's expected tag comes first; the configured ones still point at the digest.
        if t.is_some() {
            extra_tags.splice(0..0, tag.clone());
            extra_tags.retain(|x| Some(x) != t.as_ref());
        }
        (repo, t.or(tag), Some(host), Some(reg))
    } else if let Some(reg) = &registry {
        let reg = reg.trim_end_matches('/').to_owned();
        let host = reg.split('/').next().unwrap_or(&reg).to_owned();
        (format!("{reg}/{repo_name}"), tag, Some(host), Some(reg))
    } else {
        (repo_name.clone(), tag, None, None)
    };

    let compression_setting = first([
        flags.compression.as_ref(),
        svc.compression.as_ref(),
        cfg.compression.as_ref(),
    ])
    .unwrap_or_else(|| "auto".into());
    let compression = parse_compression(&compression_setting, push_host.as_deref())?;

    let pull_registry = first([
        flags.pull_registry.as_ref(),
        svc.pull_registry.as_ref(),
        cfg.pull_registry.as_ref(),
    ])
    .or_else(|| cluster.map(|c| c.pull_host().to_owned()))
    .or_else(|| push_registry.clone())
    .unwrap_or_default();
    let pull_repository = if pull_registry.is_empty() {
        push_repo.clone()
    } else {
        let last = push_repo.rsplit('/').next().unwrap_or(&push_repo);
        let repo_part = if expected_ref.is_some() {
            last
        } else {
            repo_name.as_str()
        };
        format!("{}/{}", pull_registry.trim_end_matches('/'), repo_part)
    };

    let destination = match push_host {
        Some(host) => {
            let insecure = is_loopback(&host)
                || insecure_registries
                    .iter()
                    .any(|i| i == &host || host_only(i) == host_only(&host) && !i.contains(':'));
            Destination::Registry {
                host,
                repository: push_repo,
                tag,
                extra_tags,
                insecure,
            }
        }
        None => Destination::None,
    };
    Ok(RegistryPlan {
        destination,
        pull_registry,
        registry_source,
        pull_repository,
        compression,
        insecure_registries,
        registry_ca_files: added([cfg.registry_ca.as_slice(), flags.registry_ca.as_slice()])
            .iter()
            .map(|p| src.abs(p))
            .collect(),
        docker_config: docker_config(src),
    })
}

/// The Docker config directory or file for credentials, when one is given.
pub(super) fn docker_config(src: Sources<'_>) -> Option<PathBuf> {
    first([
        src.flags.docker_config.as_ref(),
        src.file.docker_config.as_ref(),
    ])
    .map(|p| src.abs(&p))
}

fn parse_compression(s: &str, host: Option<&str>) -> Result<Compression> {
    // `auto`: dev registries get zstd at its fastest level (as fast as no compression on
    // loopback, and several times fewer bytes for the cluster to pull); others gzip, which
    // every runtime reads.
    Compression::from_setting(s, host).ok_or_else(|| {
        UsageError(format!(
            "unknown compression `{s}`; use auto, gzip, zstd or uncompressed"
        ))
        .into()
    })
}

/// Every tag a registry destination pushes is one the registry accepts: refused here, before
/// any build, rather than by the daemon or the registry once the image is built.
pub(super) fn check_tags(service: &str, destination: &Destination) -> Result<(), UsageError> {
    let Destination::Registry {
        tag, extra_tags, ..
    } = destination
    else {
        return Ok(());
    };
    match tag
        .iter()
        .chain(extra_tags)
        .find(|t| !fastbuild_oci::is_valid_tag(t))
    {
        None => Ok(()),
        Some(bad) => Err(UsageError(format!(
            "service `{service}`: invalid tag `{}`: a tag is 1-128 characters of [A-Za-z0-9_.-] \
             not starting with `.` or `-`; fix `tag:`/`tags:` in fastbuild.yaml or `--tag`",
            bad.escape_debug()
        ))),
    }
}

/// The host part of `host[:port][/prefix]`, without the port.
pub fn host_only(registry_host: &str) -> &str {
    let h = registry_host.split('/').next().unwrap_or(registry_host);
    fastbuild_oci::transport::host_only(h)
}

/// Loopback registries: plain HTTP is allowed without being asked.
pub fn is_loopback(registry_host: &str) -> bool {
    fastbuild_oci::transport::is_loopback(registry_host)
}

/// Development registries (loopback, `*.localhost`, `*.local`, k3d, kind): the fastest layer
/// compression is the default for them.
pub fn is_dev_registry(registry_host: &str) -> bool {
    fastbuild_oci::transport::is_dev_registry(registry_host)
}

/// Splits `repo[:tag][@digest]` into repo and tag (a port colon is not a tag).
pub fn split_tag(reference: &str) -> (String, Option<String>) {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => (
            no_digest[..last_slash + i].to_owned(),
            Some(no_digest[last_slash + i + 1..].to_owned()),
        ),
        None => (no_digest.to_owned(), None),
    }
}

/// Error for a service without a registry.
pub fn no_registry(name: &str) -> anyhow::Error {
    anyhow!(UsageError(format!(
        "service `{name}` has no registry to push to; set `registry:` in fastbuild.yaml, \
         pass `--registry HOST`, or use `--no-push` / `--output oci:DIR`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_tag_ignores_port_colon() {
        assert_eq!(
            split_tag("localhost:5000/app"),
            ("localhost:5000/app".into(), None)
        );
        assert_eq!(
            split_tag("localhost:5000/app:tilt-1"),
            ("localhost:5000/app".into(), Some("tilt-1".into()))
        );
    }

    #[test]
    fn dev_registries() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
        assert!(is_dev_registry("k3d-registry.localhost:5000"));
        assert!(!is_dev_registry("ghcr.io"));
    }
}
