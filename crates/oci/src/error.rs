//! The crate's error type: each variant says what failed and on what; causes are `#[source]`s.

use std::path::PathBuf;

/// An error and its sources on one line, `: `-separated (what a cause like a TLS failure says
/// is often only in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Errors from building, assembling and publishing images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not a valid `sha256:` digest.
    #[error("invalid digest `{value}`: {reason}")]
    InvalidDigest {
        /// The offending string.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A string is not a valid image reference.
    #[error("invalid image reference `{value}`: {reason}")]
    InvalidReference {
        /// The offending string.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A string is not a valid platform.
    #[error("invalid platform `{value}`: expected `os/arch[/variant]`, e.g. `linux/amd64`")]
    InvalidPlatform {
        /// The offending string.
        value: String,
    },
    /// A layer source path does not exist.
    #[error(
        "layer source `{path}` does not exist; check the path (relative paths are resolved from the working directory)"
    )]
    SourceMissing {
        /// The missing path.
        path: PathBuf,
    },
    /// A layer destination is not a usable path inside the image.
    #[error("invalid layer destination `{dest}` for `{src}`: {reason}")]
    InvalidDestination {
        /// Source path.
        src: PathBuf,
        /// Destination path in the image.
        dest: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A symlink inside a layer source points outside that source.
    #[error(
        "symlink `{link}` points to `{target}`, outside its source root `{root}`; make it a relative link inside the root or copy the target in"
    )]
    SymlinkEscape {
        /// The symlink.
        link: PathBuf,
        /// Its target as written.
        target: PathBuf,
        /// The source root it must stay in.
        root: PathBuf,
    },
    /// Sockets, FIFOs and device nodes cannot go into a layer.
    #[error(
        "`{path}` is not a regular file, directory or symlink; remove it from the layer sources"
    )]
    UnsupportedFileType {
        /// The path.
        path: PathBuf,
    },
    /// A file changed while it was being added to a layer.
    #[error("`{path}` changed size while being added to a layer; retry once it is written")]
    FileChanged {
        /// The path.
        path: PathBuf,
    },
    /// Local I/O failed.
    #[error("failed to {action}")]
    Io {
        /// What was being done (paths are in the source, thanks to `fs-err`).
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// JSON could not be parsed or produced.
    #[error("failed to parse {what}")]
    Json {
        /// What was being parsed.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Docker's `config.json` could not be read.
    #[error(
        "failed to read Docker config `{path}`; fix or remove it, or point DOCKER_CONFIG elsewhere"
    )]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A Docker config names a credential helper that is not a plain program name.
    #[error(
        "Docker config `{path}`: `{key}` names the credential helper `{name}`, which is refused: {reason}; fastbuild only runs `docker-credential-<name>` from a PATH directory, so fix or remove `{key}` (or use another Docker config: DOCKER_CONFIG, `--docker-config`, `docker_config`)"
    )]
    InvalidCredentialHelper {
        /// The Docker config file.
        path: PathBuf,
        /// `credsStore` or `credHelpers["host"]`.
        key: String,
        /// The name as written (escaped).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A credential helper failed.
    #[error("credential helper `docker-credential-{helper}` failed for `{registry}`: {reason}")]
    CredentialHelper {
        /// Helper name (without the `docker-credential-` prefix).
        helper: String,
        /// Registry asked for.
        registry: String,
        /// What went wrong (never contains the secret).
        reason: String,
    },
    /// A CA file could not be loaded.
    #[error("failed to load CA certificates from `{path}`: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("failed to set up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// A TLS registry answered in plain HTTP.
    #[error(
        "`{host}` speaks plain HTTP, not HTTPS; mark it insecure (`insecure_registries: [{host}]` in fastbuild.yaml, or `--insecure-registry {host}`) to use it over plain HTTP"
    )]
    PlainHttp {
        /// The registry host.
        host: String,
    },
    /// A request failed on the scheme remembered for its registry from an earlier run; the
    /// memory is forgotten, and the next request probes the registry again.
    #[error("`{host}` did not answer as it did before (over {scheme})")]
    RememberedSchemeFailed {
        /// The registry host.
        host: String,
        /// The scheme remembered for it (`http` or `https`).
        scheme: &'static str,
        /// The failure.
        #[source]
        source: Box<Error>,
    },
    /// The registry's TLS certificate is not trusted.
    #[error(
        "the TLS certificate of `{host}` is not trusted; add its CA (`registry_ca: [FILE]` in fastbuild.yaml, or `--registry-ca FILE`)"
    )]
    TlsUntrusted {
        /// The registry host.
        host: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A request could not be sent or its response not read.
    #[error("failed to {method} {url}")]
    Transport {
        /// HTTP method.
        method: String,
        /// URL (no credentials: they travel in headers).
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("registry answered {status} to {method} {url}{}", body_suffix(.body))]
    Status {
        /// HTTP method.
        method: String,
        /// URL.
        url: String,
        /// Status code.
        status: u16,
        /// Start of the response body (registry error JSON).
        body: String,
    },
    /// A registry response is larger than fastbuild reads for its kind (nothing more is read).
    #[error(
        "response too large from registry `{registry}`: {expected}, and {request} {}; fastbuild stopped reading it. {advice}",
        seen_text(*.announced)
    )]
    ResponseTooLarge {
        /// The registry (`host[:port]`).
        registry: String,
        /// Method and URL (without query or user info): `GET https://…`.
        request: String,
        /// The bound, as a sentence: `a manifest or index may be at most 4 MiB (4194304 bytes)`.
        expected: String,
        /// The length the response announced (`Content-Length`); `None`: it sent more.
        announced: Option<u64>,
        /// What to do.
        advice: &'static str,
    },
    /// A registry stopped answering, or stopped sending (or taking) data, for too long.
    #[error(
        "registry `{registry}` stalled: {request} {what} for {timeout:?}; check the network and the registry, then retry"
    )]
    ReadTimeout {
        /// The registry (`host[:port]`).
        registry: String,
        /// Method and URL (without query or user info): `GET https://…`.
        request: String,
        /// `did not answer`, `sent no more of its response`, ...
        what: &'static str,
        /// How long nothing happened.
        timeout: std::time::Duration,
        /// The option that sets it: `read_timeout`, or `request_timeout` for the answer to a
        /// completed upload.
        setting: &'static str,
    },
    /// A small request (manifest, config, token, blob check) did not complete in time.
    #[error(
        "registry `{registry}` is too slow: {request} did not complete within {deadline:?} although it is a small request; check the network and the registry, then retry"
    )]
    DeadlineExceeded {
        /// The registry (`host[:port]`).
        registry: String,
        /// Method and URL (without query or user info): `GET https://…`.
        request: String,
        /// The deadline.
        deadline: std::time::Duration,
    },
    /// A registry sent fastbuild (an upload `Location`, a redirect, a token realm) somewhere it
    /// will not go.
    #[error("registry `{registry}` answered with {kind} `{location}`, which is refused: {reason}")]
    LocationRefused {
        /// The registry (or server) that sent it, `host[:port]`.
        registry: String,
        /// `an upload location`, `a redirect to` or `a Bearer challenge naming the token realm`.
        kind: String,
        /// Where to (without query or user info: they may hold credentials).
        location: String,
        /// Why, and what to do.
        reason: String,
    },
    /// Authentication was refused or impossible.
    #[error(
        "not authorized to {action} on `{registry}`: {reason}; check the credentials for `{registry}` in the Docker config (`docker login {registry}`)"
    )]
    Unauthorized {
        /// What was attempted.
        action: String,
        /// The registry host.
        registry: String,
        /// Why (never contains credentials).
        reason: String,
    },
    /// Content did not match its digest.
    #[error("digest mismatch for {what}: expected `{expected}`, registry reported `{actual}`")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest we computed.
        expected: String,
        /// The digest reported or observed.
        actual: String,
    },
    /// The base image does not exist.
    #[error("base image `{reference}` not found in its registry; check the name and tag")]
    BaseNotFound {
        /// The base reference.
        reference: String,
    },
    /// The base image has no manifest for a requested platform.
    #[error("base image `{reference}` has no `{wanted}` image; available: {available}")]
    PlatformNotFound {
        /// The base reference.
        reference: String,
        /// The requested platform.
        wanted: String,
        /// The platforms it has.
        available: String,
    },
    /// A manifest could not be used.
    #[error("unsupported manifest for `{reference}`: {reason}")]
    Manifest {
        /// Whose manifest.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The image spec is inconsistent.
    #[error("invalid image spec: {reason}")]
    InvalidSpec {
        /// Why.
        reason: String,
    },
    /// An image to copy is not in its registry.
    #[error(
        "image `{reference}` not found in its registry; check the repository, the digest and the registry it is taken from"
    )]
    ImageNotFound {
        /// The reference looked up.
        reference: String,
    },
    /// A blob streamed from a registry does not match its descriptor (size or digest).
    #[error(
        "blob `{digest}` served by `{registry}` does not match its descriptor: {reason}; the image in that registry is damaged or the registry serves other content: check it (e.g. `crane validate --remote REF`)"
    )]
    BlobMismatch {
        /// The registry (`host[:port]`) that served it.
        registry: String,
        /// The blob's digest by its descriptor.
        digest: String,
        /// What differs.
        reason: String,
    },
    /// The registry does not allow deleting manifests (405, distribution's `UNSUPPORTED`).
    #[error(
        "registry `{registry}` has deletion disabled: it answered 405 to {request}{}; enable deletes in its configuration (distribution / Docker registry: `storage: delete: enabled: true` in config.yml, or REGISTRY_STORAGE_DELETE_ENABLED=true; a hosted registry: its retention policies), then run its garbage collector to reclaim the space",
        body_suffix(.body)
    )]
    DeleteDisabled {
        /// The registry (`host[:port]`).
        registry: String,
        /// Method and URL (without query or user info): `DELETE https://…`.
        request: String,
        /// Start of the response body (registry error JSON).
        body: String,
    },
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

fn seen_text(announced: Option<u64>) -> String {
    match announced {
        Some(n) => format!("announced {n} bytes"),
        None => "sent more".to_owned(),
    }
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl Error {
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            action: action.into(),
            source,
        }
    }

    /// Whether this failure of a request may come from speaking the wrong scheme to its
    /// registry: it could not be sent or answered (a TLS handshake with a plain-HTTP server), or
    /// a 400 (a TLS server's answer to plain HTTP).
    pub(crate) fn may_be_a_wrong_scheme(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 400,
            Self::Transport { .. } | Self::ReadTimeout { .. } => true,
            _ => false,
        }
    }

    /// Whether a manifest was refused because the registry lacks a blob it names
    /// (`MANIFEST_BLOB_UNKNOWN`, or `BLOB_UNKNOWN` from some registries).
    pub(crate) fn is_blob_unknown(&self) -> bool {
        matches!(self, Self::Status { status: 400 | 404, body, .. } if body.contains("BLOB_UNKNOWN"))
    }

    /// Whether retrying the same step may succeed (408/429/5xx, connection errors, a stall).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::ReadTimeout { .. } => true,
            Self::Transport { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_request()
                    || source.is_body()
                    || source.is_decode()
            }
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
