//! Shared context of the integration tests: the test bed started by `scripts/testbed start`
//! (`eval "$(scripts/testbed start)"` exports the variables read here).
//!
//! A test that needs the bed starts with `let bed = require_bed!();` (or
//! `require_bed!(Ok(()))` in a test returning `Result`): with `CI=true` a missing bed fails
//! the test, otherwise the test prints a skip note and returns.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    /// `docker-unix:///…/docker.sock`: the `BuildKit` embedded in dockerd (`BUILDKIT_HOST`).
    pub buildkit_host: String,
    /// `unix:///…/docker.sock` (`DOCKER_HOST`).
    pub docker_host: String,
    /// `host:port/base/busybox:latest` in the plain registry (`FASTBUILD_TEST_BASE_IMAGE`).
    pub base_image: String,
    /// Path of the helm v4 binary (`HELM`).
    pub helm: PathBuf,
}

/// The variables `scripts/testbed start` exports that every test may rely on.
pub const VARS: [&str; 9] = [
    "FASTBUILD_TEST_REGISTRY",
    "FASTBUILD_TEST_REGISTRY_TLS",
    "FASTBUILD_TEST_REGISTRY_TLS_CA",
    "FASTBUILD_TEST_REGISTRY_TLS_USER",
    "FASTBUILD_TEST_REGISTRY_TLS_PASSWORD",
    "BUILDKIT_HOST",
    "DOCKER_HOST",
    "FASTBUILD_TEST_BASE_IMAGE",
    "HELM",
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
            buildkit_host: var("BUILDKIT_HOST")?,
            docker_host: var("DOCKER_HOST")?,
            base_image: var("FASTBUILD_TEST_BASE_IMAGE")?,
            helm: var("HELM")?.into(),
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
            .field("buildkit_host", &self.buildkit_host)
            .field("docker_host", &self.docker_host)
            .field("base_image", &self.base_image)
            .field("helm", &self.helm)
            .finish()
    }
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
