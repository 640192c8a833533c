//! Fault injection: a small in-process registry (hand-rolled HTTP/1.1 on a tokio listener) that
//! answers 503, resets connections mid-upload, hands out relative `Location`s or lies about
//! `Docker-Content-Digest`. Pushes must survive the first three and fail clearly on the last.
//! It can also send uploads and blob downloads to another server (blob storage): credentials
//! must stay with the registry, and plain HTTP is only used where it is allowed.

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fastbuild_oci::{
    BaseImage, Error, ImageSpec, LayerSpec, PushResult, Reference, RegistryClient, RegistryOptions,
    Target, build_and_push,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

use support::{Head, app_v1, push_to, quick_options, read_head, scratch_image, sha256};

#[derive(Default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one switch per fault, set by name"
)]
struct Faults {
    /// Answer this many upload-starting POSTs with 503.
    post_503: u32,
    /// Drop the connection halfway through this many blob PUT/PATCH bodies.
    reset_body: u32,
    /// Answer this many manifest PUTs with 500.
    manifest_500: u32,
    /// Report a wrong `Docker-Content-Digest` for uploaded blobs.
    lie_digest: bool,
    /// Require a Bearer token from `/token`, which wants these Basic credentials.
    bearer: Option<(String, String)>,
    /// Require these Basic credentials on every request.
    basic: Option<(String, String)>,
    /// Answer upload POSTs with an absolute `Location` on this base URL (`scheme://host:port`).
    upload_base: Option<String>,
    /// The server whose state holds those uploads (another `serve`), if not this one.
    upload_state: Option<Shared>,
    /// Answer blob GET/HEADs with a 307 to this base URL (with a signature in the query).
    blob_redirect_base: Option<String>,
    /// With `bearer`: the realm of the challenge, instead of this server's own `/token`.
    realm: Option<String>,
    /// Answer manifest DELETEs with 405 UNSUPPORTED (deletion disabled).
    delete_disabled: bool,
    /// Serve a blob only in repositories it was uploaded or mounted into (as registries do);
    /// otherwise any repository has every blob.
    blobs_per_repo: bool,
    /// Drop the connection halfway through this many blob GET bodies larger than 64 KiB.
    reset_download: u32,
    /// Refuse a manifest naming a blob the repository lacks (`MANIFEST_BLOB_UNKNOWN`), as
    /// distribution does.
    check_manifest_blobs: bool,
}

#[derive(Default)]
struct State {
    faults: Faults,
    blobs: HashMap<String, Vec<u8>>,
    uploads: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, (String, Vec<u8>)>,
    /// `name digest` of each blob uploaded or mounted into a repository.
    links: std::collections::HashSet<String>,
    /// Repositories a manifest was pushed to.
    repos: std::collections::HashSet<String>,
    next_id: u64,
    log: Vec<String>,
    /// `scope` parameters of each token request.
    token_requests: Vec<Vec<String>>,
    /// `METHOD path` of each request that carried an `Authorization` header.
    authorized: Vec<String>,
    addr: String,
}

type Shared = Arc<Mutex<State>>;

async fn serve(bind: &str, faults: Faults) -> (SocketAddr, Shared) {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state: Shared = Arc::new(Mutex::new(State {
        faults,
        addr: addr.to_string(),
        ..State::default()
    }));
    let s = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(connection(stream, s.clone()));
        }
    });
    (addr, state)
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Reply {
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
    fn body(mut self, b: Vec<u8>) -> Self {
        self.body = b;
        self
    }
}

async fn connection(stream: TcpStream, state: Shared) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let Some(head) = read_head(&mut r, &mut w).await else {
            return;
        };
        let len = head.content_length();
        let Head {
            method,
            target,
            headers,
        } = head;
        let url = url::Url::parse(&format!("http://fake{target}")).unwrap();
        let is_blob_body = (method == "PUT" || method == "PATCH")
            && url.path().contains("/blobs/uploads/")
            && len > 0;
        if is_blob_body {
            let reset = {
                let mut s = state.lock().unwrap();
                if s.faults.reset_body > 0 {
                    s.faults.reset_body -= 1;
                    s.log.push(format!("RESET {method} {}", url.path()));
                    true
                } else {
                    false
                }
            };
            if reset {
                let mut half = vec![0; len / 2];
                let _ = r.read_exact(&mut half).await;
                return; // drop the connection mid-body
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let rep = route(&state, &method, &url, &headers, body);
        let cut = method == "GET"
            && url.path().contains("/blobs/sha256:")
            && rep.body.len() > 64 * 1024
            && {
                let mut s = state.lock().unwrap();
                let cut = s.faults.reset_download > 0;
                if cut {
                    s.faults.reset_download -= 1;
                    s.log.push(format!("CUT GET {}", url.path()));
                }
                cut
            };
        let mut out = format!("HTTP/1.1 {} X\r\n", rep.status);
        for (k, v) in &rep.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        if !rep.headers.iter().any(|(k, _)| k == "Content-Length") {
            let _ = write!(out, "Content-Length: {}\r\n", rep.body.len());
        }
        out += "\r\n";
        if w.write_all(out.as_bytes()).await.is_err() {
            return;
        }
        if cut {
            let _ = w.write_all(&rep.body[..rep.body.len() / 2]).await;
            return; // drop the connection mid-body
        }
        if method != "HEAD" && w.write_all(&rep.body).await.is_err() {
            return;
        }
    }
}

/// Opens an upload session in `s`; returns its id.
fn new_upload(s: &mut State) -> String {
    s.next_id += 1;
    let id = format!("u{}", s.next_id);
    s.uploads.insert(id.clone(), Vec::new());
    id
}

