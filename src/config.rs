//! The project file, `fastbuild.yaml`: its schema, where it is found and how it is parsed.
//!
//! Stage: settings input. Parsing is strict — unknown keys and wrong types are errors that carry
//! `file:line:column` and a suggestion — and nothing here touches the network or the builders.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod expand;

use expand::expand_project;
pub use expand::expand_value;

/// File names looked for, in this order, in the current directory and its parents.
pub const PROJECT_FILE_NAMES: &[&str] = &["fastbuild.yaml", "fastbuild.yml"];

/// One BuildKit address, or a pool of them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Addresses {
    /// One daemon.
    One(String),
    /// A pool.
    Pool(Vec<String>),
}

impl Addresses {
    /// The addresses, in the order given.
    pub fn list(&self) -> Vec<String> {
        match self {
            Self::One(a) => vec![a.clone()],
            Self::Pool(p) => p.clone(),
        }
    }
}

/// The whole project file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ProjectFile {
    /// Registry the host pushes to, `host[:port][/prefix]` (e.g. `localhost:5000`).
    pub registry: Option<String>,
    /// Registry as the cluster pulls from it (e.g. `registry:5000` in k3d). Default: `registry`.
    pub pull_registry: Option<String>,
    /// BuildKit address (`docker-unix:///var/run/docker.sock`, `unix://…`, `tcp://…`, a
    /// connection helper, `buildx://NAME`), or a list of them: a pool of daemons over which
    /// services are spread, each sticking to one (see `settings::pool_order`).
    pub buildkit: Option<Addresses>,
    /// Directory for generated values files, relative to the project file.
    pub values_dir: Option<PathBuf>,
    /// Registries reached over plain HTTP (loopback is always allowed).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Extra CA bundles (PEM) trusted for registries with private certificates.
    #[serde(default)]
    pub registry_ca: Vec<PathBuf>,
    /// Docker config directory or file for registry credentials (default `$DOCKER_CONFIG` or
    /// `~/.docker`).
    pub docker_config: Option<PathBuf>,
    /// Layer compression: `auto` (fastest for loopback/dev registries, gzip otherwise),
    /// `gzip`, `zstd` or `uncompressed`.
    pub compression: Option<String>,
    /// How many services build at once.
    #[serde(default, deserialize_with = "scalar_or_env")]
    pub parallel: Option<usize>,
    /// Byte-for-byte reproducible images across checkouts (BuildKit `rewrite-timestamp`):
    /// default on for `push` (CI), off for `build` and `watch` (it costs the daemon a rewrite
    /// of every layer on every build).
    #[serde(default, deserialize_with = "scalar_or_env")]
    pub reproducible: Option<bool>,
    /// The services, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

/// Which builder makes a service's image.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuilderKind {
    /// Solve a Dockerfile on a BuildKit daemon over gRPC.
    #[default]
    Buildkit,
    /// Assemble layers from local files onto a base image, without any daemon.
    Native,
}

/// One service of the project file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ServiceConfig {
    /// `buildkit` (default) or `native`.
    #[serde(default)]
    pub builder: BuilderKind,
    /// Build context, relative to the project file (default `.`).
    pub context: Option<PathBuf>,
    /// Dockerfile, relative to the project file (default `<context>/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// Dockerfile stage to build.
    pub target: Option<String>,
    /// `--build-arg` values.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Image labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Platforms such as `linux/amd64`.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Secrets for `RUN --mount=type=secret`: `id=NAME,src=FILE` or `id=NAME,env=VAR`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// SSH forwarding for `RUN --mount=type=ssh`: `default`, `ID` or `ID=PATH[,PATH]` (as
    /// `--ssh`). Needs `--allow ssh`: a project file must not hand your agent to a build.
    #[serde(default)]
    pub ssh: Vec<String>,
    /// Named contexts (`--build-context`): name → directory (relative to the project file) or
    /// `docker-image://REF`.
    #[serde(default)]
    pub contexts: BTreeMap<String, String>,
    /// SBOM attestation, as `--sbom` (default: none).
    pub sbom: Option<String>,
    /// Provenance attestation, as `--provenance` (default: none).
    pub provenance: Option<String>,
    /// Extra paths (files or directories) whose changes rebuild this service.
    #[serde(default)]
    pub watch: Vec<PathBuf>,
    /// Repository name under the registry (default: the service name).
    pub repository: Option<String>,
    /// Registry override for this service (as the host pushes to it).
    pub registry: Option<String>,
    /// Registry override for this service (as the cluster pulls from it).
    pub pull_registry: Option<String>,
    /// Tag to push (default: a content-derived `fb-<digest prefix>`).
    pub tag: Option<String>,
    /// More tags for the same manifest.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Layer compression override.
    pub compression: Option<String>,
    /// Reproducible-image override (see the top-level key).
    #[serde(default, deserialize_with = "scalar_or_env")]
    pub reproducible: Option<bool>,
    /// Cache import refs (`type=registry,ref=…`).
    #[serde(default)]
    pub cache_from: Vec<String>,
    /// Cache export specs (`type=inline` or `type=registry,ref=…`).
    #[serde(default)]
    pub cache_to: Vec<String>,
    /// Generated values file settings.
    #[serde(default)]
    pub values: ValuesConfig,
    /// Helm release settings.
    pub helm: Option<HelmConfig>,
    /// Native builder: base image reference, or `scratch`.
    pub base: Option<String>,
    /// Native builder: layers, each a list of `src → dest` entries.
    #[serde(default)]
    pub layers: Vec<LayerConfig>,
    /// Native builder: entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Native builder: cmd.
    pub cmd: Option<Vec<String>>,
    /// Native builder: environment (`KEY: value`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Native builder: working directory.
    pub workdir: Option<String>,
    /// Native builder: user.
    pub user: Option<String>,
    /// Native builder: exposed ports (`8080`, `8080/tcp`).
    #[serde(default)]
    pub ports: Vec<String>,
}

