//! Shared context of the integration tests: the test bed started by `scripts/testbed start`
//! (`eval "$(scripts/testbed start)"` exports the variables read here).
//!
//! A test that needs the bed starts with `let bed = require_bed!();` (or
//! `require_bed!(Ok(()))` in a test returning `Result`): with `CI=true` a missing bed fails
//! the test, otherwise the test prints a skip note and returns.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

/// The running test bed, as described by its environment variables.
// Shared by every topic module; not each of them uses every field.
#[allow(dead_code)]
#[derive(Clone)]
pub struct TestBed {
    /// `host:port` of the plain-HTTP registry (`FASTBUILD_TEST_REGISTRY`).
    pub registry: String,
    /// `host:port` of the TLS + htpasswd registry (`FASTBUILD_TEST_REGISTRY_TLS`).
    pub registry_tls: String,
    /// PEM CA certificate of the TLS registry (`FASTBUILD_TEST_REGISTRY_TLS_CA`).
    pub registry_tls_ca: PathBuf,
    /// User of the TLS registry (`FASTBUILD_TEST_REGISTRY_TLS_USER`).
    pub registry_tls_user: String,
    /// Password of the TLS registry (`FASTBUILD_TEST_REGISTRY_TLS_PASSWORD`), test-only.
    pub registry_tls_password: String,
    /// `host:port` of the plain-HTTP registry with token auth (`FASTBUILD_TEST_REGISTRY_TOKEN`).
    pub registry_token: String,
    /// Its account (`FASTBUILD_TEST_REGISTRY_TOKEN_USER`, `…_PASSWORD`), test-only.
    pub registry_token_user: String,
    pub registry_token_password: String,
    /// The token server's request log, one JSON object per line (`FASTBUILD_TEST_TOKEN_LOG`).
    pub token_log: PathBuf,
    /// `docker-unix:///…/docker.sock`: the `BuildKit` embedded in dockerd (`BUILDKIT_HOST`).
    pub buildkit_host: String,
    /// `unix:///…/docker.sock` (`DOCKER_HOST`).
    pub docker_host: String,
    /// `host:port/base/busybox:latest` in the plain registry (`FASTBUILD_TEST_BASE_IMAGE`).
    pub base_image: String,
    /// `host:port/base/busybox-multi:latest`: an index of linux/amd64 and linux/386
    /// (`FASTBUILD_TEST_BASE_IMAGE_MULTI`).
    pub base_image_multi: String,
    /// Path of the helm v4 binary (`HELM`).
    pub helm: PathBuf,
    /// `unix:///…/buildkitd.sock`: the upstream standalone buildkitd (`FASTBUILD_TEST_BUILDKITD`).
    pub buildkitd: String,
    /// `tcp://127.0.0.1:PORT` of the same buildkitd, mutual TLS (`FASTBUILD_TEST_BUILDKITD_TCP`).
    pub buildkitd_tcp: String,
    /// CA, client certificate and key for [`Self::buildkitd_tcp`]
    /// (`FASTBUILD_TEST_BUILDKITD_TLS_{CA,CERT,KEY}`).
    pub buildkitd_tls: [PathBuf; 3],
    /// Upstream `buildctl` of the same version as buildkitd (`BUILDCTL`).
    pub buildctl: PathBuf,
    /// Upstream `crane` (`CRANE`).
    pub crane: PathBuf,
    /// The docker CLI of the same version as dockerd (`DOCKER_CLI`).
    pub docker_cli: PathBuf,
}

/// The two BuildKit daemons of the bed; the BuildKit tests run against each.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// BuildKit v0.13 embedded in dockerd 26.1, reached by the `/grpc` upgrade.
    Dockerd,
    /// Upstream standalone buildkitd v0.32 (oci worker), on its unix socket.
    Buildkitd,
}