fn route(
    state: &Shared,
    method: &str,
    url: &url::Url,
    headers: &HashMap<String, String>,
    body: Vec<u8>,
) -> Reply {
    let mut s = state.lock().unwrap();
    let path = url.path().to_owned();
    s.log.push(format!("{method} {path}"));
    if headers.contains_key("authorization") {
        s.authorized.push(format!("{method} {path}"));
    }
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    if let Some((user, pass)) = s.faults.basic.clone() {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        if headers.get("authorization") != Some(&format!("Basic {basic}")) {
            return reply(401).header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
    }
    if let Some((user, pass)) = s.faults.bearer.clone() {
        use base64::Engine as _;
        let auth = headers.get("authorization").cloned().unwrap_or_default();
        if path == "/token" {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            if auth != format!("Basic {basic}")
                || query.get("service").map(String::as_str) != Some("fake")
            {
                return reply(401);
            }
            let scopes = url
                .query_pairs()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.into_owned())
                .collect();
            s.token_requests.push(scopes);
            let n = s.token_requests.len();
            return reply(200)
                .body(format!(r#"{{"token":"tok-{n}","expires_in":300}}"#).into_bytes());
        }
        if !auth.starts_with("Bearer tok-") {
            let realm = s
                .faults
                .realm
                .clone()
                .unwrap_or_else(|| format!("http://{}/token", s.addr));
            let challenge = format!(
                r#"Bearer realm="{realm}",service="fake",scope="repository:team/app:pull,push""#
            );
            return reply(401).header("WWW-Authenticate", challenge);
        }
    }
    if path == "/v2/" {
        return reply(200);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return reply(404);
    };
    if let Some((name, id)) = rest.split_once("/blobs/uploads/") {
        match method {
            "POST" => {
                if let Some(d) = query.get("mount")
                    && s.blobs.contains_key(d)
                {
                    s.links.insert(format!("{name} {d}"));
                    return reply(201).header("Docker-Content-Digest", d.clone());
                }
                if s.faults.post_503 > 0 {
                    s.faults.post_503 -= 1;
                    return reply(503).body(b"{\"errors\":[{\"code\":\"UNAVAILABLE\"}]}".to_vec());
                }
                let id = if let Some(other) = s.faults.upload_state.clone() {
                    new_upload(&mut other.lock().unwrap())
                } else {
                    new_upload(&mut s)
                };
                if let Some(base) = &s.faults.upload_base {
                    return reply(202).header(
                        "Location",
                        format!("{base}/v2/{name}/blobs/uploads/{id}?_state=secret-{id}"),
                    );
                }
                // Relative to the request path, with a query to keep.
                return reply(202).header("Location", format!("{id}?_state=s-{id}"));
            }
            "PATCH" => {
                if !query.contains_key("_state") {
                    return reply(400).body(b"lost the _state query".to_vec());
                }
                let Some(upload) = s.uploads.get_mut(id) else {
                    return reply(404);
                };
                let start = upload.len();
                let range = headers.get("content-range").cloned().unwrap_or_default();
                if range != format!("{start}-{}", start + body.len() - 1) {
                    return reply(416);
                }
                upload.extend_from_slice(&body);
                let end = upload.len() - 1;
                return reply(202)
                    .header(
                        "Location",
                        format!("/v2/{name}/blobs/uploads/{id}?_state=p{end}"),
                    )
                    .header("Range", format!("0-{end}"));
            }
            "PUT" => {
                if !query.contains_key("_state") {
                    return reply(400).body(b"lost the _state query".to_vec());
                }
                let Some(mut upload) = s.uploads.remove(id) else {
                    return reply(404);
                };
                upload.extend_from_slice(&body);
                let digest = query.get("digest").cloned().unwrap_or_default();
                if sha256(&upload) != digest {
                    return reply(400)
                        .body(b"{\"errors\":[{\"code\":\"DIGEST_INVALID\"}]}".to_vec());
                }
                s.blobs.insert(digest.clone(), upload);
                s.links.insert(format!("{name} {digest}"));
                let reported = if s.faults.lie_digest {
                    sha256(b"something else")
                } else {
                    digest
                };
                return reply(201).header("Docker-Content-Digest", reported);
            }
            "DELETE" => {
                return reply(if s.uploads.remove(id).is_some() {
                    204
                } else {
                    404
                });
            }
            _ => return reply(405),
        }
    }
    if let Some((name, digest)) = rest.split_once("/blobs/") {
        if let Some(base) = &s.faults.blob_redirect_base {
            return reply(307).header(
                "Location",
                format!("{base}/v2/{name}/blobs/{digest}?X-Amz-Signature=sig-secret"),
            );
        }
        if s.faults.blobs_per_repo && !s.links.contains(&format!("{name} {digest}")) {
            return reply(404);
        }
        return match s.blobs.get(digest) {
            Some(b) => reply(200)
                .header("Content-Length", b.len().to_string())
                .header("Docker-Content-Digest", digest)
                .body(if method == "HEAD" {
                    Vec::new()
                } else {
                    b.clone()
                }),
            None => reply(404),
        };
    }
    if let Some((name, reference)) = rest.split_once("/manifests/") {
        return match method {
            "PUT" => {
                s.repos.insert(name.to_owned());
                if s.faults.check_manifest_blobs {
                    let m: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let named = m["layers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain([&m["config"]]);
                    for d in named.filter_map(|d| d["digest"].as_str()) {
                        let there = if s.faults.blobs_per_repo {
                            s.links.contains(&format!("{name} {d}"))
                        } else {
                            s.blobs.contains_key(d)
                        };
                        if !there {
                            return reply(400).header("Content-Type", "application/json").body(
                                format!(r#"{{"errors":[{{"code":"MANIFEST_BLOB_UNKNOWN","detail":"{d}"}}]}}"#)
                                    .into_bytes(),
                            );
                        }
                    }
                }
                if s.faults.manifest_500 > 0 {
                    s.faults.manifest_500 -= 1;
                    return reply(500);
                }
                let ct = headers.get("content-type").cloned().unwrap_or_default();
                let d = sha256(&body);
                s.manifests
                    .insert(reference.to_owned(), (ct.clone(), body.clone()));
                s.manifests.insert(d.clone(), (ct, body));
                reply(201).header("Docker-Content-Digest", d)
            }
            "GET" | "HEAD" => match s.manifests.get(reference) {
                Some((ct, b)) => reply(200)
                    .header("Content-Type", ct.clone())
                    .body(b.clone()),
                None => reply(404),
            },
            "DELETE" if s.faults.delete_disabled => reply(405).body(
                br#"{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}"#
                    .to_vec(),
            ),
            "DELETE" => match s.manifests.get(reference).cloned() {
                // By digest, with every tag pointing at it (as distribution does).
                Some((_, b)) => {
                    s.manifests.retain(|_, (_, other)| *other != b);
                    reply(202)
                }
                None => reply(404),
            },
            _ => reply(405),
        };
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        if !s.repos.contains(name) {
            return reply(404).body(br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#.to_vec());
        }
        // Paginated like distribution: sorted, `n` per page, `last` to go on, a `Link` to the next.
        let mut tags: Vec<String> = s
            .manifests
            .keys()
            .filter(|k| !k.starts_with("sha256:"))
            .cloned()
            .collect();
        tags.sort();
        if let Some(last) = query.get("last") {
            tags.retain(|t| t > last);
        }
        let n = query
            .get("n")
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX);
        let more = tags.len() > n;
        tags.truncate(n);
        let body = serde_json::json!({"name": name, "tags": tags}).to_string();
        let mut rep = reply(200).body(body.into_bytes());
        if more {
            rep = rep.header(
                "Link",
                format!(
                    "</v2/{name}/tags/list?last={}&n={n}>; rel=\"next\"",
                    tags.last().unwrap()
                ),
            );
        }
        return rep;
    }
    reply(404)
}

/// Quick retries (5 attempts), uploads chunked at 64 KiB.
fn options(dir: &Path) -> RegistryOptions {
    RegistryOptions {
        chunk_size: 64 * 1024,
        ..quick_options(dir, 5)
    }
}

fn client(dir: &Path) -> RegistryClient {
    RegistryClient::new(options(dir)).unwrap()
}

/// A server on loopback with `faults`.
async fn serve_local(faults: Faults) -> (SocketAddr, Shared) {
    serve("127.0.0.1:0", faults).await
}

/// A client that may use plain HTTP to `host`.
fn insecure_client(dir: &Path, host: String) -> RegistryClient {
    let mut opts = options(dir);
    opts.insecure_hosts = vec![host];
    RegistryClient::new(opts).unwrap()
}

/// A client logged in to `addr` as `alice` (password `pw-secret`) through a Docker config in
/// `dir`.
fn alice_client(dir: &Path, addr: SocketAddr) -> RegistryClient {
    RegistryClient::new(options_with_login(
        dir,
        &addr.to_string(),
        "alice",
        "pw-secret",
    ))
    .unwrap()
}

/// One server on loopback with some faults, a client with [`options`] (in a fresh temp dir) and
/// its `team/app:v1`.
struct Setup {
    tmp: tempfile::TempDir,
    addr: SocketAddr,
    state: Shared,
    client: RegistryClient,
    target: Reference,
}

impl Setup {
    async fn new(faults: Faults) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let (addr, state) = serve_local(faults).await;
        Setup {
            client: client(tmp.path()),
            target: app_v1(addr),
            tmp,
            addr,
            state,
        }
    }

    /// [`spec`] pushed to the target.
    async fn push(&self) -> Result<PushResult, Error> {
        push(self.tmp.path(), &self.target, &self.client).await
    }
}

/// [`spec`] (made in `dir`) pushed to `target`.
async fn push(
    dir: &Path,
    target: &Reference,
    client: &RegistryClient,
) -> Result<PushResult, Error> {
    push_to(&spec(dir), target, client).await
}

/// Two layers: a small file (monolithic upload) and ~300 KiB (chunked at 64 KiB).
fn spec(dir: &Path) -> ImageSpec {
    let small = dir.join("small.txt");
    fs_err::write(&small, "small\n").unwrap();
    let big = dir.join("big.bin");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs_err::write(&big, bytes).unwrap();
    scratch_image(vec![
        LayerSpec::new([(small, "/small.txt")]),
        LayerSpec::new([(big, "/big.bin")]),
    ])
}

#[tokio::test]
async fn push_survives_503s_resets_and_relative_locations() {
    let t = Setup::new(Faults {
        post_503: 2,
        reset_body: 2,
        manifest_500: 1,
        lie_digest: false,
        ..Faults::default()
    })
    .await;
    let pushed = t.push().await.unwrap();

    {
        let s = t.state.lock().unwrap();
        assert_eq!(s.faults.post_503, 0, "the 503s were served");
        assert_eq!(s.faults.reset_body, 0, "the resets happened");
        assert_eq!(s.faults.manifest_500, 0);
        assert!(
            s.log.iter().any(|l| l.starts_with("PATCH")),
            "chunked upload used: {:?}",
            s.log
        );
        let (ct, manifest) = &s.manifests["v1"];
        assert_eq!(ct, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(sha256(manifest), pushed.digest.to_string());
        let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        for d in m["layers"].as_array().unwrap().iter().chain([&m["config"]]) {
            let digest = d["digest"].as_str().unwrap();
            let blob = &s.blobs[digest];
            assert_eq!(sha256(blob), digest);
            assert_eq!(blob.len() as u64, d["size"].as_u64().unwrap());
        }
    }
    assert_eq!(pushed.stats.blobs_uploaded, 3);

    // A second push finds every blob: nothing is uploaded again.
    let again = t.push().await.unwrap();
    assert_eq!(again.digest, pushed.digest);
    assert_eq!(
        (again.stats.blobs_skipped, again.stats.bytes_uploaded),
        (3, 0)
    );
}

#[tokio::test]
async fn lying_docker_content_digest_fails_clearly_and_pushes_no_manifest() {
    let t = Setup::new(Faults {
        lie_digest: true,
        ..Faults::default()
    })
    .await;
    let err = t.push().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{msg}");
    assert!(
        msg.contains("digest mismatch") && msg.contains(&sha256(b"something else")),
        "{msg}"
    );
    assert!(t.state.lock().unwrap().manifests.is_empty());
}

#[tokio::test]
async fn persistent_503_gives_up_after_the_retry_budget() {
    let t = Setup::new(Faults {
        post_503: 1000,
        ..Faults::default()
    })
    .await;
    let err = t.push().await.unwrap_err();
    assert!(matches!(err, Error::Status { status: 503, .. }), "{err}");
    let s = t.state.lock().unwrap();
    let posts = s.log.iter().filter(|l| l.starts_with("POST")).count();
    // 3 blobs × 5 attempts at most.
    assert!((5..=15).contains(&posts), "{posts} POSTs");
    assert!(s.manifests.is_empty());
}

/// A local address that is not loopback, if the machine has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
#[allow(clippy::print_stderr)]
async fn plain_http_registry_is_diagnosed_unless_marked_insecure() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: no non-loopback address on this machine");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _state) = serve(&format!("{ip}:0"), Faults::default()).await;
    let host = addr.to_string();
    let client = client(tmp.path());
    let target: Reference = format!("{host}/team/app:v1").parse().unwrap();
    let err = push(tmp.path(), &target, &client).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PlainHttp { .. }), "{msg}");
    assert!(
        msg.contains(&format!("`{host}` speaks plain HTTP")) && msg.contains("insecure"),
        "{msg}"
    );

    let client = insecure_client(tmp.path(), host);
    push(tmp.path(), &target, &client).await.unwrap();
}

#[tokio::test]
async fn bearer_token_flow_with_docker_config_credentials_and_token_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_local(Faults {
        bearer: Some(("alice".into(), "pw:secret".into())),
        ..Faults::default()
    })
    .await;
    let login = |password: &str| {
        let opts = options_with_login(tmp.path(), &addr.to_string(), "alice", password);
        RegistryClient::new(opts).unwrap()
    };
    let client = login("pw:secret");
    let target = app_v1(addr);
    let pushed = push(tmp.path(), &target, &client).await.unwrap();
    {
        let s = state.lock().unwrap();
        assert_eq!(sha256(&s.manifests["v1"].1), pushed.digest.to_string());
        // One token for the whole push (cached), with the push scope.
        assert_eq!(
            s.token_requests,
            [vec!["repository:team/app:pull,push".to_owned()]]
        );
    }
    // Reading needs the pull scope: a second token.
    let fetched = client.get_manifest(&target).await.unwrap();
    assert_eq!(fetched.digest, pushed.digest);
    assert_eq!(state.lock().unwrap().token_requests.len(), 2);
    assert!(!format!("{client:?}").contains("pw:secret"));

    // Wrong password: refused, and the error names the registry but not the secret.
    let client = login("wrong");
    let err = push(tmp.path(), &target, &client).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("refused") && !msg.contains("wrong"),
        "{msg}"
    );
}

