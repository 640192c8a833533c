//! The session's `moby.filesync.v1.FileSend` service: how an exporter's single-file output
//! comes back to the client. With the `oci` exporter (`tar=true`, its default) the daemon opens
//! `FileSend/DiffCopy` on the session, with metadata `buildkit-attachable-exporter-id` (the
//! exporter's index in `SolveRequest.exporters`) and `exporter-md-*` keys, streams an OCI image
//! layout tar as `BytesMessage` chunks (at most 3 MiB each), half-closes, and waits for the call
//! to end; an error status fails the export.
//!
//! Here the tar is not stored: it is unpacked into the layout directory as it arrives. Blobs
//! are checked against their names and renamed into place; `index.json` is written last,
//! merged with the one already there (entries for other images are kept) and each new entry
//! named `fb-<digest prefix>` like the native builder's layouts. Entries that are not plain
//! files or directories, or whose path would leave the directory, are refused.

use std::io::{self, Read, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::Digest as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::moby::filesync::v1::BytesMessage;
use crate::proto::moby::filesync::v1::file_send_server::FileSend;

/// The method the session advertises when it serves a file output.
pub(crate) const METHOD: &str = "/moby.filesync.v1.FileSend/DiffCopy";
/// Metadata key with the index of the exporter whose output the call carries.
const EXPORTER_ID_KEY: &str = "buildkit-attachable-exporter-id";
/// The annotation naming an image in an OCI layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest `index.json` accepted from the daemon.
const MAX_INDEX: u64 = 16 << 20;

/// Why the layout could not be written.
#[derive(Debug)]
pub(crate) struct LayoutError {
    /// What failed, on what.
    pub(crate) reason: String,
    /// The I/O error behind it, if any.
    pub(crate) source: Option<io::Error>,
}

impl LayoutError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            source: None,
        }
    }

    fn io(reason: impl Into<String>, source: io::Error) -> Self {
        Self {
            reason: reason.into(),
            source: Some(source),
        }
    }
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// What the export wrote into the layout directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LayoutWritten {
    /// Digests of the `index.json` entries that came with this export.
    pub(crate) digests: Vec<String>,
    /// Blobs written.
    pub(crate) blobs_written: usize,
    /// Blobs that were already in the layout.
    pub(crate) blobs_present: usize,
}

/// An OCI layout directory that receives the output of one exporter.
pub(crate) struct LayoutTarget {
    dir: PathBuf,
    exporter_id: usize,
    received: AtomicBool,
    outcome: Mutex<Option<Result<LayoutWritten, LayoutError>>>,
}

impl LayoutTarget {
    /// A target for exporter number `exporter_id` of the Solve request.
    pub(crate) fn new(dir: PathBuf, exporter_id: usize) -> Arc<Self> {
        Arc::new(Self {
            dir,
            exporter_id,
            received: AtomicBool::new(false),
            outcome: Mutex::new(None),
        })
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// How the transfer ended, or `None` when the daemon never finished one.
    pub(crate) fn take_outcome(&self) -> Option<Result<LayoutWritten, LayoutError>> {
        self.outcome.lock().expect("layout outcome lock").take()
    }
}

/// The `FileSend` service of a session.
pub(crate) struct FileSendService {
    pub(crate) target: Arc<LayoutTarget>,
}

#[tonic::async_trait]
impl FileSend for FileSendService {
    type DiffCopyStream = tokio_stream::Empty<Result<BytesMessage, Status>>;