/// The variables `scripts/testbed start` exports that every test may rely on.
pub const VARS: [&str; 22] = [
    "FASTBUILD_TEST_REGISTRY",
    "FASTBUILD_TEST_REGISTRY_TLS",
    "FASTBUILD_TEST_REGISTRY_TLS_CA",
    "FASTBUILD_TEST_REGISTRY_TLS_USER",
    "FASTBUILD_TEST_REGISTRY_TLS_PASSWORD",
    "FASTBUILD_TEST_REGISTRY_TOKEN",
    "FASTBUILD_TEST_REGISTRY_TOKEN_USER",
    "FASTBUILD_TEST_REGISTRY_TOKEN_PASSWORD",
    "FASTBUILD_TEST_TOKEN_LOG",
    "BUILDKIT_HOST",
    "DOCKER_HOST",
    "FASTBUILD_TEST_BASE_IMAGE",
    "FASTBUILD_TEST_BASE_IMAGE_MULTI",
    "HELM",
    "FASTBUILD_TEST_BUILDKITD",
    "FASTBUILD_TEST_BUILDKITD_TCP",
    "FASTBUILD_TEST_BUILDKITD_TLS_CA",
    "FASTBUILD_TEST_BUILDKITD_TLS_CERT",
    "FASTBUILD_TEST_BUILDKITD_TLS_KEY",
    "BUILDCTL",
    "CRANE",
    "DOCKER_CLI",
];

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[allow(dead_code)]
impl TestBed {
    /// The bed described by the environment, or `None` when any of [`VARS`] is unset.
    pub fn get() -> Option<TestBed> {
        Some(TestBed {
            registry: var("FASTBUILD_TEST_REGISTRY")?,
            registry_tls: var("FASTBUILD_TEST_REGISTRY_TLS")?,
            registry_tls_ca: var("FASTBUILD_TEST_REGISTRY_TLS_CA")?.into(),
            registry_tls_user: var("FASTBUILD_TEST_REGISTRY_TLS_USER")?,
            registry_tls_password: var("FASTBUILD_TEST_REGISTRY_TLS_PASSWORD")?,
            registry_token: var("FASTBUILD_TEST_REGISTRY_TOKEN")?,
            registry_token_user: var("FASTBUILD_TEST_REGISTRY_TOKEN_USER")?,
            registry_token_password: var("FASTBUILD_TEST_REGISTRY_TOKEN_PASSWORD")?,
            token_log: var("FASTBUILD_TEST_TOKEN_LOG")?.into(),
            buildkit_host: var("BUILDKIT_HOST")?,
            docker_host: var("DOCKER_HOST")?,
            base_image: var("FASTBUILD_TEST_BASE_IMAGE")?,
            base_image_multi: var("FASTBUILD_TEST_BASE_IMAGE_MULTI")?,
            helm: var("HELM")?.into(),
            buildkitd: var("FASTBUILD_TEST_BUILDKITD")?,
            buildkitd_tcp: var("FASTBUILD_TEST_BUILDKITD_TCP")?,
            buildkitd_tls: [
                var("FASTBUILD_TEST_BUILDKITD_TLS_CA")?.into(),
                var("FASTBUILD_TEST_BUILDKITD_TLS_CERT")?.into(),
                var("FASTBUILD_TEST_BUILDKITD_TLS_KEY")?.into(),
            ],
            buildctl: var("BUILDCTL")?.into(),
            crane: var("CRANE")?.into(),
            docker_cli: var("DOCKER_CLI")?.into(),
        })
    }

    /// The variables of [`VARS`] that are unset or empty.
    pub fn missing_vars() -> Vec<&'static str> {
        VARS.into_iter().filter(|v| var(v).is_none()).collect()
    }

    /// The bed, or `None` after printing a skip note; panics when the bed is missing under
    /// `CI=true`. Use through [`require_bed!`].
    // The skip note is for the developer running the tests, on purpose on stderr.
    #[allow(clippy::print_stderr)]
    pub fn require() -> Option<TestBed> {
        if let Some(bed) = TestBed::get() {
            return Some(bed);
        }
        // libtest (and nextest) run each test on a thread named after it.
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("test");
        let missing = TestBed::missing_vars().join(", ");
        assert!(
            var("CI").as_deref() != Some("true"),
            "{test}: the test bed is not running (unset: {missing}); CI=true requires it: \
             run `eval \"$(scripts/testbed start)\"` before the tests"
        );
        eprintln!("{test}: skipped: test bed not running (scripts/testbed start)");
        None
    }

    /// The `BUILDKIT_HOST`-style address of `daemon`.
    pub fn buildkit(&self, daemon: Daemon) -> &str {
        match daemon {
            Daemon::Dockerd => &self.buildkit_host,
            Daemon::Buildkitd => &self.buildkitd,
        }
    }

    /// The Docker API socket path, from `DOCKER_HOST=unix://PATH`.
    pub fn docker_socket(&self) -> PathBuf {
        let path = self
            .docker_host
            .strip_prefix("unix://")
            .unwrap_or_else(|| panic!("DOCKER_HOST `{}` is not unix://PATH", self.docker_host));
        PathBuf::from(path)
    }

    /// PEM bytes of the TLS registry's CA.
    pub fn registry_tls_ca_pem(&self) -> Vec<u8> {
        fs_err::read(&self.registry_tls_ca).expect("read the test bed CA")
    }

    /// A `helm` command with its config/cache/data kept in `home` (hermetic: no repositories
    /// or plugins of the developer leak in).
    pub fn helm(&self, home: &Path) -> Command {
        let mut cmd = Command::new(&self.helm);
        cmd.env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }
}