/// A Docker config in `dir` with `user:password` for `registry`; options reading it.
fn options_with_login(dir: &Path, registry: &str, user: &str, password: &str) -> RegistryOptions {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    fs_err::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let mut opts = options(dir);
    opts.docker_config = Some(dir.to_owned());
    opts
}

#[tokio::test]
async fn credentials_stay_with_the_registry_when_uploads_and_blobs_live_on_another_host() {
    for bearer in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        // Blob storage: another listener (another port, so another origin), no auth of its own.
        let (storage_addr, storage) = serve_local(Faults::default()).await;
        let login = Some(("alice".to_owned(), "pw-secret".to_owned()));
        let (addr, registry) = serve_local(Faults {
            basic: if bearer { None } else { login.clone() },
            bearer: if bearer { login } else { None },
            upload_base: Some(format!("http://{storage_addr}")),
            upload_state: Some(storage.clone()),
            blob_redirect_base: Some(format!("http://{storage_addr}")),
            ..Faults::default()
        })
        .await;
        let opts = options_with_login(tmp.path(), &addr.to_string(), "alice", "pw-secret");
        let client = RegistryClient::new(opts).unwrap();
        let target = app_v1(addr);
        let pushed = push(tmp.path(), &target, &client).await.unwrap();
        // The blobs went to storage (PATCH + PUT there), fetched back through a redirect.
        let config: fastbuild_oci::Digest = {
            let r = registry.lock().unwrap();
            let m: serde_json::Value = serde_json::from_slice(&r.manifests["v1"].1).unwrap();
            assert_eq!(sha256(&r.manifests["v1"].1), pushed.digest.to_string());
            m["config"]["digest"].as_str().unwrap().parse().unwrap()
        };
        let blob = client.get_blob(&target, &config).await.unwrap();
        assert_eq!(sha256(&blob), config.to_string());

        let r = registry.lock().unwrap();
        let st = storage.lock().unwrap();
        assert_eq!(st.blobs.len(), 3, "uploads went to storage: {:?}", st.log);
        for m in ["PATCH", "PUT", "HEAD", "GET"] {
            assert!(
                st.log.iter().any(|l| l.starts_with(m)),
                "{m} at storage: {:?}",
                st.log
            );
        }
        // The registry itself got the credentials (bearer: the token endpoint got Basic)...
        assert!(
            r.authorized.iter().any(|l| l.starts_with("POST /v2/")),
            "bearer={bearer}: {:?}",
            r.authorized
        );
        // ...storage never did: not on the upload Location, not after a redirect.
        assert!(
            st.authorized.is_empty(),
            "bearer={bearer}: credentials sent to another host: {:?}",
            st.authorized
        );
    }
}

