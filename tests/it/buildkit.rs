//! `fastbuild-buildkit` against the real test bed: transports (docker `/grpc` upgrade, and
//! unix / tcp / tcp+mTLS through a small in-test proxy that upgrades each connection), and
//! Dockerfile builds pushed to the plain registry with the session serving the local dirs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fastbuild_buildkit::{
    BuildOptions, BuildResult, Client, Error, ProgressEvent, SecretSource, TlsOptions,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{Daemon, TestBed, on_both_daemons, require_bed, sha256};

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

pub(crate) fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    fs_err::create_dir_all(path.parent().unwrap()).unwrap();
    fs_err::write(path, content).unwrap();
}

async fn client(bed: &TestBed, daemon: Daemon) -> Client {
    Client::connect(bed.buildkit(daemon), None)
        .await
        .expect("connect to the bed's BuildKit")
}

/// Runs a build, collecting its progress events.
pub(crate) async fn build(
    client: &Client,
    opts: BuildOptions,
) -> (Result<BuildResult, Error>, Vec<ProgressEvent>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    });
    let result = client.build(opts, tx, CancellationToken::new()).await;
    let events = collector.await.unwrap();
    (result, events)
}

/// GETs the manifest of `repo:tag` from the plain registry: (bytes, content type).
async fn registry_manifest(bed: &TestBed, repo: &str, tag: &str) -> (Vec<u8>, String) {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v2/{repo}/manifests/{tag}", bed.registry))
        .header("Accept", ACCEPT_MANIFESTS)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "GET manifest {repo}:{tag}: {}",
        resp.status()
    );
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.bytes().await.unwrap().to_vec(), ct)
}

/// GETs a blob of `repo` from the plain registry.
async fn registry_blob(bed: &TestBed, repo: &str, digest: &str) -> Vec<u8> {
    let url = format!("http://{}/v2/{repo}/blobs/{digest}", bed.registry);
    let resp = reqwest::get(url).await.unwrap();
    resp.bytes().await.unwrap().to_vec()
}

pub(crate) fn push_opts(bed: &TestBed, context: &Path, repo: &str, tag: &str) -> BuildOptions {
    BuildOptions {
        context: context.to_owned(),
        image_names: vec![format!("{}/{repo}:{tag}", bed.registry)],
        push: true,
        registry_insecure: true,
        build_args: BTreeMap::from([("BASE".to_owned(), bed.base_image.clone())]),
        ..BuildOptions::default()
    }
}

/// [`push_opts`] with `no_cache`: for tests that read the output of steps, which the daemon
/// would otherwise answer from its cache (even by content, across contexts).
fn fresh_opts(bed: &TestBed, context: &Path, repo: &str, tag: &str) -> BuildOptions {
    BuildOptions {
        no_cache: true,
        ..push_opts(bed, context, repo, tag)
    }
}

/// The text of the `Log` events of a build.
pub(crate) fn logs(events: &[ProgressEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::Log { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect()
}

/// Whether the session sent `file` of the local dir `local` (`context`, `dockerfile`).
fn sent(result: &BuildResult, local: &str, file: &str) -> bool {
    result.sync_stats[local].files_sent.contains(file)
}

/// Whether a step whose name contains `step` completed (ran) in `events`.
fn completed(events: &[ProgressEvent], step: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ProgressEvent::VertexCompleted { name, .. } if name.contains(step)))
}

/// A Docker config in `dir` with `user:password` for `registry`.
fn docker_config(dir: &Path, registry: &str, user: &str, password: &str) {
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{user}:{password}"),
    );
    fs_err::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
}

/// The shared set-up of the builds: a client of one daemon, a context directory holding a
/// Dockerfile, and a fresh repository name in the plain registry.
struct Setup {
    bed: TestBed,
    client: Client,
    ctx: tempfile::TempDir,
    repo: String,
}

impl Setup {
    async fn new(bed: &TestBed, daemon: Daemon, repo: &str) -> Setup {
        Setup::on(bed, client(bed, daemon).await, repo)
    }

    /// The same with `client`.
    fn on(bed: &TestBed, client: Client, repo: &str) -> Setup {
        Setup {
            bed: bed.clone(),
            client,
            ctx: tempfile::tempdir().unwrap(),
            repo: unique(repo),
        }
    }

    /// A Dockerfile on the bed's base: `ARG BASE`, `FROM ${BASE}` and `steps`.
    fn dockerfile(&self, steps: &str) {
        self.write("Dockerfile", &format!("ARG BASE\nFROM ${{BASE}}\n{steps}"));
    }

