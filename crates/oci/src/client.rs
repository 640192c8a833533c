//! A thin OCI distribution client on reqwest: scheme detection (TLS, or plain HTTP for loopback
//! and insecure hosts), Basic and Bearer auth with a token cache, retries, blob and manifest
//! transfer. Every upload is verified against the digest computed locally.
//!
//! Credentials go only to the registry's own origin: an upload `Location` or a redirect to
//! another host is followed without them, and neither may lead to plain HTTP unless the hosts
//! involved are allowed plain HTTP.
//!
//! Responses are bounded in size and time, so a broken or hostile registry cannot exhaust memory
//! or hang a build: manifests, indexes and configs are read up to 4 MiB (containerd's limit),
//! token responses and error bodies up to 1 MiB, blob downloads up to the size their descriptor
//! gives; a response that sends nothing for [`RegistryOptions::read_timeout`] (or an upload the
//! registry stops taking) fails as stalled, and a small request (manifest, config, token, blob
//! check, upload start, manifest push) must complete within [`RegistryOptions::request_timeout`]
//! (which also bounds the wait for the answer to a fully sent upload).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use url::Url;

use crate::auth::{Challenge, Credential, DockerConfig};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::transport::is_loopback;

mod token;
pub use token::GrantedToken;
use token::Token;

/// The most bytes read of a manifest or index (containerd's limit too; real ones are KiB).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The most bytes read of an image config fetched into memory.
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The most bytes read of a token response.
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// The most bytes read of an error response's body (its start is shown).
const MAX_ERROR_BODY_BYTES: u64 = 1 << 20;

/// The most pages of a tag list followed (`Link: <…>; rel="next"`).
const MAX_TAG_PAGES: usize = 10_000;

/// Media types accepted when fetching manifests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Retry behaviour for replayable registry steps.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time, with ±50 % jitter.
    pub initial_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Hosts (`host[:port]`) that may be used over plain HTTP (loopback always may).
    pub insecure_hosts: Vec<String>,
    /// Extra PEM CA bundles trusted for TLS (on top of the system roots).
    pub ca_files: Vec<PathBuf>,
    /// Docker config file or directory; `None` = `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// Blob uploads running at once.
    pub max_concurrent_uploads: usize,
    /// Blobs larger than this are uploaded in `PATCH` chunks of this size.
    pub chunk_size: u64,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// How long a registry may go without answering, sending response bytes or taking upload
    /// bytes before the request fails as stalled (retried like a lost connection).
    pub read_timeout: Duration,
    /// Overall deadline of one attempt of a small request: fetching a manifest, config or token,
    /// checking or mounting a blob, starting an upload, pushing a manifest. Blob transfers have
    /// none (their size is unbounded); [`Self::read_timeout`] still applies to them, and the
    /// answer to a fully sent upload may take this long (committing a large blob takes time).
    pub request_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
    /// `PATH` searched for `docker-credential-*` helpers; `None` = this process's `PATH`.
    pub credential_helper_path: Option<std::ffi::OsString>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure_hosts: Vec::new(),
            ca_files: Vec::new(),
            docker_config: None,
            max_concurrent_uploads: 4,
            chunk_size: 16 * 1024 * 1024,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            user_agent: concat!("fastbuild/", env!("CARGO_PKG_VERSION")).to_owned(),
            credential_helper_path: None,
        }
    }
}

/// A manifest as served by a registry.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// Its `Content-Type` (or its `mediaType` field when the header is missing).
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// Where blob bytes come from for an upload.
#[derive(Clone, Debug)]
pub(crate) enum BlobData {
    File(PathBuf),
    Bytes(bytes::Bytes),
    /// Streamed from another repository or registry as the upload takes it (a copy).
    Remote(Arc<crate::copy::RemoteBlob>),
}

impl BlobData {
    /// Bytes `start..start + len` as a request body that reports each piece the connection
    /// takes to `progress`.
    fn body(&self, start: u64, len: u64, progress: &Progress) -> Result<reqwest::Body> {
        const PIECE: usize = 64 * 1024;
        progress.expect_body(len);
        let progress = progress.clone();
        let stream = match self {
            Self::Bytes(b) => {
                let b = b.slice(start as usize..(start + len) as usize);
                let pieces: Vec<std::io::Result<bytes::Bytes>> = (0..b.len())
                    .step_by(PIECE)
                    .map(|at| Ok(b.slice(at..b.len().min(at + PIECE))))
                    .collect();
                futures::stream::iter(pieces).boxed()
            }
            Self::File(path) => {
                let mut f =
                    fs_err::File::open(path).map_err(|e| Error::io("open a blob for upload", e))?;
                f.seek(SeekFrom::Start(start))
                    .map_err(|e| Error::io("seek in a blob for upload", e))?;
                let f = tokio::fs::File::from_std(f.into_parts().0);
                tokio_util::io::ReaderStream::with_capacity(f.take(len), PIECE).boxed()
            }
            Self::Remote(remote) => crate::copy::RemoteBlob::body(remote, start, len),
        };
        Ok(reqwest::Body::wrap_stream(stream.inspect(move |piece| {
            progress.took(piece.as_ref().map_or(0, bytes::Bytes::len));
        })))
    }
}

/// How far a request without an answer has got: when it last moved (was sent, or had a piece
/// of its body taken by the connection) and how much of its body is still to be taken.
#[derive(Clone, Debug)]
struct Progress(Arc<std::sync::Mutex<(tokio::time::Instant, u64)>>);

impl Progress {
    /// A request without a body (until [`Self::expect_body`]).
    fn new() -> Self {
        Self(Arc::new(std::sync::Mutex::new((
            tokio::time::Instant::now(),
            0,
        ))))
    }

    /// The request is (re)built with a body of `len` bytes.
    fn expect_body(&self, len: u64) {
        self.0.lock().expect("not poisoned").1 = len;
    }

    /// The request is (re)sent.
    fn sent(&self) {
        self.0.lock().expect("not poisoned").0 = tokio::time::Instant::now();
    }

    /// The connection took `n` more bytes of the body.
    fn took(&self, n: usize) {
        let mut state = self.0.lock().expect("not poisoned");
        state.0 = tokio::time::Instant::now();
        state.1 = state.1.saturating_sub(n as u64);
    }

