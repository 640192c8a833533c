//! Hostile registries: an in-process HTTP/1.1 server (hand-rolled on a tokio listener) that
//! answers with huge, endless, stalled or dripping bodies, or not at all. The client must fail
//! each time with a clear error naming the registry, the URL and the limit — quickly, having
//! read no more than its bounds (the server counts the body bytes it got out).

mod support;

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastbuild_oci::{Digest, Error, LayerSpec, RegistryClient, RegistryOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

use support::{app_v1, push_to, quick_options, read_head, scratch_image, sparse_file};

/// A response body.
#[derive(Clone, Debug)]
enum Body {
    Bytes(Vec<u8>),
    /// `Content-Length: n` and n bytes, made as they are sent.
    Sized(u64),
    /// Chunked without a length: n bytes, then the end.
    Chunked(u64),
    /// Chunked, never ending (well: it stops at [`SAFETY_CAP`] by dropping the connection).
    Endless,
    /// `Content-Length: 1000`, 10 bytes, then silence (the connection stays open).
    Stall,
    /// Chunked, one byte every 50 ms, never ending.
    Drip,
}

#[derive(Clone, Debug)]
enum Answer {
    Reply(u16, Vec<(String, String)>, Body),
    /// Reads the request and never answers (the connection stays open).
    Silence,
    /// Reads the request's head, never its body, and never answers.
    Deaf,
    /// Reads the body slowly (256 KiB every 100 ms), then answers 201.
    SlowRead,
}

fn reply(status: u16, body: Body) -> Answer {
    Answer::Reply(status, Vec::new(), body)
}

/// `(method, path prefix, answer)`; the first match answers, else `GET /v2/` is 200 and the
/// rest 404.
type Route = (&'static str, String, Answer);

#[derive(Default)]
struct Seen {
    /// Body bytes the server got out (into the socket).
    served: AtomicU64,
    /// `METHOD path` of each request.
    log: Mutex<Vec<String>>,
}

impl Seen {
    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
    fn count(&self, prefix: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// A server on loopback answering by `routes(its own address)`.
async fn serve(routes: impl FnOnce(SocketAddr) -> Vec<Route>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Arc::new(routes(addr));
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, routes.clone(), s.clone()));
        }
    });
    (addr, seen)
}

