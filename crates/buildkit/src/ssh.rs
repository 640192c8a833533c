//! SSH agent forwarding for `RUN --mount=type=ssh` (`moby.sshforward.v1.SSH`), as
//! `docker buildx build --ssh` does it.
//!
//! The daemon asks `CheckAgent` whether an ID is served, then opens one `ForwardAgent` stream
//! per connection a build step makes to its mounted socket; the ID comes in the
//! `buildkit.ssh.id` metadata (`default` when absent). Each stream is spliced, byte for byte,
//! onto a new connection to the agent's unix socket: private keys never leave the agent, and
//! nothing of the agent protocol is logged.
//!
//! Sources: an agent socket (`--ssh default` takes `SSH_AUTH_SOCK`), or key files, which are
//! loaded into a private `ssh-agent` (OpenSSH's, from `PATH`) started for the build and killed
//! with it — the keys are read by `ssh-add`, never by fastbuild.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::proto::moby::sshforward::v1::ssh_server::Ssh;
use crate::proto::moby::sshforward::v1::{BytesMessage, CheckAgentRequest, CheckAgentResponse};

/// The ID a mount without `id=` asks for.
pub const DEFAULT_ID: &str = "default";
/// The gRPC metadata carrying the ID of a `ForwardAgent` stream.
const ID_METADATA: &str = "buildkit.ssh.id";
/// Bytes read from the agent per message to the daemon.
const CHUNK: usize = 32 * 1024;

/// What an SSH ID forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSource {
    /// A running agent's unix socket (`SSH_AUTH_SOCK`).
    Agent(PathBuf),
    /// Private key files, loaded into an agent of the build's own.
    Keys(Vec<PathBuf>),
}

/// The agents of one build, by ID; private agents live as long as this value.
#[derive(Debug, Default)]
pub(crate) struct SshAgents {
    sockets: BTreeMap<String, PathBuf>,
    /// Agents started for key files: kept alive (and killed on drop) with the build.
    private: Vec<PrivateAgent>,
}

impl SshAgents {
    /// Resolves `sources`: agent sockets are checked, key files loaded into private agents.
    pub(crate) async fn start(sources: &BTreeMap<String, SshSource>) -> Result<Self> {
        let mut agents = Self::default();
        for (id, source) in sources {
            let socket = match source {
                SshSource::Agent(socket) => {
                    check_socket(id, socket)?;
                    socket.clone()
                }
                SshSource::Keys(keys) => {
                    let agent = PrivateAgent::start(id, keys).await?;
                    let socket = agent.socket.clone();
                    agents.private.push(agent);
                    socket
                }
            };
            agents.sockets.insert(id.clone(), socket);
        }
        Ok(agents)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub(crate) fn service(&self) -> SshService {
        SshService {
            sockets: self.sockets.clone(),
        }
    }
}

fn check_socket(id: &str, socket: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::metadata(socket) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(Error::Ssh(format!(
            "ssh `{id}`: `{}` is not an agent socket (give key files as `{id}=KEY[,KEY]`, or an \
             agent's socket)",
            socket.display()
        ))),
        Err(e) => Err(Error::Ssh(format!(
            "ssh `{id}`: cannot use the agent socket `{}`: {e} (is the agent running? \
             `eval $(ssh-agent)` then `ssh-add`)",
            socket.display()
        ))),
    }
}