    /// Resolves once the request has not moved for `sending` while its body is being taken,
    /// or for `answering` once it is all taken; `true` in the second case.
    async fn stalled(&self, sending: Duration, answering: Duration) -> bool {
        loop {
            let (last, left) = *self.0.lock().expect("not poisoned");
            let due = last + if left > 0 { sending } else { answering };
            if tokio::time::Instant::now() >= due {
                return left == 0;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Which request a response belongs to, for the errors of reading it.
#[derive(Clone, Copy)]
struct Req<'a> {
    /// The registry (`host[:port]`).
    registry: &'a str,
    method: &'a Method,
    url: &'a Url,
}

impl Req<'_> {
    /// `GET https://…`, without query or user info.
    fn shown(&self) -> String {
        format!("{} {}", self.method, shown(self.url))
    }

    /// Stalled for the read timeout `timeout`.
    fn read_timeout(&self, what: &'static str, timeout: Duration) -> Error {
        self.stalled(what, timeout, "read_timeout")
    }

    fn stalled(&self, what: &'static str, timeout: Duration, setting: &'static str) -> Error {
        Error::ReadTimeout {
            registry: self.registry.to_owned(),
            request: self.shown(),
            what,
            timeout,
            setting,
        }
    }

    /// `announced`: the `Content-Length` over the bound; `None` when more bytes came.
    fn too_large(&self, expected: String, announced: Option<u64>, advice: &'static str) -> Error {
        Error::ResponseTooLarge {
            registry: self.registry.to_owned(),
            request: self.shown(),
            expected,
            announced,
            advice,
        }
    }
}

/// `4 MiB (4194304 bytes)`, or `1000 bytes`.
fn bytes_shown(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB ({n} bytes)", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// One repository on one registry, with the auth scopes every request to it uses.
#[derive(Clone, Debug)]
pub(crate) struct Repo {
    pub(crate) host: String,
    pub(crate) name: String,
    pub(crate) scopes: Vec<String>,
}

impl Repo {
    pub(crate) fn pull(r: &Reference) -> Self {
        Self {
            host: r.api_host().to_owned(),
            name: r.repository.clone(),
            scopes: vec![format!("repository:{}:pull", r.repository)],
        }
    }

    /// Push access to `r`, plus pull access to `also_pull` (for cross-repo mounts).
    pub(crate) fn push(r: &Reference, also_pull: Option<&Reference>) -> Self {
        let mut scopes = vec![format!("repository:{}:pull,push", r.repository)];
        if let Some(b) = also_pull
            && b.api_host() == r.api_host()
            && b.repository != r.repository
        {
            scopes.push(format!("repository:{}:pull", b.repository));
        }
        Self {
            host: r.api_host().to_owned(),
            name: r.repository.clone(),
            scopes,
        }
    }
}

/// What happened to a blob on its way to a registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlobOutcome {
    Skipped,
    Mounted,
    Uploaded(u64),
}

#[derive(Default)]
struct State {
    schemes: HashMap<String, &'static str>,
    challenges: HashMap<String, Challenge>,
    tokens: HashMap<String, Token>,
    credentials: HashMap<String, Option<Credential>>,
}

struct Inner {
    http: reqwest::Client,
    options: RegistryOptions,
    config: DockerConfig,
    state: tokio::sync::Mutex<State>,
    /// Held while fetching a token, so parallel requests share one fetch.
    token_fetch: tokio::sync::Mutex<()>,
}

/// A registry client; cheap to clone (shared connection pool, token cache).
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.inner.options)
            .field("docker_config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A URL fit for messages: without its query (upload state, pre-signed storage signatures)
/// and without user info.
fn shown(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// `host[:port]` of `url`, as registries and `insecure_hosts` are written.
fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// Whether `host` (`host[:port]`) may be spoken to in plain HTTP: loopback, or listed in
/// `insecure`.
///
/// Docker Hub's names are one registry: `docker.io` (what users write), `index.docker.io` and
/// `registry-1.docker.io` (where its API is served) — a setting for one applies to all (a
/// local pull-through proxy standing in for `docker.io` is the usual case).
fn plain_http_allowed(insecure: &[String], host: &str) -> bool {
    let hub = crate::auth::is_docker_hub;
    is_loopback(host) || insecure.iter().any(|h| h == host || (hub(h) && hub(host)))
}

/// Whether `url` may be used in plain HTTP: its host (with or without the port) is allowed.
fn plain_http_allowed_for(insecure: &[String], url: &Url) -> bool {
    let with_port = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(80)
    );
    plain_http_allowed(insecure, &host_port(url)) || plain_http_allowed(insecure, &with_port)
}

/// Whether a registry at `from` (its URL, the scheme it is spoken to in) may send fastbuild to
/// `to` (an upload `Location` or a redirect): only `http`/`https`, and plain HTTP only when both
/// hosts are allowed plain HTTP — an HTTPS registry's uploads are never downgraded otherwise.
/// `Err` says why not and what to do.
fn check_target(insecure: &[String], from: &Url, to: &Url) -> std::result::Result<(), String> {
    check_scheme(insecure, from, to, "upload/redirect")
}

/// [`check_target`]'s rule for any URL a registry at `from` points fastbuild to; `setting` names
/// the registry's configuration to fix in the refusal (`upload/redirect`, `token realm`).
fn check_scheme(
    insecure: &[String],
    from: &Url,
    to: &Url,
    setting: &str,
) -> std::result::Result<(), String> {
    match to.scheme() {
        "https" => Ok(()),
        "http" => {
            let target = host_port(to);
            if !plain_http_allowed_for(insecure, to) {
                return Err(format!(
                    "plain HTTP to `{target}` is not allowed (only loopback and insecure hosts are \
                     used without TLS); fix the registry's {setting} configuration, or mark \
                     `{target}` insecure (`insecure_registries` in fastbuild.yaml, or \
                     `--insecure-registry {target}`) if it is meant to be used over plain HTTP"
                ));
            }
            if from.scheme() == "https" && !plain_http_allowed_for(insecure, from) {
                let registry = host_port(from);
                return Err(format!(
                    "`{registry}` is spoken to over HTTPS and is not allowed plain HTTP, so it \
                     cannot downgrade a request to plain HTTP; fix the registry's {setting} \
                     configuration, or mark `{registry}` insecure \
                     (`insecure_registries` in fastbuild.yaml, or `--insecure-registry {registry}`) if \
                     plain HTTP is intended"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "only http and https URLs are followed, not `{other}:`"
        )),
    }
}

/// The certificates of the PEM bundles `paths` (extra CAs for registries); an unreadable file or
/// one without a certificate is an [`Error::CaFile`] naming it.
pub fn ca_certificates(paths: &[PathBuf]) -> Result<Vec<reqwest::Certificate>> {
    let mut all = Vec::new();
    for path in paths {
        let ca_error = |reason: String| Error::CaFile {
            path: path.clone(),
            reason,
        };
        let pem = fs_err::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".to_owned()));
        }
        all.extend(certs);
    }
    Ok(all)
}

/// The most redirects followed for one request (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// A redirect refused by [`redirect_policy`]; turned into [`Error::LocationRefused`].
#[derive(Debug)]
struct RedirectRefused {
    /// Who redirected (`host[:port]`).
    from: String,
    /// Where to (no query, no user info).
    location: String,
    reason: String,
}

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` redirected to `{}`, which is refused: {}",
            self.from, self.location, self.reason
        )
    }
}

impl std::error::Error for RedirectRefused {}

/// reqwest's redirect handling, narrowed. reqwest drops `Authorization` when a redirect
/// changes the host or the port, but keeps it when only the scheme changes and follows
/// HTTPS → HTTP downgrades. Here every hop must pass [`check_target`] (judged against the
/// URL first requested) and a hop that changes only the scheme is refused, so credentials
/// never reach another origin and never go out in plain HTTP to a host not allowed it.
fn redirect_policy(insecure: Vec<String>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let (Some(first), Some(previous)) = (
            attempt.previous().first().cloned(),
            attempt.previous().last().cloned(),
        ) else {
            return attempt.follow();
        };
        let next = attempt.url().clone();
        let refuse = |reason: String| RedirectRefused {
            from: host_port(&previous),
            location: shown(&next),
            reason,
        };
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(refuse(format!("more than {MAX_REDIRECTS} redirects")));
        }
        if let Err(reason) = check_target(&insecure, &first, &next) {
            return attempt.error(refuse(reason));
        }
        if next.scheme() != previous.scheme()
            && next.host_str() == previous.host_str()
            && next.port_or_known_default() == previous.port_or_known_default()
        {
            return attempt.error(refuse(
                "it changes only the scheme, and the request's credentials would follow it \
                 to that other origin; fix the registry's redirect configuration"
                    .to_owned(),
            ));
        }
        attempt.follow()
    })
}

fn transport(method: &Method, url: &Url) -> impl FnOnce(reqwest::Error) -> Error {
    let (method, url) = (method.to_string(), shown(url));
    // reqwest's own message names the URL it was using, query included: after a redirect to
    // blob storage that is a pre-signed URL whose query is a credential.
    move |source| {
        let refused =
            std::error::Error::source(&source).and_then(|e| e.downcast_ref::<RedirectRefused>());
        if let Some(r) = refused {
            return Error::LocationRefused {
                registry: r.from.clone(),
                kind: "a redirect to".to_owned(),
                location: r.location.clone(),
                reason: r.reason.clone(),
            };
        }
        Error::Transport {
            method,
            url,
            source: source.without_url(),
        }
    }
}

/// An unexpected status: the start of the body (up to [`MAX_ERROR_BODY_BYTES`] read, and only
/// while it keeps coming: a stalled or endless error body is cut, not waited for).
async fn status_error(
    method: &Method,
    url: &Url,
    mut resp: Response,
    read_timeout: Duration,
) -> Error {
    let status = resp.status().as_u16();
    let mut read = Vec::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(read_timeout, resp.chunk()).await {
        let room = MAX_ERROR_BODY_BYTES as usize - read.len();
        read.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() >= room {
            break;
        }
    }
    let body = String::from_utf8_lossy(&read);
    let mut body: String = body.trim().chars().take(512).collect();
    if body.starts_with('<') {
        body.clear();
    }
    Error::Status {
        method: method.to_string(),
        url: shown(url),
        status,
        body,
    }
}

/// Resolves an upload `Location` (absolute or relative, query kept) against the request URL.
pub fn resolve_location(base: &Url, location: &str) -> Result<Url> {
    base.join(location).map_err(|_| Error::Status {
        method: "POST".to_owned(),
        url: shown(base),
        status: 202,
        body: format!("unusable Location header `{location}`"),
    })
}

/// The upload `Location` of `resp` (to a request to `base`), resolved; refused unless
/// [`check_target`] allows a registry at `registry` (its own URL) to send fastbuild there.
fn location_of(resp: &Response, base: &Url, registry: &Url, insecure: &[String]) -> Result<Url> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Status {
            method: "POST".to_owned(),
            url: shown(base),
            status: resp.status().as_u16(),
            body: "response has no Location header".to_owned(),
        })?;
    let url = resolve_location(base, loc)?;
    check_target(insecure, registry, &url).map_err(|reason| Error::LocationRefused {
        registry: host_port(registry),
        kind: "an upload location".to_owned(),
        location: shown(&url),
        reason,
    })?;
    Ok(url)
}

fn check_digest_header(resp: &Response, expected: &Digest, what: &str) -> Result<()> {
    if let Some(v) = resp.headers().get("docker-content-digest") {
        let got = v.to_str().unwrap_or("<not UTF-8>");
        if got != expected.to_string() {
            return Err(Error::DigestMismatch {
                what: what.to_owned(),
                expected: expected.to_string(),
                actual: got.to_owned(),
            });
        }
    }
    Ok(())
}

/// The target of a `Link: <…>; rel="next"` header (tag list pagination), as written.
fn link_next(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            params
                .split(';')
                .any(|p| {
                    p.trim()
                        .strip_prefix("rel=")
                        .is_some_and(|r| r.trim_matches('"').split(' ').any(|r| r == "next"))
                })
                .then(|| target.to_owned())
        })
}

impl RegistryClient {
    /// A client with `options`; reads the Docker config and CA files now.
    pub fn new(options: RegistryOptions) -> Result<Self> {
        let mut config = DockerConfig::load(options.docker_config.as_deref())?;
        config.set_helper_path(options.credential_helper_path.clone());
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(options.connect_timeout)
            .user_agent(options.user_agent.clone())
            .redirect(redirect_policy(options.insecure_hosts.clone()));
        for c in ca_certificates(&options.ca_files)? {
            builder = builder.add_root_certificate(c);
        }
        let http = builder.build().map_err(Error::Client)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                options,
                config,
                state: tokio::sync::Mutex::new(State::default()),
                token_fetch: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &RegistryOptions {
        &self.inner.options
    }

    /// [`status_error`] with this client's read timeout.
    async fn status_error(&self, method: &Method, url: &Url, resp: Response) -> Error {
        status_error(method, url, resp, self.inner.options.read_timeout).await
    }

    /// Sends `rb` and waits for the response: at most the read timeout after sending it, or,
    /// for an upload (its body reporting to `upload`), while the connection keeps taking the
    /// body with pauses shorter than the read timeout, then at most the request timeout for
    /// the answer (a registry may take a while to commit a large blob). Longer is an
    /// [`Error::ReadTimeout`].
    async fn response(
        &self,
        req: Req<'_>,
        rb: reqwest::RequestBuilder,
        upload: Option<&Progress>,
    ) -> Result<Response> {
        let options = &self.inner.options;
        let Some(progress) = upload else {
            let timeout = options.read_timeout;
            return match tokio::time::timeout(timeout, rb.send()).await {
                Ok(resp) => resp.map_err(transport(req.method, req.url)),
                Err(_) => Err(req.read_timeout("did not answer", timeout)),
            };
        };
        progress.sent();
        tokio::select! {
            resp = rb.send() => resp.map_err(transport(req.method, req.url)),
            all_taken = progress.stalled(options.read_timeout, options.request_timeout) => {
                Err(if all_taken {
                    req.stalled(
                        "took the whole upload but did not answer",
                        options.request_timeout,
                        "request_timeout",
                    )
                } else {
                    req.read_timeout("stopped taking the upload", options.read_timeout)
                })
            }
        }
    }

    /// The next piece of a response body; `None` at its end. No piece for the read timeout is
    /// an [`Error::ReadTimeout`].
    async fn next_chunk(&self, req: Req<'_>, resp: &mut Response) -> Result<Option<bytes::Bytes>> {
        let timeout = self.inner.options.read_timeout;
        match tokio::time::timeout(timeout, resp.chunk()).await {
            Ok(chunk) => chunk.map_err(transport(req.method, req.url)),
            Err(_) => Err(req.read_timeout("sent no more of its response", timeout)),
        }
    }

    /// The whole body of `resp`, refused (without reading on) past `limit` bytes: `what` is
    /// what it should be (`a manifest or index`), `advice` what to do when it is too large.
    async fn read_capped(
        &self,
        req: Req<'_>,
        mut resp: Response,
        limit: u64,
        what: &str,
        advice: &'static str,
    ) -> Result<Vec<u8>> {
        let expected = || format!("{what} may be at most {}", bytes_shown(limit));
        if let Some(n) = resp.content_length()
            && n > limit
        {
            return Err(req.too_large(expected(), Some(n), advice));
        }
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk(req, &mut resp).await? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(req.too_large(expected(), None, advice));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Runs one attempt of a small request, failing it after the request timeout.
    async fn within_deadline<T>(
        &self,
        req: Req<'_>,
        attempt: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let deadline = self.inner.options.request_timeout;
        tokio::time::timeout(deadline, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Error::DeadlineExceeded {
                    registry: req.registry.to_owned(),
                    request: req.shown(),
                    deadline,
                })
            })
    }

    fn allows_http(&self, host: &str) -> bool {
        plain_http_allowed(&self.inner.options.insecure_hosts, host)
    }

    /// The status `url` answers with; `Err(None)` when it does not answer within the read
    /// timeout.
    async fn probe(&self, url: &str) -> std::result::Result<StatusCode, Option<reqwest::Error>> {
        let timeout = self.inner.options.read_timeout;
        match tokio::time::timeout(timeout, self.inner.http.get(url).send()).await {
            Ok(answer) => answer.map(|r| r.status()).map_err(Some),
            Err(_) => Err(None),
        }
    }

    /// `https` or `http` for `host`: HTTPS when it answers; plain HTTP only for loopback and
    /// insecure hosts; a registry speaking HTTP to us otherwise is diagnosed in plain words.
    pub async fn scheme(&self, host: &str) -> Result<&'static str> {
        if let Some(s) = self.inner.state.lock().await.schemes.get(host) {
            return Ok(s);
        }
        let https = format!("https://{host}/v2/");
        let http = format!("http://{host}/v2/");
        let scheme = match self.probe(&https).await {
            Ok(_) => "https",
            Err(tls_err) => {
                // Only a registry answer counts: a TLS server answers plain HTTP with a 400.
                let http_ok = self
                    .probe(&http)
                    .await
                    .is_ok_and(|s| s.is_success() || s == StatusCode::UNAUTHORIZED);
                if http_ok && self.allows_http(host) {
                    "http"
                } else if http_ok {
                    return Err(Error::PlainHttp {
                        host: host.to_owned(),
                    });
                } else {
                    return Err(match tls_err {
                        None => Error::ReadTimeout {
                            registry: host.to_owned(),
                            request: format!("GET {https}"),
                            what: "did not answer",
                            timeout: self.inner.options.read_timeout,
                            setting: "read_timeout",
                        },
                        Some(e) if error_chain(&e).contains("certificate") => Error::TlsUntrusted {
                            host: host.to_owned(),
                            source: e,
                        },
                        Some(e) => Error::Transport {
                            method: "GET".to_owned(),
                            url: https,
                            source: e,
                        },
                    });
                }
            }
        };
        tracing::debug!(host, scheme, "registry scheme");
        self.inner
            .state
            .lock()
            .await
            .schemes
            .insert(host.to_owned(), scheme);
        Ok(scheme)
    }

    async fn url(&self, repo: &Repo, rest: &str) -> Result<Url> {
        let scheme = self.scheme(&repo.host).await?;
        let s = format!("{scheme}://{}/v2/{}/{rest}", repo.host, repo.name);
        Url::parse(&s).map_err(|_| Error::InvalidReference {
            value: format!("{}/{}", repo.host, repo.name),
            reason: "it does not form a valid URL".to_owned(),
        })
    }

    /// The registry's own origin: `scheme://host[:port]/`.
    async fn registry_url(&self, repo: &Repo) -> Result<Url> {
        let scheme = self.scheme(&repo.host).await?;
        Url::parse(&format!("{scheme}://{}/", repo.host)).map_err(|_| Error::InvalidReference {
            value: repo.host.clone(),
            reason: "it does not form a valid URL".to_owned(),
        })
    }

    /// The checked upload `Location` of `resp`, a response to `base`.
    async fn location(&self, repo: &Repo, resp: &Response, base: &Url) -> Result<Url> {
        let registry = self.registry_url(repo).await?;
        location_of(resp, base, &registry, &self.inner.options.insecure_hosts)
    }

    async fn credential(&self, host: &str) -> Result<Option<Credential>> {
        if let Some(c) = self.inner.state.lock().await.credentials.get(host) {
            return Ok(c.clone());
        }
        let c = self.inner.config.credential_for(host).await?;
        self.inner
            .state
            .lock()
            .await
            .credentials
            .insert(host.to_owned(), c.clone());
        Ok(c)
    }

    async fn auth_header(&self, repo: &Repo) -> Result<Option<String>> {
        let challenge = self
            .inner
            .state
            .lock()
            .await
            .challenges
            .get(&repo.host)
            .cloned();
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        match challenge.scheme.as_str() {
            "basic" => Ok(match self.credential(&repo.host).await? {
                Some(Credential::Basic { username, password }) => Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                )),
                _ => None,
            }),
            "bearer" => {
                let key = format!("{} {}", repo.host, repo.scopes.join(" "));
                let cached = |state: &State| {
                    state
                        .tokens
                        .get(&key)
                        .filter(|t| t.expires > Instant::now())
                        .map(|t| format!("Bearer {}", t.value))
                };
                if let Some(h) = cached(&*self.inner.state.lock().await) {
                    return Ok(Some(h));
                }
                let _single_flight = self.inner.token_fetch.lock().await;
                if let Some(h) = cached(&*self.inner.state.lock().await) {
                    return Ok(Some(h));
                }
                // Boxed: the token fetch (rare) would otherwise sit inside every request future.
                let token = Box::pin(self.fetch_token(repo, &challenge)).await?;
                let header = format!("Bearer {}", token.value);
                self.inner.state.lock().await.tokens.insert(key, token);
                Ok(Some(header))
            }
            _ => Ok(None),
        }
    }

