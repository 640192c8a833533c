//! Which dockerd (and so which embedded BuildKit) the default BuildKit address means, resolved
//! as the docker CLI resolves its endpoint: `DOCKER_HOST`, else `DOCKER_CONTEXT`, else the
//! `currentContext` of the Docker config, else the default socket. A context's endpoint comes
//! from the Docker context store (`$DOCKER_CONFIG/contexts/meta/<sha256 of name>/meta.json`,
//! TLS files under `contexts/tls/<sha256 of name>/docker/`), so Colima, OrbStack, Rancher
//! Desktop and rootless Docker work as `docker` itself does on that machine.
//!
//! Stage: settings input. Reads files only; never runs a program.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use sha2::Digest as _;

use crate::settings::BuildkitTls;

/// The resolved default BuildKit endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerEndpoint {
    /// The Docker endpoint (`unix:///var/run/docker.sock`, `tcp://…`, `ssh://…`).
    pub host: String,
    /// A BuildKit address (`docker-unix://…`, `docker-tcp://…`, `docker-ssh://…`).
    pub address: String,
    /// TLS files for a `tcp://` Docker endpoint.
    pub tls: Option<BuildkitTls>,
    /// Why this endpoint: shown by `doctor`.
    pub source: String,
}

/// The Docker config directory: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn config_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        // `docker_config` may name the file itself.
        return Some(if p.is_file() {
            p.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            p.to_owned()
        });
    }
    fastbuild_oci::DockerConfig::default_path()
        .and_then(|file| file.parent().map(Path::to_path_buf))
}

/// Resolves the default endpoint from the environment and the Docker config in `explicit_config`
/// (or `$DOCKER_CONFIG` / `~/.docker`).
pub fn resolve(explicit_config: Option<&Path>) -> Result<DockerEndpoint> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(host) = env("DOCKER_HOST") {
        let tls = if env("DOCKER_TLS_VERIFY").is_some() || env("DOCKER_CERT_PATH").is_some() {
            let dir = env("DOCKER_CERT_PATH")
                .map(PathBuf::from)
                .or_else(|| config_dir(None))
                .unwrap_or_default();
            Some(tls_files(&dir))
        } else {
            None
        };
        return endpoint(&host, tls, "DOCKER_HOST".to_owned());
    }
    let dir = config_dir(explicit_config);
    let (context, why) = if let Some(c) = env("DOCKER_CONTEXT") {
        (
            Some(c.clone()),
            format!("Docker context `{c}` (DOCKER_CONTEXT)"),
        )
    } else if let Some(c) = dir.as_deref().and_then(current_context) {
        let file = dir.as_deref().unwrap_or(Path::new("")).join("config.json");
        (
            Some(c.clone()),
            format!(
                "Docker context `{c}` (currentContext in {})",
                file.display()
            ),
        )
    } else {
        (None, String::new())
    };
    match context {
        Some(name) if name != "default" => {
            let dir = dir.context("no Docker config directory to find the context store in")?;
            let (host, tls) = context_endpoint(&dir, &name)?;
            endpoint(&host, tls, why)
        }
        Some(_) => endpoint("unix:///var/run/docker.sock", None, why),
        None => endpoint(
            "unix:///var/run/docker.sock",
            None,
            "the default Docker socket (no DOCKER_HOST, DOCKER_CONTEXT or current context)"
                .to_owned(),
        ),
    }
}

fn tls_files(dir: &Path) -> BuildkitTls {
    let file = |n: &str| Some(dir.join(n)).filter(|p| p.is_file());
    BuildkitTls {
        ca: file("ca.pem"),
        cert: file("cert.pem"),
        key: file("key.pem"),
        server_name: None,
    }
}

