//! Settings: flags + `fastbuild.yaml` + environment resolved into one plan per service.
//!
//! Stage: settings. Everything downstream (builders, publisher, outputs) reads a
//! [`ServicePlan`] and never looks at flags or the project file again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cli::ServiceFlags;
use crate::config::{
    self, BuilderKind, HelmConfig, LayerConfig, ProjectFile, ServiceConfig, ValuesConfig,
};

/// Default directory for generated values files, relative to the project root.
pub const DEFAULT_VALUES_DIR: &str = "tilt-values";
/// Default Helm timeout: the design note's 600 s.
pub const DEFAULT_HELM_TIMEOUT: &str = "10m";
/// Default number of services built at once.
pub const DEFAULT_PARALLEL: usize = 4;

pub use crate::error::UsageError;

/// Layer compression, as chosen by the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (the registry default).
    Gzip,
    /// zstd at its default level (3).
    Zstd,
    /// zstd at level 1: the `auto` choice for loopback and dev registries.
    ZstdFast,
    /// No compression (fastest on loopback).
    Uncompressed,
}

impl Compression {
    /// The name BuildKit and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd | Self::ZstdFast => "zstd",
            Self::Uncompressed => "uncompressed",
        }
    }
}

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

/// A BuildKit build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildkitPlan {
    /// Daemon address.
    pub address: String,
    /// Where the address came from (shown by `doctor`).
    pub address_source: String,
    /// Every daemon this service may build on, in order: the address first, then the rest of
    /// a pool (rendezvous order), tried when one is unreachable or dies mid-build.
    pub pool: Vec<String>,
    /// TLS for `tcp://`.
    pub tls: Option<BuildkitTls>,
    /// Context directory (absolute).
    pub context: PathBuf,
    /// Dockerfile (absolute).
    pub dockerfile: PathBuf,
    /// Target stage.
    pub target: Option<String>,
    /// Build args.
    pub build_args: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Platforms.
    pub platforms: Vec<String>,
    /// Secrets: id → source.
    pub secrets: Vec<SecretSpec>,
    /// SSH agents or keys forwarded to `RUN --mount=type=ssh`, by ID.
    pub ssh: BTreeMap<String, SshSpec>,
    /// Named contexts: directories (absolute) or images.
    pub named_contexts: BTreeMap<String, NamedContextSpec>,
    /// `attest:sbom` value, when asked for.
    pub sbom: Option<String>,
    /// `attest:provenance` value, when asked for.
    pub provenance: Option<String>,
    /// No cache.
    pub no_cache: bool,
    /// Cache imports.
    pub cache_from: Vec<String>,
    /// Cache exports.
    pub cache_to: Vec<String>,
}

/// TLS settings for a `tcp://` BuildKit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildkitTls {
    /// CA file.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
    /// Server name.
    pub server_name: Option<String>,
}

/// A named context (`--build-context NAME=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContextSpec {
    /// A directory.
    Dir(PathBuf),
    /// `docker-image://REF`.
    Image(String),
}

/// Parses `NAME=DIR` / `NAME=docker-image://REF` (relative directories from `root`).
pub fn parse_named_context(name: &str, value: &str, root: &Path) -> Result<NamedContextSpec> {
    if name.is_empty() || matches!(name, "context" | "dockerfile") || name.contains(',') {
        return Err(UsageError(format!(
            "build context `{name}={value}`: the name must be non-empty, without commas, and not \
             `context` or `dockerfile`"
        ))
        .into());
    }
    if let Some(reference) = value.strip_prefix("docker-image://") {
        if reference.is_empty() {
            return Err(UsageError(format!(
                "build context `{name}={value}`: `docker-image://` needs an image reference"
            ))
            .into());
        }
        return Ok(NamedContextSpec::Image(reference.to_owned()));
    }
    if let Some((scheme, _)) = value.split_once("://") {
        return Err(UsageError(format!(
            "build context `{name}={value}`: `{scheme}://` is not supported; use a directory or \
             `docker-image://REF` (`oci-layout://` needs a session content store, not served yet)"
        ))
        .into());
    }
    let dir = absolutize(root, Path::new(value));
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "build context `{name}`: `{}` is not a directory",
            dir.display()
        ))
        .into());
    }
    Ok(NamedContextSpec::Dir(dir))
}

