//! Connection helpers, as buildctl's `client/connhelper/*`: a BuildKit address whose scheme
//! names a command that reaches the daemon, with gRPC spoken over the command's stdio
//! (`buildctl dial-stdio` at the far end relays it to the daemon's socket).
//!
//! | address | command |
//! | --- | --- |
//! | `docker-container://NAME[?context=C]` | `docker [--context=C] exec -i NAME buildctl dial-stdio` |
//! | `podman-container://NAME` | `podman exec -i NAME buildctl dial-stdio` |
//! | `nerdctl-container://NAME[?namespace=N]` | `nerdctl exec [--namespace N] -i NAME buildctl dial-stdio` |
//! | `kube-pod://POD[?context=&namespace=&container=]` | `kubectl --context=C --namespace=N exec --container=K -i POD -- buildctl dial-stdio` |
//! | `ssh://[USER@]HOST[:PORT][/SOCKET]` | `ssh [-l USER] [-p PORT] -- HOST buildctl [--addr unix:///SOCKET] dial-stdio` |
//! | `kube-deployment://NAME[?context=&namespace=]` (fastbuild's: buildx's `kubernetes` driver) | `kubectl --context=C --namespace=N exec -i deployment/NAME -- buildctl dial-stdio` |
//!
//! The argv is exactly buildctl's, so a setup that works with buildctl works here. One process
//! per connection, killed with it; when the command ends before the daemon answered, the error
//! carries its exit status and the end of its stderr (`Error: No such container: …`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::process::{ChildStdin, Command};

/// The most stderr kept for an error message.
const STDERR_TAIL: usize = 4096;

/// A command to run for each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCommand {
    /// Program, looked up on `PATH`.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
}

