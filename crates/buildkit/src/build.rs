//! Dockerfile builds: `Control.Solve` with the `dockerfile.v0` frontend and the `image`
//! exporter, the session that serves the local dirs, and `Control.Status` turned into progress.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::DockerAuth;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::filesend::{LayoutError, LayoutTarget};
use crate::filesync::{DirSyncStats, SyncStats};
use crate::progress::{ProgressEvent, StatusTracker};
use crate::proto::moby::buildkit::v1 as control;
use crate::secrets::SecretSource;
use crate::session::{Session, SessionConfig, new_id};

/// How long to keep reading `Status` after `Solve` returned (the Go client waits 3 s).
const STATUS_GRACE: Duration = Duration::from_secs(3);

/// Layer compression of the image exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// gzip (BuildKit's default).
    #[default]
    Gzip,
    /// zstd (needs OCI media types for most registries and runtimes).
    Zstd,
    /// No compression.
    Uncompressed,
}

impl Compression {
    /// The exporter attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Uncompressed => "uncompressed",
        }
    }
}

/// A cache import or export (`--cache-from` / `--cache-to`): a type and its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSpec {
    /// `registry`, `inline`, `local`, …
    #[serde(rename = "Type")]
    pub kind: String,
    /// Attributes, e.g. `ref`, `mode`.
    #[serde(rename = "Attrs")]
    pub attrs: BTreeMap<String, String>,
}

impl CacheSpec {
    /// A registry cache at `reference` (import, or export with `mode=max` when `max`).
    pub fn registry(reference: &str) -> Self {
        Self {
            kind: "registry".to_owned(),
            attrs: BTreeMap::from([("ref".to_owned(), reference.to_owned())]),
        }
    }

    /// Inline cache (export only: cache metadata embedded in the image config).
    pub fn inline() -> Self {
        Self {
            kind: "inline".to_owned(),
            attrs: BTreeMap::new(),
        }
    }
}

/// What to build and where to put it.
// Each flag maps to one BuildKit attribute; grouping them would hide that.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile; `<context>/Dockerfile` when `None`. May lie outside the context.
    pub dockerfile: Option<PathBuf>,
    /// The stage to build (`--target`).
    pub target: Option<String>,
    /// `ARG` values.
    pub build_args: BTreeMap<String, String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Target platforms, e.g. `linux/amd64`; the daemon's when empty.
    pub platforms: Vec<String>,
    /// Ignore the build cache for every step.
    pub no_cache: bool,
    /// Secrets available to `RUN --mount=type=secret,id=…`.
    pub secrets: BTreeMap<String, SecretSource>,
    /// SSH agents available to `RUN --mount=type=ssh[,id=…]`, by ID (`default` when the mount
    /// names none).
    pub ssh: BTreeMap<String, crate::SshSource>,
    /// Paths never sent to the daemon even inside a synced directory and not excluded by its
    /// `.dockerignore` — the client's own state (fastbuild's `.fastbuild/`, rewritten by every
    /// build: sending it would change the context, and a `COPY .` digest, on every build).
    pub withheld: Vec<PathBuf>,
    /// Named contexts (`--build-context NAME=…`): `COPY --from=NAME`, `FROM NAME`.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// SBOM attestation (`attest:sbom`): `Some("")` for the default scanner, or its
    /// attributes (`generator=IMAGE`); `None` for none.
    pub sbom: Option<String>,
    /// Provenance attestation (`attest:provenance`): `Some("mode=min")` / `Some("mode=max")`;
    /// `None` for none (attestations change the index digest on every build).
    pub provenance: Option<String>,
    /// Image names (`registry/repo:tag`) to tag and push.
    pub image_names: Vec<String>,
    /// Push the image to the registry of its names.
    pub push: bool,
    /// Push by digest only (`repo@sha256:…`, no tag); the names give the repository.
    pub push_by_digest: bool,
    /// The registry speaks plain HTTP (or has an untrusted certificate).
    pub registry_insecure: bool,
    /// Layer compression (BuildKit's default, gzip, when `None`).
    pub compression: Option<Compression>,
    /// Compression level (gzip 0-9, zstd 0-22).
    pub compression_level: Option<u32>,
    /// Recompress layers that exist with another compression.
    pub force_compression: bool,
    /// Use OCI media types (`Some(true)`), Docker ones (`Some(false)`), or the daemon's default.
    pub oci_mediatypes: Option<bool>,
    /// `SOURCE_DATE_EPOCH` for reproducible images: passed as build arg and exporter attribute,
    /// and exporter attribute (image config and history times).
    pub source_date_epoch: Option<i64>,
    /// With `source_date_epoch`: also `rewrite-timestamp=true`, so file times inside layers are
    /// clamped and a fresh checkout with other mtimes gives the same digest. It costs the daemon
    /// a rewrite of every layer on every build (measured: 0.5–2 s for a 30 MB image even when
    /// nothing changed), so it is for CI; the inner loop leaves it off and still gets stable
    /// digests for unchanged inputs from BuildKit's cache.
    pub rewrite_timestamp: bool,
    /// Cache sources.
    pub cache_imports: Vec<CacheSpec>,
    /// Cache destinations.
    pub cache_exports: Vec<CacheSpec>,
    /// Docker config directory for registry credentials (`$DOCKER_CONFIG` or `~/.docker` when `None`).
    pub docker_config_dir: Option<PathBuf>,
    /// How the session reaches token services when it fetches registry tokens for the daemon
    /// (CA files, insecure hosts, timeouts; see [`crate::DockerAuth`]); defaults when `None`.
    pub token_registry: Option<fastbuild_oci::RegistryOptions>,
    /// Leave token fetching to the daemon (it then gets the raw credentials):
    /// `BUILDKIT_NO_CLIENT_TOKEN=1`.
    pub no_client_tokens: bool,
    /// Export with the `oci` exporter into this OCI image layout directory instead of the
    /// `image` exporter (no push). The daemon streams the layout back as a tar over the
    /// session; it is unpacked here, merged with an existing layout's `index.json`, and the
    /// image named `fb-<digest prefix>` in it. Needs a daemon with the `oci` exporter
    /// (standalone buildkitd, or dockerd with the containerd image store).
    pub oci_layout: Option<PathBuf>,
}