    fn write(&self, rel: &str, content: &str) {
        write(self.ctx.path(), rel, content);
    }

    /// [`push_opts`] for the context, to `repo:tag`.
    fn push_opts(&self, tag: &str) -> BuildOptions {
        push_opts(&self.bed, self.ctx.path(), &self.repo, tag)
    }

    /// [`fresh_opts`] for the context, to `repo:tag`.
    fn fresh_opts(&self, tag: &str) -> BuildOptions {
        fresh_opts(&self.bed, self.ctx.path(), &self.repo, tag)
    }

    async fn build(&self, opts: BuildOptions) -> (Result<BuildResult, Error>, Vec<ProgressEvent>) {
        build(&self.client, opts).await
    }

    /// The error of building the context (with [`push_opts`]) to `repo:tag`.
    async fn failure(&self, tag: &str) -> Error {
        self.build(self.push_opts(tag)).await.0.unwrap_err()
    }

    /// The manifest the registry serves for `repo:tag`.
    async fn manifest(&self, tag: &str) -> (Vec<u8>, String) {
        registry_manifest(&self.bed, &self.repo, tag).await
    }

    /// The blob `digest` the registry serves in `repo`.
    async fn blob(&self, digest: &str) -> Vec<u8> {
        registry_blob(&self.bed, &self.repo, digest).await
    }
}

async fn list_workers_and_info(bed: TestBed, daemon: Daemon) {
    let client = client(&bed, daemon).await;
    let workers = client.list_workers().await.unwrap();
    assert!(!workers.is_empty(), "no workers");
    assert!(
        workers
            .iter()
            .any(|w| w.platforms.iter().any(|p| p.starts_with("linux/"))),
        "{workers:?}"
    );
    let info = client.info().await.unwrap();
    assert!(info.version.starts_with('v'), "{info:?}");
}

#[tokio::test]
async fn unreachable_daemon_names_the_address_and_how_to_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}/nope.sock", dir.path().display());
    let err = Client::connect(&addr, None).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(msg.contains(&addr), "{msg}");
    assert!(
        msg.contains("BUILDKIT_HOST") && msg.contains("--buildkit"),
        "{msg}"
    );
}

async fn pushed_build_digest_is_the_manifest_the_registry_serves(bed: TestBed, daemon: Daemon) {
    let t = Setup::new(&bed, daemon, "bk/push").await;
    t.dockerfile("COPY hello.txt /hello.txt\nRUN cat /hello.txt && echo built > /built\n");
    t.write("hello.txt", &format!("hello {}\n", uuid_like()));
    let (result, events) = t.build(t.fresh_opts("v1")).await;
    let result = result.unwrap();
    let (manifest, content_type) = t.manifest("v1").await;
    assert_eq!(result.digest.to_string(), sha256(&manifest));
    let descriptor = result.descriptor.as_ref().expect("descriptor");
    assert_eq!(descriptor.digest, result.digest);
    assert_eq!(descriptor.size, manifest.len() as i64);
    assert_eq!(descriptor.media_type, content_type);
    assert!(
        result
            .config_digest
            .as_ref()
            .map(ToString::to_string)
            .as_deref()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(result.image_name.as_deref().unwrap().contains(&t.repo));
    // Progress: the RUN step started, completed, and printed the file.
    assert!(completed(&events, "RUN cat"), "{events:#?}");
    assert!(events.iter().any(|e| matches!(e, ProgressEvent::Log { data, .. } if String::from_utf8_lossy(data).contains("hello"))));
    // The context sent only what COPY needs (followpaths), plus the Dockerfile.
    assert!(sent(&result, "context", "hello.txt"));
    assert!(sent(&result, "dockerfile", "Dockerfile"));
}

// ---------------------------------------------------------------------------------------------
// unix / tcp / tcp+mTLS transports through a proxy that upgrades each connection on the Docker
// socket (`POST /grpc`, `Upgrade: h2c`) and then pipes bytes.

/// Opens the Docker socket, performs the `/grpc` upgrade, returns the h2c stream and any bytes
/// read past the 101 response.
async fn docker_grpc_upgrade(socket: &Path) -> (tokio::net::UnixStream, Vec<u8>) {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "docker closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    (stream, buf[end..].to_vec())
}

async fn pipe_to_docker<S>(mut client_side: S, socket: std::path::PathBuf)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut docker, leftover) = docker_grpc_upgrade(&socket).await;
    if !leftover.is_empty() && client_side.write_all(&leftover).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client_side, &mut docker).await;
}

