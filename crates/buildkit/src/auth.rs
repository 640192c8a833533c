//! Registry credentials for the daemon, read from the Docker config: `$DOCKER_CONFIG/config.json`
//! or `~/.docker/config.json` — `auths` entries (base64 `auth`, `username`/`password`,
//! `identitytoken`), `credHelpers` and `credsStore` (`docker-credential-<name> get`). Secrets
//! never reach logs or Debug output.
//!
//! Two ways to authorize the daemon's registry requests (`moby.filesync.v1.Auth`):
//! - **Client-side tokens** (registries with Bearer challenges: Docker Hub, GHCR, ECR, Harbor,
//!   distribution's token auth). The daemon asks `GetTokenAuthority` for a public key; given
//!   one, it asks `FetchToken` for each scope and fastbuild fetches the token from the realm
//!   itself, so the password stays on this machine and the daemon only holds short-lived
//!   tokens for the repositories it pushes and pulls. `VerifyTokenAuthority` proves to the
//!   daemon that a later session holds the same key (it then shares cached tokens). The key is
//!   Ed25519 from the seed HMAC-SHA256(salt, per-host random seed) as BuildKit's own clients
//!   derive it; the seed lives in this process only (buildctl keeps one in
//!   `~/.docker/.token_seed`), so tokens are shared within one fastbuild run or watch session.
//! - **`Credentials`**: the raw username and secret, for Basic challenges, and for Bearer ones
//!   when client-side tokens are off (`BUILDKIT_NO_CLIENT_TOKEN=1`, as with buildctl).
//!
//! A daemon can still call `Credentials` for any host at any time: the session cannot tell a
//! Basic challenge from a curious daemon. Client-side tokens keep passwords out of an honest
//! daemon's memory and logs (a shared or remote BuildKit); a hostile daemon is out of their
//! reach — SECURITY.md's trust model says what to give such a daemon.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use fastbuild_oci::{Credential, DockerConfig, RegistryClient, RegistryOptions};
use ring::rand::SecureRandom as _;
use ring::signature::KeyPair as _;
use tokio::sync::OnceCell;
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

/// Where Docker credentials come from, and how tokens are fetched for the daemon.
#[derive(Debug, Clone, Default)]
pub struct DockerAuth {
    /// The directory holding `config.json`; `$DOCKER_CONFIG`, else `~/.docker` when `None`.
    pub config_dir: Option<PathBuf>,
    /// How token services are reached for the daemon (CA files, insecure hosts, timeouts);
    /// defaults when `None`. Its `docker_config` is replaced by [`Self::config_dir`].
    pub registry: Option<RegistryOptions>,
    /// Never fetch tokens for the daemon: answer `GetTokenAuthority` with `Unavailable`, so
    /// the daemon asks `Credentials` and fetches tokens itself (buildctl's
    /// `BUILDKIT_NO_CLIENT_TOKEN=1`).
    pub no_client_tokens: bool,
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
    auth: DockerAuth,
    /// Per-host random seeds of the token authority keys (16 bytes, as BuildKit's).
    seeds: Mutex<HashMap<String, [u8; 16]>>,
    /// The registry client fetching tokens, made on the first `FetchToken`.
    client: OnceCell<RegistryClient>,
}

impl AuthService {
    pub(crate) fn new(auth: DockerAuth) -> Self {
        Self {
            auth,
            seeds: Mutex::default(),
            client: OnceCell::new(),
        }
    }

    /// The token authority key for `host` under the daemon's `salt`: Ed25519 from the seed
    /// HMAC-SHA256(key = salt, message = the host's seed when credentials are configured for
    /// it, nothing otherwise — anonymous sessions share one key per salt, as with buildctl).
    async fn authority_key(&self, host: &str, salt: &[u8]) -> Result<AuthorityKey, Status> {
        if self.auth.no_client_tokens {
            return Err(Status::unavailable(
                "client-side tokens are disabled (BUILDKIT_NO_CLIENT_TOKEN)",
            ));
        }
        let creds = self.credentials_for(host).await?;
        let seed = {
            let mut seeds = self
                .seeds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(seed) = seeds.get(host) {
                *seed
            } else {
                let mut seed = [0u8; 16];
                ring::rand::SystemRandom::new()
                    .fill(&mut seed)
                    .map_err(|_| Status::internal("no system randomness for the token seed"))?;
                seeds.insert(host.to_owned(), seed);
                seed
            }
        };
        Ok(authority_key(
            salt,
            (!creds.secret.is_empty()).then_some(&seed[..]),
        ))
    }

