//! The client side of a BuildKit session: `Control.Session` is a bidirectional stream of
//! `BytesMessage`s carrying one raw byte stream, on which the daemon is the HTTP/2 gRPC
//! **client** and we are the **server** (health, file sync, auth, secrets,
//! and the file an exporter sends back).
//!
//! The tunnel is bridged to an in-memory duplex pipe; one end is pumped to/from the gRPC stream,
//! the other is served by a hyper HTTP/2 server with tonic routes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;

use crate::auth::{AuthService, DockerAuth};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::filesend::{FileSendService, LayoutTarget};
use crate::filesync::{FileSyncService, SyncStats};
use crate::proto::grpc::health::v1::health_server::HealthServer;
use crate::proto::moby::buildkit::secrets::v1::secrets_server::SecretsServer;
use crate::proto::moby::buildkit::v1::BytesMessage;
use crate::proto::moby::filesync::v1::auth_server::AuthServer;
use crate::proto::moby::filesync::v1::file_send_server::FileSendServer;
use crate::proto::moby::filesync::v1::file_sync_server::FileSyncServer;
use crate::proto::moby::sshforward::v1::ssh_server::SshServer;
use crate::secrets::{HealthService, SecretSource, SecretsService};
use crate::ssh::SshService;

/// The methods the session serves, advertised one metadata entry each.
const METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/moby.filesync.v1.FileSync/DiffCopy",
    "/moby.filesync.v1.Auth/Credentials",
    "/moby.filesync.v1.Auth/FetchToken",
    "/moby.filesync.v1.Auth/GetTokenAuthority",
    "/moby.filesync.v1.Auth/VerifyTokenAuthority",
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
];

/// Bytes per tunnel message (well below Docker's 4 MiB receive limit).
const TUNNEL_CHUNK: usize = 64 * 1024;

/// Receive window of each stream of the session's HTTP/2 server: bounds what a stream can
/// have buffered unread (inbound session traffic is small: REQ packets, auth and secret
/// requests).
const SESSION_STREAM_WINDOW: u32 = 64 * 1024;
/// Receive window of the session's HTTP/2 connection. h2 (0.4.16 and later) closes a
/// connection with GOAWAY `ENHANCE_YOUR_CALM` "too_many_data_frames" when the small DATA frames
/// it holds unread cost more than a budget of half this window, at ~250 bytes per frame. The
/// daemon's file sync sends one tiny message (5–10 bytes) per file it wants, in bursts of up to
/// a full stream window: ~3 MB of budget per stream. The default window (64 KiB, so a 32 KiB
/// budget, ~130 frames) failed any context with more than a few hundred files; 32 MiB (16 MiB
/// budget) covers several syncing streams at once, while the stream window above still bounds
/// the memory.
const SESSION_CONNECTION_WINDOW: u32 = 32 << 20;

/// The text of the gRPC metadata entry `key` of a request the daemon made, if it sent one.
pub(crate) fn metadata_str<'r, T>(request: &'r tonic::Request<T>, key: &str) -> Option<&'r str> {
    request.metadata().get(key).and_then(|v| v.to_str().ok())
}

/// A random 25-character `[0-9a-z]` ID, like BuildKit's `identity.NewID()` (never contains `:`).
pub(crate) fn new_id() -> String {
    let mut n = uuid::Uuid::new_v4().as_u128();
    let mut s = String::with_capacity(25);
    for _ in 0..25 {
        let digit = (n % 36) as u32;
        n /= 36;
        s.push(char::from_digit(digit, 36).expect("digit < 36"));
    }
    s
}

/// What a session serves.
pub(crate) struct SessionConfig {
    pub(crate) name: String,
    pub(crate) shared_key: String,
    pub(crate) dirs: BTreeMap<String, PathBuf>,
    /// Absolute paths FileSync never sends.
    pub(crate) withheld: Vec<PathBuf>,
    pub(crate) secrets: BTreeMap<String, SecretSource>,
    pub(crate) auth: DockerAuth,
    pub(crate) stats: SyncStats,
    /// Where an exporter's file output (an OCI layout tar) goes, if the build has one.
    pub(crate) layout: Option<Arc<LayoutTarget>>,
    /// SSH agents forwarded to `RUN --mount=type=ssh`, if any.
    pub(crate) ssh: Option<SshService>,
}

/// The SSH forwarding methods, advertised when agents are forwarded.
const SSH_METHODS: &[&str] = &[
    "/moby.sshforward.v1.SSH/CheckAgent",
    "/moby.sshforward.v1.SSH/ForwardAgent",
];

