//! BuildKit builds: the daemon (an address, a pool, a buildx builder or the Docker endpoint)
//! and its TLS, the Dockerfile and context, build args, secrets, SSH, named contexts,
//! attestations and the cache imports and exports — each parsed here, before any build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use fastbuild_buildkit::{CacheSpec, NamedContext, SshSource};

use super::merge::{Sources, added, first};
use super::{absolutize, kv_pairs};
use crate::cli::ServiceFlags;
use crate::error::UsageError;

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
    pub ssh: BTreeMap<String, SshSource>,
    /// Named contexts: directories (absolute) or images.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// `attest:sbom` value, when asked for.
    pub sbom: Option<String>,
    /// `attest:provenance` value, when asked for.
    pub provenance: Option<String>,
    /// No cache.
    pub no_cache: bool,
    /// Cache imports.
    pub cache_from: Vec<CacheSpec>,
    /// Cache exports.
    pub cache_to: Vec<CacheSpec>,
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

/// Parses `NAME=DIR` / `NAME=docker-image://REF` (relative directories from `root`).
pub fn parse_named_context(name: &str, value: &str, root: &Path) -> Result<NamedContext> {
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
        return Ok(NamedContext::Image(reference.to_owned()));
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
    Ok(NamedContext::Dir(dir))
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

/// Parses `--ssh` specs as buildx does: `default`, `ID` (both: the agent of `SSH_AUTH_SOCK`),
/// `ID=PATH[,PATH…]` (one agent socket, or key files). Relative paths are taken from `root`.
pub fn parse_ssh(specs: &[String], root: &Path) -> Result<BTreeMap<String, SshSource>> {
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
                SshSource::Agent(PathBuf::from(sock))
            }
            [one] if is_socket(one) => SshSource::Agent(one.clone()),
            _ => SshSource::Keys(paths),
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

/// Parses `type=registry,ref=…` / `type=inline` into a cache spec; a bare `REF` (buildx's
/// shorthand) is `type=registry,ref=REF`.
pub fn cache_spec(spec: &str) -> Result<CacheSpec> {
    if !spec.contains('=') && !spec.trim().is_empty() {
        return Ok(CacheSpec {
            kind: "registry".into(),
            attrs: BTreeMap::from([("ref".to_owned(), spec.trim().to_owned())]),
        });
    }
    let mut kind = None;
    let mut attrs = BTreeMap::new();
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            UsageError(format!("cache spec `{spec}`: expected `type=…,key=value`"))
        })?;
        if k == "type" {
            kind = Some(v.to_owned());
        } else {
            attrs.insert(k.to_owned(), v.to_owned());
        }
    }
    let kind = kind.unwrap_or_else(|| "registry".into());
    Ok(CacheSpec { kind, attrs })
}

/// What the BuildKit plan of one service is resolved from besides its [`Sources`].
pub(super) struct Shared<'a> {
    /// Service name.
    pub name: &'a str,
    /// Labels (both builders take them).
    pub labels: BTreeMap<String, String>,
    /// Platforms (both builders take them).
    pub platforms: Vec<String>,
    /// The Docker config the service's credentials come from.
    pub docker_config: Option<&'a Path>,
}

/// Resolves the BuildKit build of a service; the directories it reads are added to
/// `watch_paths`.
pub(super) fn resolve(
    src: Sources<'_>,
    shared: Shared<'_>,
    watch_paths: &mut Vec<PathBuf>,
) -> Result<BuildkitPlan> {
    let Sources {
        flags,
        svc,
        file: cfg,
        root,
    } = src;
    let Shared {
        name,
        labels,
        platforms,
        docker_config,
    } = shared;
    let context = src.abs(
        &first([flags.context.as_ref(), svc.context.as_ref()])
            .unwrap_or_else(|| PathBuf::from(".")),
    );
    let configured: Vec<String> = cfg
        .buildkit
        .as_ref()
        .map(crate::config::Addresses::list)
        .unwrap_or_default();
    let (address, address_source, default_tls) =
        buildkit_address(flags, configured.first().map(String::as_str), docker_config)?;
    // A pool in the project file (and nothing given over it): this service's order.
    let (address, address_source, pool) =
        if configured.len() > 1 && address_source == CONFIGURED_SOURCE {
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
    let dockerfile = first([flags.dockerfile.as_ref(), svc.dockerfile.as_ref()])
        .map_or_else(|| context.join("Dockerfile"), |p| src.abs(&p));
    let mut build_args = svc.build_args.clone();
    build_args.extend(kv_pairs(&flags.build_args, "build arg")?);
    let secrets = added([svc.secrets.as_slice(), flags.secrets.as_slice()])
        .iter()
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
        if let NamedContext::Dir(dir) = ctx {
            watch_paths.push(dir.clone());
        }
    }
    let sbom = attestation(
        first([flags.sbom.as_ref(), svc.sbom.as_ref()]).as_deref(),
        "",
    );
    let provenance = attestation(
        first([flags.provenance.as_ref(), svc.provenance.as_ref()]).as_deref(),
        "mode=min",
    );
    // `--ssh` replaces the project file's `ssh:` (buildx has no merging either); its relative
    // paths are the caller's, the file's the project's.
    let ssh = if flags.ssh.is_empty() {
        parse_ssh(&svc.ssh, root)?
    } else {
        parse_ssh(&flags.ssh, &cwd)?
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
    let caches = |specs: Vec<String>| {
        specs
            .iter()
            .map(|s| cache_spec(s))
            .collect::<Result<Vec<_>>>()
    };
    Ok(BuildkitPlan {
        address,
        address_source,
        pool,
        tls,
        context,
        dockerfile,
        target: first([flags.target.as_ref(), svc.target.as_ref()]),
        build_args,
        labels,
        platforms,
        secrets,
        ssh,
        named_contexts,
        sbom,
        provenance,
        no_cache: flags.no_cache,
        cache_from: caches(added([
            svc.cache_from.as_slice(),
            flags.cache_from.as_slice(),
        ]))?,
        cache_to: caches(added([svc.cache_to.as_slice(), flags.cache_to.as_slice()]))?,
    })
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
            NamedContext::Dir(dir.path().join("core"))
        );
        assert_eq!(
            parse_named_context("alpine", "docker-image://reg:5000/alpine:3", dir.path()).unwrap(),
            NamedContext::Image("reg:5000/alpine:3".into())
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
        assert_eq!(parsed["agent"], SshSource::Agent(sock.clone()));
        assert_eq!(
            parsed["keys"],
            SshSource::Keys(vec![key.clone(), dir.path().join("other_key")])
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

    #[test]
    fn cache_specs_take_buildx_shorthand() {
        let bare = cache_spec("localhost:5000/app:cache").unwrap();
        assert_eq!(bare.kind, "registry");
        assert_eq!(bare.attrs["ref"], "localhost:5000/app:cache");
        let full = cache_spec("type=registry,ref=r/app:c,mode=max").unwrap();
        assert_eq!(
            (full.kind.as_str(), full.attrs["mode"].as_str()),
            ("registry", "max")
        );
        assert_eq!(cache_spec("type=inline").unwrap().kind, "inline");
        assert!(cache_spec("type=registry,ref").is_err());
    }
}
