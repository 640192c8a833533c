//! The `native` builder: layers from local files on a base image, no daemon.
//!
//! Adapter from a [`NativePlan`] to `fastbuild-oci`: the layers are built deterministically,
//! only the blobs the registry lacks are uploaded, and the digest is sha256 of the manifest
//! bytes sent.

use std::time::Instant;

use anyhow::{Context as _, Result};
use fastbuild_oci::{
    BaseImage, ConfigOverrides, ImageSpec, LayerSpec, Platform, RegistryClient, Target,
    build_and_push,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ImageResult;
use super::registry::{registry_options, tag_manifest};
use crate::printer::{Event, Message};
use crate::settings::{Destination, NativePlan, ServicePlan};

/// The image spec of a plan.
pub fn image_spec(plan: &ServicePlan, n: &NativePlan) -> Result<ImageSpec> {
    let platforms = n
        .platforms
        .iter()
        .map(|p| {
            p.parse::<Platform>()
                .with_context(|| format!("service `{}`: bad platform `{p}`", plan.name))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ImageSpec {
        base: if n.base == "scratch" {
            BaseImage::Scratch
        } else {
            BaseImage::Reference(n.base.clone())
        },
        platforms,
        layers: n
            .layers
            .iter()
            .map(|entries| LayerSpec::new(entries.iter().cloned()))
            .collect(),
        config: ConfigOverrides {
            entrypoint: n.entrypoint.clone(),
            cmd: n.cmd.clone(),
            env: n.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            workdir: n.workdir.clone(),
            user: n.user.clone(),
            exposed_ports: n.ports.clone(),
        },
        compression: Some(plan.registry.compression),
        source_date_epoch: plan.source_date_epoch,
        labels: n.labels.clone(),
        ..ImageSpec::default()
    })
}

/// Builds natively and publishes to the plan's destination.
pub async fn build(
    plan: &ServicePlan,
    n: &NativePlan,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) -> Result<ImageResult> {
    let mut spec = image_spec(plan, n)?;
    // Layer blobs are staged on disk (never in memory) in a per-build work dir named after this
    // process, so the next run can sweep what a killed run (SIGKILL) left behind.
    sweep_stale_work_dirs();
    let work = work_dir()?;
    spec.cache_dir = Some(work.path().to_path_buf());
    spec.layer_cache = layer_cache_dir();
    let mut options = registry_options(plan);
    options.memory_dir = registry_memory_dir();
    let client = RegistryClient::new(options).context("cannot set up the registry client")?;
    let scratch;
    let (target, repository) = match &plan.registry.destination {
        Destination::Registry {
            repository, tag, ..
        } => {
            let r = match tag {
                Some(t) => format!("{repository}:{t}"),
                None => repository.clone(),
            };
            let reference = r
                .parse()
                .with_context(|| format!("bad image reference `{r}`"))?;
            (Target::Registry(reference), repository.clone())
        }
        Destination::Layout(dir) => (
            Target::Layout(dir.clone()),
            format!("oci:{}", dir.display()),
        ),
        Destination::None => {
            // Build without publishing: an OCI layout in a temp dir gives the same digest.
            scratch = work_dir()?;
            (
                Target::Layout(scratch.path().to_path_buf()),
                plan.registry.pull_repository.clone(),
            )
        }
    };
    let step = format!("native: {} layer(s) on {}", n.layers.len(), n.base);
    let _ = events.send(Event::StepStarted {
        service: plan.name.clone(),
        step: step.clone(),
    });
    let t0 = Instant::now();
    // Dropping the future on cancel aborts the uploads; nothing half-written is visible,
    // because the manifest is pushed last.
    let pushed = tokio::select! {
        r = build_and_push(&spec, &target, &client) => r,
        () = cancel.cancelled() => anyhow::bail!("build of `{}` cancelled", plan.name),
    };
    let pushed = match pushed {
        Ok(p) => p,
        Err(e) => {
            let _ = events.send(Event::StepDone {
                service: plan.name.clone(),
                step,
                cached: false,
                duration_ms: t0.elapsed().as_millis() as u64,
                error: Some(e.to_string()),
            });
            return Err(
                anyhow::Error::new(e).context(format!("native build of `{}` failed", plan.name))
            );
        }
    };
    if let Destination::Registry {
        repository,
        extra_tags,
        ..
    } = &plan.registry.destination
    {
        // The same manifest bytes under each further tag: one digest for all.
        for t in extra_tags {
            tag_manifest(plan, repository, &pushed.digest, t)
                .await
                .with_context(|| {
                    format!(
                        "pushed `{repository}@{}` but could not tag it `{t}`",
                        pushed.digest
                    )
                })?;
        }
    }
    let _ = events.send(Event::StepDone {
        service: plan.name.clone(),
        step,
        cached: pushed.stats.bytes_uploaded == 0,
        duration_ms: t0.elapsed().as_millis() as u64,
        error: None,
    });
    let _ = events.send(Event::Note {
        service: Some(plan.name.clone()),
        message: Message::Blobs(pushed.stats),
    });
    Ok(ImageResult {
        digest: pushed.digest.clone(),
        media_type: pushed.media_type.clone(),
        size: pushed.size,
        config_digest: pushed.config_digest.clone(),
        descriptor: serde_json::to_value(&pushed.descriptor)
            .context("cannot serialize the descriptor")?,
        repository,
        tag: matches!(plan.registry.destination, Destination::Registry { .. })
            .then(|| pushed.tag.clone()),
        bytes_uploaded: Some(pushed.stats.bytes_uploaded),
        reused: false,
    })
}

/// The persistent layer cache (unchanged layers are not rebuilt): `$FASTBUILD_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/fastbuild/layers`, else `$HOME/.cache/fastbuild/layers`; none without any.
fn layer_cache_dir() -> Option<std::path::PathBuf> {
    layer_cache_dir_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

/// Where the registry client remembers registries between runs (the scheme each answered on,
/// the blobs recent pushes left in a repository): `registries/` under `$FASTBUILD_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/fastbuild/registries`, else `$HOME/.cache/fastbuild/registries`; none
/// without any (then every run probes and checks).
fn registry_memory_dir() -> Option<std::path::PathBuf> {
    registry_memory_dir_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

fn registry_memory_dir_from(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<std::path::PathBuf> {
    if let Some(dir) = var("FASTBUILD_CACHE_DIR") {
        return Some(std::path::PathBuf::from(dir).join("registries"));
    }
    Some(layer_cache_dir_from(var)?.with_file_name("registries"))
}

fn layer_cache_dir_from(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(dir) = var("FASTBUILD_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("fastbuild").join("layers"))
}

const WORK_PREFIX: &str = "fastbuild-work-";

fn work_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{WORK_PREFIX}{}-", std::process::id()))
        .tempdir()
        .with_context(|| {
            format!(
                "cannot create a work dir in `{}`",
                std::env::temp_dir().display()
            )
        })
}

/// Removes work dirs of fastbuild processes that no longer exist.
fn sweep_stale_work_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(WORK_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::debug!(dir = %entry.path().display(), "removing the work dir of a dead fastbuild process");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(vars: &[(&str, &str)]) -> Option<std::path::PathBuf> {
        layer_cache_dir_from(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        })
    }

    #[test]
    fn layer_cache_dir_follows_the_environment() {
        let all = [
            ("FASTBUILD_CACHE_DIR", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(dir(&all), Some("/c".into()));
        assert_eq!(dir(&all[1..]), Some("/x/fastbuild/layers".into()));
        assert_eq!(dir(&all[2..]), Some("/h/.cache/fastbuild/layers".into()));
        assert_eq!(dir(&[]), None);
    }

    #[test]
    fn registry_memory_sits_beside_the_layer_cache() {
        let memory = |vars: &[(&str, &str)]| {
            registry_memory_dir_from(|name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            })
        };
        assert_eq!(
            memory(&[("FASTBUILD_CACHE_DIR", "/c"), ("HOME", "/h")]),
            Some("/c/registries".into())
        );
        assert_eq!(
            memory(&[("XDG_CACHE_HOME", "/x")]),
            Some("/x/fastbuild/registries".into())
        );
        assert_eq!(
            memory(&[("HOME", "/h")]),
            Some("/h/.cache/fastbuild/registries".into())
        );
        assert_eq!(memory(&[]), None);
    }
}
