//! One request's life: sending it with its timeouts (an upload's progress, a stalled answer), reading
//! a bounded body, and the errors that name the request without leaking its query or user info.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Response};
use url::Url;

use super::origin::RedirectRefused;
use super::{MAX_ERROR_BODY_BYTES, RegistryClient, Repo};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// How far a request without an answer has got: when it last moved (was sent, or had a piece
/// of its body taken by the connection) and how much of its body is still to be taken.
#[derive(Clone, Debug)]
pub(super) struct Progress(Arc<std::sync::Mutex<(tokio::time::Instant, u64)>>);

impl Progress {
    /// A request without a body (until [`Self::expect_body`]).
    pub(super) fn new() -> Self {
        Self(Arc::new(std::sync::Mutex::new((
            tokio::time::Instant::now(),
            0,
        ))))
    }

    /// The request is (re)built with a body of `len` bytes.
    pub(super) fn expect_body(&self, len: u64) {
        self.0.lock().expect("not poisoned").1 = len;
    }

    /// The request is (re)sent.
    pub(super) fn sent(&self) {
        self.0.lock().expect("not poisoned").0 = tokio::time::Instant::now();
    }

    /// The connection took `n` more bytes of the body.
    pub(super) fn took(&self, n: usize) {
        let mut state = self.0.lock().expect("not poisoned");
        state.0 = tokio::time::Instant::now();
        state.1 = state.1.saturating_sub(n as u64);
    }

    /// Resolves once the request has not moved for `sending` while its body is being taken,
    /// or for `answering` once it is all taken; `true` in the second case.
    pub(super) async fn stalled(&self, sending: Duration, answering: Duration) -> bool {
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
pub(super) struct Req<'a> {
    /// The registry (`host[:port]`).
    pub(super) registry: &'a str,
    pub(super) method: &'a Method,
    pub(super) url: &'a Url,
}

impl Req<'_> {
    /// `GET https://…`, without query or user info.
    pub(super) fn shown(&self) -> String {
        format!("{} {}", self.method, shown(self.url))
    }

    /// Stalled for the read timeout `timeout`.
    pub(super) fn read_timeout(&self, what: &'static str, timeout: Duration) -> Error {
        self.stalled(what, timeout, "read_timeout")
    }

    pub(super) fn stalled(
        &self,
        what: &'static str,
        timeout: Duration,
        setting: &'static str,
    ) -> Error {
        Error::ReadTimeout {
            registry: self.registry.to_owned(),
            request: self.shown(),
            what,
            timeout,
            setting,
        }
    }

    /// `announced`: the `Content-Length` over the bound; `None` when more bytes came.
    pub(super) fn too_large(
        &self,
        expected: String,
        announced: Option<u64>,
        advice: &'static str,
    ) -> Error {
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
pub(super) fn bytes_shown(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB ({n} bytes)", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// A URL fit for messages: without its query (upload state, pre-signed storage signatures)
/// and without user info.
pub(super) fn shown(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// `host[:port]` of `url`, as registries and `insecure_hosts` are written.
pub(super) fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

pub(super) fn transport(method: &Method, url: &Url) -> impl FnOnce(reqwest::Error) -> Error {
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
pub(super) async fn status_error(
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

pub(super) fn check_digest_header(resp: &Response, expected: &Digest, what: &str) -> Result<()> {
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

impl RegistryClient {
    /// [`status_error`] with this client's read timeout.
    pub(super) async fn status_error(&self, method: &Method, url: &Url, resp: Response) -> Error {
        status_error(method, url, resp, self.inner.options.read_timeout).await
    }

    /// Sends `rb` and waits for the response: at most the read timeout after sending it, or,
    /// for an upload (its body reporting to `upload`), while the connection keeps taking the
    /// body with pauses shorter than the read timeout, then at most the request timeout for
    /// the answer (a registry may take a while to commit a large blob). Longer is an
    /// [`Error::ReadTimeout`].
    pub(super) async fn response(
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
    pub(super) async fn next_chunk(
        &self,
        req: Req<'_>,
        resp: &mut Response,
    ) -> Result<Option<bytes::Bytes>> {
        let timeout = self.inner.options.read_timeout;
        match tokio::time::timeout(timeout, resp.chunk()).await {
            Ok(chunk) => chunk.map_err(transport(req.method, req.url)),
            Err(_) => Err(req.read_timeout("sent no more of its response", timeout)),
        }
    }

    /// The whole body of `resp`, refused (without reading on) past `limit` bytes: `what` is
    /// what it should be (`a manifest or index`), `advice` what to do when it is too large.
    pub(super) async fn read_capped(
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

    /// One small request to `repo`: each attempt bounded by the request timeout, retried on
    /// retriable failures. `build` adds headers and body to each attempt; `answer` reads the
    /// response (with the [`Req`] it belongs to, for the errors of reading it).
    pub(super) async fn call<'a, T, F>(
        &self,
        what: &str,
        (repo, method, url): (&'a Repo, &'a Method, &'a Url),
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
        answer: impl Fn(Req<'a>, Response) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let req = Req {
            registry: &repo.host,
            method,
            url,
        };
        self.with_retry(what, |_| {
            self.within_deadline(req, async {
                let resp = self.send(repo, method.clone(), url, &build).await?;
                answer(req, resp).await
            })
        })
        .await
    }

    /// The response to a request for something that may be absent: `Some` on 200, `None` on
    /// 404, the status error otherwise.
    pub(super) async fn present(&self, req: Req<'_>, resp: Response) -> Result<Option<Response>> {
        match resp.status().as_u16() {
            200 => Ok(Some(resp)),
            404 => Ok(None),
            _ => Err(self.status_error(req.method, req.url, resp).await),
        }
    }

    /// Runs one attempt of a small request, failing it after the request timeout.
    pub(super) async fn within_deadline<T>(
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let chain = crate::error::error_chain(&err);
        assert!(chain.contains("127.0.0.1:1/blob"), "{chain}");
        for secret in ["pw-secret", "sig-secret", "tok-secret"] {
            assert!(!chain.contains(secret), "{chain}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
    }
}