/// A buildkitd-like unix socket in `dir`; returns its `unix://` address.
fn unix_proxy(bed: &TestBed, dir: &Path) -> String {
    let path = dir.join("buildkitd.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let socket = bed.docker_socket();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(pipe_to_docker(conn, socket.clone()));
        }
    });
    format!("unix://{}", path.display())
}

/// A loopback TCP endpoint, TLS-terminating (with required client certificates) when `tls` is
/// given; returns its `tcp://` address.
async fn tcp_proxy(bed: &TestBed, tls: Option<Arc<rustls::ServerConfig>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let socket = bed.docker_socket();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let socket = socket.clone();
            match &tls {
                None => {
                    tokio::spawn(pipe_to_docker(conn, socket));
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                    tokio::spawn(async move {
                        if let Ok(tls_conn) = acceptor.accept(conn).await {
                            pipe_to_docker(tls_conn, socket).await;
                        }
                    });
                }
            }
        }
    });
    format!("tcp://{addr}")
}

struct TestPki {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// A CA, a server certificate for `localhost` and a client certificate, written as PEM files;
/// the server config requires a client certificate signed by the CA.
fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    use rustls_pki_types::pem::PemObject as _;
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["buildkitd.test".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["client".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    fs_err::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    fs_err::write(dir.path().join("client.pem"), client.pem()).unwrap();
    fs_err::write(
        dir.path().join("client-key.pem"),
        client_key.serialize_pem(),
    )
    .unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes())
            .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TestPki {
        dir,
        server: Arc::new(config),
    }
}

#[tokio::test]
async fn list_workers_over_unix_socket() {
    let bed = require_bed!();
    let dir = tempfile::tempdir().unwrap();
    let addr = unix_proxy(&bed, dir.path());
    let client = Client::connect(&addr, None).await.unwrap();
    assert!(!client.list_workers().await.unwrap().is_empty());
}

#[tokio::test]
async fn list_workers_over_plain_tcp() {
    let bed = require_bed!();
    let addr = tcp_proxy(&bed, None).await;
    let client = Client::connect(&addr, None).await.unwrap();
    assert!(!client.list_workers().await.unwrap().is_empty());
}

#[tokio::test]
async fn list_workers_over_tcp_with_mutual_tls() {
    let bed = require_bed!();
    let pki = test_pki();
    let addr = tcp_proxy(&bed, Some(pki.server.clone())).await;
    let tls = TlsOptions {
        ca_cert: Some(pki.path("ca.pem")),
        cert: Some(pki.path("client.pem")),
        key: Some(pki.path("client-key.pem")),
        server_name: Some("buildkitd.test".to_owned()),
    };
    let client = Client::connect(&addr, Some(tls.clone())).await.unwrap();
    assert!(!client.list_workers().await.unwrap().is_empty());

    // Without the client certificate the server refuses the handshake.
    let no_cert = TlsOptions {
        cert: None,
        key: None,
        ..tls.clone()
    };
    let err = match Client::connect(&addr, Some(no_cert)).await {
        Ok(c) => c.list_workers().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains(&addr), "{err}");
    // A wrong server name fails verification.
    let wrong_name = TlsOptions {
        server_name: Some("other.test".to_owned()),
        ..tls
    };
    assert!(Client::connect(&addr, Some(wrong_name)).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Builds

async fn same_build_twice_and_fresh_copy_with_other_mtimes_give_same_digest(
    bed: TestBed,
    daemon: Daemon,
) {
    let client = client(&bed, daemon).await;
    let make = |dir: &Path| {
        write(
            dir,
            "Dockerfile",
            "ARG BASE\nFROM ${BASE}\nCOPY app/ /app/\nRUN echo generated > /app/generated && mkdir -p /var/x\n",
        );
        write(dir, "app/main.sh", "#!/bin/sh\necho hi\n");
        write(dir, "app/data/config.txt", "key=value\n");
    };
    let first = tempfile::tempdir().unwrap();
    make(first.path());
    let repo = unique("bk/repro");
    let opts = |ctx: &Path, tag: &str, no_cache: bool| BuildOptions {
        source_date_epoch: Some(0),
        rewrite_timestamp: true,
        no_cache,
        ..push_opts(&bed, ctx, &repo, tag)
    };
    let (a, _) = build(&client, opts(first.path(), "a", false)).await;
    let a = a.unwrap();
    let (b, _) = build(&client, opts(first.path(), "b", false)).await;
    assert_eq!(a.digest, b.unwrap().digest);

    // Another directory, files written later with other mtimes, and no cache: layers are
    // rebuilt, and rewrite-timestamp clamps every time to SOURCE_DATE_EPOCH.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = tempfile::tempdir().unwrap();
    make(second.path());
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for f in ["app/main.sh", "app/data/config.txt"] {
        fs_err::File::options()
            .write(true)
            .open(second.path().join(f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let (c, events) = build(&client, opts(second.path(), "c", true)).await;
    let c = c.unwrap();
    assert!(
        completed(&events, "RUN echo generated"),
        "the RUN step must have run again"
    );
    assert_eq!(a.digest, c.digest);
    let (manifest, _) = registry_manifest(&bed, &repo, "c").await;
    assert_eq!(sha256(&manifest), c.digest.to_string());
}

async fn dockerignored_file_is_never_sent_and_cannot_be_copied(bed: TestBed, daemon: Daemon) {
    let t = Setup::new(&bed, daemon, "bk/ignore").await;
    t.dockerfile("COPY . /ctx/\nRUN find /ctx | sort\n");
    for (rel, content) in [
        (
            ".dockerignore",
            "# secrets\nsecret.txt\n*.log\nbuild/\n!build/keep.txt\n",
        ),
        ("secret.txt", "TOP-SECRET\n"),
        ("debug.log", "noise\n"),
        ("build/out.bin", "binary\n"),
        ("build/keep.txt", "keep\n"),
        ("src/app.txt", "app\n"),
    ] {
        t.write(rel, content);
    }
    let (result, events) = t.build(t.fresh_opts("v1")).await;
    let result = result.unwrap();
    let sent = &result.sync_stats["context"];
    for never in ["secret.txt", "debug.log", "build/out.bin"] {
        assert!(
            !sent.paths.contains(never),
            "{never} was announced: {sent:?}"
        );
        assert!(
            !sent.files_sent.contains(never),
            "{never} was sent: {sent:?}"
        );
    }
    for kept in ["src/app.txt", "build/keep.txt", "Dockerfile"] {
        assert!(sent.files_sent.contains(kept), "{kept} missing: {sent:?}");
    }
    let log = logs(&events);
    assert!(log.contains("/ctx/build/keep.txt"), "{log}");
    assert!(!log.contains("/ctx/secret.txt"), "{log}");

    // COPYing the ignored file fails, and it is still never sent.
    t.dockerfile("COPY secret.txt /secret.txt\n");
    let err = t.failure("v2").await;
    assert!(err.to_string().contains("secret.txt"), "{err}");
}

async fn symlink_pointing_outside_the_context_does_not_leak_its_target(
    bed: TestBed,
    daemon: Daemon,
) {
    let outside = tempfile::tempdir().unwrap();
    let marker = format!("OUTSIDE-{}", uuid_like());
    write(outside.path(), "private.txt", &format!("{marker}\n"));
    let t = Setup::new(&bed, daemon, "bk/symlink").await;
    t.dockerfile("COPY . /ctx/\nRUN readlink /ctx/leak; cat /ctx/leak || echo no-target; ls /ctx/up/ || true\n");
    let ctx = t.ctx.path();
    std::os::unix::fs::symlink(outside.path().join("private.txt"), ctx.join("leak")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", ctx.join("up")).unwrap();
    let (result, events) = t.build(t.fresh_opts("v1")).await;
    let result = result.unwrap();
    let log = logs(&events);
    assert!(
        log.contains("private.txt"),
        "the link itself arrives: {log}"
    );
    assert!(log.contains("no-target"), "{log}");
    assert!(!log.contains(&marker), "the target leaked: {log}");
    let sent = &result.sync_stats["context"];
    assert!(sent.paths.contains("leak"));
    assert!(
        !sent.files_sent.contains("leak"),
        "a symlink carries no data"
    );

    // COPY of the link itself resolves inside the context only.
    t.dockerfile("COPY leak /leak\nRUN cat /leak\n");
    let (result, _) = t.build(t.push_opts("v2")).await;
    match result {
        Ok(r) => assert!(
            !r.sync_stats["context"]
                .files_sent
                .iter()
                .any(|p| p.contains("private"))
        ),
        Err(e) => assert!(!e.to_string().contains(&marker), "{e}"),
    }
}

async fn build_args_target_and_dockerfile_outside_the_context(bed: TestBed, daemon: Daemon) {
    let client = client(&bed, daemon).await;
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "ctx/input.txt", "input\n");
    write(
        root.path(),
        "docker/app.Dockerfile",
        "ARG BASE\nFROM ${BASE} AS first\nARG MSG\nCOPY input.txt /input.txt\nRUN echo \"msg=${MSG}\" && cat /input.txt\n\
         FROM first AS second\nRUN echo second-stage-ran\n",
    );
    let repo = unique("bk/args");
    let mut opts = fresh_opts(&bed, &root.path().join("ctx"), &repo, "v1");
    opts.dockerfile = Some(root.path().join("docker/app.Dockerfile"));
    opts.target = Some("first".to_owned());
    opts.build_args
        .insert("MSG".to_owned(), "from-build-arg".to_owned());
    opts.labels
        .insert("org.example.test".to_owned(), "yes".to_owned());
    let (result, events) = build(&client, opts).await;
    let result = result.unwrap();
    let log = logs(&events);
    assert!(log.contains("msg=from-build-arg"), "{log}");
    assert!(!log.contains("second-stage-ran"), "{log}");
    assert!(!events.iter().any(
        |e| matches!(e, ProgressEvent::VertexStarted { name, .. } if name.contains("second-stage"))
    ));
    assert!(sent(&result, "dockerfile", "app.Dockerfile"));
    assert!(sent(&result, "context", "input.txt"));
    // The label is in the pushed image config.
    let (manifest, _) = registry_manifest(&bed, &repo, "v1").await;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(
        Some(config_digest),
        result
            .config_digest
            .as_ref()
            .map(ToString::to_string)
            .as_deref()
    );
    let config = registry_blob(&bed, &repo, config_digest).await;
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["config"]["Labels"]["org.example.test"], "yes");
}

async fn secrets_are_visible_to_run_and_absent_from_layers(bed: TestBed, daemon: Daemon) {
    let secret_value = format!("s3cr3t-{}", uuid_like());
    let secret_dir = tempfile::tempdir().unwrap();
    write(secret_dir.path(), "token", &secret_value);
    let home = std::env::var("HOME").unwrap();
    let t = Setup::new(&bed, daemon, "bk/secrets").await;
    t.dockerfile(&format!(
            "RUN --mount=type=secret,id=token test \"$(cat /run/secrets/token)\" = \"{secret_value}\" && echo token-ok\n\
             RUN --mount=type=secret,id=home test \"$(cat /run/secrets/home)\" = \"{home}\" && echo home-ok\n\
             RUN test ! -e /run/secrets/token && echo gone-after\n"
        ));
    let mut opts = t.fresh_opts("v1");
    opts.secrets.insert(
        "token".to_owned(),
        SecretSource::File(secret_dir.path().join("token")),
    );
    opts.secrets
        .insert("home".to_owned(), SecretSource::Env("HOME".to_owned()));
    opts.compression = Some(fastbuild_buildkit::Compression::None);
    let (result, events) = t.build(opts).await;
    let result = result.unwrap();
    let log = logs(&events);
    for expected in ["token-ok", "home-ok", "gone-after"] {
        assert!(log.contains(expected), "{expected}: {log} {events:#?}");
    }
    // No layer (uncompressed tar) contains the secret bytes.
    let (manifest, _) = t.manifest("v1").await;
    assert_eq!(sha256(&manifest), result.digest.to_string());
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for layer in layers {
        let digest = layer["digest"].as_str().unwrap();
        let blob = t.blob(digest).await;
        assert!(
            !blob
                .windows(secret_value.len())
                .any(|w| w == secret_value.as_bytes()),
            "secret found in layer {digest}"
        );
    }

    // A required secret that the session does not have fails the build, naming it.
    t.dockerfile("RUN --mount=type=secret,id=absent,required=true true\n");
    let err = t.failure("v2").await;
    assert!(err.to_string().contains("absent"), "{err}");
}

async fn no_cache_reruns_steps_that_are_otherwise_cached(bed: TestBed, daemon: Daemon) {
    let token = uuid_like();
    let t = Setup::new(&bed, daemon, "bk/nocache").await;
    t.dockerfile(&format!("RUN echo {token} > /token\n"));
    let run_step = |events: &[ProgressEvent]| -> (bool, bool) {
        let ran = completed(events, "RUN echo");
        let cached = events.iter().any(
            |e| matches!(e, ProgressEvent::VertexCached { name, .. } if name.contains("RUN echo")),
        );
        (ran, cached)
    };
    let mut no_cache = t.push_opts("c");
    no_cache.no_cache = true;
    for (opts, expected) in [
        (t.push_opts("a"), (true, false)),
        (t.push_opts("b"), (false, true)),
        (no_cache, (true, false)),
    ] {
        let (r, events) = t.build(opts).await;
        r.unwrap();
        assert_eq!(run_step(&events), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and cancellation

async fn dockerfile_syntax_error_names_file_and_line(bed: TestBed, daemon: Daemon) {
    let t = Setup::new(&bed, daemon, "bk/syntax").await;
    t.dockerfile("RUNN echo typo\n");
    match t.failure("v1").await {
        Error::DockerfileSyntax {
            file,
            line,
            message,
        } => {
            assert!(file.ends_with("Dockerfile"), "{file}");
            assert_eq!(line, 3);
            assert!(message.to_lowercase().contains("runn"), "{message}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

async fn failed_run_reports_step_exit_code_and_log_tail(bed: TestBed, daemon: Daemon) {
    let t = Setup::new(&bed, daemon, "bk/runfail").await;
    t.dockerfile("RUN for i in $(seq 1 30); do echo line-$i; done; exit 7\n");
    match t.failure("v1").await {
        err @ Error::RunFailed { .. } => {
            let Error::RunFailed {
                step,
                exit_code,
                log_tail,
            } = &err
            else {
                unreachable!()
            };
            assert_eq!(*exit_code, 7);
            assert!(step.contains("RUN for i"), "{step}");
            assert!(log_tail.len() <= 20 && log_tail.len() >= 10, "{log_tail:?}");
            assert!(
                log_tail.iter().any(|l| l.contains("line-30")),
                "{log_tail:?}"
            );
            assert!(
                !log_tail.iter().any(|l| l.ends_with("line-1")),
                "{log_tail:?}"
            );
            assert!(err.to_string().contains("exit code 7"), "{err}");
        }
        other => panic!("expected a RUN failure, got {other:?}"),
    }
}

async fn missing_base_image_is_reported_as_such(bed: TestBed, daemon: Daemon) {
    let image = format!("{}/does/not-exist:{}", bed.registry, uuid_like());
    let t = Setup::new(&bed, daemon, "bk/nobase").await;
    t.write("Dockerfile", &format!("FROM {image}\nRUN true\n"));
    match t.failure("v1").await {
        Error::MissingBaseImage { image: got, .. } => {
            assert!(got.contains("does/not-exist"), "{got}");
        }
        other => panic!("expected a missing base image, got {other:?}"),
    }
}

async fn push_to_authenticated_registry_uses_docker_config_credentials(
    bed: TestBed,
    daemon: Daemon,
) {
    let t = Setup::new(&bed, daemon, "bk/auth").await;
    t.dockerfile("RUN echo auth > /auth\n");
    let name = format!("{}/{}:v1", bed.registry_tls, t.repo);
    let config_dir = tempfile::tempdir().unwrap();
    let opts = |config: &Path| BuildOptions {
        image_names: vec![name.clone()],
        // The bed's CA is not installed in dockerd: `registry.insecure` skips verification
        // there. The standalone buildkitd is configured with the CA and verifies the TLS.
        registry_insecure: daemon == Daemon::Dockerd,
        docker_config_dir: Some(config.to_owned()),
        ..t.push_opts("v1")
    };
    // No credentials: refused, naming the registry.
    let (result, _) = t.build(opts(config_dir.path())).await;
    match result.unwrap_err() {
        Error::AuthRefused { registry, .. } => assert_eq!(registry, bed.registry_tls),
        other => panic!("expected an auth error, got {other:?}"),
    }
    // With credentials in the Docker config: pushed.
    docker_config(
        config_dir.path(),
        &bed.registry_tls,
        &bed.registry_tls_user,
        &bed.registry_tls_password,
    );
    let (result, _) = t.build(opts(config_dir.path())).await;
    let result = result.unwrap();
    assert!(result.digest.to_string().starts_with("sha256:"));
}

/// A registry with Bearer challenges (distribution's token auth, the bed's token server): the
/// daemon gets a token authority from the session and asks it for each token (`FetchToken`),
/// so the registry password never reaches the daemon — every credentialed token request comes
/// from fastbuild's own client. With client-side tokens off (`BUILDKIT_NO_CLIENT_TOKEN`), the
/// daemon takes the raw credentials and fetches the tokens itself: the same check then fails,
/// which is what the first half proves.
async fn token_registry_gets_the_password_from_fastbuild_never_from_the_daemon(
    bed: TestBed,
    daemon: Daemon,
) {
    let t = Setup::new(&bed, daemon, "bk/token").await;
    t.dockerfile(&format!("RUN echo {} > /token\n", uuid_like()));
    let config_dir = tempfile::tempdir().unwrap();
    docker_config(
        config_dir.path(),
        &bed.registry_token,
        &bed.registry_token_user,
        &bed.registry_token_password,
    );
    let opts = |repo: &str, no_client_tokens: bool| BuildOptions {
        image_names: vec![format!("{}/{repo}:v1", bed.registry_token)],
        docker_config_dir: Some(config_dir.path().to_owned()),
        no_client_tokens,
        ..t.push_opts("v1")
    };
    let from_fastbuild = |e: &serde_json::Value| {
        e["user_agent"]
            .as_str()
            .is_some_and(|ua| ua.starts_with("fastbuild/"))
    };

    let repo = &t.repo;
    let (result, events) = t.build(opts(repo, false)).await;
    let result = result.unwrap_or_else(|e| panic!("push to the token registry: {e}\n{events:#?}"));
    assert!(result.digest.to_string().starts_with("sha256:"));
    let requests = crate::common::token_requests(&bed, repo);
    let credentialed: Vec<_> = requests
        .iter()
        .filter(|e| !e["account"].is_null())
        .collect();
    assert!(
        credentialed.iter().any(|e| e["status"] == 200
            && e["granted"].to_string().contains("push")
            && from_fastbuild(e)),
        "no push token was fetched by fastbuild: {requests:#?}"
    );
    assert!(
        credentialed.iter().all(|e| from_fastbuild(e)),
        "the daemon used the registry password itself: {requests:#?}"
    );

    let repo = unique("bk/token-daemon");
    let (result, events) = t.build(opts(&repo, true)).await;
    result.unwrap_or_else(|e| panic!("push with daemon-side tokens: {e}\n{events:#?}"));
    let requests = crate::common::token_requests(&bed, &repo);
    assert!(
        requests
            .iter()
            .any(|e| !e["account"].is_null() && e["status"] == 200 && !from_fastbuild(e)),
        "with BUILDKIT_NO_CLIENT_TOKEN the daemon fetches tokens with the credentials: {requests:#?}"
    );
}

async fn cancelling_a_build_returns_promptly_and_the_daemon_stays_usable(
    bed: TestBed,
    daemon: Daemon,
) {
    let t = Setup::new(&bed, daemon, "bk/cancel").await;
    t.dockerfile(&format!("RUN echo {} && sleep 60\n", uuid_like()));
    let client = &t.client;
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(1024);
    let started = std::time::Instant::now();
    let task = {
        let client = client.clone();
        let cancel = cancel.clone();
        let opts = t.push_opts("v1");
        tokio::spawn(async move { client.build(opts, tx, cancel).await })
    };
    // Cancel once the sleeping step has started.
    while let Some(event) = rx.recv().await {
        if matches!(&event, ProgressEvent::VertexStarted { name, .. } if name.contains("sleep 60"))
        {
            break;
        }
    }
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("build returns after cancel")
        .unwrap();
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The daemon is still fine.
    assert!(!client.list_workers().await.unwrap().is_empty());
}

/// A local address that is not loopback (the daemon treats 127.0.0.0/8 as plain HTTP already).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route and source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

async fn push_to_plain_http_registry_without_insecure_suggests_registry_insecure(
    bed: TestBed,
    daemon: Daemon,
) {
    let Some(ip) = non_loopback_ip() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no non-loopback address to reach the registry by"
        );
        return;
    };
    // The plain registry, reachable by a non-loopback address through a byte forwarder.
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = bed.registry.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                }
            });
        }
    });
    let t = Setup::new(&bed, daemon, "bk/plain").await;
    t.dockerfile("RUN echo plain > /plain\n");
    let repo = &t.repo;
    let mut opts = t.push_opts("v1");
    opts.image_names = vec![format!("{ip}:{port}/{repo}:v1")];
    opts.registry_insecure = false;
    let (result, _) = t.build(opts.clone()).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::PushFailed { plain_http_hint: true, reference, .. } if reference.contains(repo)),
        "{err:?}"
    );
    assert!(err.to_string().contains("registry_insecure"), "{err}");
    opts.registry_insecure = true;
    let (result, _) = t.build(opts).await;
    let result = result.unwrap();
    let (manifest, _) = t.manifest("v1").await;
    assert_eq!(sha256(&manifest), result.digest.to_string());
}

async fn registry_cache_export_is_pushed_and_importable(bed: TestBed, daemon: Daemon) {
    let t = Setup::new(&bed, daemon, "bk/cache").await;
    t.dockerfile(&format!("RUN echo {} > /cached\n", uuid_like()));
    let cache_ref = format!("{}/{}:buildcache", bed.registry, t.repo);
    let mut export = fastbuild_buildkit::CacheSpec::registry(&cache_ref);
    export.attrs.insert("mode".to_owned(), "max".to_owned());
    export
        .attrs
        .insert("registry.insecure".to_owned(), "true".to_owned());
    let mut opts = t.push_opts("v1");
    opts.cache_exports = vec![export, fastbuild_buildkit::CacheSpec::inline()];
    let (result, _) = t.build(opts).await;
    let result = result.unwrap();
    assert!(result.digest.to_string().starts_with("sha256:"));
    // The cache manifest is in the registry.
    let (cache_manifest, _) = t.manifest("buildcache").await;
    let cache_manifest: serde_json::Value = serde_json::from_slice(&cache_manifest).unwrap();
    let entries = cache_manifest["layers"]
        .as_array()
        .or_else(|| cache_manifest["manifests"].as_array())
        .map_or(0, Vec::len);
    assert!(entries > 0, "{cache_manifest}");
    // Importing it is accepted (the step is then answered from a cache).
    let mut opts = t.push_opts("v2");
    let mut import = fastbuild_buildkit::CacheSpec::registry(&cache_ref);
    import
        .attrs
        .insert("registry.insecure".to_owned(), "true".to_owned());
    opts.cache_imports = vec![import];
    let (result, events) = t.build(opts).await;
    result.unwrap();
    assert!(
        events.iter().any(
            |e| matches!(e, ProgressEvent::VertexCached { name, .. } if name.contains("RUN echo"))
        ),
        "{events:#?}"
    );
}

on_both_daemons!(
    list_workers_and_info,
    pushed_build_digest_is_the_manifest_the_registry_serves,
    same_build_twice_and_fresh_copy_with_other_mtimes_give_same_digest,
    dockerignored_file_is_never_sent_and_cannot_be_copied,
    symlink_pointing_outside_the_context_does_not_leak_its_target,
    build_args_target_and_dockerfile_outside_the_context,
    secrets_are_visible_to_run_and_absent_from_layers,
    no_cache_reruns_steps_that_are_otherwise_cached,
    dockerfile_syntax_error_names_file_and_line,
    failed_run_reports_step_exit_code_and_log_tail,
    missing_base_image_is_reported_as_such,
    push_to_authenticated_registry_uses_docker_config_credentials,
    token_registry_gets_the_password_from_fastbuild_never_from_the_daemon,
    cancelling_a_build_returns_promptly_and_the_daemon_stays_usable,
    push_to_plain_http_registry_without_insecure_suggests_registry_insecure,
    registry_cache_export_is_pushed_and_importable,
);

// ---------------------------------------------------------------------------------------------
// The standalone buildkitd's own tcp listener with mutual TLS (certificates made by the bed).

fn buildkitd_tls(bed: &TestBed) -> TlsOptions {
    let [ca, cert, key] = bed.buildkitd_tls.clone();
    TlsOptions {
        ca_cert: Some(ca),
        cert: Some(cert),
        key: Some(key),
        server_name: Some("localhost".to_owned()),
    }
}

#[tokio::test]
async fn standalone_buildkitd_over_tcp_with_mutual_tls_builds_and_pushes() {
    let bed = require_bed!();
    let client = Client::connect(&bed.buildkitd_tcp, Some(buildkitd_tls(&bed)))
        .await
        .unwrap();
    let t = Setup::on(&bed, client, "bk/mtls");
    t.dockerfile("COPY hello.txt /hello.txt\nRUN cat /hello.txt\n");
    t.write("hello.txt", &format!("hello over mTLS {}\n", uuid_like()));
    let (result, _) = t.build(t.fresh_opts("v1")).await;
    let result = result.unwrap();
    let (manifest, _) = t.manifest("v1").await;
    assert_eq!(result.digest.to_string(), sha256(&manifest));
}

#[tokio::test]
async fn standalone_buildkitd_refuses_a_client_without_certificate() {
    let bed = require_bed!();
    let no_cert = TlsOptions {
        cert: None,
        key: None,
        ..buildkitd_tls(&bed)
    };
    let err = match Client::connect(&bed.buildkitd_tcp, Some(no_cert)).await {
        Ok(c) => c.list_workers().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains(&bed.buildkitd_tcp), "{err}");
    // Plain TCP against the TLS listener fails too, naming the address.
    let err = match Client::connect(&bed.buildkitd_tcp, None).await {
        Ok(c) => c.list_workers().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains(&bed.buildkitd_tcp), "{err}");
}
