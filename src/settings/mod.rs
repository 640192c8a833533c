//! Settings: flags + `fastbuild.yaml` + environment resolved into one plan per service.
//!
//! Stage: settings. Everything downstream (builders, publisher, outputs) reads a
//! [`ServicePlan`] and never looks at flags or the project file again.
//!
//! One file per concern, each resolving its part of the plan from the same layers (flags over
//! the service's entry over the project file, `merge.rs`): `destination.rs` (registry,
//! repository, tags, pull registry, compression), `buildkit.rs` and `native.rs` (the builder),
//! `values.rs` (the values file and its keys), `helm.rs` (the deploy). Here: the project, the
//! plan, and what a command changes in it ([`Delivery`]: `--output`, `--no-push`). Everything
//! that can be refused is refused here, before any build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::cli::ServiceFlags;
use crate::config::{self, BuilderKind, ProjectFile, ServiceConfig, ValuesConfig};

mod buildkit;
mod destination;
mod helm;
mod merge;
mod native;
mod values;

pub use buildkit::{
    BuildkitPlan, BuildkitTls, SecretSpec, cache_spec, parse_named_context, parse_secret,
    parse_ssh, pool_order,
};
pub use destination::{
    Destination, RegistryPlan, host_only, is_dev_registry, is_loopback, no_registry, split_tag,
};
pub use helm::{DEFAULT_HELM_TIMEOUT, HelmPlan, is_chart_reference};
pub use native::NativePlan;
pub use values::{DEFAULT_VALUES_DIR, check_keys as check_values_keys};

pub use crate::error::UsageError;
use merge::Sources;

/// Default number of services built at once.
pub const DEFAULT_PARALLEL: usize = 4;

/// How a service is built.
#[derive(Debug, Clone, PartialEq)]
// One plan per service, built once per run: the size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum BuilderPlan {
    /// Dockerfile on BuildKit.
    Buildkit(BuildkitPlan),
    /// Layers on a base image, no daemon.
    Native(NativePlan),
}

/// Everything needed to build, publish and write outputs for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    /// Service name.
    pub name: String,
    /// Project root (directory of the project file, or the cwd).
    pub root: PathBuf,
    /// The builder.
    pub builder: BuilderPlan,
    /// Where the image goes and how registries are reached.
    pub registry: RegistryPlan,
    /// Values file (absolute).
    pub values_file: PathBuf,
    /// Values keys.
    pub values_keys: ValuesConfig,
    /// Helm.
    pub helm: Option<HelmPlan>,
    /// Paths whose changes rebuild the service (absolute): context/Dockerfile or layer sources,
    /// plus extra watch paths.
    pub watch_paths: Vec<PathBuf>,
    /// SOURCE_DATE_EPOCH for reproducible output.
    pub source_date_epoch: i64,
    /// Clamp file times inside layers too (`None`: the command's default).
    pub reproducible: Option<bool>,
    /// Whether the build's inputs are fingerprinted, and a recorded build with the same ones
    /// reused (set by the command through [`Delivery`]: see [`Reuse`]).
    pub reuse: Reuse,
}

/// The project: its file (if any) and its resolved services.
#[derive(Debug, Clone)]
pub struct Project {
    /// The project file, if one was found.
    pub file: Option<PathBuf>,
    /// Project root.
    pub root: PathBuf,
    /// The parsed file (default when there is none).
    pub config: ProjectFile,
    /// Parallel builds.
    pub parallel: usize,
    /// The `--allow` entries the project file was checked against (kept for reloads).
    pub allow: Vec<String>,
}

