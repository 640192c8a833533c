//! Bearer tokens: fetching one from the realm a registry's challenge names (GET with Basic
//! credentials, or the OAuth2 refresh-token POST for an identity token), for the native
//! publisher and, through [`RegistryClient::fetch_token_for`], for a BuildKit daemon's
//! `FetchToken`. A realm is held to the upload-location scheme rule and may not lead a public
//! registry's credentials into the local network.

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::Method;
use url::Url;

use super::{
    Credential, MAX_TOKEN_BYTES, RegistryClient, Repo, Req, check_scheme, host_port,
    plain_http_allowed_for, shown,
};
use crate::auth::Challenge;
use crate::error::{Error, Result};

#[derive(serde::Deserialize)]
pub(super) struct TokenResponse {
    pub(super) token: Option<String>,
    pub(super) access_token: Option<String>,
    pub(super) expires_in: Option<u64>,
}

pub(super) struct Token {
    pub(super) value: String,
    pub(super) expires: Instant,
}

/// A token granted by a registry's token service ([`RegistryClient::fetch_token_for`]).
#[derive(Clone, PartialEq, Eq)]
pub struct GrantedToken {
    /// The bearer token.
    pub token: String,
    /// Its lifetime in seconds as the token service gave it (60 when it gave none).
    pub expires_in: u64,
}

impl fmt::Debug for GrantedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantedToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Whether a token realm's address may be used for a registry at `registry`: a realm on a
/// loopback, private or link-local IP address (a cloud metadata service, a service on the
/// internal network) only for a registry on such an address itself, on the realm's own
/// `host:port`, or marked insecure — a public registry cannot point fastbuild's credentialed
/// token request into the local network (go-containerregistry refuses such realms too). Names
/// are not resolved here (a DNS answer can change); the scheme rule of [`check_scheme`] still
/// applies to them.
pub(super) fn check_realm_address(
    insecure: &[String],
    registry: &Url,
    realm: &Url,
) -> std::result::Result<(), String> {
    let internal = |url: &Url| match url.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_unique_local()
                || ip.is_unicast_link_local()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local())
        }
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if !internal(realm)
        || internal(registry)
        || host_port(realm) == host_port(registry)
        || plain_http_allowed_for(insecure, registry)
    {
        return Ok(());
    }
    let registry = host_port(registry);
    Err(format!(
        "the realm is on a loopback, private or link-local address while `{registry}` is not \
         (a registry must not send credentials into the local network); if this token service \
         is yours, mark `{registry}` insecure (`insecure_registries` in fastbuild.yaml or \
         `--insecure-registry {registry}`)"
    ))
}

