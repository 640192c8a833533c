//! Errors of the BuildKit client, each saying what failed, on what, and what to do.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where to look when the address is wrong.
pub(crate) const HOW_TO_SET_ADDR: &str = "set the BuildKit address with `--buildkit ADDR` or `BUILDKIT_HOST` (e.g. `docker-unix:///var/run/docker.sock`, `unix:///run/buildkit/buildkitd.sock`, `tcp://host:1234`)";

/// Everything that can go wrong talking to BuildKit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address string is not one this client understands.
    #[error("unsupported BuildKit address `{address}`: {reason}; {HOW_TO_SET_ADDR}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The daemon could not be reached at the address.
    #[error("cannot reach BuildKit at `{address}`: is the daemon running? {HOW_TO_SET_ADDR}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// Why the connection failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The connection broke while a build was running (the daemon was reachable when it
    /// started).
    #[error(
        "lost the connection to BuildKit at `{address}` during the build; run it again, and if it \
         repeats, look at the daemon's log and run with `-vv`"
    )]
    ConnectionLost {
        /// The daemon address.
        address: String,
        /// Why the connection broke.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// TLS settings could not be loaded.
    #[error("invalid TLS settings for `{address}`: {what}")]
    Tls {
        /// The address the settings are for.
        address: String,
        /// Which file or setting is wrong.
        what: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A Control RPC failed.
    #[error("BuildKit call `{method}` at `{address}` failed")]
    Rpc {
        /// The method, e.g. `ListWorkers`.
        method: &'static str,
        /// The daemon address.
        address: String,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },

    /// The build options are inconsistent or point at missing files.
    #[error("invalid build options: {0}")]
    InvalidOptions(String),

    /// A local file could not be read.
    #[error("cannot read `{}`", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The session tunnel could not be opened or broke.
    #[error("BuildKit session failed: {0}")]
    Session(String),
    /// SSH forwarding could not be set up (`--ssh`).
    #[error("{0}")]
    Ssh(String),

    /// The Dockerfile does not parse.
    #[error("Dockerfile syntax error at {file}:{line}: {message}")]
    DockerfileSyntax {
        /// The Dockerfile path as given in the options.
        file: String,
        /// 1-based line, 0 when unknown.
        line: u32,
        /// The parser's message.
        message: String,
    },

    /// A `RUN` step exited with a non-zero code.
    #[error("build step `{step}` failed with exit code {exit_code}{}", format_log_tail(.log_tail))]
    RunFailed {
        /// The step name as BuildKit shows it, e.g. `[build 3/5] RUN make`.
        step: String,
        /// The exit code of the process.
        exit_code: i32,
        /// The last lines the step printed.
        log_tail: Vec<String>,
    },

    /// A base image (or other source image) does not exist or cannot be resolved.
    #[error(
        "base image `{image}` not found: {message}; check the `FROM` line and that the image exists in the registry"
    )]
    MissingBaseImage {
        /// The image reference.
        image: String,
        /// BuildKit's message.
        message: String,
    },

    /// Pushing the image failed.
    #[error("failed to push `{reference}`: {message}{}", if *.plain_http_hint { "; the registry speaks plain HTTP: set `registry_insecure` (`--insecure-registry`) for it" } else { "" })]
    PushFailed {
        /// The image reference being pushed (or the registry).
        reference: String,
        /// BuildKit's message.
        message: String,
        /// Whether the failure looks like an HTTPS request answered by an HTTP registry.
        plain_http_hint: bool,
    },

    /// The registry refused the credentials (or got none).
    #[error(
        "registry `{registry}` refused authentication: {message}; log in with `docker login {registry}` or check the credentials in the Docker config"
    )]
    AuthRefused {
        /// The registry host.
        registry: String,
        /// BuildKit's message.
        message: String,
    },

    /// The daemon does not support what was asked.
    #[error(
        "BuildKit at `{address}` does not support this: {message}; use a BuildKit with the containerd image store (dockerd with `containerd-snapshotter`) or a standalone buildkitd"
    )]
    Unsupported {
        /// The daemon address.
        address: String,
        /// BuildKit's message.
        message: String,
    },

    /// Any other build failure.
    #[error("build failed: {message}")]
    BuildFailed {
        /// BuildKit's message.
        message: String,
        /// The failing step, if one was reported.
        step: Option<String>,
        /// The last log lines of the failing step.
        log_tail: Vec<String>,
    },

    /// The build finished but the exporter did not report a digest.
    #[error(
        "BuildKit did not report `containerimage.digest` for the image (got keys: {keys}); the daemon's exporter is not the image exporter"
    )]
    MissingDigest {
        /// The keys that were reported.
        keys: String,
    },

    /// The exporter reported something that is not a digest where one belongs.
    #[error(
        "BuildKit reported `{key}` = `{value}`, which is not a sha256 digest; the daemon at fault is not one fastbuild can trust"
    )]
    BadDigest {
        /// The exporter response key (`containerimage.digest`, `containerimage.config.digest`).
        key: String,
        /// The value, escaped and shortened.
        value: String,
    },

    /// The image exported with the `oci` exporter could not be written as an OCI layout.
    #[error("cannot write the OCI image layout `{}` that BuildKit exported: {reason}", dir.display())]
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
        /// The I/O error behind it, if any.
        #[source]
        source: Option<std::io::Error>,
    },

    /// The build was cancelled by the caller.
    #[error("build cancelled")]
    Cancelled,
}

fn format_log_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last output:\n  {}", lines.join("\n  "))
    }
}
