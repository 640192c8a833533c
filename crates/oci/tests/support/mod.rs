//! What the hand-rolled registries of these tests share: reading a request's head off the
//! socket, the digest of bytes, the client options and references they are reached with.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fastbuild_oci::{
    BaseImage, Compression, Error, ImageSpec, LayerSpec, PushResult, Reference, RegistryClient,
    RegistryOptions, RetryPolicy, Target, build_and_push,
};
use sha2::Digest as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The request line and headers (names lower-cased) of one request.
pub struct Head {
    pub method: String,
    pub target: String,
    pub headers: HashMap<String, String>,
}

impl Head {
    /// `Content-Length`, 0 when absent or not a number.
    pub fn content_length(&self) -> usize {
        self.headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads the next request's head; `None` when the connection ends first. A TLS ClientHello
/// (the client probing for HTTPS) is answered like a plain-HTTP server does, and ends it.
pub async fn read_head(
    r: &mut (impl AsyncBufRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
) -> Option<Head> {
    let buf = r.fill_buf().await.ok()?;
    if buf.first() == Some(&0x16) {
        let _ = w.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
        return None;
    }
    let mut line = String::new();
    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Some(Head {
        method,
        target,
        headers,
    })
}

/// `sha256:<hex>` of `b`.
pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// No Docker config (a path in `dir` that does not exist), quick retries: at most
/// `max_attempts`, backing off 5 to 20 ms.
pub fn quick_options(dir: &Path, max_attempts: u32) -> RegistryOptions {
    RegistryOptions {
        docker_config: Some(dir.join("none")),
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        },
        ..RegistryOptions::default()
    }
}

/// `ADDR/team/app:v1`, the image every test pushes or reads.
pub fn app_v1(addr: impl std::fmt::Display) -> Reference {
    format!("{addr}/team/app:v1").parse().unwrap()
}

/// A linux/amd64 image of `layers` on scratch, uncompressed.
pub fn scratch_image(layers: Vec<LayerSpec>) -> ImageSpec {
    ImageSpec {
        base: BaseImage::Scratch,
        platforms: vec!["linux/amd64".parse().unwrap()],
        layers,
        compression: Some(Compression::None),
        ..ImageSpec::default()
    }
}

/// A sparse file of `len` zero bytes at `dir/big.bin`.
pub fn sparse_file(dir: &Path, len: u64) -> PathBuf {
    let file = dir.join("big.bin");
    fs_err::File::create(&file).unwrap().set_len(len).unwrap();
    file
}

/// Pushes `spec` to `target` with `client`.
pub async fn push_to(
    spec: &ImageSpec,
    target: &Reference,
    client: &RegistryClient,
) -> Result<PushResult, Error> {
    build_and_push(spec, &Target::Registry(target.clone()), client).await
}
