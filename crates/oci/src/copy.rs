//! Registry-to-registry image copy by digest ([`RegistryClient::copy_image`]): the index, every
//! manifest it lists, their configs and layers.
//!
//! Blobs the target repository already has are skipped (`HEAD`). Inside one registry the rest
//! are mounted from the source repository (no bytes move); between registries each is streamed —
//! the download feeds the upload piece by piece as the connection takes it, never held whole in
//! memory or written to disk — and hashed on the way, so a source serving other bytes than its
//! digest fails the upload before the registry commits it. Manifests are `PUT` with the exact
//! bytes fetched, children before the index that lists them, so their digests are unchanged;
//! the target's copies are read back and their sha256 checked against the digests.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use sha2::{Digest as _, Sha256};

use crate::client::{BlobData, BlobOutcome, FetchedManifest, RegistryClient, Repo};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::media;
use crate::publish::PushStats;
use crate::reference::Reference;

/// Levels of indexes followed below the top one (an index of indexes is one).
const MAX_DEPTH: usize = 4;

/// The outcome of [`RegistryClient::copy_image`].
#[derive(Clone, Debug)]
pub struct CopyResult {
    /// Digest of the top manifest or index: the same at the source and the target.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// `registry/repository@sha256:…` at the target.
    pub reference: String,
    /// The tag it was given at the target, if any.
    pub tag: Option<String>,
    /// Manifests copied: the top one, and for an index every manifest it lists.
    pub manifests: usize,
    /// Layers not copied because they are non-distributable (foreign layers, fetched by the
    /// runtime from their own URLs), as `crane copy` leaves them by default.
    pub foreign_layers: usize,
    /// Blob transfer counters at the target.
    pub stats: PushStats,
}

/// What an image consists of, as found under its top manifest.
#[derive(Default)]
struct Walk {
    /// Every manifest and index, each listed before any index that refers to it.
    manifests: Vec<FetchedManifest>,
    /// Every distributable blob once: digest → size.
    blobs: BTreeMap<Digest, u64>,
    foreign_layers: usize,
}

fn json_err(what: String) -> impl FnOnce(serde_json::Error) -> Error {
    move |source| Error::Json { what, source }
}

/// `(digest, size, mediaType)` of a descriptor.
fn descriptor(v: &serde_json::Value, whose: &Reference) -> Result<(Digest, u64, String)> {
    let bad = |reason: &str| Error::Manifest {
        reference: whose.to_string(),
        reason: format!("a descriptor {reason}: {v}"),
    };
    let digest = v["digest"]
        .as_str()
        .ok_or_else(|| bad("has no digest"))?
        .parse::<Digest>()?;
    let size = v["size"].as_u64().ok_or_else(|| bad("has no size"))?;
    let media_type = v["mediaType"].as_str().unwrap_or_default().to_owned();
    Ok((digest, size, media_type))
}

/// Whether a layer is non-distributable (Windows base layers and the like).
fn is_foreign(media_type: &str) -> bool {
    media_type.contains(".foreign.") || media_type.contains("nondistributable")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Image,
}

fn kind_of(m: &FetchedManifest, v: &serde_json::Value, whose: &Reference) -> Result<Kind> {
    match m.media_type.as_str() {
        media::OCI_INDEX | media::DOCKER_LIST => Ok(Kind::Index),
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => Ok(Kind::Image),
        other if v["manifests"].is_array() && v["layers"].is_null() => {
            tracing::debug!(
                media_type = other,
                "taking a manifest with `manifests` as an index"
            );
            Ok(Kind::Index)
        }
        other if v["layers"].is_array() && v["config"].is_object() => {
            tracing::debug!(
                media_type = other,
                "taking a manifest with `layers` as an image"
            );
            Ok(Kind::Image)
        }
        other => Err(Error::Manifest {
            reference: whose.to_string(),
            reason: format!(
                "media type `{other}` is neither an image manifest nor an index (schema 1 \
                 manifests cannot be copied by digest); re-push the image with a current client"
            ),
        }),
    }
}