/// An `ssh-agent` of the build's own holding the given keys; killed on drop.
#[derive(Debug)]
struct PrivateAgent {
    socket: PathBuf,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl PrivateAgent {
    async fn start(id: &str, keys: &[PathBuf]) -> Result<Self> {
        let fail = |what: String| Error::Ssh(format!("ssh `{id}`: {what}"));
        for key in keys {
            if !key.is_file() {
                return Err(fail(format!(
                    "the key file `{}` does not exist or is not a file",
                    key.display()
                )));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("fastbuild-ssh-")
            .tempdir()
            .map_err(|e| fail(format!("cannot create a directory for its agent: {e}")))?;
        let socket = dir.path().join("agent.sock");
        let child = tokio::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot start `ssh-agent` to hold the key files ({e}); install OpenSSH's \
                     client, or load the keys into your own agent and pass `--ssh {id}` \
                     (SSH_AUTH_SOCK)"
                ))
            })?;
        let mut agent = Self {
            socket,
            child,
            _dir: dir,
        };
        // The agent creates its socket right after it starts.
        for _ in 0..100 {
            if agent.socket.exists() {
                break;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(fail(format!(
                    "`ssh-agent` exited ({status}) before listening"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = tokio::process::Command::new("ssh-add")
            .args(keys)
            .env("SSH_AUTH_SOCK", &agent.socket)
            // Never prompt: a passphrase-protected key belongs in the user's own agent.
            .env_remove("DISPLAY")
            .env_remove("SSH_ASKPASS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| fail(format!("cannot run `ssh-add` ({e})")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(fail(format!(
                "`ssh-add` could not load {}: {} (a passphrase-protected key must be added to \
                 your own agent: `ssh-add KEY`, then `--ssh {id}`)",
                keys.iter()
                    .map(|k| format!("`{}`", k.display()))
                    .collect::<Vec<_>>()
                    .join(", "),
                stderr.trim()
            )));
        }
        Ok(agent)
    }
}

/// The session's SSH service.
pub(crate) struct SshService {
    sockets: BTreeMap<String, PathBuf>,
}

impl SshService {
    fn socket(&self, id: &str) -> Result<&PathBuf, Status> {
        self.sockets.get(id).ok_or_else(|| {
            let known: Vec<&str> = self.sockets.keys().map(String::as_str).collect();
            Status::not_found(format!(
                "no SSH agent is forwarded for id `{id}` (forwarded: {}); pass `--ssh {id}` \
                 (SSH_AUTH_SOCK) or `--ssh {id}=KEY`",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

#[tonic::async_trait]
impl Ssh for SshService {
    type ForwardAgentStream = ReceiverStream<Result<BytesMessage, Status>>;

    async fn check_agent(
        &self,
        request: Request<CheckAgentRequest>,
    ) -> Result<Response<CheckAgentResponse>, Status> {
        let id = request.into_inner().id;
        let id = if id.is_empty() { DEFAULT_ID } else { &id };
        self.socket(id)?;
        tracing::debug!(%id, "ssh agent checked");
        Ok(Response::new(CheckAgentResponse {}))
    }

    async fn forward_agent(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::ForwardAgentStream>, Status> {
        let id = crate::session::metadata_str(&request, ID_METADATA)
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_ID)
            .to_owned();
        let socket = self.socket(&id)?.clone();
        let conn = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "ssh `{id}`: cannot connect to the agent at `{}`: {e}",
                    socket.display()
                ))
            })?;
        tracing::debug!(%id, "ssh agent connection forwarded");
        let (mut agent_read, mut agent_write) = conn.into_split();
        let mut inbound = request.into_inner();
        // Daemon → agent.
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if agent_write.write_all(&msg.data).await.is_err() {
                    break;
                }
            }
            let _ = agent_write.shutdown().await;
        });
        // Agent → daemon.
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match agent_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = BytesMessage {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_or_non_socket_agent_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs_err::write(&file, "x").unwrap();
        let sources = BTreeMap::from([("default".to_owned(), SshSource::Agent(file.clone()))]);
        let err = SshAgents::start(&sources).await.unwrap_err().to_string();
        assert!(err.contains("is not an agent socket"), "{err}");
        let sources = BTreeMap::from([(
            "default".to_owned(),
            SshSource::Agent(dir.path().join("gone.sock")),
        )]);
        let err = SshAgents::start(&sources).await.unwrap_err().to_string();
        assert!(err.contains("is the agent running"), "{err}");
        let sources = BTreeMap::from([(
            "git".to_owned(),
            SshSource::Keys(vec![dir.path().join("no-key")]),
        )]);
        let err = SshAgents::start(&sources).await.unwrap_err().to_string();
        assert!(err.contains("ssh `git`") && err.contains("no-key"), "{err}");
    }

    #[tokio::test]
    async fn unknown_ids_are_refused_naming_the_forwarded_ones() {
        let svc = SshService {
            sockets: BTreeMap::from([("default".to_owned(), PathBuf::from("/nonexistent"))]),
        };
        let err = svc
            .check_agent(Request::new(CheckAgentRequest {
                id: "github".to_owned(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(
            err.message().contains("forwarded: default"),
            "{}",
            err.message()
        );
        svc.check_agent(Request::new(CheckAgentRequest { id: String::new() }))
            .await
            .unwrap();
    }
}
