//! Transports to the BuildKit daemon, selected by an address like buildctl's `--addr`.
//!
//! - `unix:///path`: a buildkitd socket;
//! - `tcp://host:port`: plain TCP, or TLS (mTLS with a client cert) when [`TlsOptions`] is given;
//! - `docker-unix:///path`, `docker://` (then `DOCKER_HOST`, else `/var/run/docker.sock`):
//!   the BuildKit embedded in dockerd, reached by `POST /grpc` with `Upgrade: h2c` on the Docker
//!   API socket, then h2c gRPC on the upgraded connection (one upgrade per connection);
//! - connection helpers, as buildctl's: `docker-container://`, `podman-container://`,
//!   `nerdctl-container://`, `kube-pod://`, `ssh://` — gRPC over the stdio of a command
//!   running `buildctl dial-stdio` where the daemon is (see [`crate::connhelper`]).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::error::{Error, Result};

/// TLS settings for `tcp://` addresses (like buildctl's `--tlscacert`, `--tlscert`, `--tlskey`,
/// `--tlsservername`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM CA bundle to verify the server; the system roots when `None`.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (mTLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key: Option<PathBuf>,
    /// Name to verify in the server certificate; the address host when `None`.
    pub server_name: Option<String>,
}

/// A parsed daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:///path`: a BuildKit gRPC socket.
    Unix(PathBuf),
    /// `tcp://host:port`: a BuildKit gRPC TCP endpoint.
    Tcp {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// dockerd's API on a unix socket, upgraded to gRPC via `POST /grpc`.
    DockerUnix(PathBuf),
    /// dockerd's API on plain TCP, upgraded to gRPC via `POST /grpc`.
    DockerTcp {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// A connection helper: gRPC over the stdio of this command.
    Command(crate::connhelper::HelperCommand),
    /// dockerd's API over the stdio of a command (`ssh … docker system dial-stdio`, the docker
    /// CLI's `ssh://` endpoints), upgraded to gRPC via `POST /grpc`.
    DockerCommand(crate::connhelper::HelperCommand),
}

impl Address {
    /// Parses an address string (see the module docs for the forms).
    pub fn parse(address: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = address.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(invalid("the socket path is empty"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(path) = address.strip_prefix("docker-unix://") {
            if path.is_empty() {
                return Err(invalid("the socket path is empty"));
            }
            return Ok(Self::DockerUnix(PathBuf::from(path)));
        }
        match crate::connhelper::parse(address) {
            Ok(Some(cmd)) => return Ok(Self::Command(cmd)),
            Ok(None) => {}
            Err(reason) => return Err(invalid(&reason)),
        }
        if let Some(rest) = address.strip_prefix("tcp://") {
            let (host, port) =
                parse_host_port(rest).ok_or_else(|| invalid("expected `tcp://host:port`"))?;
            return Ok(Self::Tcp { host, port });
        }
        if let Some(rest) = address.strip_prefix("docker-tcp://") {
            let (host, port) = parse_host_port(rest)
                .ok_or_else(|| invalid("expected `docker-tcp://host:port`"))?;
            return Ok(Self::DockerTcp { host, port });
        }
        if address.starts_with("docker-ssh://") {
            let ssh = address.replacen("docker-ssh://", "ssh://", 1);
            let cmd = crate::connhelper::docker_ssh(&ssh).map_err(|r| invalid(&r))?;
            return Ok(Self::DockerCommand(cmd));
        }
        if let Some(rest) = address.strip_prefix("docker://") {
            if !rest.is_empty() {
                // `docker://<context or host>` forms of buildx are not supported; only the default.
                return Err(invalid(
                    "only `docker://` (no host) is supported; use `docker-unix:///path` for another socket",
                ));
            }
            let docker_host = std::env::var("DOCKER_HOST").unwrap_or_default();
            if docker_host.is_empty() {
                return Ok(Self::DockerUnix(PathBuf::from("/var/run/docker.sock")));
            }
            if let Some(path) = docker_host.strip_prefix("unix://") {
                return Ok(Self::DockerUnix(PathBuf::from(path)));
            }
            if let Some(rest) = docker_host.strip_prefix("tcp://") {
                let (host, port) = parse_host_port(rest)
                    .ok_or_else(|| invalid("DOCKER_HOST is not `tcp://host:port`"))?;
                return Ok(Self::DockerTcp { host, port });
            }
            return Err(invalid(&format!(
                "DOCKER_HOST `{docker_host}` is neither `unix://` nor `tcp://`"
            )));
        }
        Err(invalid(
            "expected `unix://`, `tcp://`, `docker-unix://`, `docker://`, or a connection helper: \
             `docker-container://`, `podman-container://`, `nerdctl-container://`, `kube-pod://`, `kube-deployment://`, \
             `ssh://`",
        ))
    }
}

fn parse_host_port(rest: &str) -> Option<(String, u16)> {
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// A byte stream to the daemon.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed connection, as the tonic connector returns it.
pub(crate) type BoxedIo = TokioIo<Pin<Box<dyn Io>>>;

/// Dials connections for one address; cheap to clone (one per new HTTP/2 connection).
#[derive(Clone)]
pub(crate) struct Dialer {
    address: Address,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

impl Dialer {
    pub(crate) fn new(address_str: &str, tls: Option<&TlsOptions>) -> Result<Self> {
        let address = Address::parse(address_str)?;
        let tls = match (tls, &address) {
            (None, _) => None,
            (Some(opts), Address::Tcp { host, .. } | Address::DockerTcp { host, .. }) => {
                Some(tls_config(address_str, host, opts)?)
            }
            (Some(_), _) => {
                return Err(Error::InvalidAddress {
                    address: address_str.to_owned(),
                    reason: "TLS settings apply only to `tcp://` and `docker-tcp://` addresses"
                        .to_owned(),
                });
            }
        };
        Ok(Self { address, tls })
    }

    /// The `:authority` to use in requests.
    pub(crate) fn authority(&self) -> String {
        match &self.address {
            Address::Tcp { host, port } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
            _ => "localhost".to_owned(),
        }
    }

    /// Opens one connection, ready for HTTP/2 (prior knowledge).
    pub(crate) async fn dial(&self) -> std::io::Result<BoxedIo> {
        let io: Pin<Box<dyn Io>> = match &self.address {
            Address::Unix(path) => Box::pin(UnixStream::connect(path).await?),
            Address::Tcp { host, port } => {
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                match &self.tls {
                    None => Box::pin(tcp),
                    Some((config, name)) => {
                        let connector = tokio_rustls::TlsConnector::from(config.clone());
                        Box::pin(connector.connect(name.clone(), tcp).await?)
                    }
                }
            }
            Address::DockerUnix(path) => {
                let stream = UnixStream::connect(path).await?;
                docker_upgrade(Box::pin(stream)).await?
            }
            Address::DockerTcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                match &self.tls {
                    None => docker_upgrade(Box::pin(stream)).await?,
                    Some((config, name)) => {
                        let connector = tokio_rustls::TlsConnector::from(config.clone());
                        let tls = connector.connect(name.clone(), stream).await?;
                        docker_upgrade(Box::pin(tls)).await?
                    }
                }
            }
            Address::Command(cmd) => Box::pin(crate::connhelper::CommandConn::spawn(cmd)?),
            Address::DockerCommand(cmd) => {
                docker_upgrade(Box::pin(crate::connhelper::CommandConn::spawn(cmd)?)).await?
            }
        };
        Ok(TokioIo::new(io))
    }
}

/// `POST /grpc` with `Connection: Upgrade`, `Upgrade: h2c`; on `101` the connection is h2c.
async fn docker_upgrade(stream: Pin<Box<dyn Io>>) -> std::io::Result<Pin<Box<dyn Io>>> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "docker /grpc upgrade connection ended");
        }
    });
    let request = http::Request::post("/grpc")
        .header(http::header::HOST, "docker")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "h2c")
        .body(Empty::<Bytes>::new())
        .map_err(std::io::Error::other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err(std::io::Error::other(format!(
            "the Docker API answered `POST /grpc` with {status} instead of 101 Switching Protocols: {body} (this dockerd has no BuildKit gRPC endpoint)"
        )));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(std::io::Error::other)?;
    Ok(Box::pin(TokioIo::new(upgraded)))
}