/// `--sbom` / `--provenance` as buildx takes them: `false` (or absent) → none; `true` → the
/// default (`""` for SBOM, `mode=min` for provenance); anything else passed through.
fn attestation(value: Option<&str>, default: &str) -> Option<String> {
    match value.map(str::trim) {
        None | Some("false" | "0" | "") => None,
        Some("true" | "1") => Some(default.to_owned()),
        Some(other) => Some(other.to_owned()),
    }
}

/// What one `--ssh` ID forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSpec {
    /// A running agent's socket (`SSH_AUTH_SOCK`, or a socket path given).
    Agent(PathBuf),
    /// Private key files, loaded into an agent of the build's own.
    Keys(Vec<PathBuf>),
}

/// Parses `--ssh` specs as buildx does: `default`, `ID` (both: the agent of `SSH_AUTH_SOCK`),
/// `ID=PATH[,PATH…]` (one agent socket, or key files). Relative paths are taken from `root`.
pub fn parse_ssh(specs: &[String], root: &Path) -> Result<BTreeMap<String, SshSpec>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let (id, paths) = match spec.split_once('=') {
            Some((id, paths)) => (id.trim(), paths),
            None => (spec.trim(), ""),
        };
        if id.is_empty() {
            return Err(UsageError(format!(
                "ssh `{spec}`: expected `default`, `ID` or `ID=PATH[,PATH]`"
            ))
            .into());
        }
        let paths: Vec<PathBuf> = paths
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| absolutize(root, Path::new(&expand_home(p))))
            .collect();
        let source = match paths.as_slice() {
            [] => {
                let sock = std::env::var_os("SSH_AUTH_SOCK")
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        UsageError(format!(
                            "ssh `{spec}` forwards your SSH agent, but SSH_AUTH_SOCK is not set: \
                             start one (`eval $(ssh-agent)`, `ssh-add`), or give key files: \
                             `--ssh {id}=~/.ssh/id_ed25519`"
                        ))
                    })?;
                SshSpec::Agent(PathBuf::from(sock))
            }
            [one] if is_socket(one) => SshSpec::Agent(one.clone()),
            _ => SshSpec::Keys(paths),
        };
        if out.insert(id.to_owned(), source).is_some() {
            return Err(UsageError(format!("ssh id `{id}` is given twice")).into());
        }
    }
    Ok(out)
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// `~/…` with the home directory, as a shell would have expanded it on the command line.
fn expand_home(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => format!("{}/{rest}", home.to_string_lossy()),
        _ => p.to_owned(),
    }
}

/// A secret for `RUN --mount=type=secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSpec {
    /// From a file.
    File {
        /// Secret id.
        id: String,
        /// File.
        path: PathBuf,
    },
    /// From an environment variable.
    Env {
        /// Secret id.
        id: String,
        /// Variable.
        var: String,
    },
}

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

/// Helm settings resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmPlan {
    /// Release.
    pub release: String,
    /// Chart path or reference.
    pub chart: String,
    /// Namespace.
    pub namespace: Option<String>,
    /// Values files before the generated one.
    pub values: Vec<PathBuf>,
    /// Extra flags.
    pub flags: Vec<String>,
    /// Timeout.
    pub timeout: String,
    /// Roll back a failed upgrade (`--atomic` / `--rollback-on-failure`).
    pub rollback_on_failure: bool,
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
    /// Where the image goes.
    pub destination: Destination,
    /// Registry as the cluster pulls from it.
    pub pull_registry: String,
    /// Where the registry came from when it was not configured (the cluster's ConfigMap).
    pub registry_source: Option<String>,
    /// Repository as the cluster pulls it: `<pull registry>/<repository>`.
    pub pull_repository: String,
    /// Compression.
    pub compression: Compression,
    /// Registries allowed over plain HTTP besides loopback.
    pub insecure_registries: Vec<String>,
    /// Extra CA bundles for registry TLS.
    pub registry_ca_files: Vec<PathBuf>,
    /// Docker config directory or file for credentials (`None`: the default).
    pub docker_config: Option<PathBuf>,
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

