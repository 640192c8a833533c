//! The registry a local cluster advertises (KEP-1755: the `local-registry-hosting` ConfigMap in
//! `kube-public`, written by kind, k3d, ctlptl, minikube; Tilt reads it too), used when no
//! registry is configured: `host` is where this machine pushes, `hostFromContainerRuntime`
//! (else `host`) where the cluster's nodes pull from — the values file's registry — and
//! `hostFromClusterNetwork` where a builder inside the cluster pushes.
//!
//! Read once per process through `kubectl` (`$KUBECTL`, else `kubectl` on `PATH`) and its
//! current context, with a 5 s limit; no kubectl, no cluster or no ConfigMap means none.

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// What the cluster advertises.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRegistryHosting {
    /// Where the host pushes (`localhost:5001`).
    pub host: String,
    /// Where the container runtime pulls from (`kind-registry:5000`).
    #[serde(default)]
    pub host_from_container_runtime: Option<String>,
    /// Where pods reach it (a builder inside the cluster pushes here).
    #[serde(default)]
    pub host_from_cluster_network: Option<String>,
    /// The cluster's help link.
    #[serde(default)]
    pub help: Option<String>,
}

impl LocalRegistryHosting {
    /// Where the cluster pulls from.
    pub fn pull_host(&self) -> &str {
        self.host_from_container_runtime
            .as_deref()
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.host)
    }
}

/// The kubectl argv (after the program) that reads the ConfigMap.
pub const KUBECTL_ARGS: [&str; 7] = [
    "get",
    "configmap",
    "local-registry-hosting",
    "--namespace",
    "kube-public",
    "--output",
    "jsonpath={.data.localRegistryHosting\\.v1}",
];

/// Parses the ConfigMap's `localRegistryHosting.v1` YAML.
pub fn parse(text: &str) -> Option<LocalRegistryHosting> {
    let parsed: LocalRegistryHosting = serde_saphyr::from_str(text).ok()?;
    (!parsed.host.trim().is_empty()).then_some(parsed)
}

/// The cluster's advertised registry, if any (memoized).
pub fn discover() -> Option<&'static LocalRegistryHosting> {
    static FOUND: OnceLock<Option<LocalRegistryHosting>> = OnceLock::new();
    FOUND.get_or_init(read).as_ref()
}

fn read() -> Option<LocalRegistryHosting> {
    let kubectl = std::env::var("KUBECTL")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "kubectl".to_owned());
    let mut child = std::process::Command::new(&kubectl)
        .args(KUBECTL_ARGS)
        .arg("--request-timeout=5s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::debug!("kubectl did not answer within 5 s; no cluster registry");
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut text = String::new();
    let stdout = child.stdout.take()?;
    std::io::Read::read_to_string(&mut std::io::Read::take(stdout, 64 * 1024), &mut text).ok()?;
    let found = parse(&text);
    tracing::debug!(?found, "local-registry-hosting");
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kinds_configmap() {
        let text = "host: \"localhost:5001\"\nhostFromContainerRuntime: \"kind-registry:5000\"\n\
                    hostFromClusterNetwork: \"kind-registry:5000\"\n\
                    help: \"https://kind.sigs.k8s.io/docs/user/local-registry/\"\n";
        let r = parse(text).unwrap();
        assert_eq!(r.host, "localhost:5001");
        assert_eq!(r.pull_host(), "kind-registry:5000");
        let only_host = parse("host: localhost:5000\n").unwrap();
        assert_eq!(only_host.pull_host(), "localhost:5000");
        assert_eq!(parse(""), None);
        assert_eq!(parse("help: x\nhost: ''\n"), None);
    }
}