#[tokio::test]
#[allow(clippy::print_stderr)]
async fn plain_http_upload_location_on_a_host_not_allowed_plain_http_is_refused() {
    let Setup {
        tmp,
        addr,
        state,
        client,
        ..
    } = Setup::new(Faults {
        upload_base: Some("http://fastbuild-test.invalid:9".to_owned()),
        ..Faults::default()
    })
    .await;
    let err = push(tmp.path(), &app_v1(addr), &client).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::LocationRefused { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "registry `{addr}` answered with an upload location `http://fastbuild-test.invalid:9/v2/team/app/blobs/uploads/u1`, which is refused"
        )),
        "{msg}"
    );
    assert!(
        msg.contains("`http://fastbuild-test.invalid:9/v2/team/app/blobs/uploads/u")
            && msg.contains("plain HTTP to `fastbuild-test.invalid:9` is not allowed")
            && msg.contains("--insecure-registry fastbuild-test.invalid:9")
            && !msg.contains("secret"),
        "{msg}"
    );
    assert!(state.lock().unwrap().manifests.is_empty());

    // The same rule with a real listener: refused until its host is marked insecure.
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped the insecure-host half: no non-loopback address on this machine");
        return;
    };
    let (storage_addr, storage) = serve(&format!("{ip}:0"), Faults::default()).await;
    let (addr, _state) = serve_local(Faults {
        upload_base: Some(format!("http://{storage_addr}")),
        upload_state: Some(storage.clone()),
        ..Faults::default()
    })
    .await;
    let target = app_v1(addr);
    let err = push(tmp.path(), &target, &client).await.unwrap_err();
    assert!(matches!(err, Error::LocationRefused { .. }), "{err}");
    assert!(storage.lock().unwrap().log.is_empty(), "nothing was sent");
    let client = insecure_client(tmp.path(), storage_addr.to_string());
    push(tmp.path(), &target, &client).await.unwrap();
    assert_eq!(storage.lock().unwrap().blobs.len(), 3);
}