impl HelperCommand {
    fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.to_owned(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
        }
    }

    /// The command line as shown in messages.
    pub fn shown(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Kubernetes names in `kube-pod://` (buildctl's rule, `[-a-z0-9.]+`, and not starting with
/// `-`, so that nothing reaches kubectl as a flag).
fn kube_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Container names, hosts and users: no leading `-` (never read as a flag) and no whitespace.
fn plain_word(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('-') && !s.contains(char::is_whitespace)
}

/// The helper command of `address`, `Ok(None)` for a scheme that is not a connection helper.
pub fn parse(address: &str) -> Result<Option<HelperCommand>, String> {
    let Some((scheme, _)) = address.split_once("://") else {
        return Ok(None);
    };
    if !matches!(
        scheme,
        "docker-container"
            | "podman-container"
            | "nerdctl-container"
            | "kube-pod"
            | "kube-deployment"
            | "ssh"
    ) {
        return Ok(None);
    }
    let url = url::Url::parse(address).map_err(|e| format!("not a valid URL: {e}"))?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let query = |key: &str| {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let known_query = |allowed: &[&str]| -> Result<(), String> {
        for (k, _) in url.query_pairs() {
            if !allowed.contains(&k.as_ref()) {
                return Err(format!(
                    "unknown query parameter `{k}` (known: {})",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ));
            }
        }
        Ok(())
    };
    let container = |what: &str| -> Result<String, String> {
        if !plain_word(&host) {
            return Err(format!("expected `{scheme}://{what}`"));
        }
        Ok(host.clone())
    };
    let cmd = match scheme {
        "docker-container" => {
            known_query(&["context"])?;
            let name = container("CONTAINER[?context=CONTEXT]")?;
            let context = query("context");
            let mut args: Vec<String> = Vec::new();
            if !context.is_empty() {
                if !plain_word(&context) {
                    return Err(format!("bad Docker context name `{context}`"));
                }
                args.push(format!("--context={context}"));
            }
            args.extend(["exec", "-i", &name, "buildctl", "dial-stdio"].map(str::to_owned));
            HelperCommand {
                program: "docker".into(),
                args,
            }
        }
        "podman-container" => {
            known_query(&[])?;
            let name = container("CONTAINER")?;
            HelperCommand::new("podman", &["exec", "-i", &name, "buildctl", "dial-stdio"])
        }
        "nerdctl-container" => {
            known_query(&["namespace"])?;
            let name = container("CONTAINER[?namespace=NAMESPACE]")?;
            let namespace = query("namespace");
            let mut args = vec!["exec".to_owned()];
            if !namespace.is_empty() {
                if !plain_word(&namespace) {
                    return Err(format!("bad containerd namespace `{namespace}`"));
                }
                args.extend(["--namespace".to_owned(), namespace]);
            }
            args.extend(["-i", &name, "buildctl", "dial-stdio"].map(str::to_owned));
            HelperCommand {
                program: "nerdctl".into(),
                args,
            }
        }
        "kube-pod" => {
            known_query(&["context", "namespace", "container"])?;
            if !kube_name(&host) {
                return Err(format!(
                    "unsupported pod name `{host}` (Kubernetes names: lowercase letters, digits, \
                     `-`, `.`); expected `kube-pod://POD?namespace=&context=&container=`"
                ));
            }
            let c = query("container");
            if !c.is_empty() && !kube_name(&c) {
                return Err(format!("unsupported container name `{c}`"));
            }
            kubectl_exec(
                &query("context"),
                &query("namespace"),
                &[format!("--container={c}"), "-i".into(), host.clone()],
            )?
        }
        "kube-deployment" => {
            // buildx's kubernetes driver runs BuildKit as a deployment named after the node;
            // its pods' names only the API knows, so kubectl picks one (`deployment/NAME`).
            known_query(&["context", "namespace"])?;
            if !kube_name(&host) {
                return Err(format!(
                    "unsupported deployment name `{host}`; expected \
                     `kube-deployment://NAME?namespace=&context=`"
                ));
            }
            kubectl_exec(
                &query("context"),
                &query("namespace"),
                &["-i".into(), format!("deployment/{host}")],
            )?
        }
        "ssh" => {
            known_query(&[])?;
            if !plain_word(&host) {
                return Err("expected `ssh://[USER@]HOST[:PORT][/SOCKET]`".into());
            }
            let mut args = ssh_login(&url)?;
            args.extend(["--".to_owned(), host.clone(), "buildctl".to_owned()]);
            let socket = url.path();
            if !socket.is_empty() && socket != "/" {
                args.extend(["--addr".to_owned(), format!("unix://{socket}")]);
            }
            args.push("dial-stdio".into());
            HelperCommand {
                program: "ssh".into(),
                args,
            }
        }
        _ => unreachable!("schemes matched above"),
    };
    Ok(Some(cmd))
}

/// `kubectl --context=C --namespace=N exec TARGET… -- buildctl dial-stdio` (buildctl passes both
/// flags even when empty: kubectl's current context and its namespace then).
fn kubectl_exec(
    context: &str,
    namespace: &str,
    target: &[String],
) -> Result<HelperCommand, String> {
    if !namespace.is_empty() && !kube_name(namespace) {
        return Err(format!("unsupported namespace name `{namespace}`"));
    }
    if !context.is_empty() && !plain_word(context) {
        return Err(format!("bad kubectl context name `{context}`"));
    }
    let mut args = vec![
        format!("--context={context}"),
        format!("--namespace={namespace}"),
        "exec".into(),
    ];
    args.extend(target.iter().cloned());
    args.extend(["--", "buildctl", "dial-stdio"].map(str::to_owned));
    Ok(HelperCommand {
        program: "kubectl".into(),
        args,
    })
}

/// `ssh`'s `-l USER` and `-p PORT` for an `ssh://` URL, as buildctl and the docker CLI pass them.
fn ssh_login(url: &url::Url) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = Vec::new();
    if !url.username().is_empty() {
        if !plain_word(url.username()) {
            return Err(format!("bad user name `{}`", url.username()));
        }
        args.extend(["-l".to_owned(), url.username().to_owned()]);
    }
    if let Some(port) = url.port() {
        args.extend(["-p".to_owned(), port.to_string()]);
    }
    Ok(args)
}

/// The docker CLI's command for an `ssh://[USER@]HOST[:PORT]` Docker endpoint:
/// `ssh [-l USER] [-p PORT] -- HOST docker system dial-stdio` (the Docker API over stdio).
pub fn docker_ssh(address: &str) -> Result<HelperCommand, String> {
    let url = url::Url::parse(address).map_err(|e| format!("not a valid URL: {e}"))?;
    let host = url.host_str().unwrap_or_default();
    if !plain_word(host) || url.query().is_some() || !matches!(url.path(), "" | "/") {
        return Err("expected `ssh://[USER@]HOST[:PORT]`".into());
    }
    let mut args = ssh_login(&url)?;
    args.extend(["--", host, "docker", "system", "dial-stdio"].map(str::to_owned));
    Ok(HelperCommand {
        program: "ssh".into(),
        args,
    })
}

/// What the relay saw when the command's stdout ended.
#[derive(Default)]
struct Ended {
    /// Set when the command ended before sending anything: its status and stderr.
    error: Option<String>,
    /// The relay finished (stdout ended and, when it failed, `error` is set).
    done: bool,
    /// A writer waiting to learn why the command went away.
    waiting: Option<std::task::Waker>,
}

impl Ended {
    fn finish(&mut self) {
        self.done = true;
        if let Some(w) = self.waiting.take() {
            w.wake();
        }
    }
}

/// One connection through a helper command: reads from its stdout, writes to its stdin.
pub(crate) struct CommandConn {
    reader: tokio::io::DuplexStream,
    stdin: ChildStdin,
    ended: Arc<Mutex<Ended>>,
    _kill: tokio::sync::oneshot::Sender<()>,
}

impl CommandConn {
    /// Starts `cmd`.
    pub(crate) fn spawn(cmd: &HelperCommand) -> std::io::Result<Self> {
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot run `{}` ({e}); is `{}` installed?",
                        cmd.shown(),
                        cmd.program
                    ),
                )
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let tail: Arc<Mutex<Vec<u8>>> = Arc::default();
        let t = tail.clone();
        let stderr_task = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut tail = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                tail.extend_from_slice(&buf[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL);
                tail.drain(..excess);
            }
        });
        let (mut relay, reader) = tokio::io::duplex(64 * 1024);
        let ended: Arc<Mutex<Ended>> = Arc::default();
        let (kill, mut killed) = tokio::sync::oneshot::channel::<()>();
        let shown = cmd.shown();
        let e = ended.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                tokio::select! {
                    _ = &mut killed => {
                        let _ = child.kill().await;
                        return;
                    }
                    r = stdout.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            sent += n as u64;
                            if relay.write_all(&buf[..n]).await.is_err() {
                                let _ = child.kill().await;
                                return;
                            }
                        }
                    }
                }
            }
            // stdout ended: if nothing came through, the command failed to connect; say why
            // before the reader sees the end.
            if sent == 0 {
                let status = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stderr_task).await;
                let text = String::from_utf8_lossy(
                    &tail
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                )
                .trim()
                .to_owned();
                e.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .error = Some(format!(
                    "`{shown}` ended{} before BuildKit answered{}",
                    status.map(|s| format!(" ({s})")).unwrap_or_default(),
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!(": {text}")
                    }
                ));
            }
            e.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .finish();
            drop(relay);
            let _ = child.wait().await;
        });
        Ok(Self {
            reader,
            stdin,
            ended,
            _kill: kill,
        })
    }
}

