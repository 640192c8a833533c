//! The connection to the daemon and the simple Control calls (`ListWorkers`, `Info`).

use std::collections::BTreeMap;

use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::proto::moby::buildkit::v1 as control;
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::transport::{Dialer, TlsOptions};

/// Largest message accepted from the daemon (like the Go client: 16 MiB).
pub(crate) const MAX_MESSAGE: usize = 16 << 20;

/// A BuildKit client bound to one daemon address. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub(crate) address: String,
    pub(crate) channel: Channel,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// One BuildKit worker as `ListWorkers` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker ID.
    pub id: String,
    /// Labels (executor, snapshotter, hostname, …).
    pub labels: BTreeMap<String, String>,
    /// Platforms as `os/arch[/variant]`.
    pub platforms: Vec<String>,
    /// BuildKit version of the worker, when reported.
    pub buildkit_version: Option<String>,
}

/// The daemon's BuildKit version (`Info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Package, e.g. `github.com/moby/buildkit`.
    pub package: String,
    /// Version, e.g. `v0.13.2`.
    pub version: String,
    /// Git revision.
    pub revision: String,
}

impl Client {
    /// Connects to the daemon at `address` (`unix://`, `tcp://`, `docker-unix://`, `docker://`).
    ///
    /// The connection is made eagerly, so an unreachable daemon fails here with
    /// [`Error::Unreachable`], naming the address.
    pub async fn connect(address: &str, tls: Option<TlsOptions>) -> Result<Self> {
        let dialer = Dialer::new(address, tls.as_ref())?;
        let endpoint = Endpoint::from_shared(format!("http://{}", dialer.authority()))
            .map_err(|e| Error::InvalidAddress {
                address: address.to_owned(),
                reason: e.to_string(),
            })?
            .http2_adaptive_window(true);
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let dialer = dialer.clone();
            async move { dialer.dial().await }
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| Error::Unreachable {
                address: address.to_owned(),
                source: Box::new(e),
            })?;
        tracing::debug!(address, "connected to BuildKit");
        Ok(Self {
            address: address.to_owned(),
            channel,
        })
    }

    /// The address this client talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub(crate) fn rpc_error(&self, method: &'static str, source: tonic::Status) -> Error {
        if source.code() == tonic::Code::Unavailable
            || source.code() == tonic::Code::Unknown && source.message().contains("transport")
        {
            return Error::Unreachable {
                address: self.address.clone(),
                source: Box::new(source),
            };
        }
        Error::Rpc {
            method,
            address: self.address.clone(),
            source,
        }
    }

    /// Lists the daemon's workers.
    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        let response = self
            .control()
            .list_workers(control::ListWorkersRequest::default())
            .await
            .map_err(|s| self.rpc_error("ListWorkers", s))?
            .into_inner();
        Ok(response
            .record
            .into_iter()
            .map(|w| WorkerInfo {
                id: w.id,
                labels: w.labels.into_iter().collect(),
                platforms: w
                    .platforms
                    .into_iter()
                    .map(|p| {
                        let mut s = format!("{}/{}", p.os, p.architecture);
                        if !p.variant.is_empty() {
                            s.push('/');
                            s.push_str(&p.variant);
                        }
                        s
                    })
                    .collect(),
                buildkit_version: w
                    .buildkit_version
                    .map(|v| v.version)
                    .filter(|v| !v.is_empty()),
            })
            .collect())
    }

    /// The daemon's BuildKit version.
    pub async fn info(&self) -> Result<ServerInfo> {
        let response = self
            .control()
            .info(control::InfoRequest {})
            .await
            .map_err(|s| self.rpc_error("Info", s))?
            .into_inner();
        let v = response.buildkit_version.unwrap_or_default();
        Ok(ServerInfo {
            package: v.package,
            version: v.version,
            revision: v.revision,
        })
    }
}
