//! How a registry is spoken to: `https`, or plain `http` for loopback and insecure hosts,
//! probed once per host and run (or remembered from an earlier run, see [`super::memory`]), and
//! the URLs of its API built on that scheme.

use reqwest::{Response, StatusCode};
use url::Url;

use super::origin::{location_of, plain_http_allowed};
use super::request::Req;
use super::{RegistryClient, Repo};
use crate::error::error_chain;
use crate::error::{Error, Result};

/// Whether `resp` (to a plain-HTTP request) looks like a TLS server's refusal of plain HTTP
/// rather than a registry's answer: a 400 without a JSON body (Go's servers answer
/// `Client sent an HTTP request to an HTTPS server.` without any header, nginx an HTML page;
/// registries give their errors as JSON).
fn tls_server_refusal(resp: &Response) -> bool {
    resp.status() == StatusCode::BAD_REQUEST
        && !resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("json"))
}

impl RegistryClient {
    pub(super) fn allows_http(&self, host: &str) -> bool {
        plain_http_allowed(&self.inner.options.insecure_hosts, host)
    }

    /// The status `url` answers with; `Err(None)` when it does not answer within the read
    /// timeout.
    pub(super) async fn probe(
        &self,
        url: &str,
    ) -> std::result::Result<StatusCode, Option<reqwest::Error>> {
        let timeout = self.inner.options.read_timeout;
        let client = if url.starts_with("http://") {
            &self.inner.plain
        } else {
            match self.tls() {
                Ok(c) => c,
                Err(_) => return Err(None),
            }
        };
        match tokio::time::timeout(timeout, client.get(url).send()).await {
            Ok(answer) => answer.map(|r| r.status()).map_err(Some),
            Err(_) => Err(None),
        }
    }

    /// `https` or `http` for `host`: HTTPS when it answers; plain HTTP only for loopback and
    /// insecure hosts; a registry speaking HTTP to us otherwise is diagnosed in plain words.
    pub async fn scheme(&self, host: &str) -> Result<&'static str> {
        if let Some((s, _)) = self.inner.state.lock().await.schemes.get(host) {
            return Ok(s);
        }
        let remembered = self.inner.memory.as_ref().and_then(|m| m.scheme(host));
        if let Some(scheme) = remembered.filter(|s| *s == "https" || self.allows_http(host)) {
            tracing::debug!(host, scheme, "registry scheme (remembered)");
            let mut state = self.inner.state.lock().await;
            let (s, _) = state
                .schemes
                .entry(host.to_owned())
                .or_insert((scheme, true));
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
        if let Some(memory) = &self.inner.memory {
            memory.set_scheme(host, scheme);
        }
        self.inner
            .state
            .lock()
            .await
            .schemes
            .insert(host.to_owned(), (scheme, false));
        Ok(scheme)
    }

    /// The outcome of a request to the origin of registry `req.registry`, checked against the
    /// scheme remembered for it: an answer confirms it (the checks stop), while a failure a wrong
    /// scheme explains — the request could not be sent or answered, or a plain-HTTP request got
    /// the 400 of a TLS server ([`tls_server_refusal`]) — forgets it (here and on disk) and becomes an
    /// [`Error::RememberedSchemeFailed`], which is not retried as it is: the caller starts over
    /// and the registry is probed again.
    pub(super) async fn check_remembered_scheme(
        &self,
        req: Req<'_>,
        outcome: Result<Response>,
    ) -> Result<Response> {
        let host = req.registry;
        let scheme = {
            let state = self.inner.state.lock().await;
            match state.schemes.get(host) {
                Some((scheme, true)) => *scheme,
                _ => return outcome,
            }
        };
        let failure = match outcome {
            Ok(resp) if !(scheme == "http" && tls_server_refusal(&resp)) => {
                if let Some(entry) = self.inner.state.lock().await.schemes.get_mut(host) {
                    entry.1 = false;
                }
                return Ok(resp);
            }
            Ok(resp) => self.status_error(req.method, req.url, resp).await,
            Err(e) if e.may_be_a_wrong_scheme() => e,
            Err(e) => return Err(e),
        };
        let mut state = self.inner.state.lock().await;
        if state
            .schemes
            .get(host)
            .is_some_and(|(_, remembered)| *remembered)
        {
            state.schemes.remove(host);
            if let Some(memory) = &self.inner.memory {
                memory.forget_scheme(host);
            }
        }
        tracing::debug!(host, scheme, error = %failure, "the remembered registry scheme failed; forgetting it");
        Err(Error::RememberedSchemeFailed {
            host: host.to_owned(),
            scheme,
            source: Box::new(failure),
        })
    }

    /// The blobs remembered (within their time to live) as present in `repo`.
    pub(crate) fn remembered_blobs(&self, repo: &Repo) -> Vec<crate::digest::Digest> {
        self.inner
            .memory
            .as_ref()
            .map(|m| m.blobs(&repo.host, &repo.name))
            .unwrap_or_default()
    }

    /// Remembers `digests` as present in `repo` (a push that needed them just succeeded).
    pub(crate) fn remember_blobs<'a>(
        &self,
        repo: &Repo,
        digests: impl IntoIterator<Item = &'a crate::digest::Digest>,
    ) {
        if let Some(m) = &self.inner.memory {
            m.add_blobs(&repo.host, &repo.name, digests);
        }
    }

    /// Forgets the blobs remembered in `repo` (the registry lost one of them).
    pub(crate) fn forget_blobs(&self, repo: &Repo) {
        if let Some(m) = &self.inner.memory {
            m.forget_blobs(&repo.host, &repo.name);
        }
    }

    pub(super) async fn url(&self, repo: &Repo, rest: &str) -> Result<Url> {
        let scheme = self.scheme(&repo.host).await?;
        let s = format!("{scheme}://{}/v2/{}/{rest}", repo.host, repo.name);
        Url::parse(&s).map_err(|_| Error::InvalidReference {
            value: format!("{}/{}", repo.host, repo.name),
            reason: "it does not form a valid URL".to_owned(),
        })
    }

    /// The registry's own origin: `scheme://host[:port]/`.
    pub(super) async fn registry_url(&self, repo: &Repo) -> Result<Url> {
        let scheme = self.scheme(&repo.host).await?;
        Url::parse(&format!("{scheme}://{}/", repo.host)).map_err(|_| Error::InvalidReference {
            value: repo.host.clone(),
            reason: "it does not form a valid URL".to_owned(),
        })
    }

    /// The checked upload `Location` of `resp`, a response to `base`.
    pub(super) async fn location(&self, repo: &Repo, resp: &Response, base: &Url) -> Result<Url> {
        let registry = self.registry_url(repo).await?;
        location_of(resp, base, &registry, &self.inner.options.insecure_hosts)
    }
}
