//! Blobs: existence checks, cross-repository mounts, uploads (monolithic up to the chunk size,
//! `PATCH` chunks above, restarted on retriable failures, verified against the local digest) and
//! downloads (bounded by the descriptor's size, hashed on the way).

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, Response};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use url::Url;

use super::request::{Progress, Req, check_digest_header};
use super::{BlobOutcome, MAX_CONFIG_BYTES, RegistryClient, Repo};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;

/// Where blob bytes come from for an upload.
#[derive(Clone, Debug)]
pub(crate) enum BlobData {
    File(PathBuf),
    Bytes(bytes::Bytes),
    /// Streamed from another repository or registry as the upload takes it (a copy).
    Remote(Arc<crate::copy::RemoteBlob>),
}

impl BlobData {
    /// Bytes `start..start + len` as a request body that reports each piece the connection
    /// takes to `progress`.
    pub(super) fn body(&self, start: u64, len: u64, progress: &Progress) -> Result<reqwest::Body> {
        const PIECE: usize = 64 * 1024;
        progress.expect_body(len);
        let progress = progress.clone();
        let stream = match self {
            Self::Bytes(b) => {
                let b = b.slice(start as usize..(start + len) as usize);
                let pieces: Vec<std::io::Result<bytes::Bytes>> = (0..b.len())
                    .step_by(PIECE)
                    .map(|at| Ok(b.slice(at..b.len().min(at + PIECE))))
                    .collect();
                futures::stream::iter(pieces).boxed()
            }
            Self::File(path) => {
                let mut f =
                    fs_err::File::open(path).map_err(|e| Error::io("open a blob for upload", e))?;
                f.seek(SeekFrom::Start(start))
                    .map_err(|e| Error::io("seek in a blob for upload", e))?;
                let f = tokio::fs::File::from_std(f.into_parts().0);
                tokio_util::io::ReaderStream::with_capacity(f.take(len), PIECE).boxed()
            }
            Self::Remote(remote) => crate::copy::RemoteBlob::body(remote, start, len),
        };
        Ok(reqwest::Body::wrap_stream(stream.inspect(move |piece| {
            progress.took(piece.as_ref().map_or(0, bytes::Bytes::len));
        })))
    }
}

impl RegistryClient {
    /// Whether the blob exists in the repository.
    pub(crate) async fn blob_exists(&self, repo: &Repo, digest: &Digest) -> Result<bool> {
        let url = self.url(repo, &format!("blobs/{digest}")).await?;
        let head = (repo, &Method::HEAD, &url);
        self.call("check a blob", head, Ok, |req, resp| async move {
            Ok(self.present(req, resp).await?.is_some())
        })
        .await
    }

    /// Tries a cross-repository mount; `Ok(None)` when mounted, `Ok(Some(location))` when the
    /// registry started an ordinary upload instead.
    pub(crate) async fn mount_blob(
        &self,
        repo: &Repo,
        digest: &Digest,
        from: &str,
    ) -> Result<Option<Url>> {
        let mut url = self.url(repo, "blobs/uploads/").await?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let empty = |rb: reqwest::RequestBuilder| Ok(rb.header(CONTENT_LENGTH, 0));
        let post = (repo, &Method::POST, &url);
        self.call("mount a blob", post, empty, |req, resp| async move {
            match resp.status().as_u16() {
                201 => {
                    let what = format!("mounted blob in `{}`", repo.name);
                    check_digest_header(&resp, digest, &what)?;
                    Ok(None)
                }
                202 => Ok(Some(self.location(repo, &resp, req.url).await?)),
                _ => Err(self.status_error(req.method, req.url, resp).await),
            }
        })
        .await
    }

    /// Opens an upload session (`POST …/blobs/uploads/`) and returns where to send the bytes.
    pub(crate) async fn start_upload(&self, repo: &Repo) -> Result<Url> {
        let url = self.url(repo, "blobs/uploads/").await?;
        let req = Req {
            registry: &repo.host,
            method: &Method::POST,
            url: &url,
        };
        self.within_deadline(req, async {
            let resp = self
                .send(repo, Method::POST, &url, |rb| {
                    Ok(rb.header(CONTENT_LENGTH, 0))
                })
                .await?;
            if resp.status().as_u16() != 202 {
                return Err(self.status_error(&Method::POST, &url, resp).await);
            }
            self.location(repo, &resp, &url).await
        })
        .await
    }