fn current_context(dir: &Path) -> Option<String> {
    let text = fs_err::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("currentContext")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The Docker endpoint of context `name` in the store under `dir`: host and TLS files.
fn context_endpoint(dir: &Path, name: &str) -> Result<(String, Option<BuildkitTls>)> {
    let id = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let meta = dir.join("contexts/meta").join(&id).join("meta.json");
    let text = fs_err::read_to_string(&meta).with_context(|| {
        format!(
            "Docker context `{name}` is not in the context store ({} is missing); list them \
             with `docker context ls`, or pass `--buildkit`",
            meta.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", meta.display()))?;
    let docker = &v["Endpoints"]["docker"];
    let Some(host) = docker["Host"].as_str().filter(|h| !h.is_empty()) else {
        bail!(
            "Docker context `{name}` has no Docker endpoint host ({}); pass `--buildkit`",
            meta.display()
        );
    };
    let tls_dir = dir.join("contexts/tls").join(&id).join("docker");
    let mut tls = tls_dir.is_dir().then(|| tls_files(&tls_dir));
    if docker["SkipTLSVerify"].as_bool() == Some(true) {
        bail!(
            "Docker context `{name}` skips TLS verification (SkipTLSVerify); fastbuild verifies \
             TLS: give the daemon's CA to the context, or pass `--buildkit` with \
             `--buildkit-tls-ca`"
        );
    }
    if !host.starts_with("tcp://") {
        tls = None;
    }
    Ok((host.to_owned(), tls))
}

/// A Docker endpoint host (`unix://`, `tcp://`, `ssh://`) as a BuildKit address.
fn endpoint(host: &str, tls: Option<BuildkitTls>, source: String) -> Result<DockerEndpoint> {
    let address = if let Some(p) = host.strip_prefix("unix://") {
        format!("docker-unix://{p}")
    } else if let Some(rest) = host.strip_prefix("tcp://") {
        format!("docker-tcp://{}", rest.trim_end_matches('/'))
    } else if let Some(rest) = host.strip_prefix("ssh://") {
        format!("docker-ssh://{rest}")
    } else {
        bail!(
            "the Docker endpoint `{host}` ({source}) is not `unix://`, `tcp://` or `ssh://`; \
             pass `--buildkit`"
        );
    };
    Ok(DockerEndpoint {
        host: host.to_owned(),
        address,
        tls: if host.starts_with("tcp://") {
            tls
        } else {
            None
        },
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context store as `docker context create` writes it.
    fn store_context(dir: &Path, name: &str, host: &str, with_tls: bool) {
        let id = hex::encode(sha2::Sha256::digest(name.as_bytes()));
        let meta = dir.join("contexts/meta").join(&id);
        fs_err::create_dir_all(&meta).unwrap();
        fs_err::write(
            meta.join("meta.json"),
            format!(
                r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":false}}}}}}"#
            ),
        )
        .unwrap();
        if with_tls {
            let tls = dir.join("contexts/tls").join(&id).join("docker");
            fs_err::create_dir_all(&tls).unwrap();
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                fs_err::write(tls.join(f), "x").unwrap();
            }
        }
    }

    #[test]
    fn context_endpoints_become_buildkit_addresses() {
        let dir = tempfile::tempdir().unwrap();
        store_context(dir.path(), "remote", "tcp://10.0.0.5:2376", true);
        store_context(
            dir.path(),
            "colima",
            "unix:///home/me/.colima/docker.sock",
            false,
        );
        store_context(dir.path(), "box", "ssh://me@box:2222", false);
        let (host, tls) = context_endpoint(dir.path(), "remote").unwrap();
        let e = endpoint(&host, tls, "x".into()).unwrap();
        assert_eq!(e.address, "docker-tcp://10.0.0.5:2376");
        let tls = e.tls.unwrap();
        assert!(tls.ca.unwrap().ends_with("docker/ca.pem"));
        assert!(tls.key.unwrap().ends_with("docker/key.pem"));
        let (host, tls) = context_endpoint(dir.path(), "colima").unwrap();
        assert_eq!(
            endpoint(&host, tls, "x".into()).unwrap().address,
            "docker-unix:///home/me/.colima/docker.sock"
        );
        let (host, tls) = context_endpoint(dir.path(), "box").unwrap();
        assert_eq!(
            endpoint(&host, tls, "x".into()).unwrap().address,
            "docker-ssh://me@box:2222"
        );
        let e = context_endpoint(dir.path(), "nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`nope` is not in the context store"), "{e}");
    }
}