impl RegistryClient {
    /// Copies the image `source` (by digest, or by tag: then the digest it has now) to `target`'s
    /// repository, tagged with `target`'s tag when it has one. Works for single images and
    /// multi-platform indexes (nested ones too); attestation manifests in an index come along
    /// like any other manifest.
    ///
    /// Blobs present at the target are skipped; within one registry the others are mounted from
    /// the source repository, between registries they are streamed (bounded memory, hashed on
    /// the way). Manifests are pushed unchanged, children first and the top one last, then read
    /// back from the target and checked against their digests: the copy has the source's
    /// digest or the call fails. Interrupted, it can be run again and moves only what is missing.
    pub async fn copy_image(&self, source: &Reference, target: &Reference) -> Result<CopyResult> {
        let top = self.require_manifest(source, image_not_found).await?;
        let digest = top.digest.clone();
        digest.check(target.digest.as_ref(), || {
            format!("the copy of `{source}` to `{target}`")
        })?;
        let source = source.with_digest(digest.clone());
        let (media_type, size) = (top.media_type.clone(), top.bytes.len() as u64);
        let walk = self.walk(&source, top).await?;
        tracing::debug!(
            %digest,
            manifests = walk.manifests.len(),
            blobs = walk.blobs.len(),
            "copying"
        );

        let repo = Repo::push(target, Some(&source));
        let same_registry = source.api_host() == target.api_host();
        let mount_from = (same_registry && source.repository != target.repository)
            .then_some(source.repository.as_str());
        let parallel = self.options().max_concurrent_uploads.max(1);
        let (repo_ref, source_ref) = (&repo, &source);
        // Boxed with an explicit `Send` bound, as in `publish` (rustc's higher-ranked lifetime
        // limitation would otherwise make the whole future `!Send`).
        let copies: Vec<futures::future::BoxFuture<'_, Result<BlobOutcome>>> = walk
            .blobs
            .iter()
            .map(|(digest, size)| {
                let fut: futures::future::BoxFuture<'_, Result<BlobOutcome>> =
                    Box::pin(self.copy_blob(source_ref, repo_ref, digest, *size, mount_from));
                fut
            })
            .collect();
        let outcomes: Vec<BlobOutcome> = futures::stream::iter(copies)
            .buffer_unordered(parallel)
            .try_collect()
            .await?;
        let stats = PushStats::from_outcomes(outcomes);

        let (top, children) = walk
            .manifests
            .split_last()
            .expect("the walk holds the top manifest");
        for m in children {
            let media_type = manifest_type(m, &source)?;
            self.put_manifest(
                &repo,
                &m.digest.to_string(),
                media_type,
                &m.bytes.clone().into(),
            )
            .await?;
        }
        let top_reference = target.tag.clone().unwrap_or_else(|| top.digest.to_string());
        self.put_manifest(
            &repo,
            &top_reference,
            manifest_type(top, &source)?,
            &top.bytes.clone().into(),
        )
        .await?;

        // Read back: what the target serves under each digest must hash to it.
        for m in &walk.manifests {
            let at_target = target.with_digest(m.digest.clone());
            let served = self.require_manifest(&at_target, image_not_found).await?;
            if served.bytes != m.bytes {
                return Err(Error::DigestMismatch {
                    what: format!("manifest `{at_target}` served after the copy"),
                    expected: m.digest.to_string(),
                    actual: served.digest.to_string(),
                });
            }
        }
        let reference = target.with_digest(digest.clone()).to_string();
        tracing::info!(%digest, reference, ?stats, "image copied");
        Ok(CopyResult {
            digest,
            media_type,
            size,
            reference,
            tag: target.tag.clone(),
            manifests: walk.manifests.len(),
            foreign_layers: walk.foreign_layers,
            stats,
        })
    }