impl AsyncRead for CommandConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.reader).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                let error = self
                    .ended
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .error
                    .clone();
                match error {
                    Some(e) => Poll::Ready(Err(std::io::Error::other(e))),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for CommandConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.stdin).poll_write(cx, buf) {
            // The command went away (typically before the first byte: it could not connect).
            // Say why, from its stderr, once the relay has collected it.
            Poll::Ready(Err(e)) => {
                let mut ended = self
                    .ended
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(why) = &ended.error {
                    Poll::Ready(Err(std::io::Error::other(why.clone())))
                } else if ended.done {
                    Poll::Ready(Err(e))
                } else {
                    ended.waiting = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(address: &str) -> Vec<String> {
        let c = parse(address).unwrap().unwrap();
        std::iter::once(c.program).chain(c.args).collect()
    }

    /// The argv of buildctl's connection helpers (`client/connhelper/*`), word for word.
    #[test]
    fn commands_are_buildctls() {
        // `address => argv`, one helper a line.
        let table = "\
docker-container://buildx_buildkit_b0 => docker exec -i buildx_buildkit_b0 buildctl dial-stdio
docker-container://bk?context=colima => docker --context=colima exec -i bk buildctl dial-stdio
podman-container://bk => podman exec -i bk buildctl dial-stdio
nerdctl-container://bk?namespace=k8s.io => nerdctl exec --namespace k8s.io -i bk buildctl dial-stdio
nerdctl-container://bk => nerdctl exec -i bk buildctl dial-stdio
kube-pod://buildkitd-0?namespace=ci&context=prod&container=bk => kubectl --context=prod --namespace=ci exec --container=bk -i buildkitd-0 -- buildctl dial-stdio
kube-pod://buildkitd-0 => kubectl --context= --namespace= exec --container= -i buildkitd-0 -- buildctl dial-stdio
ssh://me@builder.example:2222/run/buildkit/buildkitd.sock => ssh -l me -p 2222 -- builder.example buildctl --addr unix:///run/buildkit/buildkitd.sock dial-stdio
ssh://builder.example => ssh -- builder.example buildctl dial-stdio
kube-deployment://builder0?namespace=buildkit => kubectl --context= --namespace=buildkit exec -i deployment/builder0 -- buildctl dial-stdio
";
        for line in table.lines() {
            let (address, words) = line.split_once(" => ").unwrap();
            assert_eq!(
                argv(address),
                words.split(' ').collect::<Vec<_>>(),
                "{address}"
            );
        }
        assert_eq!(parse("unix:///x").unwrap(), None);
    }

    /// The docker CLI's `ssh://` endpoint command.
    #[test]
    fn docker_ssh_runs_docker_system_dial_stdio() {
        let c = docker_ssh("ssh://me@box:2222").unwrap();
        assert_eq!(
            std::iter::once(c.program).chain(c.args).collect::<Vec<_>>(),
            [
                "ssh",
                "-l",
                "me",
                "-p",
                "2222",
                "--",
                "box",
                "docker",
                "system",
                "dial-stdio"
            ]
        );
        assert!(docker_ssh("ssh://box/path").is_err());
    }

    #[test]
    fn bad_helper_addresses_say_what_is_expected() {
        for (address, says) in [
            (
                "docker-container://",
                "expected `docker-container://CONTAINER",
            ),
            ("kube-pod://Bad_Pod", "unsupported pod name"),
            ("kube-pod://p?namespace=-x", "unsupported namespace"),
            ("ssh://h?x=1", "unknown query parameter `x`"),
            (
                "podman-container://c?context=x",
                "unknown query parameter `context`",
            ),
            ("docker-container://c?context=-H", "bad Docker context name"),
        ] {
            let e = parse(address).unwrap_err();
            assert!(e.contains(says), "{address}: {e}");
        }
    }

    #[tokio::test]
    async fn a_failing_command_is_reported_with_its_stderr() {
        let cmd = HelperCommand::new(
            "sh",
            &["-c", "echo 'Error: No such container: bk' >&2; exit 1"],
        );
        let mut conn = CommandConn::spawn(&cmd).unwrap();
        let mut buf = [0u8; 16];
        let err = conn.read(&mut buf).await.unwrap_err().to_string();
        assert!(
            err.contains("No such container: bk") && err.contains("exit status: 1"),
            "{err}"
        );
        let cmd = HelperCommand::new("fastbuild-no-such-program", &[]);
        let Err(e) = CommandConn::spawn(&cmd) else {
            panic!("spawned a missing program")
        };
        assert!(
            e.to_string()
                .contains("is `fastbuild-no-such-program` installed"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn bytes_go_through_the_command() {
        let cmd = HelperCommand::new("cat", &[]);
        let mut conn = CommandConn::spawn(&cmd).unwrap();
        conn.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
}
