//! Where a registry may send fastbuild and with what: plain HTTP only to loopback and insecure
//! hosts, upload `Location`s and redirects held to that rule (never a downgrade of an HTTPS
//! registry), the extra CAs trusted for TLS.

use std::fmt;
use std::path::PathBuf;

use http::header::LOCATION;
use reqwest::Response;
use url::Url;

use super::request::{host_port, shown};
use crate::error::{Error, Result};
use crate::transport::is_loopback;

/// Whether `host` (`host[:port]`) may be spoken to in plain HTTP: loopback, or listed in
/// `insecure`.
///
/// Docker Hub's names are one registry: `docker.io` (what users write), `index.docker.io` and
/// `registry-1.docker.io` (where its API is served) — a setting for one applies to all (a
/// local pull-through proxy standing in for `docker.io` is the usual case).
pub(super) fn plain_http_allowed(insecure: &[String], host: &str) -> bool {
    let hub = crate::auth::is_docker_hub;
    is_loopback(host) || insecure.iter().any(|h| h == host || (hub(h) && hub(host)))
}

/// Whether `url` may be used in plain HTTP: its host (with or without the port) is allowed.
pub(super) fn plain_http_allowed_for(insecure: &[String], url: &Url) -> bool {
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
pub(super) fn check_target(
    insecure: &[String],
    from: &Url,
    to: &Url,
) -> std::result::Result<(), String> {
    check_scheme(insecure, from, to, "upload/redirect")
}

/// [`check_target`]'s rule for any URL a registry at `from` points fastbuild to; `setting` names
/// the registry's configuration to fix in the refusal (`upload/redirect`, `token realm`).
pub(super) fn check_scheme(
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
pub(super) const MAX_REDIRECTS: usize = 10;

/// A redirect refused by [`redirect_policy`]; turned into [`Error::LocationRefused`].
#[derive(Debug)]
pub(super) struct RedirectRefused {
    /// Who redirected (`host[:port]`).
    pub(super) from: String,
    /// Where to (no query, no user info).
    pub(super) location: String,
    pub(super) reason: String,
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
///
/// `plain` (the client without TLS roots): a hop to `https` is not followed but returned, for
/// the request to go again through the TLS client.
pub(super) fn redirect_policy(insecure: Vec<String>, plain: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if plain && attempt.url().scheme() == "https" {
            return attempt.stop();
        }
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
pub(super) fn location_of(
    resp: &Response,
    base: &Url,
    registry: &Url,
    insecure: &[String],
) -> Result<Url> {
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
}