/// The keys of the image exporter's response (and of buildx's `--metadata-file`).
pub mod exporter_keys {
    /// The manifest or index digest.
    pub const DIGEST: &str = "containerimage.digest";
    /// The image config digest (single-platform images).
    pub const CONFIG_DIGEST: &str = "containerimage.config.digest";
    /// The OCI descriptor of the manifest or index, as JSON.
    pub const DESCRIPTOR: &str = "containerimage.descriptor";
    /// The image names, comma-separated (`--metadata-file`'s `image.name`).
    pub const IMAGE_NAME: &str = "image.name";
}

/// What a named context is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, synced over the session with its own `.dockerignore`.
    Dir(PathBuf),
    /// An image (`docker-image://REF`).
    Image(String),
}

/// Session directory names the build itself uses; a named context may not take them.
const RESERVED_DIRS: &[&str] = &["context", "dockerfile"];

/// The OCI descriptor of the exported image (`containerimage.descriptor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDescriptor {
    /// Manifest or index media type.
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Size in bytes of the manifest or index.
    pub size: i64,
    /// Annotations, if any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The outcome of a successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// Manifest (or index) digest from `containerimage.digest`: what the registry serves.
    pub digest: String,
    /// Image config digest (`containerimage.config.digest`).
    pub config_digest: Option<String>,
    /// The decoded `containerimage.descriptor`.
    pub descriptor: Option<ImageDescriptor>,
    /// `image.name`: the names the image was exported as (comma-joined by BuildKit).
    pub image_name: Option<String>,
    /// Everything the exporter reported.
    pub exporter_response: BTreeMap<String, String>,
    /// What the file sync sent, per local name (`context`, `dockerfile`).
    pub sync_stats: BTreeMap<String, DirSyncStats>,
}

/// The Solve request and session dirs derived from the options.
struct Prepared {
    dirs: BTreeMap<String, PathBuf>,
    frontend_attrs: BTreeMap<String, String>,
    exporter_attrs: BTreeMap<String, String>,
    cache: control::CacheOptions,
    dockerfile_display: String,
}