/// A native layer: files and directories copied to paths in the image.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct LayerConfig {
    /// Local file or directory, relative to the project file.
    pub src: PathBuf,
    /// Absolute path in the image.
    pub dest: String,
}

/// Where the digest goes in the generated values file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ValuesConfig {
    /// Values file path, relative to the project file
    /// (default `<values_dir>/<service>.values.yaml`).
    pub file: Option<PathBuf>,
    /// Key receiving `<pull registry>/<repository>` (default `image.graph`; `null` to omit);
    /// with [`Self::registry_key`] set, only the path under the registry host (`ameide/gw`).
    #[serde(default = "default_repository_key")]
    pub repository_key: Option<String>,
    /// Key receiving `sha256:…` (default `image.digest`; `null` for tag-only charts).
    #[serde(default = "default_digest_key")]
    pub digest_key: Option<String>,
    /// Key receiving the pull registry's host (`docker.io`; default: none). Bitnami's
    /// `common.images.image` and Tilt's `helm_resource` join it with the repository key.
    pub registry_key: Option<String>,
    /// Key receiving the pushed tag (default: none; the interim for tag-only charts).
    pub tag_key: Option<String>,
}

#[allow(clippy::unnecessary_wraps)] // serde default must match the field type
fn default_repository_key() -> Option<String> {
    Some("image.graph".to_owned())
}

#[allow(clippy::unnecessary_wraps)] // serde default must match the field type
fn default_digest_key() -> Option<String> {
    Some("image.digest".to_owned())
}

impl Default for ValuesConfig {
    fn default() -> Self {
        Self {
            file: None,
            repository_key: default_repository_key(),
            digest_key: default_digest_key(),
            registry_key: None,
            tag_key: None,
        }
    }
}

/// A service's Helm release.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct HelmConfig {
    /// Release name (default: the service name).
    pub release: Option<String>,
    /// Chart path (relative to the project file) or reference.
    pub chart: String,
    /// Namespace (`-n`).
    pub namespace: Option<String>,
    /// Values files before the generated one: base values, then environment values.
    #[serde(default)]
    pub values: Vec<PathBuf>,
    /// Extra flags appended to `helm upgrade`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// `--timeout` (default `10m`, the design note's 600 s).
    pub timeout: Option<String>,
    /// Roll the release back when the upgrade fails (`--atomic` / Helm 4's
    /// `--rollback-on-failure`; default `true`, as the design note asks). `false` keeps the
    /// failed state for debugging in a dev loop.
    pub rollback_on_failure: Option<bool>,
}

/// A project file that failed to load.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read project file `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A `${VAR}` reference in a value could not be expanded.
    #[error("{path}: `{key}`: {message}")]
    Env {
        /// The file.
        path: PathBuf,
        /// Where the value is, e.g. `services.api.build_args.MODE`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Finds the project file in `start` or its parents.
pub fn find_upward(start: &Path) -> Option<PathBuf> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        for name in PROJECT_FILE_NAMES {
            let candidate = d.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
        dir = d.parent();
    }
    None
}

