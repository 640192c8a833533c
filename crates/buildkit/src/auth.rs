//! Registry credentials for the daemon (`moby.filesync.v1.Auth/Credentials`), read from the
//! Docker config: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` — `auths` entries
//! (base64 `auth`, `username`/`password`, `identitytoken`), `credHelpers` and `credsStore`
//! (`docker-credential-<name> get`). Secrets never reach logs or Debug output.

use std::path::PathBuf;

use fastbuild_oci::{Credential, DockerConfig};
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

/// Where Docker credentials come from.
#[derive(Debug, Clone, Default)]
pub struct DockerAuth {
    /// The directory holding `config.json`; `$DOCKER_CONFIG`, else `~/.docker` when `None`.
    pub config_dir: Option<PathBuf>,
}

impl DockerAuth {
    /// Credentials for `host` (empty when none are configured). The Docker config is read by
    /// `fastbuild-oci` — one implementation of `auths`, `credsStore` and `credHelpers` for the
    /// native publisher and for BuildKit's pushes alike (it maps `registry-1.docker.io`, the host
    /// BuildKit asks for, to Docker Hub's `https://index.docker.io/v1/` key).
    pub async fn credentials(&self, host: &str) -> Result<Credentials, String> {
        let config = DockerConfig::load(self.config_dir.as_deref()).map_err(|e| e.to_string())?;
        Ok(
            match config
                .credential_for(host)
                .await
                .map_err(|e| e.to_string())?
            {
                None => Credentials::default(),
                Some(Credential::Basic { username, password }) => Credentials {
                    username,
                    secret: password,
                },
                // An identity token goes in `Secret` with an empty `Username`.
                Some(Credential::IdentityToken(token)) => Credentials {
                    username: String::new(),
                    secret: token,
                },
            },
        )
    }
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
    use base64::Engine as _;

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