    async fn credentials_for(&self, host: &str) -> Result<Credentials, Status> {
        self.auth.credentials(host).await.map_err(|msg| {
            tracing::warn!(%host, "cannot read registry credentials: {msg}");
            Status::internal(msg)
        })
    }

    async fn client(&self) -> Result<&RegistryClient, Status> {
        self.client
            .get_or_try_init(|| async {
                let mut options = self.auth.registry.clone().unwrap_or_default();
                options.docker_config.clone_from(&self.auth.config_dir);
                RegistryClient::new(options).map_err(|e| {
                    Status::internal(format!("cannot set up the registry client: {e}"))
                })
            })
            .await
    }
}

/// An Ed25519 key of the session's token authority.
struct AuthorityKey(ring::signature::Ed25519KeyPair);

/// [`AuthService::authority_key`]'s derivation, for a given seed (`None`: no credentials).
fn authority_key(salt: &[u8], seed: Option<&[u8]>) -> AuthorityKey {
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salt),
        seed.unwrap_or_default(),
    );
    AuthorityKey(
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&mac.as_ref()[..32])
            .expect("an HMAC-SHA256 output is a 32-byte Ed25519 seed"),
    )
}

impl AuthorityKey {
    fn public_key(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }

    /// NaCl's `crypto_sign` of `payload` (what Go's `nacl/sign.Sign` returns and the daemon
    /// opens): the 64-byte signature followed by the payload.
    fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let mut signed = self.0.sign(payload).as_ref().to_vec();
        signed.extend_from_slice(payload);
        signed
    }
}

/// The largest payload the daemon is expected to have signed (it sends 32 random bytes).
const MAX_SIGNED_PAYLOAD: usize = 4096;