impl fmt::Debug for TestBed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestBed")
            .field("registry", &self.registry)
            .field("registry_tls", &self.registry_tls)
            .field("registry_tls_ca", &self.registry_tls_ca)
            .field("registry_tls_user", &self.registry_tls_user)
            .field("registry_tls_password", &"<redacted>")
            .field("registry_token", &self.registry_token)
            .field("registry_token_user", &self.registry_token_user)
            .field("registry_token_password", &"<redacted>")
            .field("token_log", &self.token_log)
            .field("buildkit_host", &self.buildkit_host)
            .field("docker_host", &self.docker_host)
            .field("base_image", &self.base_image)
            .field("base_image_multi", &self.base_image_multi)
            .field("helm", &self.helm)
            .field("buildkitd", &self.buildkitd)
            .field("buildkitd_tcp", &self.buildkitd_tcp)
            .field("buildkitd_tls", &self.buildkitd_tls)
            .field("buildctl", &self.buildctl)
            .field("crane", &self.crane)
            .field("docker_cli", &self.docker_cli)
            .finish()
    }
}

/// Measurements and results for the developer running the tests (`--nocapture`, or shown by
/// the runner with a failure), on purpose on stderr.
#[allow(clippy::print_stderr, dead_code)]
pub fn note(message: &str) {
    eprintln!("{message}");
}