    /// Fetches every manifest under `top` (level by level) and gathers their blobs.
    async fn walk(&self, source: &Reference, top: FetchedManifest) -> Result<Walk> {
        let mut walk = Walk::default();
        let mut levels: Vec<Vec<FetchedManifest>> = Vec::new();
        let mut seen: std::collections::BTreeSet<Digest> = [top.digest.clone()].into();
        let mut level = vec![top];
        for depth in 0.. {
            let mut next = Vec::new();
            for m in &level {
                let whose = source.with_digest(m.digest.clone());
                let v: serde_json::Value = serde_json::from_slice(&m.bytes)
                    .map_err(json_err(format!("the manifest `{whose}`")))?;
                match kind_of(m, &v, &whose)? {
                    Kind::Index => {
                        for d in v["manifests"].as_array().into_iter().flatten() {
                            let (digest, size, _) = descriptor(d, &whose)?;
                            if !seen.insert(digest.clone()) {
                                continue;
                            }
                            if depth == MAX_DEPTH {
                                return Err(Error::Manifest {
                                    reference: whose.to_string(),
                                    reason: format!(
                                        "indexes nest more than {MAX_DEPTH} levels deep"
                                    ),
                                });
                            }
                            let child_ref = source.with_digest(digest);
                            let child =
                                self.fetch_manifest(&child_ref).await?.ok_or_else(|| {
                                    Error::ImageNotFound {
                                        reference: child_ref.to_string(),
                                    }
                                })?;
                            if child.bytes.len() as u64 != size {
                                return Err(Error::Manifest {
                                    reference: child_ref.to_string(),
                                    reason: format!(
                                        "it has {} bytes, its descriptor in `{whose}` says {size}",
                                        child.bytes.len()
                                    ),
                                });
                            }
                            next.push(child);
                        }
                    }
                    Kind::Image => {
                        let layers = v["layers"].as_array().into_iter().flatten();
                        for d in std::iter::once(&v["config"]).chain(layers) {
                            let (digest, size, media_type) = descriptor(d, &whose)?;
                            if is_foreign(&media_type) {
                                walk.foreign_layers += 1;
                                continue;
                            }
                            walk.blobs.insert(digest, size);
                        }
                    }
                }
            }
            levels.push(level);
            if next.is_empty() {
                break;
            }
            level = next;
        }
        walk.manifests = levels.into_iter().rev().flatten().collect();
        Ok(walk)
    }

    /// One blob into `repo`: present → skipped; same registry → mounted from `mount_from`;
    /// else streamed from `source` (into the upload session a refused mount opened, if any).
    async fn copy_blob(
        &self,
        source: &Reference,
        repo: &Repo,
        digest: &Digest,
        size: u64,
        mount_from: Option<&str>,
    ) -> Result<BlobOutcome> {
        let started = match self.present_or_mounted(repo, digest, mount_from).await? {
            Ok(done) => return Ok(done),
            Err(started) => started,
        };
        let remote = Arc::new(RemoteBlob::new(
            self.clone(),
            source.clone(),
            digest.clone(),
            size,
        ));
        let data = BlobData::Remote(Arc::clone(&remote));
        match self.upload_blob(repo, digest, size, &data, started).await {
            Ok(n) => {
                tracing::debug!(%digest, size, "blob streamed");
                Ok(BlobOutcome::Uploaded(n))
            }
            // The source's own failure says more than the upload's broken body.
            Err(e) => Err(remote.take_fault().unwrap_or(e)),
        }
    }
}

/// The media type to `PUT` a fetched manifest with.
fn manifest_type<'a>(m: &'a FetchedManifest, source: &Reference) -> Result<&'a str> {
    if m.media_type.is_empty() {
        return Err(Error::Manifest {
            reference: source.with_digest(m.digest.clone()).to_string(),
            reason: "the registry gave no media type for it (no Content-Type, no `mediaType`)"
                .to_owned(),
        });
    }
    Ok(&m.media_type)
}

/// A blob read from its source registry while it is uploaded elsewhere: upload bodies take
/// their bytes from one download, in order. An upload attempt that starts over (at offset 0)
/// starts a new download; the bytes are hashed as they are handed out and the last piece is
/// withheld when the digest does not match, so the target never commits wrong content.
pub(crate) struct RemoteBlob {
    client: RegistryClient,
    source: Reference,
    digest: Digest,
    size: u64,
    pump: tokio::sync::Mutex<Pump>,
    /// The first failure of the source (kept to report it instead of the upload's error).
    fault: std::sync::Mutex<Option<Error>>,
}

struct Pump {
    /// The download and its URL.
    open: Option<(reqwest::Response, url::Url)>,
    /// Bytes handed out from it.
    offset: u64,
    /// Received but not yet handed out (a piece larger than the body that asked).
    leftover: bytes::Bytes,
    hasher: Sha256,
    /// The source failed in a way a new download will not fix.
    failed: bool,
}