async fn connection(stream: TcpStream, routes: Arc<Vec<Route>>, seen: Arc<Seen>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let Some(head) = read_head(&mut r, &mut w).await else {
        return;
    };
    let len = head.content_length();
    let (method, path) = (head.method, head.target);
    seen.log.lock().unwrap().push(format!("{method} {path}"));
    let answer = routes
        .iter()
        .find(|(m, prefix, _)| *m == method && path.starts_with(prefix.as_str()))
        .map_or_else(
            || reply(if path == "/v2/" { 200 } else { 404 }, Body::Bytes(vec![])),
            |(_, _, a)| a.clone(),
        );
    if matches!(answer, Answer::Deaf) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    if matches!(answer, Answer::SlowRead) {
        let mut left = len;
        let mut piece = vec![0; 256 * 1024];
        while left > 0 {
            let n = piece.len().min(left);
            if r.read_exact(&mut piece[..n]).await.is_err() {
                return;
            }
            left -= n;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = w
            .write_all(b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).await.is_err() {
        return;
    }
    let (status, headers, body) = match answer {
        Answer::Silence | Answer::Deaf | Answer::SlowRead => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        Answer::Reply(status, headers, body) => (status, headers, body),
    };
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for (k, v) in &headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    match &body {
        Body::Bytes(b) => {
            let _ = write!(head, "Content-Length: {}\r\n", b.len());
        }
        Body::Sized(n) => {
            let _ = write!(head, "Content-Length: {n}\r\n");
        }
        Body::Stall => head.push_str("Content-Length: 1000\r\n"),
        Body::Chunked(_) | Body::Endless | Body::Drip => {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
    }
    head.push_str("\r\n");
    if w.write_all(head.as_bytes()).await.is_err() || method == "HEAD" {
        return;
    }
    let piece = vec![b' '; 64 * 1024];
    let count = |n: usize| {
        seen.served.fetch_add(n as u64, Ordering::Relaxed);
    };
    match body {
        Body::Bytes(b) => {
            if w.write_all(&b).await.is_ok() {
                count(b.len());
            }
        }
        Body::Sized(mut left) => {
            while left > 0 {
                let n = piece.len().min(left as usize);
                if w.write_all(&piece[..n]).await.is_err() {
                    return;
                }
                count(n);
                left -= n as u64;
            }
        }
        Body::Chunked(mut left) => {
            while left > 0 {
                let n = piece.len().min(left as usize);
                let mut chunk = format!("{n:x}\r\n").into_bytes();
                chunk.extend_from_slice(&piece[..n]);
                chunk.extend_from_slice(b"\r\n");
                if w.write_all(&chunk).await.is_err() {
                    return;
                }
                count(n);
                left -= n as u64;
            }
            let _ = w.write_all(b"0\r\n\r\n").await;
        }
        Body::Endless => {
            let mut sent = 0;
            while sent < SAFETY_CAP {
                let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                chunk.extend_from_slice(&piece);
                chunk.extend_from_slice(b"\r\n");
                if w.write_all(&chunk).await.is_err() {
                    return;
                }
                count(piece.len());
                sent += piece.len() as u64;
            }
        }
        Body::Stall => {
            if w.write_all(&piece[..10]).await.is_ok() {
                count(10);
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Body::Drip => loop {
            if w.write_all(b"1\r\n \r\n").await.is_err() {
                return;
            }
            count(1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        },
    }
}

/// Short timeouts (the defaults are 30 s and 2 min) and one retry.
fn options(dir: &Path) -> RegistryOptions {
    RegistryOptions {
        read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(60),
        ..quick_options(dir, 2)
    }
}

fn quick_client(dir: &Path) -> RegistryClient {
    RegistryClient::new(options(dir)).unwrap()
}

/// A route answering `method` on paths under `prefix`.
fn route(method: &'static str, prefix: &str, answer: Answer) -> Route {
    (method, prefix.to_owned(), answer)
}

/// The blob GETs of `team/app` answered 200 with `body`.
fn blob_route(body: Body) -> Route {
    route("GET", "/v2/team/app/blobs/", reply(200, body))
}

/// Upload POSTs of `team/app` answered 202 with an absolute `Location` on `addr` whose query
/// is `_state=STATE`.
fn upload_start_route(addr: SocketAddr, state: &str) -> Route {
    let location = format!("http://{addr}/v2/team/app/blobs/uploads/u1?_state={state}");
    route(
        "POST",
        "/v2/team/app/blobs/uploads/",
        Answer::Reply(
            202,
            vec![("Location".to_owned(), location)],
            Body::Bytes(vec![]),
        ),
    )
}

/// The error `f` fails with, within a generous bound: every case here fails in well under a
/// second with the bounds in place; without them they hang or read hundreds of MiB. (A success
/// is not printed: its value may be a huge body.)
async fn fails<T>(what: &str, f: impl Future<Output = Result<T, Error>>) -> Error {
    let done = tokio::time::timeout(Duration::from_secs(60), f).await;
    match done.unwrap_or_else(|_| panic!("{what}: still waiting after 60 s")) {
        Ok(_) => panic!("{what}: succeeded, but it must fail"),
        Err(e) => e,
    }
}

/// Far more than any bound plus the socket buffers, far less than what the cases offer.
const MAX_SERVED: u64 = 64 << 20;

/// Where an "endless" body really ends (the connection is dropped, the body incomplete), so a
/// client without bounds fails these tests instead of filling the memory or disk of the machine.
const SAFETY_CAP: u64 = 256 << 20;

fn manifest_route(status: u16, body: Body) -> Route {
    route(
        "GET",
        "/v2/team/app/manifests/",
        Answer::Reply(
            status,
            vec![(
                "Content-Type".to_owned(),
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
            )],
            body,
        ),
    )
}

/// The message of `err`, which must be [`Error::ResponseTooLarge`] (for the `case` served).
fn too_large(err: &Error, case: &Body) -> String {
    let msg = err.to_string();
    assert!(
        matches!(err, Error::ResponseTooLarge { .. }),
        "{case:?}: {msg}"
    );
    msg
}

/// The server got out less than [`MAX_SERVED`] body bytes of the `case`.
fn assert_bounded(seen: &Seen, case: &Body) {
    assert!(
        seen.served() < MAX_SERVED,
        "{case:?}: {} bytes",
        seen.served()
    );
}

fn digest_of(b: &[u8]) -> Digest {
    Digest::of(b)
}

#[tokio::test]
async fn oversized_manifests_are_refused_without_reading_them() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = 100 << 20;
    for (body, seen_text) in [
        (Body::Sized(huge), format!("announced {huge} bytes")),
        (Body::Chunked(huge), "sent more".to_owned()),
        (Body::Endless, "sent more".to_owned()),
    ] {
        let (addr, seen) = serve(|_| vec![manifest_route(200, body.clone())]).await;
        let client = quick_client(tmp.path());
        let target = app_v1(addr);
        let err = fails("manifest", client.get_manifest(&target)).await;
        let msg = too_large(&err, &body);
        assert!(
            msg.contains(&format!(
                "response too large from registry `{addr}`: a manifest or index may be at most 4 MiB (4194304 bytes), and GET http://{addr}/v2/team/app/manifests/v1 {seen_text}"
            )) && msg.contains("check that the reference names an image"),
            "{body:?}: {msg}"
        );
        assert_bounded(&seen, &body);
        assert_eq!(seen.count("GET /v2/team"), 1, "not retried");
    }
}

#[tokio::test]
async fn oversized_configs_tokens_and_error_bodies_are_cut() {
    let tmp = tempfile::tempdir().unwrap();

    // An image config (a blob fetched into memory).
    let (addr, seen) = serve(|_| vec![blob_route(Body::Chunked(100 << 20))]).await;
    let client = quick_client(tmp.path());
    let digest = digest_of(b"config");
    let err = fails("config", client.get_blob(&app_v1(addr), &digest)).await;
    let msg = err.to_string();
    assert!(
        matches!(err, Error::ResponseTooLarge { .. })
            && msg.contains(&format!(
                "an image config may be at most 4 MiB (4194304 bytes), and GET http://{addr}/v2/team/app/blobs/{digest} sent more"
            )),
        "{msg}"
    );
    assert!(seen.served() < MAX_SERVED, "{} bytes", seen.served());

    // A token response, from the realm the registry's challenge names.
    let (addr, seen) = serve(|addr| {
        let challenge = format!(r#"Bearer realm="http://{addr}/token",service="fake""#);
        vec![
            route(
                "GET",
                "/v2/team/",
                Answer::Reply(
                    401,
                    vec![("WWW-Authenticate".to_owned(), challenge)],
                    Body::Bytes(vec![]),
                ),
            ),
            route("GET", "/token", reply(200, Body::Endless)),
        ]
    })
    .await;
    let client = quick_client(tmp.path());
    let err = fails("token", client.get_manifest(&app_v1(addr))).await;
    let msg = err.to_string();
    assert!(
        matches!(err, Error::ResponseTooLarge { .. })
            && msg.contains(&format!(
                "response too large from registry `{addr}`: a token response may be at most 1 MiB (1048576 bytes), and GET http://{addr}/token sent more"
            ))
            && !msg.contains("scope"),
        "{msg}"
    );
    assert!(seen.served() < MAX_SERVED, "{} bytes", seen.served());

    // An error body: cut at 1 MiB, the status error is still the error.
    let (addr, seen) = serve(|_| vec![manifest_route(400, Body::Endless)]).await;
    let client = quick_client(tmp.path());
    let err = fails("error body", client.get_manifest(&app_v1(addr))).await;
    assert!(matches!(err, Error::Status { status: 400, .. }), "{err}");
    assert!(seen.served() < MAX_SERVED, "{} bytes", seen.served());
}

#[tokio::test]
async fn blob_downloads_stop_at_the_descriptor_size() {
    let tmp = tempfile::tempdir().unwrap();
    let digest = digest_of(b"layer");
    for (body, seen_text) in [
        (Body::Endless, "sent more".to_owned()),
        (Body::Sized(5000), "announced 5000 bytes".to_owned()),
        (
            Body::Bytes(vec![b'x'; 1001]),
            "announced 1001 bytes".to_owned(),
        ),
    ] {
        let (addr, seen) = serve(|_| vec![blob_route(body.clone())]).await;
        let client = quick_client(tmp.path());
        let target = app_v1(addr);
        let dest = tmp.path().join("blobs").join(digest.hex());
        let err = fails("blob", client.download_blob(&target, &digest, 1000, &dest)).await;
        let msg = too_large(&err, &body);
        assert!(
            msg.contains(&format!(
                "blob `{digest}` has 1000 bytes by its descriptor, and GET http://{addr}/v2/team/app/blobs/{digest} {seen_text}"
            )),
            "{body:?}: {msg}"
        );
        assert_bounded(&seen, &body);
        assert!(!dest.exists());
        // Nothing but the (empty) blob directory is left: no temp file.
        assert_eq!(
            fs_err::read_dir(dest.parent().unwrap()).unwrap().count(),
            0,
            "{body:?}"
        );
    }
}

#[tokio::test]
async fn stalled_registries_fail_after_the_read_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |err: Error, addr: SocketAddr, url: &str, what: &str| {
        let msg = err.to_string();
        assert!(matches!(err, Error::ReadTimeout { .. }), "{msg}");
        assert!(
            msg.contains(&format!(
                "registry `{addr}` stalled: {url} {what} for 300ms; check the network"
            )),
            "{msg}"
        );
    };

    // No answer at all, and an answer whose body stops: each attempt times out (a stall is
    // retried once, like a lost connection).
    for (answer, what) in [
        (Answer::Silence, "did not answer"),
        (reply(200, Body::Stall), "sent no more of its response"),
        (reply(503, Body::Stall), ""),
    ] {
        let (addr, seen) =
            serve(|_| vec![route("GET", "/v2/team/app/manifests/", answer.clone())]).await;
        let client = quick_client(tmp.path());
        let err = fails("manifest", client.get_manifest(&app_v1(addr))).await;
        if what.is_empty() {
            // A stalled error body is cut at the read timeout: the status is the error.
            assert!(matches!(err, Error::Status { status: 503, .. }), "{err}");
        } else {
            let url = format!("GET http://{addr}/v2/team/app/manifests/v1");
            check(err, addr, &url, what);
        }
        assert_eq!(seen.count("GET /v2/team"), 2, "{answer:?}: one retry");
    }

    // A blob download whose body stops.
    let (addr, _seen) = serve(|_| vec![blob_route(Body::Stall)]).await;
    let client = quick_client(tmp.path());
    let digest = digest_of(b"layer");
    let dest = tmp.path().join("blobs").join(digest.hex());
    let err = fails(
        "download",
        client.download_blob(&app_v1(addr), &digest, 1000, &dest),
    )
    .await;
    let url = format!("GET http://{addr}/v2/team/app/blobs/{digest}");
    check(err, addr, &url, "sent no more of its response");
}

#[tokio::test]
async fn stalled_uploads_fail_after_the_read_or_request_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    // 64 MiB of zeros (a sparse file), uncompressed: far more than the socket buffers hold.
    let file = sparse_file(tmp.path(), 64 << 20);
    let spec = scratch_image(vec![LayerSpec::new([(file, "/big.bin")])]);
    for (put, what, limit, setting) in [
        // The registry stops reading the body: no progress for the read timeout.
        (
            Answer::Deaf,
            "stopped taking the upload",
            "300ms",
            "read_timeout",
        ),
        // It takes the whole body and never answers: the answer may take the request timeout
        // (committing a large blob can take a while), not forever.
        (
            Answer::Silence,
            "took the whole upload but did not answer",
            "1s",
            "request_timeout",
        ),
    ] {
        let (addr, seen) = serve(|addr| {
            vec![
                upload_start_route(addr, "secret"),
                route("PUT", "/v2/team/app/blobs/uploads/", put.clone()),
            ]
        })
        .await;
        let mut opts = options(tmp.path());
        opts.request_timeout = Duration::from_secs(1);
        opts.chunk_size = 128 << 20;
        let client = RegistryClient::new(opts).unwrap();
        let target = app_v1(addr);
        let err = fails("upload", push_to(&spec, &target, &client)).await;
        let msg = err.to_string();
        assert!(
            matches!(&err, Error::ReadTimeout { setting: s, .. } if *s == setting),
            "{put:?}: {msg}"
        );
        assert!(
            msg.contains(&format!(
                "registry `{addr}` stalled: PUT http://{addr}/v2/team/app/blobs/uploads/u1 {what} for {limit}; check the network and the registry, then retry"
            )),
            "{put:?}: {msg}"
        );
        assert!(!msg.contains("secret"), "{msg}");
        assert!(seen.count("PUT") >= 2, "{put:?}: retried once per blob");
    }
}

#[tokio::test]
async fn a_slow_upload_that_keeps_moving_is_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let file = sparse_file(tmp.path(), 16 << 20);
    let spec = scratch_image(vec![LayerSpec::new([(file, "/big.bin")])]);
    let (addr, seen) = serve(|addr| {
        vec![
            upload_start_route(addr, "s"),
            route("PUT", "/v2/team/app/blobs/uploads/", Answer::SlowRead),
            route(
                "PUT",
                "/v2/team/app/manifests/",
                reply(201, Body::Bytes(vec![])),
            ),
        ]
    })
    .await;
    // The 16 MiB upload takes about 6 s, three times the read timeout: it is not cut, because
    // it keeps moving and uploads have no overall deadline.
    let mut opts = options(tmp.path());
    opts.read_timeout = Duration::from_secs(2);
    opts.request_timeout = Duration::from_secs(30);
    opts.chunk_size = 128 << 20;
    let client = RegistryClient::new(opts).unwrap();
    let target = app_v1(addr);
    tokio::time::timeout(Duration::from_secs(60), push_to(&spec, &target, &client))
        .await
        .expect("the upload finished")
        .unwrap();
    assert_eq!(seen.count("PUT /v2/team/app/blobs/uploads/"), 2, "no retry");
}

#[tokio::test]
async fn a_dripping_small_response_hits_the_request_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, seen) = serve(|_| vec![manifest_route(200, Body::Drip)]).await;
    let mut opts = options(tmp.path());
    // Bytes keep coming (no stall), but a manifest must not take forever.
    opts.read_timeout = Duration::from_secs(10);
    opts.request_timeout = Duration::from_secs(1);
    let client = RegistryClient::new(opts).unwrap();
    let target = app_v1(addr);
    let err = fails("drip", client.get_manifest(&target)).await;
    let msg = err.to_string();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "registry `{addr}` is too slow: GET http://{addr}/v2/team/app/manifests/v1 did not complete within 1s"
        )),
        "{msg}"
    );
    assert_eq!(seen.count("GET /v2/team"), 1, "not retried");
}