/// The repository root (where `testdata/` lives).
#[allow(dead_code)]
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `let bed = require_bed!();` — the running [`TestBed`], or return from the test after a skip
/// note (fails instead under `CI=true`). `require_bed!(value)` returns `value` when skipping,
/// for tests returning `Result`.
macro_rules! require_bed {
    () => {
        $crate::common::require_bed!(())
    };
    ($skip:expr) => {
        match $crate::common::TestBed::require() {
            Some(bed) => bed,
            None => return $skip,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_bed;

/// `on_both_daemons!(NAME, …)`: each `async fn NAME(bed: TestBed, daemon: Daemon)` of the
/// calling module runs against both BuildKit daemons of the bed, as the tests `NAME::dockerd`
/// and `NAME::buildkitd` (one parametrised suite, not a copy). Each needs the bed (see
/// [`require_bed!`]).
macro_rules! on_both_daemons {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn dockerd() {
                let bed = $crate::common::require_bed!();
                super::$name(bed, $crate::common::Daemon::Dockerd).await;
            }

            #[tokio::test]
            async fn buildkitd() {
                let bed = $crate::common::require_bed!();
                super::$name(bed, $crate::common::Daemon::Buildkitd).await;
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use on_both_daemons;

/// A standalone buildkitd of a test's own (the bed's binary, a fresh state directory, its own
/// unix socket): for what must not disturb the shared daemons — a cold cache, a daemon to kill.
/// Killed, and its state removed, on drop.
#[allow(dead_code)]
pub struct OwnBuildkitd {
    /// `unix://…` address.
    pub address: String,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl OwnBuildkitd {
    /// Starts one (oci worker, runc, overlayfs, host network, the bed's plain registries as
    /// HTTP) and waits until it answers.
    pub fn start(bed: &TestBed) -> OwnBuildkitd {
        let buildkitd = bed.buildctl.with_file_name("buildkitd");
        // Under the bed's state directory: on the same file system as its daemons (overlayfs
        // needs a real one, not the tmpfs some machines mount on /tmp).
        let base = std::env::var_os("FASTBUILD_TESTBED_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from);
        let dir = tempfile::Builder::new()
            .prefix("own-buildkitd-")
            .tempdir_in(base)
            .expect("a state directory for buildkitd");
        let socket = dir.path().join("buildkitd.sock");
        let config = dir.path().join("buildkitd.toml");
        let runc = which("runc").expect("runc on PATH");
        let mut toml = format!(
            "root = \"{}\"\n[grpc]\n  address = [\"unix://{}\"]\n\
             [worker.oci]\n  enabled = true\n  snapshotter = \"overlayfs\"\n  binary = \"{}\"\n  \
             networkMode = \"host\"\n[worker.containerd]\n  enabled = false\n",
            dir.path().join("root").display(),
            socket.display(),
            runc.display(),
        );
        for reg in [&bed.registry, &bed.registry_token] {
            use std::fmt::Write as _;
            let _ = write!(toml, "[registry.\"{reg}\"]\n  http = true\n");
        }
        fs_err::write(&config, toml).unwrap();
        let log = fs_err::File::create(dir.path().join("buildkitd.log"))
            .unwrap()
            .into_parts()
            .0;
        let child = Command::new(&buildkitd)
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", buildkitd.display()));
        let address = format!("unix://{}", socket.display());
        let mut own = OwnBuildkitd {
            address,
            child,
            dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let ok = Command::new(&bed.buildctl)
                .args(["--addr", &own.address, "debug", "workers"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return own;
            }
            if let Ok(Some(status)) = own.child.try_wait() {
                panic!(
                    "buildkitd exited ({status}): {}",
                    fs_err::read_to_string(own.dir.path().join("buildkitd.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "buildkitd did not answer within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Kills the daemon now (SIGKILL), keeping its state directory until drop.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnBuildkitd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its overlay mounts go with the process; anything left is removed with the dir.
    }
}

/// The first `name` on `PATH`.
#[allow(dead_code)]
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `os/architecture` of each image manifest of an OCI index, in order (attestation manifests,
/// whose platform is `unknown/unknown`, left out).
#[allow(dead_code)]
pub fn index_platforms(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .expect("an index has manifests")
        .iter()
        .filter(|m| m["platform"]["architecture"] != "unknown")
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or_default(),
                m["platform"]["architecture"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

// --- The fastbuild binary and the example project, for the CLI-level tests of every module.

/// Copies a directory tree, following symlinks (the example's chart link points outside it).
#[allow(dead_code)]
pub fn copy_tree(from: &Path, to: &Path) {
    fs_err::create_dir_all(to).unwrap();
    for entry in fs_err::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let src = entry.path();
        // Outputs of earlier runs in the source tree (git-ignored) are not part of the example.
        if entry.file_name() == "tilt-values" || entry.file_name() == ".fastbuild" {
            continue;
        }
        let dst = to.join(entry.file_name());
        if fs_err::metadata(&src).unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs_err::copy(&src, &dst).unwrap();
        }
    }
}

/// A fresh copy of `testdata/example` in a temp dir.
#[allow(dead_code)]
pub fn example_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("testdata/example"), dir.path());
    dir
}

/// The fastbuild binary, run in `dir`, with a clean environment for its knobs.
#[allow(dead_code)]
pub fn fastbuild(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastbuild"));
    cmd.current_dir(dir)
        // The native layer cache lives under cargo's scratch dir, not the developer's ~/.cache.
        .env(
            "FASTBUILD_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/layer-cache"),
        )
        .env("NO_COLOR", "1")
        .env_remove("EXPECTED_REF")
        .env_remove("FASTBUILD_FILE")
        .env_remove("FASTBUILD_REGISTRY")
        .env_remove("FASTBUILD_PROGRESS")
        .env_remove("BUILDKIT_PROGRESS")
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Runs and returns the output, with stdout/stderr in the panic message on `expect_ok`.
#[allow(dead_code)]
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run fastbuild")
}

#[allow(dead_code)]
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "fastbuild failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sha256 of the manifest bytes the registry serves for `repo` at `reference`.
pub async fn served_manifest_digest(registry: &str, repo: &str, reference: &str) -> String {
    served_manifest(registry, repo, reference).await.0
}

/// GETs a manifest or index of the plain-HTTP `registry`: the sha256 of the bytes served, and
/// them parsed.
#[allow(dead_code)]
pub async fn served_manifest(
    registry: &str,
    repo: &str,
    reference: &str,
) -> (String, serde_json::Value) {
    let url = format!("http://{registry}/v2/{repo}/manifests/{reference}");
    // The bed's registry (distribution 2.8) answered one read of a tag 500 "invalid checksum
    // digest format" right after the tag's PUT returned 201, while other tests pushed into the
    // same repository: most likely a link file read while another request rewrote it (the
    // filesystem driver writes them in place). A 5xx is asked again, twice at most; anything
    // else is the answer, and the digest is checked as before.
    let mut attempt = 0;
    let resp = loop {
        let resp = reqwest::Client::new()
            .get(&url)
            .header(
                "Accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json, \
                 application/vnd.docker.distribution.manifest.list.v2+json",
            )
            .send()
            .await
            .unwrap();
        attempt += 1;
        if !resp.status().is_server_error() || attempt == 3 {
            break resp;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let body = resp.bytes().await.unwrap();
    (
        sha256(&body),
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}")),
    )
}

/// The bed's token server's log entries (one JSON object per line) whose scopes name `repo`.
#[allow(dead_code)]
pub fn token_requests(bed: &TestBed, repo: &str) -> Vec<serde_json::Value> {
    let log = fs_err::read_to_string(&bed.token_log).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["scopes"].as_array().is_some_and(|scopes| {
                scopes
                    .iter()
                    .any(|s| s.as_str().is_some_and(|s| s.contains(&format!(":{repo}:"))))
            })
        })
        .collect()
}

/// The string at `key` (`image.digest`) of a YAML values file, read with the YAML parser.
#[allow(dead_code)]
pub fn values_key(path: &Path, key: &str) -> String {
    let text = fs_err::read_to_string(path).unwrap();
    let v: serde_json::Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}\n{text}", path.display()));
    key.split('.')
        .fold(&v, |v, k| &v[k])
        .as_str()
        .unwrap_or_else(|| panic!("no `{key}` in {}:\n{text}", path.display()))
        .to_owned()
}

/// `image.digest` of a values file written with the default keys.
#[allow(dead_code)]
pub fn values_digest(path: &Path) -> String {
    values_key(path, "image.digest")
}

/// `image.graph` of a values file written with the default keys.
#[allow(dead_code)]
pub fn values_graph(path: &Path) -> String {
    values_key(path, "image.graph")
}

/// The bed's state directory (`FASTBUILD_TESTBED_DIR`, else `.testbed` in the repository).
#[allow(dead_code)]
pub fn testbed_dir() -> PathBuf {
    std::env::var_os("FASTBUILD_TESTBED_DIR")
        .map_or_else(|| repo_root().join(".testbed"), PathBuf::from)
}

/// Where the bed's registry `name` (`registry`, `registry-tls`) stores repository `repo`
/// (distribution's filesystem storage, under the `rootdirectory` of its `config.yml`, read
/// with the YAML parser).
#[allow(dead_code)]
pub fn registry_repo_dir(name: &str, repo: &str) -> PathBuf {
    let config = testbed_dir().join(name).join("config.yml");
    let text = fs_err::read_to_string(&config).unwrap();
    let v: serde_json::Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", config.display()));
    let root = v["storage"]["filesystem"]["rootdirectory"]
        .as_str()
        .expect("rootdirectory in the bed registry's config.yml");
    Path::new(root)
        .join("docker/registry/v2/repositories")
        .join(repo)
}

/// The one `image:` line `helm template` renders for the bed's app chart with `args`
/// (`-f VALUES`, `--set K=V`).
#[allow(dead_code)]
pub fn helm_template_image(bed: &TestBed, args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let chart = repo_root().join("testdata/charts/app");
    let out = bed
        .helm(home.path())
        .args(["template", "it"])
        .arg(chart)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template {args:?}: {out:?}");
    let manifest = String::from_utf8(out.stdout).unwrap();
    let images: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert_eq!(images.len(), 1, "one image line expected in:\n{manifest}");
    images[0].to_owned()
}

/// `sha256:<hex>` of `bytes`.
#[allow(dead_code)]
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Runs `skopeo` with `args` (the Debian package `skopeo`); its stdout, after a success.
#[allow(dead_code)]
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (Debian package `skopeo`)");
    assert!(
        out.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Exactly one `error: …` block on stderr (its causes follow as `Caused by:` lines).
#[allow(dead_code)]
pub fn assert_one_error(out: &Output) {
    let err = stderr(out);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
}

/// An executable `helm` stand-in at `path`: answers `version` as Helm 3.14.4 (so fastbuild
/// picks the design note's `--atomic`) and runs `body` for any other command.
#[allow(dead_code)]
pub fn fake_helm(path: &Path, body: &str) {
    fs_err::write(
        path,
        format!("#!/bin/sh\nif [ \"$1\" = version ]; then echo v3.14.4; exit 0; fi\n{body}"),
    )
    .unwrap();
    assert!(
        Command::new("chmod")
            .arg("+x")
            .arg(path)
            .status()
            .unwrap()
            .success()
    );
}

#[allow(dead_code)]
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[allow(dead_code)]
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