impl std::fmt::Debug for RemoteBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBlob")
            .field("source", &self.source.to_string())
            .field("digest", &self.digest)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RemoteBlob {
    fn new(client: RegistryClient, source: Reference, digest: Digest, size: u64) -> Self {
        Self {
            client,
            source,
            digest,
            size,
            pump: tokio::sync::Mutex::new(Pump {
                open: None,
                offset: 0,
                leftover: bytes::Bytes::new(),
                hasher: Sha256::new(),
                failed: false,
            }),
            fault: std::sync::Mutex::new(None),
        }
    }

    /// Bytes `start..start + len` of the blob as an upload body.
    pub(crate) fn body(
        remote: &Arc<Self>,
        start: u64,
        len: u64,
    ) -> BoxStream<'static, std::io::Result<bytes::Bytes>> {
        let remote = Arc::clone(remote);
        futures::stream::unfold((remote, start, len), |(remote, at, left)| async move {
            if left == 0 {
                return None;
            }
            match remote.next_piece(at, left).await {
                Ok(piece) => {
                    let n = piece.len() as u64;
                    Some((Ok(piece), (remote, at + n, left - n)))
                }
                Err(e) => {
                    let message = e.to_string();
                    remote.keep_fault(e);
                    Some((Err(std::io::Error::other(message)), (remote, at, 0)))
                }
            }
        })
        .boxed()
    }

    fn keep_fault(&self, e: Error) {
        let mut fault = self.fault.lock().expect("not poisoned");
        if fault.is_none() {
            *fault = Some(e);
        }
    }

    fn take_fault(&self) -> Option<Error> {
        self.fault.lock().expect("not poisoned").take()
    }

    fn mismatch(&self, reason: String) -> Error {
        Error::BlobMismatch {
            registry: self.source.api_host().to_owned(),
            digest: self.digest.to_string(),
            reason,
        }
    }

    /// The next piece (at most `max` bytes) of the blob at offset `at`.
    async fn next_piece(&self, at: u64, max: u64) -> Result<bytes::Bytes> {
        let mut pump = self.pump.lock().await;
        if pump.failed {
            return Err(Error::Task(format!(
                "the copy of blob `{}` stopped: its source failed",
                self.digest
            )));
        }
        let result = self.pull(&mut pump, at, max).await;
        if let Err(e) = &result {
            pump.open = None;
            pump.failed = !e.is_retriable();
        }
        result
    }

    async fn pull(&self, pump: &mut Pump, at: u64, max: u64) -> Result<bytes::Bytes> {
        if pump.open.is_none() || pump.offset != at {
            if at != 0 {
                return Err(Error::Task(format!(
                    "an upload of blob `{}` resumed at byte {at}, which a streamed copy cannot \
                     do",
                    self.digest
                )));
            }
            // A new attempt: an earlier (transient) failure of the source is behind it.
            self.fault.lock().expect("not poisoned").take();
            let opened = self
                .client
                .open_blob(&self.source, &self.digest, self.size)
                .await?;
            *pump = Pump {
                open: Some(opened),
                offset: 0,
                leftover: bytes::Bytes::new(),
                hasher: Sha256::new(),
                failed: false,
            };
        }
        let mut piece = if pump.leftover.is_empty() {
            let (resp, url) = pump.open.as_mut().expect("opened above");
            loop {
                match self
                    .client
                    .blob_piece(self.source.api_host(), url, resp)
                    .await?
                {
                    Some(p) if p.is_empty() => {}
                    Some(p) => break p,
                    None => {
                        return Err(self.mismatch(format!(
                            "the download ended after {} of its {} bytes",
                            pump.offset, self.size
                        )));
                    }
                }
            }
        } else {
            std::mem::take(&mut pump.leftover)
        };
        if piece.len() as u64 > max {
            pump.leftover = piece.split_off(max as usize);
        }
        let end = pump.offset + piece.len() as u64;
        if end > self.size {
            return Err(self.mismatch(format!(
                "the download has more than its {} bytes",
                self.size
            )));
        }
        pump.hasher.update(&piece);
        pump.offset = end;
        if end == self.size {
            let got = Digest::from_hasher(pump.hasher.clone());
            if got != self.digest {
                return Err(self.mismatch(format!("its bytes hash to `{got}`")));
            }
        }
        Ok(piece)
    }
}

/// The error of a manifest the registry does not have.
fn image_not_found(reference: String) -> Error {
    Error::ImageNotFound { reference }
}

#[cfg(test)]
mod send_tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The CLI may spawn copies on a multi-threaded runtime: the copy future must be `Send`.
    #[test]
    fn copy_image_future_is_send() {
        let client = RegistryClient::new(crate::RegistryOptions::default()).unwrap();
        let a: Reference = "127.0.0.1:1/a".parse().unwrap();
        let fut = client.copy_image(&a, &a);
        assert_send(&fut);
    }
}
