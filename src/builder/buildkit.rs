//! The `buildkit` builder: a Dockerfile solved on a BuildKit daemon over gRPC.
//!
//! Adapter from a [`BuildkitPlan`] to `fastbuild-buildkit`: BuildKit's image exporter pushes
//! straight to the registry and reports the manifest digest (`containerimage.digest`); the
//! session (file sync, credentials, secrets) is served by fastbuild itself. Without an explicit
//! tag the image is pushed by digest and then tagged `fb-<digest prefix>` (one manifest PUT of
//! the same bytes), so nothing floats. With `--output oci:DIR` the `oci` exporter sends the
//! image back over the session and it is unpacked into the OCI layout `DIR`.

use anyhow::{Context as _, Result};
use fastbuild_buildkit::{BuildOptions, Client, ProgressEvent, SecretSource, TlsOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ImageResult;
use crate::printer::Event;
use crate::settings::{BuildkitPlan, Destination, SecretSpec, ServicePlan};

fn tls(b: &BuildkitPlan) -> Option<TlsOptions> {
    b.tls.as_ref().map(|t| TlsOptions {
        ca_cert: t.ca.clone(),
        cert: t.cert.clone(),
        key: t.key.clone(),
        server_name: t.server_name.clone(),
    })
}

/// A warning when `b` reaches BuildKit over plain TCP on a host that is not this machine:
/// the build context, secrets and registry credentials would cross the network unencrypted
/// and unauthenticated (hardening M1: `buildkit: tcp://anyhost` came from a project file).
pub fn plaintext_remote_warning(b: &BuildkitPlan) -> Option<String> {
    if b.tls.is_some() {
        return None;
    }
    let rest = b.address.strip_prefix("tcp://")?;
    let host = rest
        .rsplit_once(':')
        .map_or(rest, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "BuildKit at `{}` is reached over plain TCP: the build context, secrets and registry \
             credentials cross the network unencrypted and the daemon is not authenticated; use \
             mutual TLS (--buildkit-tls-ca/--buildkit-tls-cert/--buildkit-tls-key) or a unix socket",
            b.address
        )
    })
}

/// `BUILDKIT_NO_CLIENT_TOKEN` (as buildctl reads it: a Go bool, `1`/`true`/`t`…): the daemon
/// fetches registry tokens itself with the raw credentials instead of asking the session.
fn no_client_tokens() -> bool {
    std::env::var("BUILDKIT_NO_CLIENT_TOKEN")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// The build options of a plan.
pub fn options(plan: &ServicePlan, b: &BuildkitPlan) -> Result<BuildOptions> {
    let mut oci_layout = None;
    let (image_names, push, push_by_digest, insecure) = match &plan.registry.destination {
        Destination::Registry {
            repository,
            tag,
            extra_tags,
            insecure,
            ..
        } => match tag {
            // Every name is pushed with the one manifest: all tags point at its digest.
            Some(t) => (
                std::iter::once(t)
                    .chain(extra_tags)
                    .map(|t| format!("{repository}:{t}"))
                    .collect(),
                true,
                false,
                *insecure,
            ),
            None => (vec![repository.clone()], true, true, *insecure),
        },
        Destination::None => (Vec::new(), false, false, false),
        // BuildKit's `oci` exporter streams the layout back over the session.
        Destination::Layout(dir) => {
            oci_layout = Some(dir.clone());
            (Vec::new(), false, false, false)
        }
    };
    let secrets = b
        .secrets
        .iter()
        .map(|s| match s {
            SecretSpec::File { id, path } => (id.clone(), SecretSource::File(path.clone())),
            SecretSpec::Env { id, var } => (id.clone(), SecretSource::Env(var.clone())),
        })
        .collect();
    Ok(BuildOptions {
        context: b.context.clone(),
        dockerfile: Some(b.dockerfile.clone()),
        target: b.target.clone(),
        build_args: b.build_args.clone(),
        labels: b.labels.clone(),
        platforms: b.platforms.clone(),
        no_cache: b.no_cache,
        secrets,
        ssh: b.ssh.clone(),
        // fastbuild's own state (history, helm stamps) is never build input.
        withheld: vec![plan.root.join(".fastbuild")],
        named_contexts: b.named_contexts.clone(),
        sbom: b.sbom.clone(),
        provenance: b.provenance.clone(),
        image_names,
        push,
        push_by_digest,
        registry_insecure: insecure,
        compression: Some(plan.registry.compression),
        oci_mediatypes: Some(true),
        source_date_epoch: Some(plan.source_date_epoch),
        rewrite_timestamp: plan.reproducible.unwrap_or(false),
        cache_imports: b.cache_from.clone(),
        cache_exports: b.cache_to.clone(),
        docker_config_dir: plan.registry.docker_config.clone(),
        token_registry: Some(super::registry::registry_options(plan)),
        no_client_tokens: no_client_tokens(),
        oci_layout,
        ..BuildOptions::default()
    })
}

fn forward(service: &str, ev: ProgressEvent) -> Option<Event> {
    let service = service.to_owned();
    Some(match ev {
        ProgressEvent::VertexStarted { name, .. } => Event::StepStarted {
            service,
            step: name,
        },
        ProgressEvent::VertexCompleted { name, duration, .. } => Event::StepDone {
            service,
            step: name,
            cached: false,
            duration_ms: duration.map_or(0, |d| d.as_millis() as u64),
            error: None,
        },
        ProgressEvent::VertexCached { name, .. } => Event::StepDone {
            service,
            step: name,
            cached: true,
            duration_ms: 0,
            error: None,
        },
        ProgressEvent::VertexError {
            name,
            error,
            duration,
            ..
        } => Event::StepDone {
            service,
            step: name,
            cached: false,
            duration_ms: duration.map_or(0, |d| d.as_millis() as u64),
            error: Some(error),
        },
        ProgressEvent::Log {
            vertex_name, data, ..
        } => Event::Log {
            service,
            step: vertex_name,
            text: String::from_utf8_lossy(&data).into_owned(),
        },
        ProgressEvent::Warning {
            vertex_name,
            message,
            ..
        } => Event::Note {
            service: Some(service),
            message: if vertex_name.is_empty() {
                format!("warning: {message}")
            } else {
                format!("warning: {vertex_name}: {message}")
            }
            .into(),
        },
        ProgressEvent::Status { .. } => return None,
    })
}

/// Builds with BuildKit, pushing through its image exporter.
/// Whether `e` says the daemon is not there (unreachable, or the connection died mid-build).
fn daemon_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<fastbuild_buildkit::Error>(),
            Some(
                fastbuild_buildkit::Error::Unreachable { .. }
                    | fastbuild_buildkit::Error::ConnectionLost { .. }
            )
        )
    })
}

