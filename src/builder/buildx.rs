//! buildx builders as BuildKit addresses: `--builder NAME`, `BUILDX_BUILDER`, or buildx's
//! current builder, read from buildx's own instance store (`$DOCKER_CONFIG/buildx/instances/
//! NAME`, `buildx/current`) as `docker buildx create` / `docker buildx use` write it.
//!
//! | driver | address |
//! | --- | --- |
//! | `docker-container` | `docker-container://buildx_buildkit_<node>` (its container) |
//! | `remote` | the node's endpoint, with its `cacert`/`cert`/`key`/`servername` driver options |
//! | `docker` | the Docker endpoint (no instance file: the name is a Docker context) |
//! | `kubernetes` | `kube-deployment://<node>?namespace=N[&context=C]`: `kubectl exec deployment/<node>` (its pods' names only the API knows) |
//!
//! Stage: settings input. Reads files only.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::settings::BuildkitTls;

/// A builder resolved to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// BuildKit address.
    pub address: String,
    /// TLS files (remote driver).
    pub tls: Option<BuildkitTls>,
}

fn buildx_dir(config_dir: &Path) -> PathBuf {
    config_dir.join("buildx")
}

/// The builder `buildx use` made current for `docker_host` (or globally), if it has an
/// instance file (the `docker` driver's builders have none: they are the Docker endpoint).
pub fn current(config_dir: &Path, docker_host: &str) -> Option<String> {
    let text = fs_err::read_to_string(buildx_dir(config_dir).join("current")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let name = v["Name"].as_str().filter(|n| !n.is_empty())?;
    let applies = v["Global"].as_bool() == Some(true) || v["Key"].as_str() == Some(docker_host);
    (applies
        && buildx_dir(config_dir)
            .join("instances")
            .join(name)
            .is_file())
    .then(|| name.to_owned())
}

/// The address of builder `name`; `docker_host` is the Docker endpoint in use (a
/// `docker-container` node on another endpoint cannot be reached by `docker exec` here).
pub fn resolve(config_dir: &Path, name: &str, docker_host: &str) -> Result<Resolved> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("`{name}` is not a buildx builder name");
    }
    let file = buildx_dir(config_dir).join("instances").join(name);
    let text = fs_err::read_to_string(&file).with_context(|| {
        format!(
            "no buildx builder `{name}` ({} is missing); list them with `docker buildx ls`",
            file.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not buildx's JSON", file.display()))?;
    let driver = v["Driver"].as_str().unwrap_or_default();
    let Some(node) = v["Nodes"].as_array().and_then(|n| n.first()) else {
        bail!(
            "buildx builder `{name}` ({driver} driver) has no nodes; `docker buildx inspect --bootstrap {name}`"
        );
    };
    let node_name = node["Name"].as_str().unwrap_or_default();
    let endpoint = node["Endpoint"].as_str().unwrap_or_default();
    match driver {
        "docker-container" => {
            if node_name.is_empty() || node_name.starts_with('-') {
                bail!("buildx builder `{name}` has a node without a usable name");
            }
            let container = format!("buildx_buildkit_{node_name}");
            let address = if endpoint.is_empty() || endpoint == docker_host || endpoint == "default"
            {
                format!("docker-container://{container}")
            } else if !endpoint.contains("://") {
                // A Docker context name.
                format!("docker-container://{container}?context={endpoint}")
            } else {
                bail!(
                    "buildx builder `{name}` (docker-container driver) runs on `{endpoint}`, not on \
                     the Docker endpoint in use (`{docker_host}`); point DOCKER_HOST or \
                     DOCKER_CONTEXT there, or pass `--buildkit docker-container://{container}` \
                     with that Docker"
                );
            };
            Ok(Resolved { address, tls: None })
        }
        "remote" => {
            if endpoint.is_empty() {
                bail!("buildx builder `{name}` (remote driver) has no endpoint");
            }
            let opts = &node["DriverOpts"];
            let path = |k: &str| opts[k].as_str().map(PathBuf::from);
            let tls =
                (opts["cacert"].is_string() || opts["cert"].is_string()).then(|| BuildkitTls {
                    ca: path("cacert"),
                    cert: path("cert"),
                    key: path("key"),
                    server_name: opts["servername"].as_str().map(str::to_owned),
                });
            Ok(Resolved {
                address: endpoint.to_owned(),
                tls,
            })
        }
        "kubernetes" => {
            // buildx runs a deployment per node, named after it, in the `namespace` driver
            // option (buildx's default: `default`); the endpoint's context, when not default.
            let opts = &node["DriverOpts"];
            let namespace = opts["namespace"].as_str().unwrap_or("default");
            let mut address = format!("kube-deployment://{node_name}?namespace={namespace}");
            if let Some(ctx) = opts["context"].as_str().filter(|c| !c.is_empty()) {
                address.push_str("&context=");
                address.push_str(ctx);
            }
            Ok(Resolved { address, tls: None })
        }
        other => bail!(
            "buildx builder `{name}` uses the `{other}` driver, which fastbuild cannot reach; pass \
             `--buildkit` with its BuildKit address"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(dir: &Path, name: &str, json: &str) {
        let d = dir.join("buildx/instances");
        fs_err::create_dir_all(&d).unwrap();
        fs_err::write(d.join(name), json).unwrap();
    }

    /// Instance files as buildx 0.13 writes them (`docker buildx create`).
    #[test]
    fn drivers_map_to_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let sock = "unix:///var/run/docker.sock";
        instance(
            dir.path(),
            "cont",
            r#"{"Name":"cont","Driver":"docker-container","Nodes":[{"Name":"cont0","Endpoint":"unix:///var/run/docker.sock","Platforms":null,"DriverOpts":null,"Flags":null,"Files":null}],"Dynamic":false}"#,
        );
        instance(
            dir.path(),
            "ctx",
            r#"{"Name":"ctx","Driver":"docker-container","Nodes":[{"Name":"ctx0","Endpoint":"colima","DriverOpts":null}]}"#,
        );
        instance(
            dir.path(),
            "remote",
            r#"{"Name":"remote","Driver":"remote","Nodes":[{"Name":"remote0","Endpoint":"tcp://10.0.0.9:1234","DriverOpts":{"cacert":"/c/ca.pem","cert":"/c/cert.pem","key":"/c/key.pem","servername":"bk"}}]}"#,
        );
        instance(
            dir.path(),
            "kube",
            r#"{"Name":"kube","Driver":"kubernetes","Nodes":[{"Name":"kube0","Endpoint":"kubernetes:///kube","DriverOpts":{"namespace":"buildkit"}}]}"#,
        );
        assert_eq!(
            resolve(dir.path(), "cont", sock).unwrap().address,
            "docker-container://buildx_buildkit_cont0"
        );
        assert_eq!(
            resolve(dir.path(), "ctx", sock).unwrap().address,
            "docker-container://buildx_buildkit_ctx0?context=colima"
        );
        let r = resolve(dir.path(), "remote", sock).unwrap();
        assert_eq!(r.address, "tcp://10.0.0.9:1234");
        let tls = r.tls.unwrap();
        assert_eq!(tls.ca.unwrap(), PathBuf::from("/c/ca.pem"));
        assert_eq!(tls.server_name.as_deref(), Some("bk"));
        assert_eq!(
            resolve(dir.path(), "kube", sock).unwrap().address,
            "kube-deployment://kube0?namespace=buildkit"
        );
        let e = resolve(dir.path(), "cont", "unix:///other.sock")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not on the Docker endpoint in use"), "{e}");
        let e = resolve(dir.path(), "missing", sock)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no buildx builder `missing`"), "{e}");
        assert!(resolve(dir.path(), "../x", sock).is_err());
    }
}