/// Reads and parses a project file.
pub fn load(path: &Path) -> Result<ProjectFile, ConfigError> {
    let text = fs_err::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses project file text; `path` is only used in error messages. `${VAR}` and
/// `${VAR:-default}` are expanded from the process environment inside the parsed scalar values
/// only, as Compose does: a value can never add keys or structure, quoting is kept, and
/// comments are never expanded.
pub fn parse(path: &Path, text: &str) -> Result<ProjectFile, ConfigError> {
    parse_with(path, text, &|k| std::env::var(k).ok())
}

/// [`parse`] with the string values expanded from `lookup` (the typed scalars `parallel` and
/// `reproducible` always expand from the process environment, while they are read).
pub fn parse_with(
    path: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<ProjectFile, ConfigError> {
    if text.trim().is_empty() {
        return Ok(ProjectFile::default());
    }
    let mut project = serde_saphyr::from_str::<ProjectFile>(text).map_err(|err| {
        let (line, column) = err
            .location()
            .map_or((0, 0), |loc| (loc.line(), loc.column()));
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: explain(&err.to_string()),
        }
    })?;
    let mut expand = |key: &str, value: &mut String| {
        if value.contains('$') {
            *value = expand_value(value, lookup).map_err(|message| ConfigError::Env {
                path: path.to_owned(),
                key: key.to_owned(),
                message,
            })?;
        }
        Ok(())
    };
    expand_project(&mut project, &mut expand)?;
    Ok(project)
}

/// A typed scalar written as itself (`parallel: 4`) or as a string to expand
/// (`parallel: ${JOBS:-4}`).
fn scalar_or_env<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        Value(T),
        Text(String),
    }
    match Option::<Raw<T>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Raw::Value(v)) => Ok(Some(v)),
        Some(Raw::Text(text)) => {
            let expanded =
                expand_value(&text, &|k| std::env::var(k).ok()).map_err(D::Error::custom)?;
            expanded
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| D::Error::custom(format!("`{expanded}` (from `{text}`): {e}")))
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "registry",
    "pull_registry",
    "buildkit",
    "values_dir",
    "insecure_registries",
    "registry_ca",
    "docker_config",
    "compression",
    "parallel",
    "reproducible",
    "services",
];
const SERVICE_KEYS: &[&str] = &[
    "builder",
    "context",
    "dockerfile",
    "target",
    "build_args",
    "labels",
    "platforms",
    "ssh",
    "contexts",
    "sbom",
    "provenance",
    "secrets",
    "watch",
    "repository",
    "registry",
    "pull_registry",
    "tag",
    "compression",
    "reproducible",
    "cache_from",
    "cache_to",
    "values",
    "helm",
    "base",
    "layers",
    "entrypoint",
    "cmd",
    "env",
    "workdir",
    "user",
    "ports",
];
const OTHER_KEYS: &[&str] = &[
    "src",
    "dest",
    "file",
    "repository_key",
    "digest_key",
    "registry_key",
    "tag_key",
    "release",
    "chart",
    "namespace",
    "values",
    "flags",
    "timeout",
    "rollback_on_failure",
];

/// Turns a serde message into one that says what to do: the closest known key for typos.
fn explain(raw: &str) -> String {
    // serde-saphyr renders a snippet after the first line; keep the first line only.
    let first = raw.lines().next().unwrap_or(raw).trim().to_owned();
    if let Some(rest) = first.split("unknown field `").nth(1) {
        let field = rest.split('`').next().unwrap_or_default();
        let mut msg = format!("unknown key `{field}`");
        let candidates = TOP_KEYS.iter().chain(SERVICE_KEYS).chain(OTHER_KEYS);
        if let Some(best) = closest(field, candidates.copied()) {
            let _ = write!(msg, "; did you mean `{best}`?");
        } else {
            msg.push_str("; see the project file reference in README.md");
        }
        return msg;
    }
    if first.contains("unknown variant") {
        return format!("{first}; builder must be `buildkit` or `native`");
    }
    first
}

fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let normalized = word.replace('-', "_").to_lowercase();
    candidates
        .map(|c| (levenshtein(&normalized, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_service() {
        let text = r"
registry: localhost:5000
pull_registry: registry:5000
services:
  inference:
    context: services/inference
    dockerfile: services/inference/Dockerfile
    build_args: {MODE: dev}
    helm:
      chart: charts/inference
      namespace: ameide
      values: [base.yaml, env.yaml]
";
        let p = parse(Path::new("fastbuild.yaml"), text).unwrap();
        let svc = &p.services["inference"];
        assert_eq!(svc.builder, BuilderKind::Buildkit);
        assert_eq!(svc.build_args["MODE"], "dev");
        assert_eq!(svc.values.digest_key.as_deref(), Some("image.digest"));
        assert_eq!(
            svc.helm.as_ref().unwrap().namespace.as_deref(),
            Some("ameide")
        );
    }

    #[test]
    fn unknown_key_names_line_column_and_suggests() {
        let text = "services:\n  api:\n    dockerfle: Dockerfile\n";
        let err = parse(Path::new("fastbuild.yaml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("fastbuild.yaml:3:5: unknown key `dockerfle`"),
            "{msg}"
        );
        assert!(msg.contains("did you mean `dockerfile`?"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line() {
        let text = "services:\n  api:\n    platforms: linux/amd64\n";
        let err = parse(Path::new("p.yaml"), text).unwrap_err();
        let ConfigError::Invalid { line, .. } = err else {
            panic!("expected Invalid")
        };
        assert_eq!(line, 3);
    }

    #[test]
    fn env_expansion_in_values() {
        let look = |k: &str| (k == "REG").then(|| "localhost:5000".to_owned());
        assert_eq!(expand_value("${REG}/x", &look).unwrap(), "localhost:5000/x");
        assert_eq!(expand_value("${NOPE:-x}/$$y $z", &look).unwrap(), "x/$y $z");
        let err = expand_value("${NOPE}", &look).unwrap_err();
        assert!(
            err.starts_with("environment variable `NOPE` is not set"),
            "{err}"
        );
        let text = "registry: ${REG}\nservices:\n  api:\n    build_args: {A: \"${NOPE:-d}\"}\n";
        let p = parse_with(Path::new("p.yaml"), text, &look).unwrap();
        assert_eq!(p.registry.as_deref(), Some("localhost:5000"));
        let unset = parse_with(Path::new("p.yaml"), "pull_registry: ${NOPE:-}\n", &look).unwrap();
        assert_eq!(unset.pull_registry, None, "expands to nothing: unset");
        assert_eq!(p.services["api"].build_args["A"], "d");
        let err = parse_with(
            Path::new("p.yaml"),
            "services:\n  api:\n    target: ${NOPE}\n",
            &look,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "p.yaml: `services.api.target`: environment variable `NOPE` is not set; set it or \
             write `${NOPE:-default}`"
        );
    }

    /// L2 of the hardening issue: substitution happened in the raw text, so a value could
    /// inject YAML structure, lose the part after a `#`, and a `${VAR}` in a comment failed.
    #[test]
    fn env_values_never_change_the_yaml_structure() {
        let evil = |k: &str| match k {
            "TAG" => Some("v1\nbase: evil.example/pwn".to_owned()),
            "NOTE" => Some("v1 # x".to_owned()),
            _ => None,
        };
        let text = "# uses ${UNSET_IN_A_COMMENT}\nservices:\n  api:\n    tag: ${TAG}\n    labels:\n      note: ${NOTE}\n";
        let p = parse_with(Path::new("p.yaml"), text, &evil).unwrap();
        let api = &p.services["api"];
        assert_eq!(api.tag.as_deref(), Some("v1\nbase: evil.example/pwn"));
        assert_eq!(api.base, None, "a value injected a key");
        assert_eq!(api.labels["note"], "v1 # x");
    }

    #[test]
    fn typed_scalars_accept_env_references() {
        // A variable no environment sets: the defaults apply.
        let text = "parallel: ${FASTBUILD_CONFIG_TEST_UNSET:-3}\nreproducible: \"${FASTBUILD_CONFIG_TEST_UNSET:-true}\"\n";
        let p = parse(Path::new("p.yaml"), text).unwrap();
        assert_eq!(p.parallel, Some(3));
        assert_eq!(p.reproducible, Some(true));
        let p = parse(Path::new("p.yaml"), "parallel: 2\nreproducible: false\n").unwrap();
        assert_eq!((p.parallel, p.reproducible), (Some(2), Some(false)));
        let err = parse(Path::new("p.yaml"), "parallel: many\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.yaml:1:") && err.contains("`many`"), "{err}");
    }

    #[test]
    fn null_digest_key_means_tag_only() {
        let text = "services:\n  gw:\n    values: {digest_key: null, tag_key: image.tag}\n";
        let p = parse(Path::new("p.yaml"), text).unwrap();
        assert_eq!(p.services["gw"].values.digest_key, None);
        assert_eq!(
            p.services["gw"].values.tag_key.as_deref(),
            Some("image.tag")
        );
    }
}