/// One solve of `plan` on the daemon at `address`.
async fn solve_on(
    plan: &ServicePlan,
    b: &BuildkitPlan,
    address: &str,
    opts: BuildOptions,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) -> Result<fastbuild_buildkit::BuildResult> {
    // In a pool, TLS settings belong to its TCP members (the others are sockets or helpers);
    // for one address they are checked by the transport (TLS for a socket is an error).
    let tcp = address.starts_with("tcp://") || address.starts_with("docker-tcp://");
    let tls = tls(b).filter(|_| tcp || b.pool.len() <= 1);
    let client = connected(address, tls)
        .await
        .with_context(|| format!("cannot reach BuildKit for service `{}`", plan.name))?;
    let (tx, mut rx) = mpsc::channel::<ProgressEvent>(256);
    let service = plan.name.clone();
    let fwd = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let Some(e) = forward(&service, ev) {
                let _ = events.send(e);
            }
        }
    });
    let result = client.build(opts, tx, cancel).await;
    let _ = fwd.await;
    if result.as_ref().is_err_and(|e| {
        matches!(
            e,
            fastbuild_buildkit::Error::Unreachable { .. }
                | fastbuild_buildkit::Error::ConnectionLost { .. }
        )
    }) {
        forget(address);
    }
    result.with_context(|| format!("BuildKit build of `{}` failed", plan.name))
}

/// Connections kept for the life of the process, by address: a resident `watch` (or a
/// `build` of several services on one daemon) dials each daemon once and runs every build's
/// Solve and session over the same HTTP/2 connection, as buildctl does within one run.
static CONNECTIONS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::BTreeMap<String, Client>>,
> = std::sync::LazyLock::new(Default::default);

/// The kept connection to `address`, or a new one (kept when it connects).
async fn connected(address: &str, tls: Option<TlsOptions>) -> fastbuild_buildkit::Result<Client> {
    let key = format!("{address}\0{tls:?}");
    if let Some(client) = CONNECTIONS.lock().expect("connections lock").get(&key) {
        return Ok(client.clone());
    }
    let client = Client::connect(address, tls).await?;
    CONNECTIONS
        .lock()
        .expect("connections lock")
        .insert(key, client.clone());
    Ok(client)
}

/// Drops the kept connection(s) to `address` after it failed: the next build dials again.
fn forget(address: &str) {
    let prefix = format!("{address}\0");
    CONNECTIONS
        .lock()
        .expect("connections lock")
        .retain(|k, _| !k.starts_with(&prefix));
}