/// The session's shared key: a stable hash of the (canonical) context path, like Docker's
/// CLI. The daemon files each synced local dir under `NAME:HINT:SHARED_KEY` and, on the next
/// build with the same key, diffs the files against that copy and asks only for what changed.
/// An empty or random key would make every context on the machine share (or never find) that
/// copy, so a rebuild of an unchanged context could resend all of it.
fn shared_key(context: &std::path::Path) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"fastbuild-context\0");
    hasher.update(context.as_os_str().as_encoded_bytes());
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn bool_attr(v: bool) -> String {
    if v { "true" } else { "false" }.to_owned()
}

fn prepare(opts: &BuildOptions) -> Result<Prepared> {
    let context = fs_err::canonicalize(&opts.context).map_err(|e| Error::Io {
        path: opts.context.clone(),
        source: e,
    })?;
    if !context.is_dir() {
        return Err(Error::InvalidOptions(format!(
            "the build context `{}` is not a directory",
            opts.context.display()
        )));
    }
    let dockerfile_given = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let dockerfile = fs_err::canonicalize(&dockerfile_given).map_err(|e| Error::Io {
        path: dockerfile_given.clone(),
        source: e,
    })?;
    let (Some(dockerfile_dir), Some(filename)) = (
        dockerfile.parent(),
        dockerfile.file_name().and_then(|n| n.to_str()),
    ) else {
        return Err(Error::InvalidOptions(format!(
            "the Dockerfile path `{}` has no file name",
            dockerfile_given.display()
        )));
    };

    let mut fa = BTreeMap::new();
    fa.insert("filename".to_owned(), filename.to_owned());
    if let Some(target) = &opts.target {
        fa.insert("target".to_owned(), target.clone());
    }
    for (k, v) in &opts.build_args {
        fa.insert(format!("build-arg:{k}"), v.clone());
    }
    for (k, v) in &opts.labels {
        fa.insert(format!("label:{k}"), v.clone());
    }
    if !opts.platforms.is_empty() {
        fa.insert("platform".to_owned(), opts.platforms.join(","));
    }
    if opts.no_cache {
        fa.insert("no-cache".to_owned(), String::new());
    }
    if let Some(epoch) = opts.source_date_epoch {
        fa.insert("build-arg:SOURCE_DATE_EPOCH".to_owned(), epoch.to_string());
    }
    if !opts.cache_imports.is_empty() {
        let json = serde_json::to_string(&opts.cache_imports).expect("cache specs serialize");
        fa.insert("cache-imports".to_owned(), json);
    }
    if let Some(sbom) = &opts.sbom {
        fa.insert("attest:sbom".to_owned(), sbom.clone());
    }
    if let Some(provenance) = &opts.provenance {
        fa.insert("attest:provenance".to_owned(), provenance.clone());
    }
    let mut named_dirs = BTreeMap::new();
    for (name, ctx) in &opts.named_contexts {
        if name.is_empty() || RESERVED_DIRS.contains(&name.as_str()) || name.contains(',') {
            return Err(Error::InvalidOptions(format!(
                "`{name}` cannot name a build context (empty, reserved or with a comma)"
            )));
        }
        let value = match ctx {
            NamedContext::Image(reference) => format!("docker-image://{reference}"),
            NamedContext::Dir(dir) => {
                let real = fs_err::canonicalize(dir).map_err(|e| Error::Io {
                    path: dir.clone(),
                    source: e,
                })?;
                if !real.is_dir() {
                    return Err(Error::InvalidOptions(format!(
                        "the build context `{name}` (`{}`) is not a directory",
                        dir.display()
                    )));
                }
                named_dirs.insert(name.clone(), real);
                format!("local:{name}")
            }
        };
        fa.insert(format!("context:{name}"), value);
    }

    let mut ea = BTreeMap::new();
    if !opts.image_names.is_empty() {
        ea.insert("name".to_owned(), opts.image_names.join(","));
    }
    if opts.push && opts.oci_layout.is_some() {
        return Err(Error::InvalidOptions(
            "`push` and `oci_layout` exclude each other: the `oci` exporter does not push"
                .to_owned(),
        ));
    }
    if opts.push {
        if opts.image_names.is_empty() {
            return Err(Error::InvalidOptions(
                "`push` needs at least one image name (`registry/repository:tag`)".to_owned(),
            ));
        }
        ea.insert("push".to_owned(), bool_attr(true));
    }
    if opts.push_by_digest {
        ea.insert("push-by-digest".to_owned(), bool_attr(true));
    }
    if opts.registry_insecure {
        ea.insert("registry.insecure".to_owned(), bool_attr(true));
    }
    if let Some(c) = opts.compression {
        ea.insert("compression".to_owned(), c.as_str().to_owned());
    }
    if let Some(level) = opts.compression_level {
        ea.insert("compression-level".to_owned(), level.to_string());
    }
    if opts.force_compression {
        ea.insert("force-compression".to_owned(), bool_attr(true));
    }
    if let Some(oci) = opts.oci_mediatypes {
        ea.insert("oci-mediatypes".to_owned(), bool_attr(oci));
    }
    if let Some(epoch) = opts.source_date_epoch {
        ea.insert("source-date-epoch".to_owned(), epoch.to_string());
        if opts.rewrite_timestamp {
            ea.insert("rewrite-timestamp".to_owned(), bool_attr(true));
        }
    }

    let entry = |c: &CacheSpec| control::CacheOptionsEntry {
        r#type: c.kind.clone(),
        attrs: c.attrs.clone().into_iter().collect(),
    };
    let cache = control::CacheOptions {
        exports: opts.cache_exports.iter().map(entry).collect(),
        imports: opts.cache_imports.iter().map(entry).collect(),
        ..control::CacheOptions::default()
    };

    let mut dirs = BTreeMap::from([
        ("context".to_owned(), context),
        ("dockerfile".to_owned(), dockerfile_dir.to_owned()),
    ]);
    dirs.extend(named_dirs);
    Ok(Prepared {
        dirs,
        frontend_attrs: fa,
        exporter_attrs: ea,
        cache,
        dockerfile_display: dockerfile_given.display().to_string(),
    })
}