impl Project {
    /// Finds and loads the project file (`-f` or upward from the cwd); none is fine. Its paths
    /// must lie inside its directory unless `allow` (`--allow` entries) says otherwise.
    pub fn load(explicit: Option<&Path>, allow: &[String]) -> Result<Self> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let file = match explicit {
            Some(p) => {
                let p = absolutize(&cwd, p);
                if !p.is_file() {
                    return Err(UsageError(format!(
                        "project file `{}` does not exist; create it or drop `-f`",
                        p.display()
                    ))
                    .into());
                }
                Some(p)
            }
            None => config::find_upward(&cwd),
        };
        let allowed = crate::allow::Allow::parse(allow, &cwd)?;
        let (root, config) = match &file {
            Some(f) => {
                let cfg = config::load(f).map_err(|e| UsageError(e.to_string()))?;
                let root = f.parent().map_or(cwd.clone(), Path::to_path_buf);
                crate::allow::check_project_paths(&cfg, f, &root, &allowed)?;
                (root, cfg)
            }
            None => (cwd, ProjectFile::default()),
        };
        let parallel = config.parallel.unwrap_or(DEFAULT_PARALLEL).max(1);
        Ok(Self {
            file,
            root,
            config,
            parallel,
            allow: allow.to_vec(),
        })
    }

    /// Names of the services selected by `names` (all when empty). Without a project file,
    /// `--context` (or a native `--layer`) makes one ad-hoc service (named after `--repository`
    /// or the context directory); without any, a usage error says what to create.
    pub fn select(&self, names: &[String], flags: &ServiceFlags) -> Result<Vec<String>> {
        if self.file.is_none() && flags.context.is_none() && flags.layers.is_empty() {
            return Err(UsageError(format!(
                "no fastbuild.yaml in `{}` or a parent directory, and no `--context`: create \
                 fastbuild.yaml beside your Dockerfile, for example\n\n\
                 \x20 registry: localhost:5000\n\
                 \x20 services:\n\
                 \x20   api:\n\
                 \x20     context: .\n\n\
                 or build without one: fastbuild build --context DIR --repository NAME \
                 --registry HOST (natively: `--builder native --layer SRC:DEST` instead of \
                 `--context`; `-f FILE` for a project file elsewhere)",
                self.root.display()
            ))
            .into());
        }
        self.select_lenient(names, flags)
    }

    /// [`Self::select`], but without a project file and `--context` the ad-hoc service builds
    /// the current directory: for `doctor`, which checks what it can and reports the missing
    /// project file itself.
    pub fn select_lenient(&self, names: &[String], flags: &ServiceFlags) -> Result<Vec<String>> {
        if names.is_empty() {
            if self.config.services.is_empty() {
                let name = flags
                    .repository
                    .as_deref()
                    .and_then(|r| r.rsplit('/').next())
                    .map(str::to_owned)
                    .or_else(|| {
                        let ctx = flags.context.clone().unwrap_or_else(|| PathBuf::from("."));
                        absolutize(&self.root, &ctx)
                            .file_name()
                            .map(|n| n.to_string_lossy().to_lowercase())
                    })
                    .ok_or_else(|| {
                        UsageError(
                            "no fastbuild.yaml found and no service given; create fastbuild.yaml \
                             or pass `--context DIR --repository NAME`"
                                .into(),
                        )
                    })?;
                return Ok(vec![sanitize_name(&name)]);
            }
            return Ok(self.config.services.keys().cloned().collect());
        }
        for n in names {
            if !self.config.services.contains_key(n) && !self.config.services.is_empty() {
                let known: Vec<&str> = self.config.services.keys().map(String::as_str).collect();
                return Err(UsageError(format!(
                    "unknown service `{n}` in `{}`; known services: {}",
                    self.file
                        .as_deref()
                        .map_or_else(|| "flags".into(), |p| p.display().to_string()),
                    known.join(", ")
                ))
                .into());
            }
        }
        Ok(names.to_vec())
    }

    /// Resolves one service.
    pub fn plan(&self, name: &str, flags: &ServiceFlags) -> Result<ServicePlan> {
        let svc = self.config.services.get(name).cloned().unwrap_or_default();
        resolve(self, name, &svc, flags)
    }

    /// The plans of a command that builds `names`: each service resolved, `delivery` applied,
    /// and checked before any build — a registry to push to (unless the image goes elsewhere),
    /// tags a registry accepts, inputs that exist.
    pub fn plans_for(
        &self,
        names: &[String],
        flags: &ServiceFlags,
        delivery: &Delivery,
    ) -> Result<Vec<ServicePlan>> {
        let one = |name: &String| -> Result<ServicePlan> {
            let mut plan = self.plan(name, flags)?;
            delivery.apply(&self.root, &mut plan)?;
            destination::check_tags(name, &plan.registry.destination)?;
            preflight(&plan)?;
            Ok(plan)
        };
        if names.len() < 2 {
            return names.iter().map(one).collect();
        }
        // Services resolve side by side, a few at a time: each runs `git log` for its
        // SOURCE_DATE_EPOCH, which in a large repository takes a while. Results (and the first
        // error) come in the order of `names`.
        let mut plans = Vec::with_capacity(names.len());
        for chunk in names.chunks(PARALLEL_RESOLVE) {
            let resolved: Vec<Result<ServicePlan>> = std::thread::scope(|scope| {
                let running: Vec<_> = chunk
                    .iter()
                    .map(|name| scope.spawn(move || one(name)))
                    .collect();
                running
                    .into_iter()
                    .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            });
            for plan in resolved {
                plans.push(plan?);
            }
        }
        Ok(plans)
    }
}