impl RegistryClient {
    pub(super) async fn fetch_token(&self, repo: &Repo, challenge: &Challenge) -> Result<Token> {
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| Error::Unauthorized {
                action: format!("access `{}`", repo.name),
                registry: repo.host.clone(),
                reason: "its Bearer challenge has no realm".to_owned(),
            })?;
        let registry = self.registry_url(repo).await?;
        let granted = self
            .request_token(
                &repo.host,
                &registry,
                realm,
                challenge.params.get("service").map(String::as_str),
                &repo.scopes,
                format!("access `{}`", repo.name),
            )
            .await?;
        let lifetime = granted.expires_in.saturating_sub(10).max(10);
        Ok(Token {
            value: granted.token,
            expires: Instant::now() + Duration::from_secs(lifetime),
        })
    }

    /// A token for `scopes` on `host` from the token service at `realm`, fetched with the
    /// credentials configured for `host` (anonymously without any) — what a BuildKit daemon
    /// asks its session for (`Auth/FetchToken`) so that the registry password never reaches
    /// the daemon, only a short-lived token for the scopes it needs.
    ///
    /// `realm` is held to the rules of the native publisher's own token requests: `https`, or
    /// plain HTTP only where both it and `host` are allowed plain HTTP; an address on a loopback,
    /// private or link-local network only for a registry that is on one itself (or is marked
    /// insecure). `host` is taken to be spoken to over HTTPS unless it may use plain HTTP (as
    /// for [`Self::scheme`]); nothing is sent to it.
    pub async fn fetch_token_for(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<GrantedToken> {
        let scheme = if self.allows_http(host) {
            "http"
        } else {
            "https"
        };
        let registry =
            Url::parse(&format!("{scheme}://{host}/")).map_err(|_| Error::InvalidReference {
                value: host.to_owned(),
                reason: "it is not a registry host (`host[:port]`)".to_owned(),
            })?;
        let action = format!("grant the build a token for {}", scopes.join(" "));
        self.request_token(host, &registry, realm, service, scopes, action)
            .await
    }

    /// Fetches a token from `realm` for `host` (spoken to at `registry`): GET with Basic
    /// credentials (or none), or the OAuth2 refresh-token POST for an identity token.
    async fn request_token(
        &self,
        host: &str,
        registry: &Url,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        action: String,
    ) -> Result<GrantedToken> {
        let unauthorized = |reason: String| Error::Unauthorized {
            action: action.clone(),
            registry: host.to_owned(),
            reason,
        };
        let mut url = Url::parse(realm)
            .map_err(|_| unauthorized(format!("its token realm `{realm}` is not a URL")))?;
        // The token request carries the registry's credentials (Basic or a refresh token), and
        // the token it returns is one: plain HTTP only where the registry itself may use it
        // (both hosts loopback or insecure). Another host over HTTPS is normal (Docker Hub's
        // realm is auth.docker.io).
        let refused = |reason: String| Error::LocationRefused {
            registry: host.to_owned(),
            kind: "a Bearer challenge naming the token realm".to_owned(),
            location: shown(&url),
            reason,
        };
        check_scheme(
            &self.inner.options.insecure_hosts,
            registry,
            &url,
            "token realm",
        )
        .map_err(refused)?;
        check_realm_address(&self.inner.options.insecure_hosts, registry, &url).map_err(refused)?;
        let cred = self.credential(host).await?;
        let request = if let Some(Credential::IdentityToken(refresh)) = &cred {
            let mut form = vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh.clone()),
                ("client_id", "fastbuild".to_owned()),
                ("scope", scopes.join(" ")),
            ];
            if let Some(s) = service {
                form.push(("service", s.to_owned()));
            }
            self.http_for(&url)?.post(url.clone()).form(&form)
        } else {
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                for s in scopes {
                    q.append_pair("scope", s);
                }
            }
            let mut rb = self.http_for(&url)?.get(url.clone());
            if let Some(Credential::Basic { username, password }) = &cred {
                rb = rb.basic_auth(username, Some(password));
            }
            rb
        };
        let method = if matches!(cred, Some(Credential::IdentityToken(_))) {
            Method::POST
        } else {
            Method::GET
        };
        url.set_query(None);
        let body = self
            .with_retry("fetch a registry token", |_| {
                let rb = request
                    .try_clone()
                    .expect("token requests have no streaming body");
                let (method, url) = (method.clone(), url.clone());
                async move {
                    let req = Req {
                        registry: host,
                        method: &method,
                        url: &url,
                    };
                    self.within_deadline(req, async {
                        let resp = self.response(req, rb, None).await?;
                        if matches!(resp.status().as_u16(), 401 | 403) {
                            return Ok(None);
                        }
                        if !resp.status().is_success() {
                            return Err(self.status_error(&method, &url, resp).await);
                        }
                        let body = self
                            .read_capped(
                                req,
                                resp,
                                MAX_TOKEN_BYTES,
                                "a token response",
                                "A token response is a small JSON document: check the token realm \
                                 the registry names in its Bearer challenge.",
                            )
                            .await?;
                        Ok(Some(body))
                    })
                    .await
                }
            })
            .await?;
        let Some(body) = body else {
            return Err(unauthorized(if cred.is_some() {
                "the token endpoint refused the configured credentials".to_owned()
            } else {
                "the token endpoint requires credentials and none are configured".to_owned()
            }));
        };
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| Error::Json {
            what: format!("the token response of {}", shown(&url)),
            source: e,
        })?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the token response has no token".to_owned()))?;
        Ok(GrantedToken {
            token,
            expires_in: parsed.expires_in.filter(|&s| s > 0).unwrap_or(60),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_realms_in_the_local_network_only_for_registries_there() {
        let u = |s: &str| Url::parse(s).unwrap();
        let none: &[String] = &[];
        let public = u("https://registry.example/");
        // A public registry naming a realm on a metadata service, a private network, loopback
        // or a unique-local IPv6 address: refused, saying what to do.
        for realm in [
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.5/token",
            "https://192.168.1.1/token",
            "https://127.0.0.1:8443/token",
            "https://localhost/token",
            "https://[::1]/token",
            "https://[fd00:ec2::254]/token",
            "https://[fe80::1]/token",
            "https://[::ffff:10.0.0.1]/token",
        ] {
            let err = check_realm_address(none, &public, &u(realm)).unwrap_err();
            assert!(
                err.contains("loopback, private or link-local")
                    && err.contains("--insecure-registry registry.example"),
                "{realm}: {err}"
            );
        }
        // Public realms (Docker Hub's is another host), names (not resolved here), the
        // registry's own host:port, a registry in the local network itself, or one marked
        // insecure: allowed.
        assert!(check_realm_address(none, &public, &u("https://auth.docker.io/token")).is_ok());
        assert!(check_realm_address(none, &public, &u("https://auth.internal/token")).is_ok());
        let local = u("http://127.0.0.1:5001/");
        assert!(check_realm_address(none, &local, &u("http://localhost:5081/token")).is_ok());
        let private = u("https://10.0.0.7:5000/");
        assert!(check_realm_address(none, &private, &u("https://10.0.0.8/token")).is_ok());
        let own = u("https://10.0.0.7/");
        assert!(check_realm_address(none, &u("https://10.0.0.7/"), &own).is_ok());
        let insecure = ["registry.example".to_owned()];
        assert!(check_realm_address(&insecure, &public, &u("https://10.0.0.5/token")).is_ok());
    }
}
