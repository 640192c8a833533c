//! File sync sender: serves `moby.filesync.v1.FileSync/DiffCopy` on the session, speaking the
//! fsutil wire protocol (the daemon is the receiver).
//!
//! The daemon names the directory in the `dir-name` metadata and filters with
//! `include-patterns`, `exclude-patterns` and `followpaths` (each possibly `-encoded`); the
//! filtering happens here, on the sending side. Entries are walked depth-first, each directory
//! sorted by name (bytewise: names need not be UTF-8 and go out as raw bytes), with parent
//! directories of included paths sent lazily; `Stat.mode` carries Go `os.FileMode` bits.
//! Everything follows what buildctl v0.32.2 sends (fsutil's `filter.go`, `stat.go`,
//! `stat_unix.go`, `hardlinks.go`, `followlinks.go`, `send.go`), so that the daemon builds the
//! same layers: hard links, sockets (sent as empty regular files), devices, xattrs, uid/gid 0.
//! File data is streamed on request in 32 KiB chunks. Excluded files are never opened and
//! symlinks are sent as links, never followed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::fsutil::types::{Packet, PacketType, Stat};
use crate::proto::moby::filesync::v1::file_sync_server::FileSync;

/// Size of one DATA chunk.
const CHUNK: usize = 32 * 1024;
/// Concurrent file readers per DiffCopy call (as fsutil's sender).
const READERS: usize = 4;

/// What one local directory sent to the daemon during a build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirSyncStats {
    /// Every path announced (STAT), all DiffCopy calls of the build together.
    pub paths: BTreeSet<String>,
    /// Regular files whose content was requested and sent.
    pub files_sent: BTreeSet<String>,
    /// File content bytes sent.
    pub bytes_sent: u64,
    /// Number of DiffCopy calls for this directory.
    pub calls: u32,
}

/// Shared recorder of what was sent, per local name (`context`, `dockerfile`).
pub(crate) type SyncStats = Arc<Mutex<BTreeMap<String, DirSyncStats>>>;

/// The FileSync service of one session.
pub(crate) struct FileSyncService {
    dirs: BTreeMap<String, PathBuf>,
    stats: SyncStats,
    /// Absolute paths never sent, wherever they lie (see [`crate::BuildOptions::withheld`]).
    withheld: Vec<PathBuf>,
}

impl FileSyncService {
    pub(crate) fn new(
        dirs: BTreeMap<String, PathBuf>,
        stats: SyncStats,
        withheld: Vec<PathBuf>,
    ) -> Self {
        Self {
            dirs,
            stats,
            withheld,
        }
    }
}

/// Filter options as the daemon sends them (byte strings: Go's are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SyncRequest {
    pub(crate) dir_name: String,
    pub(crate) include_patterns: Option<Vec<Vec<u8>>>,
    pub(crate) exclude_patterns: Vec<Vec<u8>>,
    pub(crate) follow_paths: Vec<Vec<u8>>,
}

/// Go's `strconv.ParseBool` accepting `true`.
fn parse_bool_true(v: &[u8]) -> bool {
    matches!(v, b"1" | b"t" | b"T" | b"TRUE" | b"true" | b"True")
}

/// Reads all values of `key` as filesync's `decodeOpts` does: when the first value of
/// `<key>-encoded` is true, every value is `url.QueryUnescape`d (an invalid escape gives "").
fn metadata_values(md: &tonic::metadata::MetadataMap, key: &str) -> Option<Vec<Vec<u8>>> {
    let encoded = md
        .get(format!("{key}-encoded").as_str())
        .is_some_and(|v| parse_bool_true(v.as_bytes()));
    let values: Vec<Vec<u8>> = md
        .get_all(key)
        .iter()
        .map(|v| {
            if encoded {
                query_unescape(v.as_bytes()).unwrap_or_default()
            } else {
                v.as_bytes().to_vec()
            }
        })
        .collect();
    if values.is_empty() {
        None
    } else {
        Some(values)
    }
}

/// Go's `url.QueryUnescape` (`+` is a space); `None` for an invalid `%` escape.
pub(crate) fn query_unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| char::from(b).to_digit(16);
                let hi = s.get(i + 1).copied().and_then(hex)?;
                let lo = s.get(i + 2).copied().and_then(hex)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