/// A lowercase DNS label (RFC 1123): letters, digits and `-`, starting and ending with a
/// letter or digit; the length is the caller's to bound.
fn is_dns_label(l: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    l.starts_with(alnum) && l.ends_with(alnum) && l.chars().all(|c| alnum(c) || c == '-')
}

/// A Helm release name as Helm itself accepts it (lowercase DNS labels joined by dots, at most
/// 53 characters) — never something Helm would read as a flag.
fn check_release(service: &str, release: &str) -> Result<(), UsageError> {
    if release.len() <= 53 && release.split('.').all(is_dns_label) {
        return Ok(());
    }
    Err(UsageError(format!(
        "service `{service}`: invalid Helm release name `{}`: lowercase letters, digits, `-` and \
         `.` (each part starting and ending with a letter or digit), at most 53 characters; set \
         `helm.release` in fastbuild.yaml or pass `--release`",
        release.escape_debug()
    )))
}

/// A Kubernetes namespace: one lowercase DNS label of at most 63 characters.
fn check_namespace(service: &str, namespace: &str) -> Result<(), UsageError> {
    let ok = namespace.len() <= 63 && is_dns_label(namespace);
    if ok {
        return Ok(());
    }
    Err(UsageError(format!(
        "service `{service}`: invalid namespace `{}`: lowercase letters, digits and `-`, starting \
         and ending with a letter or digit, at most 63 characters; fix `helm.namespace` in \
         fastbuild.yaml or `--namespace`",
        namespace.escape_debug()
    )))
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

/// Parses `id=NAME,src=FILE` / `id=NAME,env=VAR` (docker build's `--secret` syntax).
pub fn parse_secret(spec: &str, root: &Path) -> Result<SecretSpec> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "secret `{spec}`: expected `id=NAME,src=FILE` or `id=NAME,env=VAR`"
            ))
        })?;
        match k.trim() {
            "id" => id = Some(v.to_owned()),
            "src" | "source" => src = Some(v.to_owned()),
            "env" => env = Some(v.to_owned()),
            "type" if v == "file" || v == "env" => {}
            other => {
                return Err(UsageError(format!(
                    "secret `{spec}`: unknown field `{other}`; use id=, src= or env="
                ))
                .into());
            }
        }
    }
    let id = id.ok_or_else(|| UsageError(format!("secret `{spec}` has no `id=`")))?;
    match (src, env) {
        (Some(s), None) => Ok(SecretSpec::File {
            id,
            path: absolutize(root, Path::new(&s)),
        }),
        (None, Some(var)) => Ok(SecretSpec::Env { id, var }),
        (None, None) => Ok(SecretSpec::Env {
            var: id.clone(),
            id,
        }),
        (Some(_), Some(_)) => Err(UsageError(format!(
            "secret `{spec}`: give either src= or env=, not both"
        ))
        .into()),
    }
}