impl Client {
    /// Builds a Dockerfile with the daemon's Dockerfile frontend and exports it with the
    /// `image` exporter (pushing when [`BuildOptions::push`]), or with the `oci` exporter into
    /// [`BuildOptions::oci_layout`].
    ///
    /// Progress is sent on `progress` (a closed receiver is fine). Cancelling `cancel`, or
    /// dropping the returned future, cancels the Solve call (the daemon aborts the job) and
    /// closes the session.
    pub async fn build(
        &self,
        opts: BuildOptions,
        progress: mpsc::Sender<ProgressEvent>,
        cancel: CancellationToken,
    ) -> Result<BuildResult> {
        let prepared = prepare(&opts)?;
        let stats: SyncStats = Arc::default();
        // The only exporter is number 0 of the request: the id the daemon sends back with its
        // file output.
        let layout = opts.oci_layout.clone().map(|dir| LayoutTarget::new(dir, 0));
        // Private agents (key files) live until the build returns.
        let ssh_agents = crate::ssh::SshAgents::start(&opts.ssh).await?;
        let session = Session::start(
            self,
            SessionConfig {
                name: "fastbuild".to_owned(),
                shared_key: shared_key(&prepared.dirs["context"]),
                dirs: prepared.dirs.clone(),
                withheld: opts
                    .withheld
                    .iter()
                    .map(|p| fs_err::canonicalize(p).unwrap_or_else(|_| p.clone()))
                    .collect(),
                secrets: opts.secrets.clone(),
                auth: DockerAuth {
                    config_dir: opts.docker_config_dir.clone(),
                    registry: opts.token_registry.clone(),
                    no_client_tokens: opts.no_client_tokens,
                },
                stats: stats.clone(),
                layout: layout.clone(),
                ssh: (!ssh_agents.is_empty()).then(|| ssh_agents.service()),
            },
        )?;
        let build_ref = new_id();
        let exporter = control::Exporter {
            r#type: if layout.is_some() { "oci" } else { "image" }.to_owned(),
            attrs: prepared.exporter_attrs.clone().into_iter().collect(),
        };
        let request = control::SolveRequest {
            r#ref: build_ref.clone(),
            exporter_deprecated: exporter.r#type.clone(),
            exporter_attrs_deprecated: exporter.attrs.clone(),
            session: session.id.clone(),
            frontend: "dockerfile.v0".to_owned(),
            frontend_attrs: prepared.frontend_attrs.clone().into_iter().collect(),
            cache: Some(prepared.cache.clone()),
            exporters: vec![exporter],
            ..control::SolveRequest::default()
        };
        tracing::debug!(build_ref = %build_ref, session = %session.id, frontend_attrs = ?prepared.frontend_attrs, exporter_attrs = ?prepared.exporter_attrs, "solve");

        let tracker: Arc<Mutex<StatusTracker>> = Arc::default();
        let mut status_task = AbortOnDrop(tokio::spawn(follow_status(
            self.control(),
            build_ref.clone(),
            progress,
            tracker.clone(),
        )));

        let mut control = self.control();
        let solved = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            result = control.solve(request) => Some(result),
        };
        // The Solve call (if cancelled) is dropped here, which resets its HTTP/2 stream.
        if solved.is_some() {
            let _ = tokio::time::timeout(STATUS_GRACE, &mut status_task.0).await;
        }
        drop(status_task);
        let session_error = session.error();
        session.close().await;
        let sync_stats = stats.lock().expect("stats lock").clone();
        let layout_outcome = layout.map(|l| (l.dir().to_owned(), l.take_outcome()));