pub async fn build(
    plan: &ServicePlan,
    b: &BuildkitPlan,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) -> Result<ImageResult> {
    let opts = options(plan, b)?;
    // A pool: the next daemon when one is unreachable or dies mid-build (never for a build
    // that failed on its own: that would fail the same way elsewhere).
    let mut attempt = 0;
    let res = loop {
        let address = b.pool.get(attempt).unwrap_or(&b.address);
        match solve_on(
            plan,
            b,
            address,
            opts.clone(),
            events.clone(),
            cancel.clone(),
        )
        .await
        {
            Ok(res) => break res,
            Err(e) if attempt + 1 < b.pool.len() && !cancel.is_cancelled() && daemon_gone(&e) => {
                let next = &b.pool[attempt + 1];
                let _ = events.send(Event::Note {
                    service: Some(plan.name.clone()),
                    message: format!(
                        "warning: BuildKit at `{address}` is unreachable or went away; building \
                         on `{next}` ({})",
                        e.root_cause()
                    )
                    .into(),
                });
                tracing::warn!(service = %plan.name, %address, %next, "BuildKit unavailable, next in the pool: {e:#}");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let descriptor = res
        .descriptor
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .context("cannot serialize the descriptor")?
        .unwrap_or_else(|| serde_json::json!({ "digest": res.digest.to_string() }));
    let media_type = res
        .descriptor
        .as_ref()
        .map(|d| d.media_type.clone())
        .unwrap_or_default();
    let size = res.descriptor.as_ref().map_or(0, |d| d.size.max(0) as u64);
    let (repository, tag) = match &plan.registry.destination {
        Destination::Registry {
            repository,
            tag: Some(t),
            ..
        } => (repository.clone(), Some(t.clone())),
        Destination::Registry {
            repository,
            tag: None,
            ..
        } => {
            let tag = fastbuild_oci::default_tag(&res.digest);
            super::registry::tag_manifest(plan, repository, &res.digest, &tag)
                .await
                .with_context(|| {
                    format!(
                        "pushed `{repository}@{}` but could not tag it `{tag}`",
                        res.digest
                    )
                })?;
            (repository.clone(), Some(tag))
        }
        Destination::Layout(dir) => (format!("oci:{}", dir.display()), None),
        Destination::None => (plan.registry.pull_repository.clone(), None),
    };
    Ok(ImageResult {
        digest: res.digest.clone(),
        media_type,
        size,
        config_digest: res.config_digest.clone(),
        descriptor,
        repository,
        tag,
        bytes_uploaded: None,
        reused: false,
    })
}

/// Connects and describes the daemon: version, workers and their platforms.
pub async fn probe(b: &BuildkitPlan) -> Result<String> {
    let client = Client::connect(&b.address, tls(b)).await?;
    let info = client.info().await.ok();
    let workers = client.list_workers().await?;
    let mut platforms: Vec<String> = workers
        .iter()
        .flat_map(|w| w.platforms.iter().cloned())
        .collect();
    platforms.sort();
    platforms.dedup();
    // dockerd's embedded BuildKit reports `v0.0.0+unknown` from Info; its workers know better.
    let worker_version = workers.iter().find_map(|w| w.buildkit_version.clone());
    let version = match (info, worker_version) {
        (Some(i), _) if !i.version.starts_with("v0.0.0") => format!("BuildKit {}", i.version),
        (_, Some(v)) => format!("BuildKit {v}"),
        (Some(i), None) => format!("BuildKit {}", i.version),
        (None, None) => "BuildKit (version unknown)".to_owned(),
    };
    Ok(format!(
        "{version}; {} worker(s); platforms {}",
        workers.len(),
        platforms.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn plan(address: &str, tls: bool) -> BuildkitPlan {
        BuildkitPlan {
            address: address.to_owned(),
            address_source: "--buildkit".to_owned(),
            pool: vec![address.to_owned()],
            tls: tls.then_some(crate::settings::BuildkitTls {
                ca: None,
                cert: None,
                key: None,
                server_name: None,
            }),
            context: "/p".into(),
            dockerfile: "/p/Dockerfile".into(),
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            platforms: Vec::new(),
            secrets: Vec::new(),
            ssh: BTreeMap::new(),
            named_contexts: BTreeMap::new(),
            sbom: None,
            provenance: None,
            no_cache: false,
            cache_from: Vec::new(),
            cache_to: Vec::new(),
        }
    }

    #[test]
    fn plaintext_tcp_to_another_host_is_warned_about() {
        let w = plaintext_remote_warning(&plan("tcp://buildkit.example:1234", false)).unwrap();
        assert!(
            w.contains("tcp://buildkit.example:1234") && w.contains("mutual TLS"),
            "{w}"
        );
        assert!(plaintext_remote_warning(&plan("tcp://10.1.2.3:1234", false)).is_some());
        for quiet in [
            plan("tcp://buildkit.example:1234", true),
            plan("tcp://127.0.0.1:1234", false),
            plan("tcp://[::1]:1234", false),
            plan("tcp://localhost:1234", false),
            plan("unix:///run/buildkit/buildkitd.sock", false),
            plan("docker-unix:///var/run/docker.sock", false),
        ] {
            assert_eq!(plaintext_remote_warning(&quiet), None, "{}", quiet.address);
        }
    }
}
