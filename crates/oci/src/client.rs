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
//!
//! One room per concern: [`request`] (a request's timeouts, bounded bodies, errors that hide
//! queries), [`origin`] (where a registry may send fastbuild: plain HTTP, locations,
//! redirects, CAs), [`scheme`] (`https` or `http` per registry), [`send`] (credentials, tokens,
//! retries), [`token`] (the token services), [`blob`] and [`manifest`] (the distribution API).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Challenge, Credential, DockerConfig};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;

mod blob;
mod manifest;
mod memory;
mod origin;
mod request;
mod resolve;
mod scheme;
mod send;
mod token;

pub(crate) use blob::BlobData;
pub use origin::{ca_certificates, resolve_location};
use origin::{check_scheme, plain_http_allowed_for, redirect_policy};
use request::{Req, host_port, shown};
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

/// Asks for any of the manifest media types ([`MANIFEST_ACCEPT`]): the request builder of a
/// manifest `GET` or `HEAD`.
#[allow(clippy::unnecessary_wraps)] // the shape of the request builders `call` and `send` take
fn accept_manifests(rb: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder> {
    Ok(rb.header(http::header::ACCEPT, MANIFEST_ACCEPT))
}

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
    /// Where to remember registries between runs (the scheme each answered on, the blobs recent
    /// pushes left in a repository), so that a rebuild does not probe or check them again;
    /// `None` = nothing is remembered. See the `memory` module for the trust model.
    pub memory_dir: Option<PathBuf>,
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
            memory_dir: None,
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
    /// The scheme of each host, and whether it was remembered from an earlier run (not probed
    /// in this one).
    schemes: HashMap<String, (&'static str, bool)>,
    challenges: HashMap<String, Challenge>,
    tokens: HashMap<String, Token>,
    credentials: HashMap<String, Option<Credential>>,
}

struct Inner {
    /// For `http://` URLs: no TLS roots loaded (loading the system's costs milliseconds at every
    /// start); a redirect to `https://` stops it, and the request goes again through [`Self::tls`].
    plain: reqwest::Client,
    /// For `https://` URLs, built on first use (see [`RegistryClient::tls`]).
    tls: std::sync::OnceLock<reqwest::Client>,
    /// The extra CAs of [`RegistryOptions::ca_files`], read by [`RegistryClient::new`].
    extra_roots: Vec<reqwest::Certificate>,
    options: RegistryOptions,
    config: DockerConfig,
    memory: Option<memory::Memory>,
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

impl RegistryClient {
    /// A client with `options`; reads the Docker config and CA files now.
    pub fn new(options: RegistryOptions) -> Result<Self> {
        let mut config = DockerConfig::load(options.docker_config.as_deref())?;
        config.set_helper_path(options.credential_helper_path.clone());
        let extra_roots = ca_certificates(&options.ca_files)?;
        let plain = http_client(&options, true)
            .tls_built_in_root_certs(false)
            .build()
            .map_err(Error::Client)?;
        Ok(Self {
            inner: Arc::new(Inner {
                plain,
                tls: std::sync::OnceLock::new(),
                extra_roots,
                config,
                memory: options.memory_dir.clone().map(memory::Memory::new),
                state: tokio::sync::Mutex::new(State::default()),
                token_fetch: tokio::sync::Mutex::new(()),
                options,
            }),
        })
    }

    /// The HTTP client for `url`: [`Inner::plain`] for plain HTTP, else [`Self::tls`].
    fn http_for(&self, url: &url::Url) -> Result<&reqwest::Client> {
        if url.scheme() == "http" {
            Ok(&self.inner.plain)
        } else {
            self.tls()
        }
    }

    /// The HTTP client for TLS (system roots and the extra CAs), built on first use: a run that
    /// only speaks plain HTTP (a loopback registry whose scheme is remembered) never loads the
    /// system's roots.
    fn tls(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.inner.tls.get() {
            return Ok(c);
        }
        let mut builder = http_client(&self.inner.options, false);
        for c in &self.inner.extra_roots {
            builder = builder.add_root_certificate(c.clone());
        }
        let client = builder.build().map_err(Error::Client)?;
        Ok(self.inner.tls.get_or_init(|| client))
    }

    /// The options this client was made with.
    pub fn options(&self) -> &RegistryOptions {
        &self.inner.options
    }
}

/// The builder of both HTTP clients; `plain`: for plain HTTP only (see [`Inner::plain`]).
fn http_client(options: &RegistryOptions, plain: bool) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(options.connect_timeout)
        .user_agent(options.user_agent.clone())
        .redirect(redirect_policy(options.insecure_hosts.clone(), plain))
}

#[cfg(test)]
mod tests {
    use super::*;

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