    async fn diff_copy(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let id = crate::session::metadata_str(&request, EXPORTER_ID_KEY)
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let target = &self.target;
        if id != target.exporter_id {
            return Err(Status::not_found(format!("exporter {id} not found")));
        }
        if target.received.swap(true, Ordering::SeqCst) {
            return Err(Status::already_exists("target already exists"));
        }
        let mut stream = request.into_inner();
        let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(4);
        let dir = target.dir.clone();
        let unpack =
            tokio::task::spawn_blocking(move || unpack_layout(ChannelReader::new(rx), &dir));
        loop {
            match stream.message().await {
                Ok(Some(msg)) if msg.data.is_empty() => {}
                Ok(Some(msg)) => {
                    if tx.send(Ok(msg.data)).await.is_err() {
                        // The unpacker stopped (an error): it reports why below.
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!(
                            "the daemon's stream broke: {}",
                            status.message()
                        ))))
                        .await;
                    break;
                }
            }
        }
        drop(tx);
        let result = unpack
            .await
            .unwrap_or_else(|e| Err(LayoutError::new(format!("the unpacking task failed: {e}"))));
        let reply = match &result {
            Ok(written) => {
                tracing::debug!(dir = %target.dir.display(), ?written, "OCI layout received");
                Ok(Response::new(tokio_stream::empty()))
            }
            Err(e) => Err(Status::internal(format!(
                "cannot write the OCI layout `{}`: {e}",
                target.dir.display()
            ))),
        };
        *target.outcome.lock().expect("layout outcome lock") = Some(result);
        reply
    }
}

/// A blocking reader over the chunks the gRPC stream delivers.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> Self {
        Self {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..n + self.pos]);
        self.pos += n;
        Ok(n)
    }
}

/// The path of a tar entry relative to the layout, or an error if it would leave it.
fn relative_path(path: &Path) -> Result<PathBuf, LayoutError> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => rel.push(c),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(LayoutError::new(format!(
                    "the image tar has an entry `{}` outside the layout directory",
                    path.display()
                )));
            }
        }
    }
    Ok(rel)
}

/// Writes `reader` into a temp file next to `dest` and renames it into place; with
/// `expect_sha256`, refuses content whose SHA-256 differs.
fn write_file(
    reader: &mut impl Read,
    dest: &Path,
    expect_sha256: Option<&str>,
) -> Result<(), LayoutError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(parent).map_err(|e| LayoutError::io("cannot create a directory", e))?;
    let tmp = parent.join(format!(".fastbuild-tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file =
            fs_err::File::create(&tmp).map_err(|e| LayoutError::io("cannot create a file", e))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| LayoutError::io(format!("cannot read `{}`", dest.display()), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(|e| LayoutError::io("cannot write a file", e))?;
        }
        file.sync_all()
            .map_err(|e| LayoutError::io("cannot write a file", e))?;
        if let Some(expected) = expect_sha256 {
            let actual = hex(&hasher.finalize());
            if actual != expected {
                return Err(LayoutError::new(format!(
                    "blob `{}` has SHA-256 {actual}: the image tar is corrupt",
                    dest.display()
                )));
            }
        }
        fs_err::rename(&tmp, dest).map_err(|e| LayoutError::io("cannot store a file", e))
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&tmp);
    }
    result
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Unpacks an OCI layout tar into `dir` (see the module docs).
pub(crate) fn unpack_layout(
    mut reader: impl Read,
    dir: &Path,
) -> Result<LayoutWritten, LayoutError> {
    fs_err::create_dir_all(dir)
        .map_err(|e| LayoutError::io("cannot create the layout directory", e))?;
    let mut written = LayoutWritten::default();
    let mut index: Option<Vec<u8>> = None;
    let mut archive = tar::Archive::new(&mut reader);
    let entries = archive
        .entries()
        .map_err(|e| LayoutError::io("cannot read the image tar", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| LayoutError::io("cannot read the image tar", e))?;
        let path = entry
            .path()
            .map_err(|e| LayoutError::io("the image tar has an unreadable entry name", e))?
            .into_owned();
        let rel = relative_path(&path)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            fs_err::create_dir_all(dir.join(&rel))
                .map_err(|e| LayoutError::io("cannot create a directory", e))?;
            continue;
        }
        if !kind.is_file() {
            return Err(LayoutError::new(format!(
                "the image tar has an entry `{}` of type {kind:?}; only files and directories belong in an OCI layout",
                path.display()
            )));
        }
        let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
        match parts.as_slice() {
            ["index.json"] => {
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(MAX_INDEX)
                    .read_to_end(&mut bytes)
                    .map_err(|e| {
                        LayoutError::io("cannot read `index.json` from the image tar", e)
                    })?;
                index = Some(bytes);
            }
            ["blobs", algorithm, name] => {
                let dest = dir.join(&rel);
                if dest.is_file() {
                    io::copy(&mut entry, &mut io::sink())
                        .map_err(|e| LayoutError::io("cannot read the image tar", e))?;
                    written.blobs_present += 1;
                } else {
                    let expect = (*algorithm == "sha256").then_some(*name);
                    write_file(&mut entry, &dest, expect)?;
                    written.blobs_written += 1;
                }
            }
            _ => write_file(&mut entry, &dir.join(&rel), None)?,
        }
    }
    // Let the daemon finish sending (the tar's end-of-archive blocks and any padding).
    io::copy(&mut reader, &mut io::sink())
        .map_err(|e| LayoutError::io("cannot read the image tar", e))?;
    let Some(index) = index else {
        return Err(LayoutError::new(
            "the image tar has no `index.json`: it is not an OCI image layout",
        ));
    };
    written.digests = merge_index(dir, &index)?;
    Ok(written)
}