/// A running session; [`Session::close`] (or drop) ends it.
pub(crate) struct Session {
    pub(crate) id: String,
    cancel: CancellationToken,
    error: Arc<Mutex<Option<String>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Session {
    /// Opens `Control.Session` and starts serving on it.
    pub(crate) fn start(client: &Client, config: SessionConfig) -> Result<Self> {
        let id = new_id();
        let cancel = CancellationToken::new();
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let (out_tx, out_rx) = mpsc::channel::<BytesMessage>(16);
        let (local, remote) = tokio::io::duplex(4 * TUNNEL_CHUNK);
        let (mut remote_read, mut remote_write) = tokio::io::split(remote);

        let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
        let md = request.metadata_mut();
        let value = |s: &str| {
            MetadataValue::try_from(s)
                .map_err(|_| Error::Session(format!("invalid session metadata value `{s}`")))
        };
        md.insert("x-docker-expose-session-uuid", value(&id)?);
        md.insert("x-docker-expose-session-name", value(&config.name)?);
        md.insert(
            "x-docker-expose-session-sharedkey",
            value(&config.shared_key)?,
        );
        for method in METHODS {
            md.append("x-docker-expose-session-grpc-method", value(method)?);
        }
        if config.layout.is_some() {
            md.append(
                "x-docker-expose-session-grpc-method",
                value(crate::filesend::METHOD)?,
            );
        }
        if config.ssh.is_some() {
            for method in SSH_METHODS {
                md.append("x-docker-expose-session-grpc-method", value(method)?);
            }
        }

        let mut tasks = tokio::task::JoinSet::new();

        // The gRPC call and the daemon → client direction.
        let mut control = client.control();
        let c = cancel.clone();
        let err = error.clone();
        tasks.spawn(async move {
            let run = async {
                let response = control.session(request).await?;
                let mut inbound = response.into_inner();
                while let Some(msg) = inbound.message().await? {
                    if msg.data.is_empty() {
                        continue;
                    }
                    if remote_write.write_all(&msg.data).await.is_err() {
                        break;
                    }
                }
                Ok::<(), tonic::Status>(())
            };
            tokio::select! {
                () = c.cancelled() => {}
                result = run => {
                    if let Err(status) = result {
                        tracing::debug!(%status, "session stream ended with an error");
                        *err.lock().expect("session error lock") = Some(status.message().to_owned());
                    }
                    let _ = remote_write.shutdown().await;
                }
            }
        });

        // The client → daemon direction.
        let c = cancel.clone();
        tasks.spawn(async move {
            let pump = async {
                let mut buf = vec![0u8; TUNNEL_CHUNK];
                loop {
                    let n = match remote_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if out_tx
                        .send(BytesMessage {
                            data: buf[..n].to_vec(),
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            };
            tokio::select! {
                () = c.cancelled() => {}
                () = pump => {}
            }
        });

        // The HTTP/2 server the daemon talks to.
        let mut routes = tonic::service::Routes::new(HealthServer::new(HealthService))
            .add_service(FileSyncServer::new(FileSyncService::new(
                config.dirs,
                config.stats,
                config.withheld,
            )))
            .add_service(AuthServer::new(AuthService::new(config.auth)))
            .add_service(SecretsServer::new(SecretsService {
                secrets: config.secrets,
            }));
        if let Some(target) = config.layout {
            routes = routes.add_service(FileSendServer::new(FileSendService { target }));
        }
        if let Some(ssh) = config.ssh {
            routes = routes.add_service(SshServer::new(ssh));
        }
        let routes = routes.prepare();
        let c = cancel.clone();
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .max_frame_size(1 << 20)
                .initial_stream_window_size(SESSION_STREAM_WINDOW)
                .initial_connection_window_size(SESSION_CONNECTION_WINDOW);
            let conn =
                builder.serve_connection(TokioIo::new(local), TowerToHyperService::new(routes));
            tokio::select! {
                () = c.cancelled() => {}
                result = conn => {
                    if let Err(err) = result {
                        tracing::debug!(%err, "session HTTP/2 server ended");
                    }
                }
            }
        });

        tracing::debug!(session = %id, "session started");
        Ok(Self {
            id,
            cancel,
            error,
            tasks,
        })
    }

    /// The last error the tunnel reported, if any.
    pub(crate) fn error(&self) -> Option<String> {
        self.error.lock().expect("session error lock").clone()
    }

    /// Ends the session: stops serving and cancels the `Control.Session` call.
    pub(crate) async fn close(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        tracing::debug!(session = %self.id, "session closed");
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_25_base36_chars() {
        let a = super::new_id();
        assert_eq!(a.len(), 25);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
        assert_ne!(a, super::new_id());
    }
}