        let response = match solved {
            None => return Err(Error::Cancelled),
            Some(Ok(response)) => response.into_inner(),
            Some(Err(solve_error)) => {
                // A layout that could not be written explains the failure best.
                if let Some((dir, Some(Err(e)))) = layout_outcome {
                    return Err(layout_error(dir, e));
                }
                if let Some(msg) = &session_error {
                    tracing::debug!("session error during failed build: {msg}");
                }
                let failure = tracker.lock().expect("tracker lock").failure();
                return Err(classify(
                    &self.address,
                    &prepared.dockerfile_display,
                    &opts,
                    &solve_error,
                    failure,
                ));
            }
        };
        let exporter_response: BTreeMap<String, String> =
            response.exporter_response.into_iter().collect();
        let Some(digest) = checked_digest(&exporter_response, exporter_keys::DIGEST)? else {
            return Err(Error::MissingDigest {
                keys: exporter_response
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let config_digest = checked_digest(&exporter_response, exporter_keys::CONFIG_DIGEST)?;
        if let Some((dir, outcome)) = layout_outcome {
            match outcome {
                Some(Ok(written)) if written.digests.contains(&digest) => {
                    tracing::debug!(dir = %dir.display(), ?written, "OCI layout written");
                }
                Some(Ok(written)) => {
                    return Err(Error::OciLayout {
                        dir,
                        reason: format!(
                            "the exporter reported `{digest}`, but the layout it sent lists {}",
                            written.digests.join(", ")
                        ),
                        source: None,
                    });
                }
                Some(Err(e)) => return Err(layout_error(dir, e)),
                None => {
                    return Err(Error::OciLayout {
                        dir,
                        reason: "BuildKit finished without sending the image back over the session"
                            .to_owned(),
                        source: None,
                    });
                }
            }
        }
        let descriptor = exporter_response
            .get(exporter_keys::DESCRIPTOR)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|json| serde_json::from_slice(&json).ok());
        Ok(BuildResult {
            digest,
            config_digest,
            descriptor,
            image_name: exporter_response.get("image.name").cloned(),
            exporter_response,
            sync_stats,
        })
    }
}

fn layout_error(dir: PathBuf, e: LayoutError) -> Error {
    Error::OciLayout {
        dir,
        reason: e.reason,
        source: e.source,
    }
}

/// Aborts the task when dropped (also when the build future itself is dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `Control.Status` for `build_ref` until it ends, feeding the tracker and the caller.
async fn follow_status(
    mut control: crate::proto::moby::buildkit::v1::control_client::ControlClient<
        tonic::transport::Channel,
    >,
    build_ref: String,
    progress: mpsc::Sender<ProgressEvent>,
    tracker: Arc<Mutex<StatusTracker>>,
) {
    let request = control::StatusRequest { r#ref: build_ref };
    let mut stream = match control.status(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            tracing::debug!(%status, "status stream failed to open");
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                let events = tracker.lock().expect("tracker lock").apply(update);
                for event in events {
                    if progress.send(event).await.is_err() {
                        // Nobody listens; keep tracking for error reports.
                        break;
                    }
                }
            }
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%status, "status stream ended with an error");
                return;
            }
        }
    }
}