#[tokio::test]
async fn redirects_to_plain_http_or_to_another_scheme_of_the_same_origin_are_refused() {
    let digest: fastbuild_oci::Digest = sha256(b"x").parse().unwrap();
    for (base, reason) in [
        (
            "http://fastbuild-test.invalid:9".to_owned(),
            "plain HTTP to `fastbuild-test.invalid:9` is not allowed",
        ),
        // Same host and port, another scheme: reqwest would keep `Authorization` on it.
        (String::new(), "changes only the scheme"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (addr, state) = serve_local(Faults {
            basic: Some(("alice".to_owned(), "pw-secret".to_owned())),
            ..Faults::default()
        })
        .await;
        let base = if base.is_empty() {
            format!("https://{addr}")
        } else {
            base
        };
        state.lock().unwrap().faults.blob_redirect_base = Some(base.clone());
        let client = alice_client(tmp.path(), addr);
        let err = client.get_blob(&app_v1(addr), &digest).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::LocationRefused { .. }), "{msg}");
        assert!(
            msg.contains(&format!(
                "registry `{addr}` answered with a redirect to `{base}/v2/team/app/blobs/{digest}`"
            )) && msg.contains(reason)
                && !msg.contains("secret"),
            "{msg}"
        );
    }
}

/// This process's umask (`Umask:` of /proc/self/status; 022 if it cannot be read).
fn umask() -> u32 {
    fs_err::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[tokio::test]
async fn oci_layouts_are_written_0644_and_0755_like_the_other_outputs() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let (addr, _state) = serve_local(Faults::default()).await;
    let client = client(tmp.path());
    let base: Reference = format!("{addr}/base/img:v1").parse().unwrap();
    build_and_push(&spec(tmp.path()), &Target::Registry(base.clone()), &client)
        .await
        .unwrap();
    // Base layers (downloaded), a new layer (copied from the work dir), the config (bytes),
    // the manifest, index.json and oci-layout.
    let layout = tmp.path().join("layout");
    let mut image = spec(tmp.path());
    image.base = BaseImage::Reference(base.to_string());
    let own = tmp.path().join("own.txt");
    fs_err::write(&own, "own\n").unwrap();
    image.layers = vec![LayerSpec::new([(own, "/own.txt")])];
    let pushed = build_and_push(&image, &Target::Layout(layout.clone()), &client)
        .await
        .unwrap();
    assert_eq!(
        pushed.stats.blobs_uploaded, 4,
        "2 base layers, 1 new, 1 config"
    );

    let mask = umask();
    let (file_mode, dir_mode) = (0o644 & !mask, 0o777 & !mask);
    let mut seen = Vec::new();
    let mut todo = vec![layout.clone()];
    while let Some(dir) = todo.pop() {
        for entry in fs_err::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs_err::metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let rel = path.strip_prefix(&layout).unwrap().display().to_string();
            if meta.is_dir() {
                assert_eq!(mode, dir_mode, "{rel}: {mode:o}, umask {mask:o}");
                todo.push(path);
            } else {
                assert_eq!(mode, file_mode, "{rel}: {mode:o}, umask {mask:o}");
                seen.push(rel);
            }
        }
    }
    // 4 blobs and the manifest, index.json, oci-layout: nothing else (no temp files left).
    assert_eq!(seen.len(), 7, "{seen:?}");
    if mask == 0o022 {
        assert_eq!((file_mode, dir_mode), (0o644, 0o755));
    }
}

