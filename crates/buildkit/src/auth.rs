//! Registry credentials for the daemon (`moby.filesync.v1.Auth/Credentials`), read from the
//! Docker config: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` — `auths` entries
//! (base64 `auth`, `username`/`password`, `identitytoken`), `credHelpers` and `credsStore`
//! (`docker-credential-<name> get`). Secrets never reach logs or Debug output.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

use crate::proto::moby::filesync::v1::auth_server::Auth;
use crate::proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};

/// Credentials for one registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name; empty with an identity token.
    pub username: String,
    /// Password, token or identity token.
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

/// Where Docker credentials come from.
#[derive(Debug, Clone, Default)]
pub struct DockerAuth {
    /// The directory holding `config.json`; `$DOCKER_CONFIG`, else `~/.docker` when `None`.
    pub config_dir: Option<PathBuf>,
}

/// Docker Hub's host as BuildKit asks for it, and the key the Docker config uses for it.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Reduces an `auths` key (`https://host/v1/`, `host`) to its host.
fn key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

impl DockerAuth {
    fn config_path(&self) -> Option<PathBuf> {
        let dir = match &self.config_dir {
            Some(d) => d.clone(),
            None => match std::env::var_os("DOCKER_CONFIG") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
            },
        };
        Some(dir.join("config.json"))
    }

    /// Credentials for `host` (empty when none are configured).
    pub async fn credentials(&self, host: &str) -> Result<Credentials, String> {
        let Some(path) = self.config_path() else {
            return Ok(Credentials::default());
        };
        let config: ConfigFile = match fs_err::tokio::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("cannot parse Docker config `{}`: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::default()),
            Err(e) => return Err(e.to_string()),
        };
        let lookup = if host == DOCKER_HUB_HOST || host == "docker.io" || host == "index.docker.io"
        {
            DOCKER_HUB_KEY
        } else {
            host
        };
        let helper = config
            .cred_helpers
            .get(lookup)
            .or_else(|| config.cred_helpers.get(host))
            .or(config.creds_store.as_ref())
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper {
            let creds = run_helper(helper, lookup).await?;
            if creds != Credentials::default() || config.creds_store.is_none() {
                return Ok(creds);
            }
        }
        let entry = config.auths.get(lookup).or_else(|| {
            let want = key_host(lookup);
            config
                .auths
                .iter()
                .find(|(k, _)| key_host(k) == want)
                .map(|(_, v)| v)
        });
        let Some(entry) = entry else {
            return Ok(Credentials::default());
        };
        if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Credentials {
                username: String::new(),
                secret: token.clone(),
            });
        }
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| {
                    format!(
                        "the `auth` entry for `{lookup}` in `{}` is not base64",
                        path.display()
                    )
                })?;
            let decoded = String::from_utf8(decoded).map_err(|_| {
                format!(
                    "the `auth` entry for `{lookup}` in `{}` is not UTF-8",
                    path.display()
                )
            })?;
            let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                format!(
                    "the `auth` entry for `{lookup}` in `{}` is not `user:password`",
                    path.display()
                )
            })?;
            return Ok(Credentials {
                username: user.to_owned(),
                secret: pass.to_owned(),
            });
        }
        Ok(Credentials {
            username: entry.username.clone().unwrap_or_default(),
            secret: entry.password.clone().unwrap_or_default(),
        })
    }
}

/// `docker-credential-<helper> get` with the server URL on stdin.
async fn run_helper(helper: &str, server: &str) -> Result<Credentials, String> {
    #[derive(Deserialize)]
    struct HelperOutput {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let program = format!("docker-credential-{helper}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| format!("cannot write to `{program}`: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("`{program}` failed: {e}"))?;
    if !output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.contains("credentials not found") {
            return Ok(Credentials::default());
        }
        return Err(format!(
            "`{program} get` for `{server}` exited with {}",
            output.status
        ));
    }
    let parsed: HelperOutput = serde_json::from_slice(&output.stdout)
        .map_err(|_| format!("`{program} get` printed something that is not credentials JSON"))?;
    if parsed.username == "<token>" {
        return Ok(Credentials {
            username: String::new(),
            secret: parsed.secret,
        });
    }
    Ok(Credentials {
        username: parsed.username,
        secret: parsed.secret,
    })
}

/// The session's Auth service.
pub(crate) struct AuthService {
    pub(crate) auth: DockerAuth,
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        match self.auth.credentials(&host).await {
            Ok(creds) => {
                tracing::debug!(%host, found = !creds.secret.is_empty(), "registry credentials requested");
                Ok(Response::new(CredentialsResponse {
                    username: creds.username,
                    secret: creds.secret,
                }))
            }
            Err(msg) => {
                tracing::warn!(%host, "cannot read registry credentials: {msg}");
                Err(Status::internal(msg))
            }
        }
    }

    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("FetchToken is not implemented"))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented(
            "GetTokenAuthority is not implemented",
        ))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented(
            "VerifyTokenAuthority is not implemented",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_auths_entries() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        fs_err::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{"reg.example:5000":{{"auth":"{b64}"}},"https://index.docker.io/v1/":{{"identitytoken":"tok"}},"https://other.example/v2/":{{"username":"bob","password":"pw"}}}}}}"#
            ),
        )
        .unwrap();
        let auth = DockerAuth {
            config_dir: Some(dir.path().to_owned()),
        };
        let c = auth.credentials("reg.example:5000").await.unwrap();
        assert_eq!(
            (c.username.as_str(), c.secret.as_str()),
            ("alice", "s3cret")
        );
        let c = auth.credentials("registry-1.docker.io").await.unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("", "tok"));
        let c = auth.credentials("other.example").await.unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("bob", "pw"));
        assert_eq!(
            auth.credentials("unknown.example").await.unwrap(),
            Credentials::default()
        );
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[tokio::test]
    async fn missing_config_gives_empty_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let auth = DockerAuth {
            config_dir: Some(dir.path().join("nope")),
        };
        assert_eq!(auth.credentials("x").await.unwrap(), Credentials::default());
    }
}