fn tls_config(
    address: &str,
    host: &str,
    opts: &TlsOptions,
) -> Result<(
    Arc<rustls::ClientConfig>,
    rustls_pki_types::ServerName<'static>,
)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let tls_err =
        |what: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| Error::Tls {
            address: address.to_owned(),
            what,
            source,
        };
    let certificates = |path: &std::path::Path, what: String| {
        CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
            .map_err(|e| tls_err(what, Some(Box::new(e))))
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &opts.ca_cert {
        let certs = certificates(
            ca,
            format!("cannot read CA certificates from `{}`", ca.display()),
        )?;
        if certs.is_empty() {
            return Err(tls_err(
                format!("no certificate found in `{}`", ca.display()),
                None,
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                tls_err(
                    format!("invalid CA certificate in `{}`", ca.display()),
                    Some(Box::new(e)),
                )
            })?;
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(tls_err(
                "no system CA certificates found; pass a CA certificate".to_owned(),
                None,
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS protocol setup".to_owned(), Some(Box::new(e))))?
        .with_root_certificates(roots);
    let mut config = match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(
                cert,
                format!("cannot read client certificate `{}`", cert.display()),
            )?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_err(
                    format!("cannot read client key `{}`", key.display()),
                    Some(Box::new(e)),
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                tls_err(
                    "client certificate and key do not match".to_owned(),
                    Some(Box::new(e)),
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(tls_err(
                "a client certificate needs both the certificate and the key".to_owned(),
                None,
            ));
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = opts.server_name.clone().unwrap_or_else(|| host.to_owned());
    let server_name = ServerName::try_from(name.clone()).map_err(|e| {
        tls_err(
            format!("invalid TLS server name `{name}`"),
            Some(Box::new(e)),
        )
    })?;
    Ok((Arc::new(config), server_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let tcp = |host: &str, port| Address::Tcp {
            host: host.into(),
            port,
        };
        let docker_tcp = |host: &str, port| Address::DockerTcp {
            host: host.into(),
            port,
        };
        let sock = "/run/buildkit/buildkitd.sock";
        for (text, want) in [
            (
                "unix:///run/buildkit/buildkitd.sock",
                Address::Unix(sock.into()),
            ),
            ("tcp://127.0.0.1:1234", tcp("127.0.0.1", 1234)),
            ("tcp://[::1]:1234", tcp("::1", 1234)),
            (
                "docker-unix:///var/run/docker.sock",
                Address::DockerUnix("/var/run/docker.sock".into()),
            ),
            ("docker-tcp://10.0.0.5:2376", docker_tcp("10.0.0.5", 2376)),
        ] {
            assert_eq!(Address::parse(text).unwrap(), want, "{text}");
        }
        assert!(matches!(
            Address::parse("docker-ssh://me@box").unwrap(),
            Address::DockerCommand(_)
        ));
        for bad in [
            "",
            "http://x",
            "tcp://nohost",
            "unix://",
            "docker://ctx",
            "kube-pod://X_",
        ] {
            let err = Address::parse(bad).unwrap_err().to_string();
            assert!(err.contains("BUILDKIT_HOST"), "{err}");
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