#[tokio::test]
#[allow(clippy::print_stderr)]
async fn plain_http_token_realm_on_a_host_not_allowed_plain_http_gets_no_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let login = Some(("alice".to_owned(), "pw-secret".to_owned()));
    let registry = |realm: String| {
        serve_local(Faults {
            bearer: login.clone(),
            realm: Some(realm),
            ..Faults::default()
        })
    };
    // A token service on another loopback port (another origin, as auth.docker.io is for
    // Docker Hub): loopback may use plain HTTP, so it gets the credentials.
    let (auth_addr, auth) = serve_local(Faults {
        bearer: login.clone(),
        ..Faults::default()
    })
    .await;
    let (addr, _state) = registry(format!("http://{auth_addr}/token")).await;
    let client = alice_client(tmp.path(), addr);
    push(tmp.path(), &app_v1(addr), &client).await.unwrap();
    assert_eq!(auth.lock().unwrap().authorized, ["GET /token"]);

    // A plain-HTTP realm on a host not allowed plain HTTP: refused before any request.
    let (addr, state) = registry("http://fastbuild-test.invalid:9/token?x=secret".to_owned()).await;
    let client = alice_client(tmp.path(), addr);
    let err = push(tmp.path(), &app_v1(addr), &client).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::LocationRefused { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "registry `{addr}` answered with a Bearer challenge naming the token realm `http://fastbuild-test.invalid:9/token`, which is refused: plain HTTP to `fastbuild-test.invalid:9` is not allowed"
        )) && msg.contains("fix the registry's token realm configuration")
            && msg.contains("--insecure-registry fastbuild-test.invalid:9")
            && !msg.contains("secret"),
        "{msg}"
    );
    assert!(state.lock().unwrap().manifests.is_empty());

    // The same with a real token service on a non-loopback address: it never hears from
    // fastbuild until its host is marked insecure.
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped the non-loopback half: no non-loopback address on this machine");
        return;
    };
    let (auth_addr, auth) = serve(
        &format!("{ip}:0"),
        Faults {
            bearer: login.clone(),
            ..Faults::default()
        },
    )
    .await;
    let (addr, _state) = registry(format!("http://{auth_addr}/token")).await;
    let mut opts = options_with_login(tmp.path(), &addr.to_string(), "alice", "pw-secret");
    let client = RegistryClient::new(opts.clone()).unwrap();
    let target = app_v1(addr);
    let err = push(tmp.path(), &target, &client).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::LocationRefused { .. }), "{msg}");
    assert!(
        msg.contains(&format!("plain HTTP to `{auth_addr}` is not allowed")),
        "{msg}"
    );
    assert!(
        auth.lock().unwrap().log.is_empty(),
        "the token service was sent a request: {:?}",
        auth.lock().unwrap().authorized
    );
    opts.insecure_hosts = vec![auth_addr.to_string()];
    let client = RegistryClient::new(opts).unwrap();
    push(tmp.path(), &target, &client).await.unwrap();
    assert_eq!(auth.lock().unwrap().authorized, ["GET /token"]);
}

/// `spec` pushed by fastbuild to `addr`'s `team/app:v1` for `platforms`; its digest.
async fn pushed(addr: SocketAddr, dir: &Path, platforms: &[&str]) -> fastbuild_oci::Digest {
    let mut spec = spec(dir);
    spec.platforms = platforms.iter().map(|p| p.parse().unwrap()).collect();
    push_to(&spec, &app_v1(addr), &client(dir))
        .await
        .unwrap()
        .digest
}

/// `FROM/team/app@DIGEST` and `TO/prod/app:v1`: what a copy reads and writes.
fn copy_refs(
    from: SocketAddr,
    digest: &fastbuild_oci::Digest,
    to: SocketAddr,
) -> (Reference, Reference) {
    (
        format!("{from}/team/app@{digest}").parse().unwrap(),
        format!("{to}/prod/app:v1").parse().unwrap(),
    )
}

#[tokio::test]
async fn a_copy_between_registries_streams_through_resets_and_moves_only_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let (from, source) = serve_local(Faults::default()).await;
    let (to, target) = serve_local(Faults {
        post_503: 1,
        reset_body: 2,
        ..Faults::default()
    })
    .await;
    let digest = pushed(from, tmp.path(), &["linux/amd64"]).await;
    // The source drops a download halfway too: the upload starts over with a new one.
    source.lock().unwrap().faults.reset_download = 1;
    let client = client(tmp.path());
    let (src, dst) = copy_refs(from, &digest, to);
    let copied = client.copy_image(&src, &dst).await.unwrap();
    assert_eq!(copied.digest, digest);
    assert_eq!(copied.reference, format!("{to}/prod/app@{digest}"));
    assert_eq!(copied.manifests, 1);
    assert_eq!(
        (copied.stats.blobs_uploaded, copied.stats.blobs_mounted),
        (3, 0)
    );
    {
        let (s, t) = (source.lock().unwrap(), target.lock().unwrap());
        assert_eq!(t.faults.reset_body, 0, "the resets happened");
        assert_eq!(s.faults.reset_download, 0, "the download was cut");
        let big = s.blobs.iter().max_by_key(|(_, b)| b.len()).unwrap().0;
        let downloads = s
            .log
            .iter()
            .filter(|l| **l == format!("GET /v2/team/app/blobs/{big}"))
            .count();
        assert!(
            downloads >= 2,
            "one download per upload attempt: {:?}",
            s.log
        );
        assert!(t.log.iter().any(|l| l.starts_with("PATCH")), "chunked");
        // The same bytes, the same media type: the same digest.
        assert_eq!(t.manifests["v1"], s.manifests["v1"]);
        assert_eq!(sha256(&t.manifests["v1"].1), digest.to_string());
        assert_eq!(t.blobs, s.blobs);
        let bytes: usize = s.blobs.values().map(Vec::len).sum();
        assert_eq!(copied.stats.bytes_uploaded, bytes as u64);
    }
    // Again: every blob is there, nothing moves.
    let again = client.copy_image(&src, &dst).await.unwrap();
    assert_eq!(again.digest, digest);
    assert_eq!(
        (again.stats.blobs_skipped, again.stats.bytes_uploaded),
        (3, 0)
    );
}