fn parse_compression(s: &str, host: Option<&str>) -> Result<Compression> {
    Ok(match s {
        // Dev registries: zstd at its fastest level (as fast as no compression on loopback, and
        // several times fewer bytes for the cluster to pull); others: gzip, which every runtime reads.
        "auto" => match host {
            Some(h) if is_dev_registry(h) => Compression::ZstdFast,
            _ => Compression::Gzip,
        },
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        "uncompressed" | "none" => Compression::Uncompressed,
        other => {
            return Err(UsageError(format!(
                "unknown compression `{other}`; use auto, gzip, zstd or uncompressed"
            ))
            .into());
        }
    })
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

/// A values-key flag: absent (`None`), or set, where an empty string means "omit this key".
fn key_flag(flag: Option<&String>, slot: &mut Option<String>) {
    if let Some(v) = flag {
        *slot = if v.is_empty() { None } else { Some(v.clone()) };
    }
}

#[allow(clippy::too_many_lines)]
fn resolve(
    project: &Project,
    name: &str,
    svc: &ServiceConfig,
    flags: &ServiceFlags,
) -> Result<ServicePlan> {
    check_service_name(name)?;
    let root = &project.root;
    let cfg = &project.config;
    let abs = |p: &Path| absolutize(root, p);

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

    // Destination: EXPECTED_REF (Tilt custom_build) wins for the repository and tag.
    let expected_ref = std::env::var("EXPECTED_REF").ok().filter(|s| !s.is_empty());
    let configured_registry = flags
        .registry
        .clone()
        .or_else(|| svc.registry.clone())
        .or_else(|| cfg.registry.clone());
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
    let repo_name = flags
        .repository
        .clone()
        .or_else(|| svc.repository.clone())
        .unwrap_or_else(|| name.to_owned());
    // `--tag` (repeatable) replaces the project file's `tag` + `tags`; the first is the one
    // printed and written for Tilt, all point at the one digest.
    let mut tags: Vec<String> = if flags.tags.is_empty() {
        svc.tag.iter().chain(&svc.tags).cloned().collect()
    } else {
        flags.tags.clone()
    };
    tags.dedup();
    let mut tags = tags.into_iter();
    let tag = tags.next();
    let mut extra_tags: Vec<String> = tags.collect();
    let insecure_list: Vec<String> = cfg
        .insecure_registries
        .iter()
        .chain(&flags.insecure_registries)
        .cloned()
        .collect();
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

    let compression_setting = flags
        .compression
        .clone()
        .or_else(|| svc.compression.clone())
        .or_else(|| cfg.compression.clone())
        .unwrap_or_else(|| "auto".into());
    let compression = parse_compression(&compression_setting, push_host.as_deref())?;

    let pull_registry = flags
        .pull_registry
        .clone()
        .or_else(|| svc.pull_registry.clone())
        .or_else(|| cfg.pull_registry.clone())
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

    // `--platform linux/amd64,linux/arm64` and repeated flags alike (buildx accepts both).
    let platforms = split_platforms(if flags.platforms.is_empty() {
        &svc.platforms
    } else {
        &flags.platforms
    });
    let mut labels = svc.labels.clone();
    labels.extend(kv_pairs(&flags.labels, "label")?);

    let context = abs(&flags
        .context
        .clone()
        .or_else(|| svc.context.clone())
        .unwrap_or_else(|| PathBuf::from(".")));

    let mut watch_paths: Vec<PathBuf> = svc.watch.iter().map(|p| abs(p)).collect();

    let builder = match kind {
        BuilderKind::Buildkit => {
            let docker_config = flags
                .docker_config
                .clone()
                .or_else(|| cfg.docker_config.clone())
                .map(|p| abs(&p));
            let configured: Vec<String> = cfg
                .buildkit
                .as_ref()
                .map(crate::config::Addresses::list)
                .unwrap_or_default();
            let (address, address_source, default_tls) = buildkit_address(
                flags,
                configured.first().map(String::as_str),
                docker_config.as_deref(),
            )?;
            // A pool in the project file (and nothing given over it): this service's order.
            let (address, address_source, pool) = if configured.len() > 1
                && address_source == CONFIGURED_SOURCE
            {
                let pool = pool_order(name, &configured);
                (
                    pool[0].clone(),
                    format!(
                        "the pool in `buildkit:` of fastbuild.yaml (first of {} for this service)",
                        pool.len()
                    ),
                    pool,
                )
            } else {
                (address.clone(), address_source, vec![address])
            };
            let dockerfile = flags
                .dockerfile
                .as_deref()
                .or(svc.dockerfile.as_deref())
                .map_or_else(|| context.join("Dockerfile"), &abs);
            let mut build_args = svc.build_args.clone();
            build_args.extend(kv_pairs(&flags.build_args, "build arg")?);
            let secrets = svc
                .secrets
                .iter()
                .chain(&flags.secrets)
                .map(|s| parse_secret(s, root))
                .collect::<Result<Vec<_>>>()?;
            let mut named_contexts = BTreeMap::new();
            for (name, value) in &svc.contexts {
                named_contexts.insert(name.clone(), parse_named_context(name, value, root)?);
            }
            let cwd = std::env::current_dir()?;
            for spec in &flags.build_contexts {
                let (name, value) = spec.split_once('=').ok_or_else(|| {
                    UsageError(format!(
                        "`--build-context {spec}`: expected `NAME=DIR` or `NAME=docker-image://REF`"
                    ))
                })?;
                named_contexts.insert(name.to_owned(), parse_named_context(name, value, &cwd)?);
            }
            for ctx in named_contexts.values() {
                if let NamedContextSpec::Dir(dir) = ctx {
                    watch_paths.push(dir.clone());
                }
            }
            let sbom = attestation(flags.sbom.as_deref().or(svc.sbom.as_deref()), "");
            let provenance = attestation(
                flags.provenance.as_deref().or(svc.provenance.as_deref()),
                "mode=min",
            );
            // `--ssh` replaces the project file's `ssh:` (buildx has no merging either).
            let ssh = if flags.ssh.is_empty() {
                parse_ssh(&svc.ssh, root)?
            } else {
                parse_ssh(&flags.ssh, &std::env::current_dir()?)?
            };
            let tls = if flags.buildkit_tls_ca.is_some()
                || flags.buildkit_tls_cert.is_some()
                || flags.buildkit_tls_server_name.is_some()
            {
                Some(BuildkitTls {
                    ca: flags.buildkit_tls_ca.clone(),
                    cert: flags.buildkit_tls_cert.clone(),
                    key: flags.buildkit_tls_key.clone(),
                    server_name: flags.buildkit_tls_server_name.clone(),
                })
            } else {
                default_tls
            };
            watch_paths.push(context.clone());
            if !dockerfile.starts_with(&context) {
                watch_paths.push(dockerfile.clone());
            }
            BuilderPlan::Buildkit(BuildkitPlan {
                address,
                address_source,
                pool,
                tls,
                context,
                dockerfile,
                target: flags.target.clone().or_else(|| svc.target.clone()),
                build_args,
                labels,
                platforms,
                secrets,
                ssh,
                named_contexts,
                sbom,
                provenance,
                no_cache: flags.no_cache,
                cache_from: svc
                    .cache_from
                    .iter()
                    .chain(&flags.cache_from)
                    .cloned()
                    .collect(),
                cache_to: svc
                    .cache_to
                    .iter()
                    .chain(&flags.cache_to)
                    .cloned()
                    .collect(),
            })
        }
        BuilderKind::Native => {
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
                watch_paths.push(abs(&l.src));
            }
            let base = flags
                .base
                .clone()
                .or_else(|| svc.base.clone())
                .unwrap_or_else(|| "scratch".into());
            let mut env = svc.env.clone();
            env.extend(kv_pairs(&flags.env, "env")?);
            BuilderPlan::Native(NativePlan {
                base,
                layers: layers
                    .iter()
                    .map(|l| vec![(abs(&l.src), l.dest.clone())])
                    .collect(),
                platforms: if platforms.is_empty() {
                    vec!["linux/amd64".into()]
                } else {
                    platforms
                },
                entrypoint: if flags.entrypoint.is_empty() {
                    svc.entrypoint.clone()
                } else {
                    Some(flags.entrypoint.clone())
                },
                cmd: if flags.cmd.is_empty() {
                    svc.cmd.clone()
                } else {
                    Some(flags.cmd.clone())
                },
                env,
                workdir: flags.workdir.clone().or_else(|| svc.workdir.clone()),
                user: flags.user.clone().or_else(|| svc.user.clone()),
                ports: if flags.ports.is_empty() {
                    svc.ports.clone()
                } else {
                    flags.ports.clone()
                },
                labels,
            })
        }
    };

    let destination = match push_host {
        Some(host) => {
            let insecure = is_loopback(&host)
                || insecure_list
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

    let values_dir = flags
        .values_dir
        .clone()
        .or_else(|| cfg.values_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VALUES_DIR));
    let values_file = abs(&flags
        .values_file
        .clone()
        .or_else(|| svc.values.file.clone())
        .unwrap_or_else(|| values_dir.join(format!("{name}.values.yaml"))));
    let mut values_keys = svc.values.clone();
    key_flag(
        flags.repository_key.as_ref(),
        &mut values_keys.repository_key,
    );
    key_flag(flags.digest_key.as_ref(), &mut values_keys.digest_key);
    key_flag(flags.registry_key.as_ref(), &mut values_keys.registry_key);
    key_flag(flags.tag_key.as_ref(), &mut values_keys.tag_key);

    let helm_cfg: Option<HelmConfig> = match (&svc.helm, &flags.chart) {
        (_, Some(chart)) => Some(HelmConfig {
            chart: chart.clone(),
            ..svc.helm.clone().unwrap_or_default()
        }),
        (Some(h), None) => Some(h.clone()),
        (None, None) => None,
    };
    let helm = helm_cfg.map(|h| {
        let chart = if is_chart_reference(root, &h.chart) {
            h.chart.clone()
        } else {
            abs(Path::new(&h.chart)).display().to_string()
        };
        HelmPlan {
            release: flags
                .release
                .clone()
                .or(h.release)
                .unwrap_or_else(|| name.to_owned()),
            chart,
            namespace: flags.namespace.clone().or(h.namespace),
            values: if flags.helm_values.is_empty() {
                h.values.iter().map(|p| abs(p)).collect()
            } else {
                flags.helm_values.iter().map(|p| abs(p)).collect()
            },
            flags: h
                .flags
                .into_iter()
                .chain(flags.helm_flags.clone())
                .collect(),
            timeout: flags
                .timeout
                .clone()
                .or(h.timeout)
                .unwrap_or_else(|| DEFAULT_HELM_TIMEOUT.into()),
            rollback_on_failure: !flags.no_rollback_on_failure
                && h.rollback_on_failure.unwrap_or(true),
        }
    });
    if let Some(h) = &helm {
        check_release(name, &h.release)?;
        if let Some(ns) = &h.namespace {
            check_namespace(name, ns)?;
        }
    }

    watch_paths.sort();
    watch_paths.dedup();
    let source_date_epoch = source_date_epoch(root, &watch_paths);

    Ok(ServicePlan {
        name: name.to_owned(),
        root: root.clone(),
        builder,
        destination,
        pull_registry,
        registry_source,
        pull_repository,
        compression,
        insecure_registries: insecure_list,
        registry_ca_files: cfg
            .registry_ca
            .iter()
            .chain(&flags.registry_ca)
            .map(|p| abs(p))
            .collect(),
        docker_config: flags
            .docker_config
            .clone()
            .or_else(|| cfg.docker_config.clone())
            .map(|p| abs(&p)),
        values_file,
        values_keys,
        helm,
        watch_paths,
        source_date_epoch,
        reproducible: flags.reproducible.or(svc.reproducible).or(cfg.reproducible),
    })
}

/// A chart given as `oci://…` or `repo/name` (resolved by helm) rather than a local path.
pub fn is_chart_reference(root: &Path, chart: &str) -> bool {
    if chart.starts_with("oci://") || chart.contains("://") {
        return true;
    }
    if chart.starts_with('.') || chart.starts_with('/') || root.join(chart).exists() {
        return false;
    }
    // `repo/name` is a Helm repository chart unless `repo` is a local directory (then it is a
    // local chart that is missing, and saying so beats helm's "repo not found").
    match chart.split_once('/') {
        Some((first, rest)) => !rest.contains('/') && !root.join(first).is_dir(),
        None => false,
    }
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

const CONFIGURED_SOURCE: &str = "`buildkit:` in fastbuild.yaml";

/// The pool `addresses` in the order `service` tries them: rendezvous (highest random weight)
/// hashing on the service name, so each service keeps going to the same daemon (and its
/// cache), a service moves only when its daemon leaves the pool, and the services spread
/// evenly. Never a scheduler of our own: the order is a pure function of names.
pub fn pool_order(service: &str, addresses: &[String]) -> Vec<String> {
    use sha2::Digest as _;
    let mut scored: Vec<(Vec<u8>, &String)> = addresses
        .iter()
        .map(|a| {
            let mut h = sha2::Sha256::new();
            h.update(service.as_bytes());
            h.update([0]);
            h.update(a.as_bytes());
            (h.finalize().to_vec(), a)
        })
        .collect();
    scored.sort_by(|x, y| y.0.cmp(&x.0));
    let mut out: Vec<String> = Vec::new();
    for (_, a) in scored {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// The BuildKit address of a service, its TLS files when they come with it, and why: `--buildkit`
/// / `BUILDKIT_HOST`, then a buildx builder named by `--builder NAME` / `BUILDX_BUILDER`, then
/// `buildkit:` in the project file, then buildx's current builder, then the Docker endpoint the
/// docker CLI would use. `buildx://NAME` names a buildx builder wherever an address goes.
fn buildkit_address(
    flags: &ServiceFlags,
    configured: Option<&str>,
    docker_config: Option<&Path>,
) -> Result<(String, String, Option<BuildkitTls>)> {
    use crate::builder::{buildx, docker_endpoint};
    let usage = |e: anyhow::Error| UsageError(format!("{e:#}"));
    let docker = || docker_endpoint::resolve(docker_config).map_err(usage);
    let builder = |name: &str, why: String| -> Result<(String, String, Option<BuildkitTls>)> {
        let endpoint = docker()?;
        let dir = docker_endpoint::config_dir(docker_config).unwrap_or_default();
        let r = buildx::resolve(&dir, name, &endpoint.host).map_err(usage)?;
        Ok((r.address, why, r.tls))
    };
    let given = |a: &str, why: String| match a.strip_prefix("buildx://") {
        Some(name) => builder(name, format!("buildx builder `{name}` ({why})")),
        None => Ok((a.to_owned(), why, None)),
    };
    // An empty BUILDKIT_HOST (`BUILDKIT_HOST= fastbuild …`) means unset, as for buildctl.
    if let Some(a) = flags.buildkit.as_ref().filter(|a| !a.is_empty()) {
        let from_env = std::env::var("BUILDKIT_HOST").ok().as_deref() == Some(a.as_str());
        return given(
            a,
            if from_env {
                "BUILDKIT_HOST"
            } else {
                "--buildkit"
            }
            .to_owned(),
        );
    }
    match flags.builder.as_deref() {
        Some("buildkit" | "native") | None => {}
        Some(name) => return builder(name, format!("buildx builder `{name}` (--builder)")),
    }
    if let Some(name) = std::env::var("BUILDX_BUILDER")
        .ok()
        .filter(|n| !n.is_empty())
    {
        return builder(&name, format!("buildx builder `{name}` (BUILDX_BUILDER)"));
    }
    if let Some(a) = configured {
        return given(a, CONFIGURED_SOURCE.to_owned());
    }
    let endpoint = docker()?;
    if let Some(dir) = docker_endpoint::config_dir(docker_config)
        && let Some(name) = buildx::current(&dir, &endpoint.host)
    {
        return builder(
            &name,
            format!("buildx builder `{name}` (buildx's current builder, `docker buildx use`)"),
        );
    }
    Ok((endpoint.address, endpoint.source, endpoint.tls))
}

/// Error for a service without a registry.
pub fn no_registry(name: &str) -> anyhow::Error {
    anyhow!(UsageError(format!(
        "service `{name}` has no registry to push to; set `registry:` in fastbuild.yaml, \
         pass `--registry HOST`, or use `--no-push` / `--output oci:DIR`"
    )))
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
    fn named_contexts_and_attestations_parse_like_buildx() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir(dir.path().join("core")).unwrap();
        assert_eq!(
            parse_named_context("core", "core", dir.path()).unwrap(),
            NamedContextSpec::Dir(dir.path().join("core"))
        );
        assert_eq!(
            parse_named_context("alpine", "docker-image://reg:5000/alpine:3", dir.path()).unwrap(),
            NamedContextSpec::Image("reg:5000/alpine:3".into())
        );
        for (name, value, says) in [
            ("core", "missing", "is not a directory"),
            ("x", "oci-layout://dir", "not supported"),
            ("x", "docker-image://", "needs an image reference"),
            ("context", "core", "not `context`"),
        ] {
            let e = parse_named_context(name, value, dir.path())
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{name}={value}: {e}");
        }
        assert_eq!(attestation(None, "mode=min"), None);
        assert_eq!(attestation(Some("false"), "mode=min"), None);
        assert_eq!(
            attestation(Some("true"), "mode=min").as_deref(),
            Some("mode=min")
        );
        assert_eq!(attestation(Some("true"), "").as_deref(), Some(""));
        assert_eq!(
            attestation(Some("mode=max"), "mode=min").as_deref(),
            Some("mode=max")
        );
    }

    #[test]
    fn ssh_specs_parse_like_buildx() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let key = dir.path().join("id_ed25519");
        fs_err::write(&key, "not read here").unwrap();
        let specs = [
            format!("agent={}", sock.display()),
            "keys=id_ed25519,other_key".to_owned(),
        ];
        let parsed = parse_ssh(&specs, dir.path()).unwrap();
        assert_eq!(parsed["agent"], SshSpec::Agent(sock.clone()));
        assert_eq!(
            parsed["keys"],
            SshSpec::Keys(vec![key.clone(), dir.path().join("other_key")])
        );
        let twice = [specs[0].clone(), specs[0].clone()];
        assert!(parse_ssh(&twice, dir.path()).is_err());
        assert!(parse_ssh(&["=x".to_owned()], dir.path()).is_err());
    }

    /// Rendezvous hashing: every service has a stable first choice, ten services use both of
    /// two daemons, and removing a daemon moves only the services that preferred it.
    #[test]
    fn pool_order_is_sticky_spread_and_moves_little() {
        let pool: Vec<String> = ["tcp://a:1234", "tcp://b:1234", "tcp://c:1234"]
            .map(str::to_owned)
            .to_vec();
        let services: Vec<String> = (0..10).map(|i| format!("svc{i}")).collect();
        let first = |pool: &[String]| -> Vec<String> {
            services
                .iter()
                .map(|s| pool_order(s, pool)[0].clone())
                .collect()
        };
        let before = first(&pool);
        assert_eq!(before, first(&pool), "stable");
        for a in &pool {
            assert!(before.contains(a), "{a} unused: {before:?}");
        }
        let without_b: Vec<String> = pool
            .iter()
            .filter(|a| !a.contains("//b"))
            .cloned()
            .collect();
        let after = first(&without_b);
        for (b, a) in before.iter().zip(&after) {
            if !b.contains("//b") {
                assert_eq!(a, b, "a service not on b stays put");
            }
        }
        assert_eq!(pool_order("x", &pool).len(), 3);
    }

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

    #[test]
    fn secrets_parse_like_docker_build() {
        let root = Path::new("/p");
        assert_eq!(
            parse_secret("id=npm,src=.npmrc", root).unwrap(),
            SecretSpec::File {
                id: "npm".into(),
                path: PathBuf::from("/p/.npmrc")
            }
        );
        assert_eq!(
            parse_secret("id=tok,env=TOKEN", root).unwrap(),
            SecretSpec::Env {
                id: "tok".into(),
                var: "TOKEN".into()
            }
        );
        assert!(parse_secret("src=x", root).is_err());
    }
}