/// Merges the exported `index.json` into the one in `dir` and returns the new entries' digests.
fn merge_index(dir: &Path, exported: &[u8]) -> Result<Vec<String>, LayoutError> {
    let exported: serde_json::Value = serde_json::from_slice(exported).map_err(|e| {
        LayoutError::new(format!(
            "the image tar's `index.json` is not valid JSON: {e}"
        ))
    })?;
    let mut new_entries = exported["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if new_entries.is_empty() {
        return Err(LayoutError::new(
            "the image tar's `index.json` lists no manifest",
        ));
    }
    let mut digests = Vec::new();
    for entry in &mut new_entries {
        let Some(digest) = entry["digest"].as_str().map(str::to_owned) else {
            return Err(LayoutError::new(
                "an entry of the image tar's `index.json` has no digest",
            ));
        };
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return Err(LayoutError::new(format!(
                "the image tar's `index.json` has an invalid digest `{digest}`"
            )));
        };
        let blob = dir.join("blobs").join(algorithm).join(hex);
        if relative_path(Path::new(algorithm)).is_err()
            || relative_path(Path::new(hex)).is_err()
            || !blob.is_file()
        {
            return Err(LayoutError::new(format!(
                "the image tar's `index.json` names `{digest}`, which the tar did not contain"
            )));
        }
        if entry["annotations"][REF_NAME].as_str().is_none()
            && let Ok(parsed) = digest.parse::<fastbuild_oci::Digest>()
        {
            if !entry["annotations"].is_object() {
                entry["annotations"] = serde_json::json!({});
            }
            entry["annotations"][REF_NAME] =
                serde_json::Value::String(fastbuild_oci::default_tag(&parsed));
        }
        digests.push(digest);
    }

    let index_path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = match fs_err::read(&index_path) {
        Ok(bytes) => {
            let existing: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                LayoutError::new(format!(
                    "`{}` is not valid JSON ({e}); remove it or choose another directory",
                    index_path.display()
                ))
            })?;
            existing["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(LayoutError::io("cannot read the existing `index.json`", e)),
    };
    let new_names: Vec<&serde_json::Value> = new_entries
        .iter()
        .map(|e| &e["annotations"][REF_NAME])
        .filter(|n| !n.is_null())
        .collect();
    manifests.retain(|m| {
        let digest = m["digest"].as_str().unwrap_or_default();
        !digests.iter().any(|d| d == digest) && !new_names.contains(&&m["annotations"][REF_NAME])
    });
    manifests.extend(new_entries);
    let mut index = exported;
    index["manifests"] = serde_json::Value::Array(manifests);
    let bytes = serde_json::to_vec(&index)
        .map_err(|e| LayoutError::new(format!("cannot encode `index.json`: {e}")))?;
    write_file(&mut bytes.as_slice(), &index_path, None)?;
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(bytes: &[u8]) -> String {
        hex(&sha2::Sha256::digest(bytes))
    }

    /// A layout tar with one manifest blob (and a config blob it does not need to parse).
    fn layout_tar(manifest: &[u8], extra: &[(&str, &[u8])]) -> (Vec<u8>, String) {
        let digest = format!("sha256:{}", sha256(manifest));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": manifest.len(),
            }],
        });
        let index = serde_json::to_vec(&index).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append_data(&mut header, path, data).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add(&format!("blobs/sha256/{}", sha256(manifest)), manifest);
        for (path, data) in extra {
            add(path, data);
        }
        add("index.json", &index);
        (builder.into_inner().unwrap(), digest)
    }

    #[test]
    fn unpacks_and_names_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("layout");
        let (tar, digest) = layout_tar(b"{\"manifest\":1}", &[]);
        let written = unpack_layout(tar.as_slice(), &out).unwrap();
        assert_eq!(written.digests, vec![digest.clone()]);
        assert_eq!(written.blobs_written, 1);
        assert!(out.join("oci-layout").is_file());
        let index: serde_json::Value =
            serde_json::from_slice(&fs_err::read(out.join("index.json")).unwrap()).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], digest.as_str());
        let hex = digest.strip_prefix("sha256:").unwrap();
        assert_eq!(entry["annotations"][REF_NAME], format!("fb-{}", &hex[..12]));
        assert_eq!(
            fs_err::read(out.join("blobs/sha256").join(hex)).unwrap(),
            b"{\"manifest\":1}"
        );

        // A second image joins the first; re-exporting the first does not duplicate it.
        let (other_tar, other_digest) = layout_tar(b"{\"manifest\":2}", &[]);
        unpack_layout(other_tar.as_slice(), &out).unwrap();
        let again = unpack_layout(tar.as_slice(), &out).unwrap();
        assert_eq!(again.blobs_present, 1);
        let index: serde_json::Value =
            serde_json::from_slice(&fs_err::read(out.join("index.json")).unwrap()).unwrap();
        let digests: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(digests, vec![other_digest.as_str(), digest.as_str()]);
    }

    #[test]
    fn refuses_paths_outside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("layout");
        // `tar::Builder` refuses `..` itself, so write the name into the header by hand.
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"x"[..]).unwrap();
        let tar = builder.into_inner().unwrap();
        let err = unpack_layout(tar.as_slice(), &out).unwrap_err();
        assert!(err.reason.contains("outside the layout directory"), "{err}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn refuses_links_and_corrupt_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_link(&mut header, "blobs", "/etc").unwrap();
        let tar = builder.into_inner().unwrap();
        let err = unpack_layout(tar.as_slice(), &dir.path().join("a")).unwrap_err();
        assert!(err.reason.contains("only files and directories"), "{err}");

        let name = format!("blobs/sha256/{}", sha256(b"right"));
        let (tar, _) = layout_tar(b"{}", &[(&name, b"wrong")]);
        let err = unpack_layout(tar.as_slice(), &dir.path().join("b")).unwrap_err();
        assert!(err.reason.contains("corrupt"), "{err}");
        assert!(!dir.path().join("b").join(&name).exists());
    }

    #[test]
    fn needs_an_index_naming_blobs_it_carried() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder
            .append_data(&mut header, "oci-layout", &b"{}"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let err = unpack_layout(tar.as_slice(), &dir.path().join("a")).unwrap_err();
        assert!(err.reason.contains("no `index.json`"), "{err}");
    }
}
