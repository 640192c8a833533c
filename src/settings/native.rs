//! Native builds: layers from the project's files on a base image, no daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use super::kv_pairs;
use super::merge::{Sources, first, replaced};
use crate::config::LayerConfig;
use crate::error::UsageError;

/// A native build.
#[derive(Debug, Clone, PartialEq)]
pub struct NativePlan {
    /// Base image reference or `scratch`.
    pub base: String,
    /// Layers: one per entry list.
    pub layers: Vec<Vec<(PathBuf, String)>>,
    /// Platforms (default linux/amd64).
    pub platforms: Vec<String>,
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Cmd.
    pub cmd: Option<Vec<String>>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Working dir.
    pub workdir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Exposed ports.
    pub ports: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// Resolves the native build of service `name` (`labels` and `platforms` as both builders take
/// them); the layer sources are added to `watch_paths`.
pub(super) fn resolve(
    src: Sources<'_>,
    name: &str,
    labels: BTreeMap<String, String>,
    platforms: Vec<String>,
    watch_paths: &mut Vec<PathBuf>,
) -> Result<NativePlan> {
    let Sources { flags, svc, .. } = src;
    let layers: Vec<LayerConfig> = if flags.layers.is_empty() {
        svc.layers.clone()
    } else {
        flags
            .layers
            .iter()
            .map(|l| {
                let (src, dest) = l
                    .rsplit_once(':')
                    .ok_or_else(|| UsageError(format!("layer `{l}` must be SRC:DEST")))?;
                Ok(LayerConfig {
                    src: PathBuf::from(src),
                    dest: dest.to_owned(),
                })
            })
            .collect::<Result<_>>()?
    };
    if layers.is_empty() {
        return Err(UsageError(format!(
            "native service `{name}` has no layers; add `layers: [{{src: …, dest: …}}]` or `--layer SRC:DEST`"
        ))
        .into());
    }
    for l in &layers {
        if !l.dest.starts_with('/') {
            return Err(UsageError(format!(
                "service `{name}`: layer dest `{}` must be an absolute path in the image",
                l.dest
            ))
            .into());
        }
        watch_paths.push(src.abs(&l.src));
    }
    let mut env = svc.env.clone();
    env.extend(kv_pairs(&flags.env, "env")?);
    // A list flag given replaces the file's list, absent or not.
    let list_or_none = |flag: &[String], file: Option<&[String]>| {
        if flag.is_empty() {
            file.map(<[String]>::to_vec)
        } else {
            Some(flag.to_vec())
        }
    };
    Ok(NativePlan {
        base: first([flags.base.as_ref(), svc.base.as_ref()]).unwrap_or_else(|| "scratch".into()),
        layers: layers
            .iter()
            .map(|l| vec![(src.abs(&l.src), l.dest.clone())])
            .collect(),
        platforms: if platforms.is_empty() {
            vec!["linux/amd64".into()]
        } else {
            platforms
        },
        entrypoint: list_or_none(&flags.entrypoint, svc.entrypoint.as_deref()),
        cmd: list_or_none(&flags.cmd, svc.cmd.as_deref()),
        env,
        workdir: first([flags.workdir.as_ref(), svc.workdir.as_ref()]),
        user: first([flags.user.as_ref(), svc.user.as_ref()]),
        ports: replaced(&flags.ports, &svc.ports).to_vec(),
        labels,
    })
}