/// Services resolved at once by [`Project::plans_for`].
const PARALLEL_RESOLVE: usize = 8;

/// What a command does with the fingerprint of a build's inputs (see `crate::reuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reuse {
    /// Neither taken nor used (`push`, by default).
    #[default]
    Off,
    /// Taken and recorded with the result, never used to skip (`--force`).
    Record,
    /// A recorded build with the same inputs is reused without a solve (`build`, `watch`,
    /// `push --skip-unchanged`).
    Use,
}

/// What a command does with its images beyond what the project says.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// `--output oci:DIR`: into an OCI layout instead of a registry.
    pub output: Option<String>,
    /// `--no-push`: build only.
    pub no_push: bool,
    /// File times clamped unless the project says otherwise: `push`, whose CI builds must
    /// reproduce across checkouts (the inner loop favours speed; BuildKit's cache keeps
    /// unchanged digests stable there anyway).
    pub reproducible_by_default: bool,
    /// Whether an unchanged build's digest is reused.
    pub reuse: Reuse,
}

impl Delivery {
    /// The plan changed as the command asks; a plan that must push needs a registry.
    fn apply(&self, root: &Path, plan: &mut ServicePlan) -> Result<()> {
        plan.reuse = self.reuse;
        if self.reproducible_by_default && plan.reproducible.is_none() {
            plan.reproducible = Some(true);
        }
        if let Some(out) = &self.output {
            let dir = out.strip_prefix("oci:").ok_or_else(|| {
                UsageError(format!("`--output {out}`: only `oci:DIR` is supported"))
            })?;
            plan.registry.destination = Destination::Layout(absolutize(root, Path::new(dir)));
        } else if self.no_push {
            plan.registry.destination = Destination::None;
        } else if plan.registry.destination == Destination::None {
            return Err(no_registry(&plan.name));
        }
        Ok(())
    }
}

/// Service names become file names (values files), default repositories, Helm releases and
/// Tilt resource names: letters, digits, `.`, `_`, `-`, starting with a letter or digit, at
/// most 63 characters. Anything else (`../x`, `--flag`, spaces) is refused before use.
pub fn check_service_name(name: &str) -> Result<(), UsageError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "invalid service name `{}`: use letters, digits, `.`, `_` and `-`, starting with a \
             letter or digit (at most 63 characters); rename it in fastbuild.yaml",
            name.escape_debug()
        )))
    }
}