    /// Cancels an upload session that will not be used (`DELETE` on its location), so the
    /// registry need not wait for its own clean-up. Best effort: a failure is only logged.
    pub(crate) async fn cancel_upload(&self, repo: &Repo, location: &Url) {
        let req = Req {
            registry: &repo.host,
            method: &Method::DELETE,
            url: location,
        };
        let outcome = self
            .within_deadline(req, async {
                let resp = self.send(repo, Method::DELETE, location, Ok).await?;
                match resp.status().as_u16() {
                    200..=299 | 404 => Ok(()),
                    _ => Err(self.status_error(&Method::DELETE, location, resp).await),
                }
            })
            .await;
        if let Err(error) = outcome {
            tracing::debug!(%error, "an unused upload session was not cancelled");
        }
    }

    /// Uploads a blob (monolithic up to `chunk_size`, chunked above), restarting the upload
    /// session on retriable failures. `started` is a session already opened (by a mount).
    pub(crate) async fn upload_blob(
        &self,
        repo: &Repo,
        digest: &Digest,
        size: u64,
        data: &BlobData,
        started: Option<Url>,
    ) -> Result<u64> {
        let started = std::sync::Mutex::new(started);
        let chunk = self.inner.options.chunk_size.max(1);
        self.with_retry("upload a blob", |_| {
            let first = started.lock().expect("not poisoned").take();
            async move {
                let mut location = match first {
                    Some(l) => l,
                    None => self.start_upload(repo).await?,
                };
                let mut final_body = None;
                if size <= chunk {
                    final_body = Some((0, size));
                } else {
                    let mut offset = 0;
                    while offset < size {
                        let len = chunk.min(size - offset);
                        let url = location.clone();
                        let progress = Progress::new();
                        let resp = self
                            .send_upload(repo, Method::PATCH, &url, &progress, |rb| {
                                Ok(rb
                                    .header(CONTENT_TYPE, "application/octet-stream")
                                    .header(CONTENT_LENGTH, len)
                                    .header(
                                        "content-range",
                                        format!("{}-{}", offset, offset + len - 1),
                                    )
                                    .body(data.body(offset, len, &progress)?))
                            })
                            .await?;
                        if resp.status().as_u16() != 202 {
                            return Err(self.status_error(&Method::PATCH, &url, resp).await);
                        }
                        location = self.location(repo, &resp, &url).await?;
                        offset += len;
                    }
                }
                let mut url = location;
                url.query_pairs_mut()
                    .append_pair("digest", &digest.to_string());
                let progress = Progress::new();
                let resp = self
                    .send_upload(repo, Method::PUT, &url, &progress, |rb| {
                        let rb = rb.header(CONTENT_TYPE, "application/octet-stream");
                        Ok(match final_body {
                            Some((start, len)) => rb
                                .header(CONTENT_LENGTH, len)
                                .body(data.body(start, len, &progress)?),
                            None => rb.header(CONTENT_LENGTH, 0),
                        })
                    })
                    .await?;
                if resp.status().as_u16() != 201 {
                    return Err(self.status_error(&Method::PUT, &url, resp).await);
                }
                check_digest_header(&resp, digest, &format!("blob uploaded to `{}`", repo.name))?;
                Ok(size)
            }
        })
        .await
    }

    /// Ensures the blob is in `repo`: skip if present, else mount from `mount_from` (same
    /// registry), else upload from `data`.
    /// The first steps of sending a blob: `Ok(Skipped)` when the target has it, `Ok(Mounted)`
    /// when `mount_from` (a repository of the same registry) lent it; otherwise `Err` with the
    /// upload a refused mount started, if any, to send the bytes to.
    pub(crate) async fn present_or_mounted(
        &self,
        repo: &Repo,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<std::result::Result<BlobOutcome, Option<Url>>> {
        if self.blob_exists(repo, digest).await? {
            tracing::debug!(%digest, repo = repo.name, "blob already present");
            return Ok(Ok(BlobOutcome::Skipped));
        }
        if let Some(from) = mount_from {
            return Ok(match self.mount_blob(repo, digest, from).await? {
                None => {
                    tracing::debug!(%digest, from, "blob mounted");
                    Ok(BlobOutcome::Mounted)
                }
                Some(location) => Err(Some(location)),
            });
        }
        Ok(Err(None))
    }

    pub(crate) async fn push_blob(
        &self,
        repo: &Repo,
        digest: &Digest,
        size: u64,
        data: &BlobData,
        mount_from: Option<&str>,
    ) -> Result<BlobOutcome> {
        let started = match self.present_or_mounted(repo, digest, mount_from).await? {
            Ok(done) => return Ok(done),
            Err(started) => started,
        };
        let n = self.upload_blob(repo, digest, size, data, started).await?;
        tracing::debug!(%digest, size, "blob uploaded");
        Ok(BlobOutcome::Uploaded(n))
    }

    /// Starts downloading a blob of `size` bytes (its descriptor's) from `source`'s repository:
    /// the response, checked to be a 200 not announcing more than `size` bytes, and its URL (for
    /// [`Self::blob_piece`]). For streamed copies; [`Self::download_blob`] stores one in a file.
    pub(crate) async fn open_blob(
        &self,
        source: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<(Response, Url)> {
        let repo = Repo::pull(source);
        let url = self.url(&repo, &format!("blobs/{digest}")).await?;
        let resp = self.send(&repo, Method::GET, &url, Ok).await?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(&Method::GET, &url, resp).await);
        }
        if let Some(n) = resp.content_length()
            && n > size
        {
            let req = Req {
                registry: &repo.host,
                method: &Method::GET,
                url: &url,
            };
            return Err(req.too_large(
                format!("blob `{digest}` has {size} bytes by its descriptor"),
                Some(n),
                "The registry serves other content than the image's manifest describes: check \
                 the image and its registry.",
            ));
        }
        Ok((resp, url))
    }

