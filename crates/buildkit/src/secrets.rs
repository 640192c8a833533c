//! Build secrets (`moby.buildkit.secrets.v1.Secrets/GetSecret`) and the session health check.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tonic::{Request, Response, Status};

use crate::proto::grpc::health::v1::health_check_response::ServingStatus;
use crate::proto::grpc::health::v1::health_server::Health;
use crate::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::moby::buildkit::secrets::v1::secrets_server::Secrets;
use crate::proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};

/// Largest secret served (the Go provider's limit).
const MAX_SECRET: u64 = 500 * 1024;

/// Where a secret's value comes from (like `--secret id=x,src=path` / `env=VAR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The content of a file.
    File(PathBuf),
    /// The value of an environment variable of this process.
    Env(String),
}

/// The session's Secrets service.
pub(crate) struct SecretsService {
    pub(crate) secrets: BTreeMap<String, SecretSource>,
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        let Some(source) = self.secrets.get(&id) else {
            return Err(Status::not_found(format!("secret `{id}` not found")));
        };
        let data = match source {
            SecretSource::File(path) => {
                let meta = fs_err::tokio::metadata(path)
                    .await
                    .map_err(|e| Status::not_found(format!("secret `{id}`: {e}")))?;
                if meta.len() > MAX_SECRET {
                    return Err(Status::invalid_argument(format!(
                        "secret `{id}` is larger than {MAX_SECRET} bytes"
                    )));
                }
                fs_err::tokio::read(path)
                    .await
                    .map_err(|e| Status::not_found(format!("secret `{id}`: {e}")))?
            }
            SecretSource::Env(var) => std::env::var_os(var)
                .map(std::ffi::OsString::into_encoded_bytes)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "secret `{id}`: environment variable `{var}` is not set"
                    ))
                })?,
        };
        tracing::debug!(%id, "secret served");
        Ok(Response::new(GetSecretResponse { data }))
    }
}

/// Always SERVING: the daemon checks every 5 s and drops the session after two failures.
pub(crate) struct HealthService;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }
}