fn sanitize_name(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// `base.join(p)` unless `p` is absolute, lexically normalised.
pub fn absolutize(base: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn kv_pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| UsageError(format!("{what} `{item}` must be KEY=VALUE")))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// `SOURCE_DATE_EPOCH` from the environment, else the time of the last commit that touched one
/// of `inputs` (so a commit elsewhere in the repository does not change this service's digest),
/// else 0.
pub fn source_date_epoch(root: &Path, inputs: &[PathBuf]) -> i64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        return v;
    }
    std::process::Command::new("git")
        .args(["log", "-1", "--format=%ct", "--"])
        .args(inputs.iter().filter(|p| p.exists()))
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// Resolves one service: each concern by its own resolver, over the same [`Sources`].
fn resolve(
    project: &Project,
    name: &str,
    svc: &ServiceConfig,
    flags: &ServiceFlags,
) -> Result<ServicePlan> {
    check_service_name(name)?;
    let src = Sources {
        flags,
        svc,
        file: &project.config,
        root: &project.root,
    };
    let kind = match flags.builder.as_deref() {
        Some("native") => BuilderKind::Native,
        // `buildkit`, or the name of a buildx builder: BuildKit (reached through it).
        Some(_) => BuilderKind::Buildkit,
        None if !flags.layers.is_empty() || flags.base.is_some() => {
            if project.config.services.contains_key(name) {
                svc.builder
            } else {
                BuilderKind::Native
            }
        }
        None => svc.builder,
    };
    let registry = destination::resolve(src, name)?;

    // `--platform linux/amd64,linux/arm64` and repeated flags alike (buildx accepts both).
    let platforms = split_platforms(merge::replaced(&flags.platforms, &svc.platforms));
    let mut labels = svc.labels.clone();
    labels.extend(kv_pairs(&flags.labels, "label")?);
    let mut watch_paths: Vec<PathBuf> = svc.watch.iter().map(|p| src.abs(p)).collect();
    let builder = match kind {
        BuilderKind::Buildkit => BuilderPlan::Buildkit(buildkit::resolve(
            src,
            buildkit::Shared {
                name,
                labels,
                platforms,
                docker_config: registry.docker_config.as_deref(),
            },
            &mut watch_paths,
        )?),
        BuilderKind::Native => BuilderPlan::Native(native::resolve(
            src,
            name,
            labels,
            platforms,
            &mut watch_paths,
        )?),
    };
    let (values_file, values_keys) = values::resolve(src, name)?;
    let helm = helm::resolve(src, name)?;

    watch_paths.sort();
    watch_paths.dedup();
    let source_date_epoch = source_date_epoch(&project.root, &watch_paths);
    Ok(ServicePlan {
        name: name.to_owned(),
        root: project.root.clone(),
        builder,
        registry,
        values_file,
        values_keys,
        helm,
        watch_paths,
        source_date_epoch,
        reproducible: merge::first([
            flags.reproducible.as_ref(),
            svc.reproducible.as_ref(),
            project.config.reproducible.as_ref(),
        ]),
        reuse: Reuse::Off,
    })
}

/// Platforms given as a list, comma-separated, or both; duplicates dropped, order kept.
fn split_platforms(given: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in given.iter().flat_map(|p| p.split(',')).map(str::trim) {
        if !p.is_empty() && !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    }
    out
}

/// Checks a plan for problems that would only show up mid-build.
pub fn preflight(plan: &ServicePlan) -> Result<()> {
    match &plan.builder {
        BuilderPlan::Buildkit(b) => {
            if !b.context.is_dir() {
                bail!(UsageError(format!(
                    "service `{}`: build context `{}` is not a directory",
                    plan.name,
                    b.context.display()
                )));
            }
            if !b.dockerfile.is_file() {
                bail!(UsageError(format!(
                    "service `{}`: Dockerfile `{}` does not exist; set `dockerfile:` or `--dockerfile`",
                    plan.name,
                    b.dockerfile.display()
                )));
            }
        }
        BuilderPlan::Native(n) => {
            for (src, _) in n.layers.iter().flatten() {
                if std::fs::symlink_metadata(src).is_err() {
                    bail!(UsageError(format!(
                        "service `{}`: layer source `{}` does not exist",
                        plan.name,
                        src.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_split_on_commas_keep_order_and_drop_duplicates() {
        let given = [
            "linux/amd64,linux/arm64".to_owned(),
            " linux/386 ".to_owned(),
            "linux/amd64".to_owned(),
            String::new(),
        ];
        assert_eq!(
            split_platforms(&given),
            ["linux/amd64", "linux/arm64", "linux/386"]
        );
    }
}