    /// The next piece of a blob opened with [`Self::open_blob`]; `None` at its end. Nothing for
    /// the read timeout is an [`Error::ReadTimeout`].
    pub(crate) async fn blob_piece(
        &self,
        registry: &str,
        url: &Url,
        resp: &mut Response,
    ) -> Result<Option<bytes::Bytes>> {
        let req = Req {
            registry,
            method: &Method::GET,
            url,
        };
        self.next_chunk(req, resp).await
    }

    /// Fetches a small blob (an image config: at most 4 MiB) into memory, verifying its digest.
    pub async fn get_blob(&self, reference: &Reference, digest: &Digest) -> Result<Vec<u8>> {
        let repo = Repo::pull(reference);
        let url = self.url(&repo, &format!("blobs/{digest}")).await?;
        let get = (&repo, &Method::GET, &url);
        let bytes = self
            .call("fetch a blob", get, Ok, |req, resp| async move {
                if resp.status().as_u16() != 200 {
                    return Err(self.status_error(req.method, req.url, resp).await);
                }
                let advice = "Real image configs are a few KiB: check that the image's manifest \
                              and registry are the ones meant.";
                self.read_capped(req, resp, MAX_CONFIG_BYTES, "an image config", advice)
                    .await
            })
            .await?;
        Digest::of(&bytes).check(Some(digest), || {
            format!("blob of `{}`", reference.repository_name())
        })?;
        Ok(bytes)
    }

    /// Streams a blob of `size` bytes (its descriptor's) to `dest` (atomically, after verifying
    /// its digest); returns its size. A response announcing or sending more than `size` bytes is
    /// refused without reading on.
    pub async fn download_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        dest: &Path,
    ) -> Result<u64> {
        let repo = Repo::pull(reference);
        let url = self.url(&repo, &format!("blobs/{digest}")).await?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs_err::create_dir_all(dir).map_err(|e| Error::io("create the blob cache", e))?;
        let req = Req {
            registry: &repo.host,
            method: &Method::GET,
            url: &url,
        };
        let expected = || format!("blob `{digest}` has {size} bytes by its descriptor");
        let advice = "The registry serves other content than the image's manifest describes: \
                      check the image and its registry.";
        let expected_size = size;
        self.with_retry("download a blob", |_| async {
            let mut resp = self.send(&repo, Method::GET, &url, Ok).await?;
            if resp.status().as_u16() != 200 {
                return Err(self.status_error(&Method::GET, &url, resp).await);
            }
            if let Some(n) = resp.content_length()
                && n > expected_size
            {
                return Err(req.too_large(expected(), Some(n), advice));
            }
            // Base layers are downloaded straight into OCI layouts too: 0644 like their other files.
            let tmp = crate::publish::layout_temp_file(dir)
                .map_err(|e| Error::io(format!("create a temp file in `{}`", dir.display()), e))?;
            let mut file = tokio::fs::File::from_std(
                tmp.as_file()
                    .try_clone()
                    .map_err(|e| Error::io("open a download temp file", e))?,
            );
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = self.next_chunk(req, &mut resp).await? {
                if size + chunk.len() as u64 > expected_size {
                    return Err(req.too_large(expected(), None, advice));
                }
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io(format!("write `{}`", tmp.path().display()), e))?;
            }
            file.flush()
                .await
                .map_err(|e| Error::io(format!("write `{}`", tmp.path().display()), e))?;
            Digest::from_hasher(hasher).check(Some(digest), || {
                format!("blob downloaded from `{}`", reference.repository_name())
            })?;
            tmp.persist(dest)
                .map_err(|e| Error::io(format!("store `{}`", dest.display()), e.error))?;
            Ok(size)
        })
        .await
    }
}
