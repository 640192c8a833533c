//! The connection to the daemon and the simple Control calls (`ListWorkers`, `Info`,
//! `ListenBuildHistory` for the builds still running).

use std::collections::BTreeMap;

use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::proto::moby::buildkit::v1 as control;
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
use crate::transport::{Dialer, TlsOptions};

/// Largest message accepted from the daemon (like the Go client: 16 MiB).
pub(crate) const MAX_MESSAGE: usize = 16 << 20;

/// Receive window of each stream from the daemon (`Status`, the `Session` tunnel, …).
const STREAM_WINDOW: u32 = 256 * 1024;
/// Receive window of the connection to the daemon. Fixed rather than adaptive: h2 (0.4.16 and
/// later) closes a connection with GOAWAY `ENHANCE_YOUR_CALM` "too_many_data_frames" when the
/// small DATA frames it holds unread cost more than a budget of half this window, at ~250
/// bytes per frame. During a large file sync the daemon sends a stream of tiny `Session` tunnel
/// messages (its flow-control updates and file requests, 16 bytes and up); with the adaptive
/// window starting at 64 KiB (a 32 KiB budget, ~130 frames) a 200 MB context failed after a
/// few seconds. 64 MiB (32 MiB budget) covers full stream windows of such frames on several
/// streams at once; the stream window above still bounds the memory.
const CONNECTION_WINDOW: u32 = 64 << 20;

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

/// A build the daemon is still running, as `ListenBuildHistory` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveBuild {
    /// The build reference (the `ref` of its `Solve` call).
    pub build_ref: String,
    /// Frontend, e.g. `dockerfile.v0`.
    pub frontend: String,
    /// Frontend attributes (`filename`, `build-arg:NAME`, …).
    pub frontend_attrs: BTreeMap<String, String>,
    /// When the daemon started the build, when reported.
    pub created_at: Option<std::time::SystemTime>,
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
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
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

    /// The builds the daemon is running right now (`ListenBuildHistory` with `ActiveOnly` and
    /// `EarlyExit`: one STARTED event per active build, then the stream ends).
    ///
    /// A cancelled build leaves this list once the daemon has unwound its solve.
    pub async fn active_builds(&self) -> Result<Vec<ActiveBuild>> {
        let mut stream = self
            .control()
            .listen_build_history(control::BuildHistoryRequest {
                active_only: true,
                early_exit: true,
                ..control::BuildHistoryRequest::default()
            })
            .await
            .map_err(|s| self.rpc_error("ListenBuildHistory", s))?
            .into_inner();
        let mut builds = Vec::new();
        while let Some(event) = stream
            .message()
            .await
            .map_err(|s| self.rpc_error("ListenBuildHistory", s))?
        {
            if event.r#type() != control::BuildHistoryEventType::Started {
                continue;
            }
            let Some(record) = event.record else {
                continue;
            };
            builds.push(ActiveBuild {
                build_ref: record.r#ref,
                frontend: record.frontend,
                frontend_attrs: record.frontend_attrs.into_iter().collect(),
                created_at: record
                    .created_at
                    .and_then(|t| std::time::SystemTime::try_from(t).ok()),
            });
        }
        Ok(builds)
    }
}