#[tokio::test]
async fn a_source_serving_other_bytes_fails_the_copy_before_the_target_commits_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (from, source) = serve_local(Faults::default()).await;
    let (to, target) = serve_local(Faults::default()).await;
    let digest = pushed(from, tmp.path(), &["linux/amd64"]).await;
    // The largest blob (the ~300 KiB layer) rots in the source: same size, one byte flipped.
    let damaged = {
        let mut s = source.lock().unwrap();
        let (d, blob) = s.blobs.iter_mut().max_by_key(|(_, b)| b.len()).unwrap();
        *blob.last_mut().unwrap() ^= 1;
        d.clone()
    };
    let client = client(tmp.path());
    let (src, dst) = copy_refs(from, &digest, to);
    let err = client.copy_image(&src, &dst).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::BlobMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&damaged) && msg.contains("hash to") && msg.contains(&from.to_string()),
        "{msg}"
    );
    let t = target.lock().unwrap();
    assert!(
        !t.blobs.contains_key(&damaged),
        "the damaged blob was committed"
    );
    assert!(t.manifests.is_empty(), "a manifest was pushed");
}

#[tokio::test]
async fn a_copy_inside_one_registry_mounts_and_an_index_keeps_its_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_local(Faults {
        blobs_per_repo: true,
        ..Faults::default()
    })
    .await;
    let digest = pushed(addr, tmp.path(), &["linux/amd64", "linux/arm64"]).await;
    let before = state.lock().unwrap().log.len();
    let client = client(tmp.path());
    let (src, dst) = copy_refs(addr, &digest, addr);
    let copied = client.copy_image(&src, &dst).await.unwrap();
    assert_eq!(copied.digest, digest);
    assert_eq!(copied.media_type, "application/vnd.oci.image.index.v1+json");
    // The index and its two manifests; two configs and the two shared layers, all mounted.
    assert_eq!(copied.manifests, 3);
    assert_eq!(
        (
            copied.stats.blobs_mounted,
            copied.stats.blobs_uploaded,
            copied.stats.bytes_uploaded
        ),
        (4, 0, 0)
    );
    let s = state.lock().unwrap();
    let copy_log = &s.log[before..];
    assert!(
        copy_log
            .iter()
            .all(|l| !l.starts_with("PATCH") && !l.starts_with("PUT /v2/prod/app/blobs")),
        "{copy_log:?}"
    );
    assert!(
        copy_log
            .iter()
            .filter(|l| l.starts_with("PUT /v2/prod/app/manifests/"))
            .count()
            == 3,
        "{copy_log:?}"
    );
    assert_eq!(sha256(&s.manifests["v1"].1), digest.to_string());
}

#[tokio::test]
async fn tag_lists_follow_their_links_and_disabled_deletes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_local(Faults {
        delete_disabled: true,
        ..Faults::default()
    })
    .await;
    let digest = pushed(addr, tmp.path(), &["linux/amd64"]).await;
    {
        let mut s = state.lock().unwrap();
        let v1 = s.manifests["v1"].clone();
        for tag in ["a", "b", "c", "d", "e"] {
            s.manifests.insert(tag.to_owned(), v1.clone());
        }
    }
    let client = client(tmp.path());
    let repo: Reference = format!("{addr}/team/app").parse().unwrap();
    let tags = client.list_tags(&repo, Some(2)).await.unwrap();
    assert_eq!(tags, ["a", "b", "c", "d", "e", "v1"]);
    let pages = state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|l| l.ends_with("/tags/list"))
        .count();
    assert_eq!(pages, 3);
    let unknown: Reference = format!("{addr}/team/none").parse().unwrap();
    assert!(client.list_tags(&unknown, None).await.unwrap().is_empty());

    let pinned = repo.with_digest(digest);
    let err = client.delete_manifest(&pinned).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::DeleteDisabled { .. }), "{msg}");
    assert!(
        msg.contains(&format!("registry `{addr}` has deletion disabled"))
            && msg.contains("UNSUPPORTED")
            && msg.contains("delete: enabled: true"),
        "{msg}"
    );
    state.lock().unwrap().faults.delete_disabled = false;
    assert!(client.delete_manifest(&pinned).await.unwrap());
    assert!(client.list_tags(&repo, None).await.unwrap().is_empty());
    assert!(!client.delete_manifest(&pinned).await.unwrap());
}