/// Turns a failed Solve into the most specific error.
fn classify(
    address: &str,
    dockerfile: &str,
    opts: &BuildOptions,
    status: &tonic::Status,
    failure: Option<(String, String, Vec<String>)>,
) -> Error {
    let message = status.message().trim().to_owned();
    let message = message
        .strip_prefix("failed to solve: ")
        .unwrap_or(&message)
        .to_owned();
    // The client connected before the Solve started: a broken transport now is a lost
    // connection, not an unreachable daemon.
    if matches!(status.code(), tonic::Code::Unavailable)
        || (status.code() == tonic::Code::Unknown && status.message().contains("transport"))
    {
        return Error::ConnectionLost {
            address: address.to_owned(),
            source: Box::new(status.clone()),
        };
    }

    // Dockerfile syntax: "dockerfile parse error on line 3: unknown instruction: FOO".
    if let Some(idx) = message.find("parse error on line ") {
        let rest = &message[idx + "parse error on line ".len()..];
        let line: u32 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let text = rest.split_once(": ").map_or(rest, |(_, m)| m);
        return Error::DockerfileSyntax {
            file: dockerfile.to_owned(),
            line,
            message: text.to_owned(),
        };
    }
    if message.contains("failed to parse dockerfile") || message.contains("dockerfile parse error")
    {
        return Error::DockerfileSyntax {
            file: dockerfile.to_owned(),
            line: 0,
            message,
        };
    }

    // Missing base image.
    if let Some(idx) = message.find("failed to resolve source metadata for ") {
        let rest = &message[idx + "failed to resolve source metadata for ".len()..];
        let image = rest.split(": ").next().unwrap_or(rest).to_owned();
        let lower = message.to_lowercase();
        if lower.contains("401") || lower.contains("unauthorized") || lower.contains("denied") {
            return Error::AuthRefused {
                registry: registry_of(&image),
                message,
            };
        }
        return Error::MissingBaseImage { image, message };
    }

    // Failed RUN: `process "/bin/sh -c …" did not complete successfully: exit code: 3`.
    if let Some(idx) = message.find("exit code: ") {
        let code = message[idx + "exit code: ".len()..]
            .split(|c: char| !c.is_ascii_digit() && c != '-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1);
        let (step, log_tail) = match failure {
            Some((name, _, log)) => (name, log),
            None => (message.clone(), Vec::new()),
        };
        return Error::RunFailed {
            step,
            exit_code: code,
            log_tail,
        };
    }

    // Push and registry authentication.
    let lower = message.to_lowercase();
    let push_ref = message.find("failed to push ").map(|idx| {
        message[idx + "failed to push ".len()..]
            .split(": ")
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let auth_failure = lower.contains("401 unauthorized")
        || lower.contains("403 forbidden")
        || lower.contains("failed to authorize")
        || lower.contains("no basic auth credentials")
        || lower.contains("authentication required")
        || lower.contains("insufficient_scope");
    if auth_failure {
        let registry = push_ref
            .as_deref()
            .map(registry_of)
            .or_else(|| opts.image_names.first().map(|n| registry_of(n)))
            .unwrap_or_default();
        return Error::AuthRefused { registry, message };
    }
    if let Some(reference) = push_ref {
        return Error::PushFailed {
            plain_http_hint: lower.contains("http response to https client")
                && !opts.registry_insecure,
            reference,
            message,
        };
    }
    if lower.contains("http response to https client") {
        return Error::PushFailed {
            reference: opts.image_names.first().cloned().unwrap_or_default(),
            plain_http_hint: !opts.registry_insecure,
            message,
        };
    }

    if lower.contains("could not be found") && lower.contains("exporter")
        || lower.contains("not supported")
        || lower.contains("unsupported")
        || status.code() == tonic::Code::Unimplemented
    {
        return Error::Unsupported {
            address: address.to_owned(),
            message,
        };
    }

    let (step, log_tail) = match failure {
        Some((name, _, log)) => (Some(name), log),
        None => (None, Vec::new()),
    };
    Error::BuildFailed {
        message,
        step,
        log_tail,
    }
}

/// The registry host of an image reference (`docker.io` when it has none).
fn registry_of(reference: &str) -> String {
    let reference = reference.trim_start_matches("docker-image://");
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    }
}

/// Validates the options without talking to the daemon (paths exist, push has names).
pub fn validate(opts: &BuildOptions) -> Result<()> {
    prepare(opts).map(|_| ())
}

/// The digest under `key` of the exporter response, parsed at the boundary: a daemon's answer
/// is untrusted input, and the digest goes into file names, tags and values files.
fn checked_digest(response: &BTreeMap<String, String>, key: &str) -> Result<Option<String>, Error> {
    let Some(value) = response.get(key) else {
        return Ok(None);
    };
    if let Ok(d) = value.parse::<fastbuild_oci::Digest>() {
        return Ok(Some(d.to_string()));
    }
    let mut shown: String = value.escape_debug().take(80).collect();
    if value.len() > 80 {
        shown.push('…');
    }
    Err(Error::BadDigest {
        key: key.to_owned(),
        value: shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening L6: `containerimage.digest` was never validated (`sha256:aé…` later panicked
    /// when sliced for the content tag).
    #[test]
    fn exporter_digests_are_parsed_at_the_boundary() {
        let good = format!("sha256:{}", "a".repeat(64));
        let response = BTreeMap::from([
            ("containerimage.digest".to_owned(), good.clone()),
            (
                "containerimage.config.digest".to_owned(),
                format!("sha256:a\u{e9}{}", "b".repeat(60)),
            ),
            ("bad.short".to_owned(), "sha256:abc".to_owned()),
            (
                "bad.path".to_owned(),
                format!("sha256:../../{}", "a".repeat(58)),
            ),
        ]);
        assert_eq!(
            checked_digest(&response, "containerimage.digest").unwrap(),
            Some(good)
        );
        assert_eq!(checked_digest(&response, "absent").unwrap(), None);
        for key in ["containerimage.config.digest", "bad.short", "bad.path"] {
            let err = checked_digest(&response, key).unwrap_err();
            assert!(matches!(err, Error::BadDigest { .. }), "{key}: {err:?}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn shared_key_is_stable_per_context_path() {
        let a = shared_key(std::path::Path::new("/src/app"));
        assert_eq!(a, shared_key(std::path::Path::new("/src/app")));
        assert_ne!(a, shared_key(std::path::Path::new("/src/other")));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn request_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        fs_err::create_dir(&ctx).unwrap();
        fs_err::write(dir.path().join("build.Dockerfile"), "FROM scratch\n").unwrap();
        let opts = BuildOptions {
            context: ctx.clone(),
            dockerfile: Some(dir.path().join("build.Dockerfile")),
            target: Some("final".into()),
            build_args: BTreeMap::from([("A".into(), "1".into())]),
            labels: BTreeMap::from([("l".into(), "v".into())]),
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            no_cache: true,
            image_names: vec!["127.0.0.1:5000/x:y".into()],
            push: true,
            registry_insecure: true,
            compression: Some(Compression::Zstd),
            compression_level: Some(3),
            force_compression: true,
            oci_mediatypes: Some(true),
            source_date_epoch: Some(0),
            rewrite_timestamp: true,
            cache_imports: vec![CacheSpec::registry("127.0.0.1:5000/x:cache")],
            cache_exports: vec![CacheSpec::inline()],
            ..BuildOptions::default()
        };
        let p = prepare(&opts).unwrap();
        assert_eq!(
            p.dirs["dockerfile"],
            fs_err::canonicalize(dir.path()).unwrap()
        );
        assert_eq!(p.dirs["context"], fs_err::canonicalize(&ctx).unwrap());
        let fa = &p.frontend_attrs;
        assert_eq!(fa["filename"], "build.Dockerfile");
        assert_eq!(fa["target"], "final");
        assert_eq!(fa["build-arg:A"], "1");
        assert_eq!(fa["label:l"], "v");
        assert_eq!(fa["platform"], "linux/amd64,linux/arm64");
        assert_eq!(fa["no-cache"], "");
        assert_eq!(fa["build-arg:SOURCE_DATE_EPOCH"], "0");
        assert_eq!(
            fa["cache-imports"],
            r#"[{"Type":"registry","Attrs":{"ref":"127.0.0.1:5000/x:cache"}}]"#
        );
        let ea = &p.exporter_attrs;
        assert_eq!(ea["name"], "127.0.0.1:5000/x:y");
        assert_eq!(ea["push"], "true");
        assert_eq!(ea["registry.insecure"], "true");
        assert_eq!(ea["compression"], "zstd");
        assert_eq!(ea["compression-level"], "3");
        assert_eq!(ea["force-compression"], "true");
        assert_eq!(ea["oci-mediatypes"], "true");
        assert_eq!(ea["rewrite-timestamp"], "true");
        assert_eq!(p.cache.exports[0].r#type, "inline");
    }

    #[test]
    fn push_without_names_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let opts = BuildOptions {
            context: dir.path().to_owned(),
            push: true,
            ..BuildOptions::default()
        };
        assert!(matches!(prepare(&opts), Err(Error::InvalidOptions(_))));
    }

    fn classify_msg(message: &str, opts: &BuildOptions) -> Error {
        classify(
            "docker-unix:///d.sock",
            "ctx/Dockerfile",
            opts,
            &tonic::Status::unknown(message),
            Some((
                "[2/2] RUN make".into(),
                "exit".into(),
                vec!["compiling".into()],
            )),
        )
    }

    #[test]
    fn classifies_buildkit_messages() {
        let opts = BuildOptions {
            image_names: vec!["10.0.0.5:5000/app:dev".into()],
            ..BuildOptions::default()
        };
        let err = classify_msg(
            "failed to solve: dockerfile parse error on line 3: unknown instruction: RUNN",
            &opts,
        );
        assert!(
            matches!(&err, Error::DockerfileSyntax { file, line: 3, message } if file == "ctx/Dockerfile" && message == "unknown instruction: RUNN"),
            "{err:?}"
        );
        let err = classify_msg(
            "failed to solve: process \"/bin/sh -c make\" did not complete successfully: exit code: 2",
            &opts,
        );
        assert!(
            matches!(&err, Error::RunFailed { step, exit_code: 2, log_tail } if step == "[2/2] RUN make" && log_tail == &["compiling"]),
            "{err:?}"
        );
        let err = classify_msg(
            "failed to solve: failed to push 10.0.0.5:5000/app:dev: failed to do request: Head \"https://10.0.0.5:5000/v2/app/blobs/sha256:ab\": http: server gave HTTP response to HTTPS client",
            &opts,
        );
        assert!(
            matches!(&err, Error::PushFailed { reference, plain_http_hint: true, .. } if reference == "10.0.0.5:5000/app:dev"),
            "{err:?}"
        );
        assert!(err.to_string().contains("registry_insecure"), "{err}");
        let err = classify_msg(
            "failed to solve: failed to push 10.0.0.5:5000/app:dev: unexpected status from HEAD request: 401 Unauthorized",
            &opts,
        );
        assert!(
            matches!(&err, Error::AuthRefused { registry, .. } if registry == "10.0.0.5:5000"),
            "{err:?}"
        );
        let err = classify_msg(
            "failed to solve: exporter \"image\" could not be found",
            &opts,
        );
        assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(registry_of("127.0.0.1:5000/a/b:c"), "127.0.0.1:5000");
        assert_eq!(registry_of("busybox:latest"), "docker.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("ghcr.io/x/y"), "ghcr.io");
    }
}