#[tonic::async_trait]
impl Auth for AuthService {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let creds = self.credentials_for(&host).await?;
        tracing::debug!(%host, found = !creds.secret.is_empty(), "registry credentials requested");
        Ok(Response::new(CredentialsResponse {
            username: creds.username,
            secret: creds.secret,
        }))
    }

    async fn fetch_token(
        &self,
        request: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        let req = request.into_inner();
        if self.auth.no_client_tokens {
            return Err(Status::unavailable(
                "client-side tokens are disabled (BUILDKIT_NO_CLIENT_TOKEN)",
            ));
        }
        let service = Some(req.service.as_str()).filter(|s| !s.is_empty());
        let client = self.client().await?;
        match client
            .fetch_token_for(&req.host, &req.realm, service, &req.scopes)
            .await
        {
            Ok(granted) => {
                tracing::debug!(host = %req.host, scopes = ?req.scopes, expires_in = granted.expires_in, "token fetched for the daemon");
                Ok(Response::new(FetchTokenResponse {
                    token: granted.token,
                    expires_in: i64::try_from(granted.expires_in).unwrap_or(i64::MAX),
                    // Unknown: the daemon then counts the lifetime from now.
                    issued_at: 0,
                }))
            }
            Err(e) => {
                tracing::warn!(host = %req.host, "cannot fetch a registry token for the build: {e}");
                Err(match e {
                    fastbuild_oci::Error::Unauthorized { .. } => {
                        Status::permission_denied(e.to_string())
                    }
                    _ => Status::unavailable(e.to_string()),
                })
            }
        }
    }

    async fn get_token_authority(
        &self,
        request: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        let req = request.into_inner();
        let key = self.authority_key(&req.host, &req.salt).await?;
        Ok(Response::new(GetTokenAuthorityResponse {
            public_key: key.public_key(),
        }))
    }

    async fn verify_token_authority(
        &self,
        request: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        let req = request.into_inner();
        if req.payload.len() > MAX_SIGNED_PAYLOAD {
            return Err(Status::invalid_argument(format!(
                "a token authority payload of {} bytes (at most {MAX_SIGNED_PAYLOAD} are signed)",
                req.payload.len()
            )));
        }
        let key = self.authority_key(&req.host, &req.salt).await?;
        Ok(Response::new(VerifyTokenAuthorityResponse {
            signed: key.sign(&req.payload),
        }))
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
            ..DockerAuth::default()
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

    fn hex(b: &[u8]) -> String {
        b.iter().fold(String::new(), |mut s, x| {
            use std::fmt::Write as _;
            let _ = write!(s, "{x:02x}");
            s
        })
    }

    /// Vectors from Go's crypto/hmac + crypto/ed25519 (what BuildKit's clients and daemon use):
    /// seed = HMAC-SHA256(key = salt 00..1f, msg = 16×0xaa), then `ed25519.NewKeyFromSeed`, and
    /// `nacl/sign.Sign` = signature ‖ message.
    #[test]
    fn authority_key_matches_buildkits_derivation() {
        let salt: Vec<u8> = (0u8..32).collect();
        let seed = [0xaau8; 16];
        let key = authority_key(&salt, Some(&seed));
        assert_eq!(
            hex(&key.public_key()),
            "f4a5b2de73d3fa44ffed26bdd9fc542022f6852cdbc004316fcb5640e58cae13"
        );
        assert_eq!(
            hex(&key.sign(b"payload")),
            "ebec33109c1522a4961852307d3acd54994256566386f886dc3e46f7adf9dec46022e3b1ac9710ffb5cf301a87515f491fdd71feb4f0e84af4fa2f58fb786b087061796c6f6164"
        );
        assert_eq!(
            hex(&authority_key(&salt, None).public_key()),
            "040621616cad1cec87d58de663a3da915dc2bf8afbd0bd361931d2c207644cc4"
        );
    }

    fn service_with(dir: &std::path::Path, no_client_tokens: bool) -> AuthService {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        fs_err::write(
            dir.join("config.json"),
            format!(r#"{{"auths":{{"reg.example:5000":{{"auth":"{b64}"}}}}}}"#),
        )
        .unwrap();
        AuthService::new(DockerAuth {
            config_dir: Some(dir.to_owned()),
            registry: None,
            no_client_tokens,
        })
    }

    #[tokio::test]
    async fn token_authority_signs_what_the_daemon_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service_with(dir.path(), false);
        let salt = vec![7u8; 32];
        let authority = |host: &str, salt: &[u8]| {
            svc.get_token_authority(Request::new(GetTokenAuthorityRequest {
                host: host.to_owned(),
                salt: salt.to_vec(),
            }))
        };
        let public = authority("reg.example:5000", &salt)
            .await
            .unwrap()
            .into_inner()
            .public_key;
        assert_eq!(public.len(), 32);
        // Stable within the session, different for another salt (a restarted daemon) and for
        // a host without credentials (the anonymous key of that salt).
        let again = authority("reg.example:5000", &salt)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.public_key, public);
        let other_salt = authority("reg.example:5000", &[8u8; 32])
            .await
            .unwrap()
            .into_inner();
        assert_ne!(other_salt.public_key, public);
        let anonymous = authority("anon.example", &salt).await.unwrap().into_inner();
        assert_eq!(
            anonymous.public_key,
            authority_key(&salt, None).public_key()
        );

        let payload = b"0123456789abcdef0123456789abcdef".to_vec();
        let signed = svc
            .verify_token_authority(Request::new(VerifyTokenAuthorityRequest {
                host: "reg.example:5000".to_owned(),
                payload: payload.clone(),
                salt: salt.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .signed;
        assert_eq!(&signed[64..], &payload[..]);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
            .verify(&payload, &signed[..64])
            .expect("the daemon's sign.Open accepts the signature");

        let huge = svc
            .verify_token_authority(Request::new(VerifyTokenAuthorityRequest {
                host: "reg.example:5000".to_owned(),
                payload: vec![0; MAX_SIGNED_PAYLOAD + 1],
                salt,
            }))
            .await
            .unwrap_err();
        assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    }

    /// With client-side tokens off, the daemon must see `Unavailable` (its cue to fall back to
    /// `Credentials`), never a key.
    #[tokio::test]
    async fn no_client_tokens_makes_the_daemon_fall_back_to_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service_with(dir.path(), true);
        let e = svc
            .get_token_authority(Request::new(GetTokenAuthorityRequest {
                host: "reg.example:5000".to_owned(),
                salt: vec![1; 32],
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        let creds = svc
            .credentials(Request::new(CredentialsRequest {
                host: "reg.example:5000".to_owned(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (creds.username.as_str(), creds.secret.as_str()),
            ("alice", "s3cret")
        );
    }

    #[tokio::test]
    async fn missing_config_gives_empty_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let auth = DockerAuth {
            config_dir: Some(dir.path().join("nope")),
            ..DockerAuth::default()
        };
        assert_eq!(auth.credentials("x").await.unwrap(), Credentials::default());
    }
}