/// The requests of `log` that are about blobs (`HEAD`s, uploads), manifests, or the scheme probe.
fn requests(state: &Shared, kind: &str) -> Vec<String> {
    let s = state.lock().unwrap();
    s.log
        .iter()
        .filter(|l| match kind {
            "head" => l.starts_with("HEAD ") && l.contains("/blobs/"),
            "upload" => l.starts_with("PUT ") && l.contains("/blobs/uploads/"),
            "manifest" => l.starts_with("PUT ") && l.contains("/manifests/"),
            "probe" => l.ends_with(" /v2/"),
            _ => unreachable!(),
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn remembered_blobs_are_not_checked_and_a_lost_one_is_pushed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_local(Faults {
        blobs_per_repo: true,
        check_manifest_blobs: true,
        ..Faults::default()
    })
    .await;
    let remembering = RegistryOptions {
        memory_dir: Some(tmp.path().join("memory")),
        ..options(tmp.path())
    };
    let target = app_v1(addr);
    let push_remembering = || async {
        let client = RegistryClient::new(remembering.clone()).unwrap();
        push(tmp.path(), &target, &client).await.unwrap()
    };
    let first = push_remembering().await;
    assert_eq!(first.stats.blobs_uploaded, 3);
    assert_eq!(
        requests(&state, "head").len(),
        3,
        "checked before the first push"
    );

    // A second run remembers both the scheme and the blobs: only the manifest goes out.
    state.lock().unwrap().log.clear();
    let second = push_remembering().await;
    assert_eq!(second.digest, first.digest);
    assert_eq!(
        (second.stats.blobs_skipped, second.stats.bytes_uploaded),
        (3, 0)
    );
    {
        let s = state.lock().unwrap();
        assert_eq!(s.log, ["PUT /v2/team/app/manifests/v1"], "{:?}", s.log);
    }

    // The registry loses a layer (garbage collection, a restore): the manifest is refused,
    // and the push checks every blob and sends the lost one again.
    let m: serde_json::Value =
        serde_json::from_slice(&state.lock().unwrap().manifests["v1"].1).unwrap();
    let lost = m["layers"][1]["digest"].as_str().unwrap().to_owned();
    {
        let mut s = state.lock().unwrap();
        s.links.remove(&format!("team/app {lost}"));
        s.blobs.remove(&lost);
        s.log.clear();
    }
    let third = push_remembering().await;
    assert_eq!(third.digest, first.digest);
    assert_eq!(third.stats.blobs_uploaded, 1);
    assert_eq!(third.stats.blobs_skipped, 2);
    assert_eq!(
        requests(&state, "manifest").len(),
        2,
        "refused once, then pushed"
    );
    assert_eq!(
        requests(&state, "head").len(),
        3,
        "every blob checked after the refusal"
    );
    assert_eq!(sha256(&state.lock().unwrap().blobs[&lost]), lost);
}

#[tokio::test]
async fn a_remembered_scheme_the_registry_no_longer_speaks_is_probed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve_local(Faults::default()).await;
    let memory = tmp.path().join("memory");
    let scheme_file = memory.join(addr.to_string()).join("scheme");
    fs_err::create_dir_all(scheme_file.parent().unwrap()).unwrap();
    // Remembered from a time the registry spoke TLS; it speaks plain HTTP now.
    fs_err::write(&scheme_file, "https").unwrap();
    let remembering = RegistryOptions {
        memory_dir: Some(memory),
        ..options(tmp.path())
    };
    let target = app_v1(addr);
    let push_remembering = || async {
        let client = RegistryClient::new(remembering.clone()).unwrap();
        push(tmp.path(), &target, &client).await
    };
    let first = push_remembering().await.unwrap();
    assert_eq!(fs_err::read_to_string(&scheme_file).unwrap(), "http");
    assert!(!requests(&state, "probe").is_empty(), "probed again");

    // Remembered now: the next run does not probe.
    state.lock().unwrap().log.clear();
    let second = push_remembering().await.unwrap();
    assert_eq!(second.digest, first.digest);
    assert!(
        requests(&state, "probe").is_empty(),
        "{:?}",
        state.lock().unwrap().log
    );

    // Without memory, every run probes.
    state.lock().unwrap().log.clear();
    let client = client(tmp.path());
    push(tmp.path(), &target, &client).await.unwrap();
    assert!(!requests(&state, "probe").is_empty());
}

#[tokio::test]
async fn a_rebuild_sends_fresh_blobs_into_sessions_opened_while_building() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, state) = serve("127.0.0.1:0", Faults::default()).await;
    let remembering = RegistryOptions {
        memory_dir: Some(tmp.path().join("memory")),
        ..options(tmp.path())
    };
    let target: Reference = format!("{addr}/team/app:v1").parse().unwrap();
    let cached = |dir: &Path| ImageSpec {
        layer_cache: Some(tmp.path().join("layer-cache")),
        ..spec(dir)
    };
    let push = |spec: ImageSpec, options: RegistryOptions| {
        let target = target.clone();
        async move {
            let client = RegistryClient::new(options).unwrap();
            build_and_push(&spec, &Target::Registry(target), &client)
                .await
                .unwrap()
        }
    };
    // The first push into the repository checks every blob, as always.
    let first = push(cached(tmp.path()), remembering.clone()).await;
    assert_eq!(requests(&state, "head").len(), 3);

    // A rebuild with `small.txt` changed: the layer cache misses both layers (their sources were
    // just written), so three sessions open while they build (two layers, the config). The
    // small layer and the config are new and go up without a HEAD; the big layer is the same
    // blob as before (remembered, not sent), so its session is cancelled.
    state.lock().unwrap().log.clear();
    let changed = cached(tmp.path());
    fs_err::write(tmp.path().join("small.txt"), "changed\n").unwrap();
    let second = push(changed.clone(), remembering).await;
    assert_ne!(second.digest, first.digest);
    assert_eq!(
        (second.stats.blobs_uploaded, second.stats.blobs_skipped),
        (2, 1)
    );
    {
        let s = state.lock().unwrap();
        let count = |prefix: &str| s.log.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(
            count("HEAD"),
            0,
            "fresh blobs are not asked for: {:?}",
            s.log
        );
        assert_eq!(count("POST"), 3, "{:?}", s.log);
        assert_eq!(
            count("DELETE /v2/team/app/blobs/uploads/"),
            1,
            "{:?}",
            s.log
        );
        assert!(s.uploads.is_empty(), "no session left open: {:?}", s.log);
    }

    // The same inputs pushed by a client with neither memory nor cache (HEAD first, as in CI)
    // give the same image.
    state.lock().unwrap().log.clear();
    let spec_again = ImageSpec {
        layer_cache: None,
        ..changed
    };
    let checked = push(spec_again, options(tmp.path())).await;
    assert_eq!(checked.digest, second.digest);
    assert_eq!(requests(&state, "head").len(), 3);
}