    /// Sends a request built by `build`, adding auth; on a 401 learns the challenge and
    /// retries once. A second 401 is an [`Error::Unauthorized`].
    ///
    /// Credentials go only to the registry's own origin (scheme, host and port): a `url` on
    /// another origin (an upload `Location` on blob storage) is sent without them, as
    /// containerd and go-containerregistry do, and its 401 is not taken as the registry's.
    ///
    /// The response must come within the read timeout of sending the request; see
    /// [`Self::send_upload`] for requests with a large body.
    async fn send(
        &self,
        repo: &Repo,
        method: Method,
        url: &Url,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
    ) -> Result<Response> {
        self.send_with(repo, method, url, None, build).await
    }

    /// [`Self::send`] for an upload, whose body reports to `progress` (see [`BlobData::body`]):
    /// the read timeout counts from the last piece of the body the connection took, so a large
    /// upload on a slow link is not cut, but a registry that stops taking it is; the answer to
    /// the whole body may take up to the request timeout (see [`Self::response`]).
    async fn send_upload(
        &self,
        repo: &Repo,
        method: Method,
        url: &Url,
        progress: &Progress,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
    ) -> Result<Response> {
        self.send_with(repo, method, url, Some(progress), build)
            .await
    }

    async fn send_with(
        &self,
        repo: &Repo,
        method: Method,
        url: &Url,
        upload: Option<&Progress>,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
    ) -> Result<Response> {
        let same_origin = url.origin() == self.registry_url(repo).await?.origin();
        let req = Req {
            registry: &repo.host,
            method: &method,
            url,
        };
        for attempt in 0..2 {
            let mut rb = build(self.inner.http.request(method.clone(), url.clone()))?;
            let auth = if same_origin {
                self.auth_header(repo).await?
            } else {
                None
            };
            let sent_auth = auth.is_some();
            if let Some(h) = &auth {
                rb = rb.header(AUTHORIZATION, h);
            }
            let resp = self.response(req, rb, upload).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if !same_origin {
                return Err(Error::Unauthorized {
                    action: format!("{method} `{}`", repo.name),
                    registry: repo.host.clone(),
                    reason: format!(
                        "`{}`, where the registry sent the upload, asked for credentials, and \
                         they are only ever sent to the registry itself",
                        host_port(url)
                    ),
                });
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            let action = format!("{method} `{}`", repo.name);
            let Some(challenge) = challenge else {
                return Err(Error::Unauthorized {
                    action,
                    registry: repo.host.clone(),
                    reason: "it answered 401 without a WWW-Authenticate challenge".to_owned(),
                });
            };
            let has_cred = self.credential(&repo.host).await?.is_some();
            if attempt == 1 || (sent_auth && challenge.scheme == "basic") {
                return Err(Error::Unauthorized {
                    action,
                    registry: repo.host.clone(),
                    reason: if has_cred {
                        "the configured credentials were refused".to_owned()
                    } else {
                        "it requires credentials and none are configured".to_owned()
                    },
                });
            }
            if challenge.scheme == "basic" && !has_cred {
                return Err(Error::Unauthorized {
                    action,
                    registry: repo.host.clone(),
                    reason: "it requires credentials and none are configured".to_owned(),
                });
            }
            let mut state = self.inner.state.lock().await;
            let key = format!("{} {}", repo.host, repo.scopes.join(" "));
            // Drop the token we sent (expired or revoked), not one another task just fetched.
            if let Some(sent) = &auth
                && state
                    .tokens
                    .get(&key)
                    .is_some_and(|t| *sent == format!("Bearer {}", t.value))
            {
                state.tokens.remove(&key);
            }
            state.challenges.insert(repo.host.clone(), challenge);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Runs `f(attempt)` until it succeeds, fails with a non-retriable error or runs out of
    /// attempts; sleeps with exponential backoff and jitter in between.
    pub(crate) async fn with_retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let policy = &self.inner.options.retry;
        let mut delay = policy.initial_backoff;
        let mut attempt = 1;
        loop {
            match f(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retriable() && attempt < policy.max_attempts => {
                    let jitter = 0.5 + rand::random::<f64>();
                    let sleep = delay.mul_f64(jitter);
                    tracing::warn!(what, attempt, error = %e, retry_in_ms = sleep.as_millis() as u64, "retrying");
                    tokio::time::sleep(sleep).await;
                    delay = (delay * 2).min(policy.max_backoff);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the blob exists in the repository.
    pub(crate) async fn blob_exists(&self, repo: &Repo, digest: &Digest) -> Result<bool> {
        let url = self.url(repo, &format!("blobs/{digest}")).await?;
        let req = Req {
            registry: &repo.host,
            method: &Method::HEAD,
            url: &url,
        };
        self.with_retry("check a blob", |_| {
            self.within_deadline(req, async {
                let resp = self.send(repo, Method::HEAD, &url, Ok).await?;
                match resp.status().as_u16() {
                    200 => Ok(true),
                    404 => Ok(false),
                    _ => Err(self.status_error(&Method::HEAD, &url, resp).await),
                }
            })
        })
        .await
    }

    /// Tries a cross-repository mount; `Ok(None)` when mounted, `Ok(Some(location))` when the
    /// registry started an ordinary upload instead.
    pub(crate) async fn mount_blob(
        &self,
        repo: &Repo,
        digest: &Digest,
        from: &str,
    ) -> Result<Option<Url>> {
        let mut url = self.url(repo, "blobs/uploads/").await?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let req = Req {
            registry: &repo.host,
            method: &Method::POST,
            url: &url,
        };
        self.with_retry("mount a blob", |_| {
            self.within_deadline(req, async {
                let resp = self
                    .send(repo, Method::POST, &url, |rb| {
                        Ok(rb.header(CONTENT_LENGTH, 0))
                    })
                    .await?;
                match resp.status().as_u16() {
                    201 => {
                        check_digest_header(
                            &resp,
                            digest,
                            &format!("mounted blob in `{}`", repo.name),
                        )?;
                        Ok(None)
                    }
                    202 => Ok(Some(self.location(repo, &resp, &url).await?)),
                    _ => Err(self.status_error(&Method::POST, &url, resp).await),
                }
            })
        })
        .await
    }

    async fn start_upload(&self, repo: &Repo) -> Result<Url> {
        let url = self.url(repo, "blobs/uploads/").await?;
        let req = Req {
            registry: &repo.host,
            method: &Method::POST,
            url: &url,
        };
        self.within_deadline(req, async {
            let resp = self
                .send(repo, Method::POST, &url, |rb| {
                    Ok(rb.header(CONTENT_LENGTH, 0))
                })
                .await?;
            if resp.status().as_u16() != 202 {
                return Err(self.status_error(&Method::POST, &url, resp).await);
            }
            self.location(repo, &resp, &url).await
        })
        .await
    }

    /// Uploads a blob (monolithic up to `chunk_size`, chunked above), restarting the upload
    /// session on retriable failures. `started` is a session already opened (by a mount).
    pub(crate) async fn upload_blob(
        &self,
        repo: &Repo,
        digest: &Digest,
        size: u64,
        data: &BlobData,
        started: Option<Url>,
    ) -> Result<u64> {
        let started = std::sync::Mutex::new(started);
        let chunk = self.inner.options.chunk_size.max(1);
        self.with_retry("upload a blob", |_| {
            let first = started.lock().expect("not poisoned").take();
            async move {
                let mut location = match first {
                    Some(l) => l,
                    None => self.start_upload(repo).await?,
                };
                let mut final_body = None;
                if size <= chunk {
                    final_body = Some((0, size));
                } else {
                    let mut offset = 0;
                    while offset < size {
                        let len = chunk.min(size - offset);
                        let url = location.clone();
                        let progress = Progress::new();
                        let resp = self
                            .send_upload(repo, Method::PATCH, &url, &progress, |rb| {
                                Ok(rb
                                    .header(CONTENT_TYPE, "application/octet-stream")
                                    .header(CONTENT_LENGTH, len)
                                    .header(
                                        "content-range",
                                        format!("{}-{}", offset, offset + len - 1),
                                    )
                                    .body(data.body(offset, len, &progress)?))
                            })
                            .await?;
                        if resp.status().as_u16() != 202 {
                            return Err(self.status_error(&Method::PATCH, &url, resp).await);
                        }
                        location = self.location(repo, &resp, &url).await?;
                        offset += len;
                    }
                }
                let mut url = location;
                url.query_pairs_mut()
                    .append_pair("digest", &digest.to_string());
                let progress = Progress::new();
                let resp = self
                    .send_upload(repo, Method::PUT, &url, &progress, |rb| {
                        let rb = rb.header(CONTENT_TYPE, "application/octet-stream");
                        Ok(match final_body {
                            Some((start, len)) => rb
                                .header(CONTENT_LENGTH, len)
                                .body(data.body(start, len, &progress)?),
                            None => rb.header(CONTENT_LENGTH, 0),
                        })
                    })
                    .await?;
                if resp.status().as_u16() != 201 {
                    return Err(self.status_error(&Method::PUT, &url, resp).await);
                }
                check_digest_header(&resp, digest, &format!("blob uploaded to `{}`", repo.name))?;
                Ok(size)
            }
        })
        .await
    }

    /// Ensures the blob is in `repo`: skip if present, else mount from `mount_from` (same
    /// registry), else upload from `data`.
    /// The first steps of sending a blob: `Ok(Skipped)` when the target has it, `Ok(Mounted)`
    /// when `mount_from` (a repository of the same registry) lent it; otherwise `Err` with the
    /// upload a refused mount started, if any, to send the bytes to.
    pub(crate) async fn present_or_mounted(
        &self,
        repo: &Repo,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<std::result::Result<BlobOutcome, Option<Url>>> {
        if self.blob_exists(repo, digest).await? {
            tracing::debug!(%digest, repo = repo.name, "blob already present");
            return Ok(Ok(BlobOutcome::Skipped));
        }
        if let Some(from) = mount_from {
            return Ok(match self.mount_blob(repo, digest, from).await? {
                None => {
                    tracing::debug!(%digest, from, "blob mounted");
                    Ok(BlobOutcome::Mounted)
                }
                Some(location) => Err(Some(location)),
            });
        }
        Ok(Err(None))
    }

    pub(crate) async fn push_blob(
        &self,
        repo: &Repo,
        digest: &Digest,
        size: u64,
        data: &BlobData,
        mount_from: Option<&str>,
    ) -> Result<BlobOutcome> {
        let started = match self.present_or_mounted(repo, digest, mount_from).await? {
            Ok(done) => return Ok(done),
            Err(started) => started,
        };
        let n = self.upload_blob(repo, digest, size, data, started).await?;
        tracing::debug!(%digest, size, "blob uploaded");
        Ok(BlobOutcome::Uploaded(n))
    }

    /// `PUT`s a manifest under `reference` (tag or digest) with `Content-Type: media_type`.
    pub(crate) async fn put_manifest(
        &self,
        repo: &Repo,
        reference: &str,
        media_type: &str,
        bytes: &bytes::Bytes,
    ) -> Result<()> {
        let url = self.url(repo, &format!("manifests/{reference}")).await?;
        let digest = Digest::of(bytes);
        let req = Req {
            registry: &repo.host,
            method: &Method::PUT,
            url: &url,
        };
        self.with_retry("push a manifest", |_| {
            self.within_deadline(req, async {
                let resp = self
                    .send(repo, Method::PUT, &url, |rb| {
                        Ok(rb
                            .header(CONTENT_TYPE, media_type)
                            .header(CONTENT_LENGTH, bytes.len())
                            .body(bytes.clone()))
                    })
                    .await?;
                if resp.status().as_u16() != 201 {
                    return Err(self.status_error(&Method::PUT, &url, resp).await);
                }
                check_digest_header(
                    &resp,
                    &digest,
                    &format!("manifest `{}:{reference}`", repo.name),
                )
            })
        })
        .await
    }

    /// Fetches the manifest (or index) `reference` points at; `Ok(None)` on 404.
    pub(crate) async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<Option<FetchedManifest>> {
        let repo = Repo::pull(reference);
        let url = self
            .url(
                &repo,
                &format!("manifests/{}", reference.manifest_reference()),
            )
            .await?;
        let req = Req {
            registry: &repo.host,
            method: &Method::GET,
            url: &url,
        };
        let fetched = self
            .with_retry("fetch a manifest", |_| {
                self.within_deadline(req, async {
                    let resp = self
                        .send(&repo, Method::GET, &url, |rb| {
                            Ok(rb.header(ACCEPT, MANIFEST_ACCEPT))
                        })
                        .await?;
                    match resp.status().as_u16() {
                        200 => {}
                        404 => return Ok(None),
                        _ => return Err(self.status_error(&Method::GET, &url, resp).await),
                    }
                    let header_type = resp
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
                    let bytes = self
                        .read_capped(
                            req,
                            resp,
                            MAX_MANIFEST_BYTES,
                            "a manifest or index",
                            "Real manifests are a few KiB: check that the reference names an image \
                             and that the registry is the one meant.",
                        )
                        .await?;
                    Ok(Some((header_type, bytes)))
                })
            })
            .await?;
        let Some((header_type, bytes)) = fetched else {
            return Ok(None);
        };
        let digest = Digest::of(&bytes);
        if let Some(expected) = &reference.digest
            && *expected != digest
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest of `{reference}`"),
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        let media_type = match header_type {
            Some(t) if t != "application/json" && t != "text/plain" && !t.is_empty() => t,
            _ => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_default(),
        };
        Ok(Some(FetchedManifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// Fetches the manifest or index `reference` points at (by tag or digest).
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest> {
        self.fetch_manifest(reference)
            .await?
            .ok_or_else(|| Error::Status {
                method: "GET".to_owned(),
                url: format!(
                    "{}/v2/{}/manifests/{}",
                    reference.api_host(),
                    reference.repository,
                    reference.manifest_reference()
                ),
                status: 404,
                body: "manifest unknown".to_owned(),
            })
    }

    /// Tags an existing manifest: fetches `source` (tag or digest; verified when a digest) and
    /// `PUT`s the same bytes under `target`'s tag (or digest). The digest does not change.
    /// `target` must be in the same repository, or one that already holds the blobs.
    pub async fn tag_manifest(&self, source: &Reference, target: &Reference) -> Result<Digest> {
        let fetched = self.get_manifest(source).await?;
        let repo = Repo::push(target, Some(source));
        let bytes = bytes::Bytes::from(fetched.bytes);
        self.put_manifest(
            &repo,
            &target.manifest_reference(),
            &fetched.media_type,
            &bytes,
        )
        .await?;
        Ok(fetched.digest)
    }

    /// Lists the tags of `repository` (`GET /v2/<name>/tags/list`), following `Link: <…>;
    /// rel="next"` pagination (on the registry's own origin only) with `page_size` tags asked
    /// per page (`n`; `None`: the registry's default). A repository the registry does not know
    /// has no tags. Each page is read up to 4 MiB.
    pub async fn list_tags(
        &self,
        repository: &Reference,
        page_size: Option<u32>,
    ) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let repo = Repo::pull(repository);
        let mut url = self.url(&repo, "tags/list").await?;
        if let Some(n) = page_size {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        let origin = url.origin();
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let req = Req {
                registry: &repo.host,
                method: &Method::GET,
                url: &url,
            };
            let page = self
                .with_retry("list tags", |_| {
                    self.within_deadline(req, async {
                        let resp = self.send(&repo, Method::GET, &url, Ok).await?;
                        match resp.status().as_u16() {
                            200 => {}
                            404 => return Ok(None),
                            _ => return Err(self.status_error(&Method::GET, &url, resp).await),
                        }
                        let next = link_next(resp.headers());
                        let body = self
                            .read_capped(
                                req,
                                resp,
                                MAX_MANIFEST_BYTES,
                                "a page of a tag list",
                                "Ask for smaller pages, or check that the registry is the one meant.",
                            )
                            .await?;
                        Ok(Some((body, next)))
                    })
                })
                .await?;
            let Some((body, next)) = page else {
                return Ok(tags);
            };
            let page: Page = serde_json::from_slice(&body).map_err(|e| Error::Json {
                what: format!("the tag list of `{}`", repository.repository_name()),
                source: e,
            })?;
            tags.extend(page.tags.unwrap_or_default());
            let Some(next) = next else {
                return Ok(tags);
            };
            let next_url = url.join(&next).map_err(|_| Error::Status {
                method: "GET".to_owned(),
                url: shown(&url),
                status: 200,
                body: format!("unusable Link header `{next}`"),
            })?;
            if next_url.origin() != origin {
                return Err(Error::LocationRefused {
                    registry: repo.host.clone(),
                    kind: "a next-page Link to".to_owned(),
                    location: shown(&next_url),
                    reason: "it is on another origin; tag list pages are only fetched from the \
                             registry itself"
                        .to_owned(),
                });
            }
            if next_url == url {
                return Ok(tags);
            }
            url = next_url;
        }
        Err(Error::Status {
            method: "GET".to_owned(),
            url: shown(&url),
            status: 200,
            body: format!("the tag list goes on past {MAX_TAG_PAGES} pages; stopped"),
        })
    }

    /// Deletes the manifest `reference` names by its digest (`DELETE
    /// /v2/<name>/manifests/<digest>`; registries remove the tags pointing at it too). `Ok(false)`
    /// when the registry does not have it. A registry with deletion disabled (405, distribution's
    /// `UNSUPPORTED`) is an [`Error::DeleteDisabled`].
    pub async fn delete_manifest(&self, reference: &Reference) -> Result<bool> {
        let Some(digest) = &reference.digest else {
            return Err(Error::InvalidReference {
                value: reference.to_string(),
                reason: "manifests are deleted by digest; give `@sha256:…`".to_owned(),
            });
        };
        let repo = Repo {
            host: reference.api_host().to_owned(),
            name: reference.repository.clone(),
            scopes: vec![format!("repository:{}:delete", reference.repository)],
        };
        let url = self.url(&repo, &format!("manifests/{digest}")).await?;
        let req = Req {
            registry: &repo.host,
            method: &Method::DELETE,
            url: &url,
        };
        self.with_retry("delete a manifest", |_| {
            self.within_deadline(req, async {
                let resp = self.send(&repo, Method::DELETE, &url, Ok).await?;
                match resp.status().as_u16() {
                    200 | 202 | 204 => Ok(true),
                    404 => Ok(false),
                    405 => {
                        let Error::Status { body, .. } =
                            self.status_error(&Method::DELETE, &url, resp).await
                        else {
                            unreachable!("status_error makes a Status")
                        };
                        Err(Error::DeleteDisabled {
                            registry: repo.host.clone(),
                            request: req.shown(),
                            body,
                        })
                    }
                    _ => Err(self.status_error(&Method::DELETE, &url, resp).await),
                }
            })
        })
        .await
    }

    /// Starts downloading a blob of `size` bytes (its descriptor's) from `source`'s repository:
    /// the response, checked to be a 200 not announcing more than `size` bytes, and its URL (for
    /// [`Self::blob_piece`]). For streamed copies; [`Self::download_blob`] stores one in a file.
    pub(crate) async fn open_blob(
        &self,
        source: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<(Response, Url)> {
        let repo = Repo::pull(source);
        let url = self.url(&repo, &format!("blobs/{digest}")).await?;
        let resp = self.send(&repo, Method::GET, &url, Ok).await?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        if let Some(n) = resp.content_length()
            && n > size
        {
            let req = Req {
                registry: &repo.host,
                method: &Method::GET,
                url: &url,
            };
            return Err(req.too_large(
                format!("blob `{digest}` has {size} bytes by its descriptor"),
                Some(n),
                "The registry serves other content than the image's manifest describes: check \
                 the image and its registry.",
            ));
        }
        Ok((resp, url))
    }

    /// The next piece of a blob opened with [`Self::open_blob`]; `None` at its end. Nothing for
    /// the read timeout is an [`Error::ReadTimeout`].
    pub(crate) async fn blob_piece(
        &self,
        registry: &str,
        url: &Url,
        resp: &mut Response,
    ) -> Result<Option<bytes::Bytes>> {
        let req = Req {
            registry,
            method: &Method::GET,
            url,
        };
        self.next_chunk(req, resp).await
    }

    /// Fetches a small blob (an image config: at most 4 MiB) into memory, verifying its digest.
    pub async fn get_blob(&self, reference: &Reference, digest: &Digest) -> Result<Vec<u8>> {
        let repo = Repo::pull(reference);
        let url = self.url(&repo, &format!("blobs/{digest}")).await?;
        let req = Req {
            registry: &repo.host,
            method: &Method::GET,
            url: &url,
        };
        let bytes = self
            .with_retry("fetch a blob", |_| {
                self.within_deadline(req, async {
                    let resp = self.send(&repo, Method::GET, &url, Ok).await?;
                    if resp.status().as_u16() != 200 {
                        return Err(self.status_error(&Method::GET, &url, resp).await);
                    }
                    self.read_capped(
                        req,
                        resp,
                        MAX_CONFIG_BYTES,
                        "an image config",
                        "Real image configs are a few KiB: check that the image's manifest and \
                         registry are the ones meant.",
                    )
                    .await
                })
            })
            .await?;
        let got = Digest::of(&bytes);
        if got != *digest {
            return Err(Error::DigestMismatch {
                what: format!("blob of `{}`", reference.repository_name()),
                expected: digest.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Streams a blob of `size` bytes (its descriptor's) to `dest` (atomically, after verifying
    /// its digest); returns its size. A response announcing or sending more than `size` bytes is
    /// refused without reading on.
    pub async fn download_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        dest: &Path,
    ) -> Result<u64> {
        let repo = Repo::pull(reference);
        let url = self.url(&repo, &format!("blobs/{digest}")).await?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs_err::create_dir_all(dir).map_err(|e| Error::io("create the blob cache", e))?;
        let req = Req {
            registry: &repo.host,
            method: &Method::GET,
            url: &url,
        };
        let expected = || format!("blob `{digest}` has {size} bytes by its descriptor");
        let advice = "The registry serves other content than the image's manifest describes: \
                      check the image and its registry.";
        let expected_size = size;
        self.with_retry("download a blob", |_| async {
            let mut resp = self.send(&repo, Method::GET, &url, Ok).await?;
            if resp.status().as_u16() != 200 {
                return Err(self.status_error(&Method::GET, &url, resp).await);
            }
            if let Some(n) = resp.content_length()
                && n > expected_size
            {
                return Err(req.too_large(expected(), Some(n), advice));
            }
            // Base layers are downloaded straight into OCI layouts too: 0644 like their other files.
            let tmp = crate::publish::layout_temp_file(dir)
                .map_err(|e| Error::io(format!("create a temp file in `{}`", dir.display()), e))?;
            let mut file = tokio::fs::File::from_std(
                tmp.as_file()
                    .try_clone()
                    .map_err(|e| Error::io("open a download temp file", e))?,
            );
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = self.next_chunk(req, &mut resp).await? {
                if size + chunk.len() as u64 > expected_size {
                    return Err(req.too_large(expected(), None, advice));
                }
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io(format!("write `{}`", tmp.path().display()), e))?;
            }
            file.flush()
                .await
                .map_err(|e| Error::io(format!("write `{}`", tmp.path().display()), e))?;
            let got = Digest::from_hasher(hasher);
            if got != *digest {
                return Err(Error::DigestMismatch {
                    what: format!("blob downloaded from `{}`", reference.repository_name()),
                    expected: digest.to_string(),
                    actual: got.to_string(),
                });
            }
            tmp.persist(dest)
                .map_err(|e| Error::io(format!("store `{}`", dest.display()), e.error))?;
            Ok(size)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_relative_and_absolute_keeping_the_query() {
        let base = Url::parse("http://127.0.0.1:5000/v2/a/b/blobs/uploads/").unwrap();
        let r = resolve_location(&base, "/v2/a/b/blobs/uploads/123?_state=xyz").unwrap();
        assert_eq!(
            r.as_str(),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/123?_state=xyz"
        );
        let r = resolve_location(&base, "456?x=1").unwrap();
        assert_eq!(
            r.as_str(),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/456?x=1"
        );
        let r = resolve_location(&base, "https://storage.example/up?sig=a%2Fb").unwrap();
        assert_eq!(r.as_str(), "https://storage.example/up?sig=a%2Fb");
        let mut r = r;
        r.query_pairs_mut().append_pair("digest", "sha256:00");
        assert_eq!(
            r.as_str(),
            "https://storage.example/up?sig=a%2Fb&digest=sha256%3A00"
        );
    }

    #[tokio::test]
    async fn transport_errors_do_not_show_queries_or_user_info() {
        // Port 1 on loopback refuses the connection: a real reqwest error carrying the URL.
        let url = Url::parse(
            "http://user:pw-secret@127.0.0.1:1/blob?X-Amz-Signature=sig-secret&X-Amz-Security-Token=tok-secret",
        )
        .unwrap();
        let err = reqwest::Client::new()
            .get(url.clone())
            .send()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sig-secret"), "{err}");
        let err = transport(&Method::GET, &url)(err);
        let chain = error_chain(&err);
        assert!(chain.contains("127.0.0.1:1/blob"), "{chain}");
        for secret in ["pw-secret", "sig-secret", "tok-secret"] {
            assert!(!chain.contains(secret), "{chain}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
    }

    #[test]
    fn docker_hub_names_share_their_insecure_setting() {
        let insecure = ["docker.io".to_owned()];
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert!(plain_http_allowed(&insecure, host), "{host}");
        }
        assert!(!plain_http_allowed(&insecure, "ghcr.io"));
        assert!(plain_http_allowed(
            &["registry-1.docker.io".to_owned()],
            "docker.io"
        ));
    }

    #[test]
    fn plain_http_targets_need_both_hosts_allowed_plain_http() {
        let u = |s: &str| Url::parse(s).unwrap();
        let none: &[String] = &[];
        let remote = u("https://registry.example/v2/a/blobs/uploads/");
        // HTTPS anywhere is fine (credentials are kept to the registry's origin by `send`).
        assert!(check_target(none, &remote, &u("https://storage.example/up?sig=1")).is_ok());
        // An HTTPS registry not allowed plain HTTP cannot downgrade, even to loopback.
        let err = check_target(none, &remote, &u("http://127.0.0.1:5001/up")).unwrap_err();
        assert!(
            err.contains("`registry.example` is spoken to over HTTPS")
                && err.contains("--insecure-registry registry.example"),
            "{err}"
        );
        // ... nor to a host not allowed plain HTTP.
        let err = check_target(none, &remote, &u("http://storage.example/up")).unwrap_err();
        assert!(
            err.contains("plain HTTP to `storage.example` is not allowed"),
            "{err}"
        );
        // Marked insecure (with or without the default port): allowed.
        let insecure = [
            "registry.example".to_owned(),
            "storage.example:80".to_owned(),
        ];
        assert!(check_target(&insecure, &remote, &u("http://storage.example/up")).is_ok());
        assert!(check_target(&insecure, &remote, &u("http://127.0.0.1:5001/up")).is_ok());
        // A loopback registry (over TLS or not) may use plain HTTP to loopback.
        for from in ["https://127.0.0.1:5000/", "http://localhost:5000/"] {
            assert!(check_target(none, &u(from), &u("http://127.0.0.1:5001/up")).is_ok());
            assert!(check_target(none, &u(from), &u("http://10.1.2.3:5001/up")).is_err());
        }
        let err = check_target(none, &remote, &u("ftp://storage.example/up")).unwrap_err();
        assert!(err.contains("only http and https"), "{err}");
    }

    #[test]
    fn next_page_links_are_found_among_others() {
        let mut h = http::HeaderMap::new();
        assert_eq!(link_next(&h), None);
        h.append(
            http::header::LINK,
            "</v2/a/tags/list?last=b&n=2>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(link_next(&h).as_deref(), Some("/v2/a/tags/list?last=b&n=2"));
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::LINK,
            "<https://x/prev>; rel=\"prev\", <https://x/next?last=c>; rel=next"
                .parse()
                .unwrap(),
        );
        assert_eq!(link_next(&h).as_deref(), Some("https://x/next?last=c"));
    }

    #[test]
    fn push_scopes_include_the_mount_source_on_the_same_registry() {
        let t: Reference = "127.0.0.1:5000/app".parse().unwrap();
        let b: Reference = "127.0.0.1:5000/base/busybox".parse().unwrap();
        let other: Reference = "ghcr.io/x/y".parse().unwrap();
        assert_eq!(
            Repo::push(&t, Some(&b)).scopes,
            ["repository:app:pull,push", "repository:base/busybox:pull"]
        );
        assert_eq!(
            Repo::push(&t, Some(&other)).scopes,
            ["repository:app:pull,push"]
        );
    }
}