impl SyncRequest {
    pub(crate) fn from_metadata(md: &tonic::metadata::MetadataMap) -> Self {
        let dir_name = metadata_values(md, "dir-name")
            .and_then(|v| v.into_iter().next())
            .unwrap_or_default();
        Self {
            dir_name: String::from_utf8_lossy(&dir_name).into_owned(),
            include_patterns: metadata_values(md, "include-patterns"),
            exclude_patterns: metadata_values(md, "exclude-patterns").unwrap_or_default(),
            follow_paths: metadata_values(md, "followpaths").unwrap_or_default(),
        }
    }
}

#[tonic::async_trait]
impl FileSync for FileSyncService {
    type DiffCopyStream = ReceiverStream<Result<Packet, Status>>;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let sync = SyncRequest::from_metadata(request.metadata());
        let Some(root) = self.dirs.get(&sync.dir_name).cloned() else {
            return Err(Status::not_found(format!(
                "no access allowed to dir {:?}",
                sync.dir_name
            )));
        };
        tracing::debug!(dir = %sync.dir_name, root = %root.display(), ?sync.include_patterns, ?sync.exclude_patterns, ?sync.follow_paths, "DiffCopy");
        let withheld: Vec<Vec<u8>> = self
            .withheld
            .iter()
            .filter_map(|w| w.strip_prefix(&root).ok())
            .filter(|rel| !rel.as_os_str().is_empty())
            .map(|rel| rel.as_os_str().as_bytes().to_vec())
            .collect();
        let filter = Filter::new(&root, &sync)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .withholding(withheld);
        let (tx, rx) = mpsc::channel(64);
        let incoming = request.into_inner();
        let stats = self.stats.clone();
        tokio::spawn(send_dir(
            root,
            sync.dir_name,
            Arc::new(filter),
            incoming,
            tx,
            stats,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Requestable files by stat ID: relative path (for the open check) and local path.
type FileTable = Arc<Mutex<HashMap<u32, (Vec<u8>, PathBuf)>>>;

fn packet(kind: PacketType) -> Packet {
    Packet {
        r#type: kind as i32,
        ..Packet::default()
    }
}

/// Runs one DiffCopy: walk and send stats, serve REQs, answer FIN.
async fn send_dir(
    root: PathBuf,
    dir_name: String,
    filter: Arc<Filter>,
    mut incoming: Streaming<Packet>,
    tx: mpsc::Sender<Result<Packet, Status>>,
    stats: SyncStats,
) {
    let files: FileTable = Arc::default();
    {
        let mut all = stats.lock().expect("stats lock");
        all.entry(dir_name.clone()).or_default().calls += 1;
    }
    let read_root: Arc<Path> = Arc::from(root.as_path());

    // Walker: a blocking task feeding STAT packets.
    let walker = {
        let tx = tx.clone();
        let files = files.clone();
        let stats = stats.clone();
        let dir_name = dir_name.clone();
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || {
            let mut id: u32 = 0;
            let mut emit = |stat: Stat, path: PathBuf| {
                if stat.mode & MODE_TYPE == 0 {
                    files
                        .lock()
                        .expect("files lock")
                        .insert(id, (stat.path.clone(), path));
                }
                stats
                    .lock()
                    .expect("stats lock")
                    .entry(dir_name.clone())
                    .or_default()
                    .paths
                    .insert(String::from_utf8_lossy(&stat.path).into_owned());
                id += 1;
                let p = Packet {
                    r#type: PacketType::PacketStat as i32,
                    stat: Some(stat),
                    ..Packet::default()
                };
                tx.blocking_send(Ok(p)).is_ok()
            };
            let result = walk(&root, &filter, &mut emit);
            match result {
                Ok(()) => {
                    // End of stats: a STAT packet without a stat.
                    let _ = tx.blocking_send(Ok(packet(PacketType::PacketStat)));
                    Ok(())
                }
                Err(err) => {
                    let msg = format!("walking `{}`: {err}", root.display());
                    let mut p = packet(PacketType::PacketErr);
                    p.data = msg.clone().into_bytes();
                    let _ = tx.blocking_send(Ok(p));
                    Err(msg)
                }
            }
        })
    };

    let readers = Arc::new(Semaphore::new(READERS));
    let mut tasks = tokio::task::JoinSet::new();
    let outcome: Result<(), Status> = loop {
        let msg = match incoming.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break Err(Status::cancelled("receiver closed the stream before FIN")),
            Err(recv_error) => break Err(recv_error),
        };
        match PacketType::try_from(msg.r#type) {
            Ok(PacketType::PacketReq) => {
                // A finished task keeps its memory until it is joined.
                while tasks.try_join_next().is_some() {}
                // As fsutil: an ID is served once.
                let Some((rel, path)) = files.lock().expect("files lock").remove(&msg.id) else {
                    break Err(Status::invalid_argument(format!(
                        "invalid file id {}",
                        msg.id
                    )));
                };
                // The permit is taken before the task exists: BuildKit asks for every file at
                // once, and a task waiting for its turn costs a kilobyte (50k files: ~50 MB).
                // Not reading further requests meanwhile is safe: the receiver sends them apart
                // from reading the data it is sent.
                let Ok(permit) = readers.clone().acquire_owned().await else {
                    break Err(Status::internal("file readers closed"));
                };
                let tx = tx.clone();
                let stats = stats.clone();
                let dir_name = dir_name.clone();
                let filter = filter.clone();
                let read_root = read_root.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let allowed = filter.open_allowed(&rel);
                    match send_file(msg.id, &read_root, &rel, allowed, &tx).await {
                        Ok(n) => {
                            let mut all = stats.lock().expect("stats lock");
                            let d = all.entry(dir_name).or_default();
                            d.bytes_sent += n;
                            d.files_sent
                                .insert(String::from_utf8_lossy(&rel).into_owned());
                        }
                        Err(err) => {
                            let mut p = packet(PacketType::PacketErr);
                            p.data = format!("reading `{}`: {err}", path.display()).into_bytes();
                            let _ = tx.send(Ok(p)).await;
                        }
                    }
                });
            }
            Ok(PacketType::PacketFin) => {
                while tasks.join_next().await.is_some() {}
                let _ = tx.send(Ok(packet(PacketType::PacketFin))).await;
                break Ok(());
            }
            Ok(PacketType::PacketErr) => {
                break Err(Status::aborted(format!(
                    "receiver error: {}",
                    String::from_utf8_lossy(&msg.data)
                )));
            }
            // fsutil's sender ignores anything else.
            _ => {}
        }
    };
    tasks.abort_all();
    let walk_outcome = walker.await;
    match outcome {
        Ok(()) => {}
        Err(failure) => {
            tracing::debug!(dir = %dir_name, %failure, "DiffCopy ended with an error");
            let _ = tx.send(Err(failure)).await;
        }
    }
    if let Ok(Err(msg)) = walk_outcome {
        tracing::warn!(dir = %dir_name, "{msg}");
    }
}

