//! Sending a request to a registry with its credentials: Basic, or a Bearer token fetched once
//! per scope (single flight) and cached; a 401 is learnt from and retried once; and the retry
//! loop with backoff of every replayable step.

use std::future::Future;
use std::time::Instant;

use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::request::{Progress, Req, host_port};
use super::{RegistryClient, Repo, State};
use crate::auth::{Challenge, Credential};
use crate::error::{Error, Result};

impl RegistryClient {
    pub(super) async fn credential(&self, host: &str) -> Result<Option<Credential>> {
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

    pub(super) async fn auth_header(&self, repo: &Repo) -> Result<Option<String>> {
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
    pub(super) async fn send(
        &self,
        repo: &Repo,
        method: Method,
        url: &Url,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
    ) -> Result<Response> {
        self.send_with(repo, method, url, None, build).await
    }

    /// [`Self::send`] for an upload, whose body reports to `progress` (see [`super::BlobData::body`]):
    /// the read timeout counts from the last piece of the body the connection took, so a large
    /// upload on a slow link is not cut, but a registry that stops taking it is; the answer to
    /// the whole body may take up to the request timeout (see [`Self::response`]).
    pub(super) async fn send_upload(
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

    pub(super) async fn send_with(
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
        let mut http = self.http_for(url)?;
        let mut plain = url.scheme() == "http";
        for attempt in 0..2 {
            let mut rb = build(http.request(method.clone(), url.clone()))?;
            let auth = if same_origin {
                self.auth_header(repo).await?
            } else {
                None
            };
            let sent_auth = auth.is_some();
            if let Some(h) = &auth {
                rb = rb.header(AUTHORIZATION, h);
            }
            let resp = self.response(req, rb, upload).await;
            let mut resp = if same_origin {
                self.check_remembered_scheme(req, resp).await?
            } else {
                resp?
            };
            if resp.status().is_redirection() && plain {
                // A redirect to `https` the client without TLS roots stopped at: the same
                // request through the TLS client, which follows it (see `redirect_policy`).
                (http, plain) = (self.tls()?, false);
                let mut rb = build(http.request(method.clone(), url.clone()))?;
                if let Some(h) = &auth {
                    rb = rb.header(AUTHORIZATION, h);
                }
                resp = self.response(req, rb, upload).await?;
            }
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
}