/// Streams one file as DATA chunks followed by an empty DATA; returns the bytes sent. As
/// fsutil's `sendFile`, a file that may not or cannot be opened (refused by the open check, a
/// socket, unreadable, gone) is sent empty: only the final empty DATA.
async fn send_file(
    id: u32,
    root: &Arc<Path>,
    rel: &[u8],
    allowed: bool,
    tx: &mpsc::Sender<Result<Packet, Status>>,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    let path = os_path(root, rel);
    // Opened beneath the root, one component at a time, never through a symlink: the walk saw
    // a regular file here; if it, or a directory on its way, was swapped for a symlink since,
    // nothing outside the context is read: the file is sent empty.
    let opened = if allowed {
        let root = Arc::clone(root);
        let rel = Path::new(OsStr::from_bytes(rel)).to_path_buf();
        tokio::task::spawn_blocking(move || fastbuild_oci::beneath::open_beneath(&root, &rel))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map(tokio::fs::File::from_std)
    } else {
        Err(std::io::Error::other(
            "refused by the include/exclude patterns",
        ))
    };
    let mut file = match opened {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(path = %path.display(), "sending an empty file: cannot open it: {e}");
            None
        }
    };
    while let Some(f) = file.as_mut() {
        let mut buf = vec![0u8; CHUNK];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        total += n as u64;
        let p = Packet {
            r#type: PacketType::PacketData as i32,
            id,
            data: buf,
            ..Packet::default()
        };
        if tx.send(Ok(p)).await.is_err() {
            return Err(std::io::Error::other("the DiffCopy stream closed"));
        }
    }
    let p = Packet {
        r#type: PacketType::PacketData as i32,
        id,
        ..Packet::default()
    };
    tx.send(Ok(p))
        .await
        .map_err(|_| std::io::Error::other("the DiffCopy stream closed"))?;
    Ok(total)
}

mod scan;
mod walk;
pub use scan::{ScannedEntry, scan_dir};
#[allow(clippy::wildcard_imports)]
pub(crate) use walk::*;

#[cfg(test)]
mod tests;
