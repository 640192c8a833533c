//! File sync sender: serves `moby.filesync.v1.FileSync/DiffCopy` on the session, speaking the
//! fsutil wire protocol (the daemon is the receiver).
//!
//! The daemon names the directory in the `dir-name` metadata and filters with
//! `include-patterns`, `exclude-patterns` and `followpaths` (each possibly `-encoded`); the
//! filtering happens here, on the sending side. Entries are walked depth-first, each directory
//! sorted by name, with parent directories of included paths sent lazily; `Stat.mode` carries Go
//! `os.FileMode` bits. File data is streamed on request in 32 KiB chunks. Excluded files are
//! never opened and symlinks are sent as links, never followed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::patterns::{PatternMatcher, clean_path, has_wildcards};
use crate::proto::fsutil::types::{Packet, PacketType, Stat};
use crate::proto::moby::filesync::v1::file_sync_server::FileSync;

/// Size of one DATA chunk.
const CHUNK: usize = 32 * 1024;
/// Concurrent file readers per DiffCopy call (as fsutil's sender).
const READERS: usize = 4;

// Go os.FileMode bits.
const MODE_DIR: u32 = 1 << 31;
const MODE_SYMLINK: u32 = 1 << 27;
const MODE_DEVICE: u32 = 1 << 26;
const MODE_NAMED_PIPE: u32 = 1 << 25;
const MODE_SETUID: u32 = 1 << 23;
const MODE_SETGID: u32 = 1 << 22;
const MODE_CHAR_DEVICE: u32 = 1 << 21;
const MODE_STICKY: u32 = 1 << 20;
/// `os.ModeType`: entries with any of these bits carry no data.
const MODE_TYPE: u32 = MODE_DIR
    | MODE_SYMLINK
    | MODE_NAMED_PIPE
    | (1 << 24)
    | MODE_DEVICE
    | MODE_CHAR_DEVICE
    | (1 << 19);

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
}

impl FileSyncService {
    pub(crate) fn new(dirs: BTreeMap<String, PathBuf>, stats: SyncStats) -> Self {
        Self { dirs, stats }
    }
}

/// Filter options as the daemon sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SyncRequest {
    pub(crate) dir_name: String,
    pub(crate) include_patterns: Option<Vec<String>>,
    pub(crate) exclude_patterns: Vec<String>,
    pub(crate) follow_paths: Vec<String>,
}

/// Reads all values of `key`, query-unescaping them when `<key>-encoded` is present.
fn metadata_values(md: &tonic::metadata::MetadataMap, key: &str) -> Option<Vec<String>> {
    let encoded = md.get(format!("{key}-encoded").as_str()).is_some();
    let values: Vec<String> = md
        .get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            if encoded {
                query_unescape(v)
            } else {
                v.to_owned()
            }
        })
        .collect();
    if values.is_empty() {
        None
    } else {
        Some(values)
    }
}

/// Go's `url.QueryUnescape` (`+` is a space); invalid escapes are kept as they are.
pub(crate) fn query_unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SyncRequest {
    pub(crate) fn from_metadata(md: &tonic::metadata::MetadataMap) -> Self {
        Self {
            dir_name: md
                .get("dir-name")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
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
        let filter =
            Filter::new(&root, &sync).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(64);
        let incoming = request.into_inner();
        let stats = self.stats.clone();
        tokio::spawn(send_dir(root, sync.dir_name, filter, incoming, tx, stats));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Include/exclude filter of one DiffCopy call.
pub(crate) struct Filter {
    includes: Option<PatternMatcher>,
    excludes: Option<PatternMatcher>,
}

impl Filter {
    pub(crate) fn new(
        root: &Path,
        sync: &SyncRequest,
    ) -> Result<Self, crate::patterns::PatternError> {
        let mut includes = sync.include_patterns.clone();
        if !sync.follow_paths.is_empty() {
            let targets = follow_links(root, &sync.follow_paths);
            let mut all = includes.unwrap_or_default();
            all.extend(targets);
            includes = dedupe_paths(all);
        }
        let includes = match includes {
            Some(list) => Some(PatternMatcher::new(list)?),
            None => None,
        };
        let excludes = if sync.exclude_patterns.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&sync.exclude_patterns)?)
        };
        Ok(Self { includes, excludes })
    }

    /// Decides for one entry: `Some(true)` send it, `Some(false)` descend lazily (dirs only),
    /// `None` skip it entirely.
    fn decide(&self, rel: &str, is_dir: bool) -> Option<bool> {
        let mut send = true;
        if let Some(inc) = self.includes.as_ref().filter(|inc| !inc.matches(rel)) {
            if is_dir && inc.inclusion_could_match_under(rel) {
                send = false;
            } else {
                return None;
            }
        }
        if let Some(exc) = self.excludes.as_ref().filter(|exc| exc.matches(rel)) {
            if is_dir && exc.exception_could_match_under(rel) {
                send = false;
            } else {
                return None;
            }
        }
        Some(send)
    }
}

/// Sorts, drops paths below another listed path, and turns a `.` into "no filter" (`None`).
fn dedupe_paths(mut paths: Vec<String>) -> Option<Vec<String>> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<String> = Vec::with_capacity(paths.len());
    for p in paths {
        if p == "." {
            return None;
        }
        if out
            .last()
            .is_some_and(|last| p.starts_with(&format!("{last}/")))
        {
            continue;
        }
        out.push(p);
    }
    Some(out)
}

/// fsutil's `FollowLinks`: each path plus every symlink on its way resolved (component by
/// component, a wildcard allowed in a component), targets taken relative to the root.
fn follow_links(root: &Path, paths: &[String]) -> Vec<String> {
    let mut resolved = BTreeSet::new();
    for p in paths {
        resolve_path(root, p, &mut resolved, 0);
    }
    resolved.into_iter().collect()
}

fn resolve_path(root: &Path, path: &str, resolved: &mut BTreeSet<String>, depth: usize) {
    if depth > 64 {
        return;
    }
    let mut rest = clean_path(&format!("./{}", path.trim_start_matches('/')));
    if rest == ".." || rest.starts_with("../") {
        // Outside the root: nothing there may be read, nor decide what is sent.
        tracing::debug!(path, "ignoring a followpath outside the directory");
        return;
    }
    if rest == "." {
        resolved.insert(rest);
        return;
    }
    let mut current = String::new();
    loop {
        let (head, tail) = match rest.split_once('/') {
            Some((h, t)) => (h.to_owned(), t.to_owned()),
            None => (rest.clone(), String::new()),
        };
        current = if current.is_empty() {
            head
        } else {
            format!("{current}/{head}")
        };
        let targets = read_symlinks(root, &current);
        rest = tail;
        if (rest.is_empty() || !targets.is_empty()) && resolved.contains(&current) {
            return;
        }
        if !targets.is_empty() {
            resolved.insert(current.clone());
            for target in targets {
                let next = if rest.is_empty() {
                    target
                } else {
                    format!("{target}/{rest}")
                };
                resolve_path(root, &next, resolved, depth + 1);
            }
            return;
        }
        if rest.is_empty() {
            resolved.insert(current);
            return;
        }
    }
}

/// Targets (root-relative, `/`-prefixed cleaned) of the symlink at `rel`, or of every symlink
/// matching a wildcard last component.
fn read_symlinks(root: &Path, rel: &str) -> Vec<String> {
    let (dir, base) = match rel.rsplit_once('/') {
        Some((d, b)) => (d, b),
        None => ("", rel),
    };
    if has_wildcards(base) {
        let Ok(matcher) = crate::patterns::Pattern::new(base) else {
            return Vec::new();
        };
        let Ok(entries) = fs_err::read_dir(root.join(dir)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| matcher.matches_exact(n))
            .collect();
        names.sort();
        return names
            .into_iter()
            .flat_map(|n| {
                read_symlinks(
                    root,
                    &if dir.is_empty() {
                        n.clone()
                    } else {
                        format!("{dir}/{n}")
                    },
                )
            })
            .collect();
    }
    let full = root.join(rel);
    let Ok(meta) = fs_err::symlink_metadata(&full) else {
        return Vec::new();
    };
    if !meta.file_type().is_symlink() {
        return Vec::new();
    }
    let Ok(link) = fs_err::read_link(&full) else {
        return Vec::new();
    };
    let link = link.to_string_lossy().into_owned();
    let target = if link.starts_with('/') {
        clean_path(&link)
    } else {
        clean_path(&format!("/{dir}/{link}"))
    };
    vec![target]
}

/// Go `os.FileMode` of a file, from its Unix metadata.
pub(crate) fn go_mode(meta: &std::fs::Metadata) -> Option<u32> {
    let unix = meta.mode();
    let mut mode = unix & 0o777;
    if unix & 0o4000 != 0 {
        mode |= MODE_SETUID;
    }
    if unix & 0o2000 != 0 {
        mode |= MODE_SETGID;
    }
    if unix & 0o1000 != 0 {
        mode |= MODE_STICKY;
    }
    let ft = meta.file_type();
    if ft.is_dir() {
        mode |= MODE_DIR;
    } else if ft.is_symlink() {
        mode |= MODE_SYMLINK;
    } else if ft.is_block_device() {
        mode |= MODE_DEVICE;
    } else if ft.is_char_device() {
        mode |= MODE_DEVICE | MODE_CHAR_DEVICE;
    } else if ft.is_fifo() {
        mode |= MODE_NAMED_PIPE;
    } else if ft.is_socket() {
        return None;
    }
    Some(mode)
}

fn make_stat(rel: &str, path: &Path, meta: &std::fs::Metadata) -> Option<Stat> {
    let mode = go_mode(meta)?;
    let ft = meta.file_type();
    let mut stat = Stat {
        path: rel.to_owned(),
        mode,
        uid: 0,
        gid: 0,
        size: if ft.is_dir() { 0 } else { meta.size() as i64 },
        mod_time: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ..Stat::default()
    };
    if ft.is_symlink() {
        stat.linkname = fs_err::read_link(path).ok()?.to_string_lossy().into_owned();
    }
    if ft.is_block_device() || ft.is_char_device() {
        let rdev = meta.rdev();
        stat.devmajor = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as i64;
        stat.devminor = ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as i64;
    }
    Some(stat)
}

/// Walks `root` (blocking) and calls `emit` for each entry to send, in fsutil order.
pub(crate) fn walk(
    root: &Path,
    filter: &Filter,
    emit: &mut dyn FnMut(Stat, PathBuf) -> bool,
) -> std::io::Result<()> {
    let mut pending: Vec<(Stat, PathBuf)> = Vec::new();
    walk_dir(root, "", filter, &mut pending, emit)?;
    Ok(())
}

fn walk_dir(
    abs: &Path,
    rel_dir: &str,
    filter: &Filter,
    pending: &mut Vec<(Stat, PathBuf)>,
    emit: &mut dyn FnMut(Stat, PathBuf) -> bool,
) -> std::io::Result<bool> {
    let mut names = Vec::new();
    for entry in fs_err::read_dir(abs)? {
        let entry = entry?;
        let name = entry.file_name().into_string().map_err(|name| {
            std::io::Error::other(format!(
                "file name `{}` in `{}` is not UTF-8",
                name.display(),
                abs.display()
            ))
        })?;
        names.push(name);
    }
    names.sort_unstable();
    for name in names {
        let rel = if rel_dir.is_empty() {
            name.clone()
        } else {
            format!("{rel_dir}/{name}")
        };
        let path = abs.join(&name);
        let meta = fs_err::symlink_metadata(&path)?;
        let is_dir = meta.is_dir();
        let Some(send) = filter.decide(&rel, is_dir) else {
            continue;
        };
        let Some(stat) = make_stat(&rel, &path, &meta) else {
            tracing::debug!(path = %rel, "skipping socket");
            continue;
        };
        if send {
            for (parent, parent_path) in pending.drain(..) {
                if !emit(parent, parent_path) {
                    return Ok(false);
                }
            }
            if !emit(stat, path.clone()) {
                return Ok(false);
            }
            if is_dir && !walk_dir(&path, &rel, filter, pending, emit)? {
                return Ok(false);
            }
        } else {
            let depth = pending.len();
            pending.push((stat, path.clone()));
            if !walk_dir(&path, &rel, filter, pending, emit)? {
                return Ok(false);
            }
            pending.truncate(depth);
        }
    }
    Ok(true)
}

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
    filter: Filter,
    mut incoming: Streaming<Packet>,
    tx: mpsc::Sender<Result<Packet, Status>>,
    stats: SyncStats,
) {
    let files: Arc<Mutex<HashMap<u32, (String, PathBuf)>>> = Arc::default();
    {
        let mut all = stats.lock().expect("stats lock");
        all.entry(dir_name.clone()).or_default().calls += 1;
    }

    // Walker: a blocking task feeding STAT packets.
    let walker = {
        let tx = tx.clone();
        let files = files.clone();
        let stats = stats.clone();
        let dir_name = dir_name.clone();
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
                    .insert(stat.path.clone());
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
                let Some((rel, path)) = files.lock().expect("files lock").get(&msg.id).cloned()
                else {
                    break Err(Status::invalid_argument(format!(
                        "invalid file id {}",
                        msg.id
                    )));
                };
                let tx = tx.clone();
                let readers = readers.clone();
                let stats = stats.clone();
                let dir_name = dir_name.clone();
                tasks.spawn(async move {
                    let _permit = readers.acquire_owned().await;
                    match send_file(msg.id, &path, &tx).await {
                        Ok(n) => {
                            let mut all = stats.lock().expect("stats lock");
                            let d = all.entry(dir_name).or_default();
                            d.bytes_sent += n;
                            d.files_sent.insert(rel);
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
            _ => {
                break Err(Status::invalid_argument(format!(
                    "unexpected packet type {}",
                    msg.r#type
                )));
            }
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

/// Streams one file as DATA chunks followed by an empty DATA; returns the bytes sent.
async fn send_file(
    id: u32,
    path: &Path,
    tx: &mpsc::Sender<Result<Packet, Status>>,
) -> std::io::Result<u64> {
    // O_NOFOLLOW: the walk saw a regular file here; if it was swapped for a symlink since, fail
    // instead of sending whatever the link points at (possibly outside the context).
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot open `{}`: {e}", path.display()))
        })?;
    let mut total = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await?;
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

#[cfg(test)]
mod nofollow_tests {
    use super::*;

    #[tokio::test]
    async fn a_file_swapped_for_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("outside-secret");
        std::fs::write(&secret, "do not send").unwrap();
        let swapped = dir.path().join("was-a-file");
        std::os::unix::fs::symlink(&secret, &swapped).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let err = send_file(1, &swapped, &tx).await.unwrap_err();
        assert!(err.to_string().contains("was-a-file"), "{err}");
        drop(tx);
        while let Some(p) = rx.recv().await {
            assert!(p.unwrap().data.is_empty(), "file data was sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "a",
            "a/x",
            "a-b",
            "node_modules/keep",
            "node_modules/drop",
            "src",
        ] {
            fs_err::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "a/x/file",
            "a/y",
            "a-b/z",
            "node_modules/keep/k.js",
            "node_modules/drop/d.js",
            "src/main.rs",
            "src/lib.rs",
            "README.md",
            "secret.env",
            "Dockerfile",
        ] {
            fs_err::write(root.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("src/passwd")).unwrap();
        std::os::unix::fs::symlink("src", root.join("link-to-src")).unwrap();
        dir
    }

    fn sent(root: &Path, sync: &SyncRequest) -> Vec<(String, u32)> {
        let filter = Filter::new(root, sync).unwrap();
        let mut out = Vec::new();
        walk(root, &filter, &mut |stat, _| {
            out.push((stat.path, stat.mode));
            true
        })
        .unwrap();
        out
    }

    fn paths(v: &[(String, u32)]) -> Vec<&str> {
        v.iter().map(|(p, _)| p.as_str()).collect()
    }

    #[test]
    fn walk_order_is_fsutil_order_with_go_modes() {
        let dir = tree();
        let all = sent(dir.path(), &SyncRequest::default());
        assert_eq!(
            paths(&all),
            [
                "Dockerfile",
                "README.md",
                "a",
                "a/x",
                "a/x/file",
                "a/y",
                "a-b",
                "a-b/z",
                "link-to-src",
                "node_modules",
                "node_modules/drop",
                "node_modules/drop/d.js",
                "node_modules/keep",
                "node_modules/keep/k.js",
                "secret.env",
                "src",
                "src/lib.rs",
                "src/main.rs",
                "src/passwd",
            ]
        );
        let mode = |p: &str| all.iter().find(|(q, _)| q == p).unwrap().1;
        assert_eq!(mode("a") & MODE_DIR, MODE_DIR);
        assert_eq!(mode("src/passwd") & MODE_SYMLINK, MODE_SYMLINK);
        assert_eq!(mode("a/y") & MODE_TYPE, 0);
    }

    #[test]
    fn excludes_with_exceptions_emit_parents_lazily() {
        let dir = tree();
        let sync = SyncRequest {
            exclude_patterns: vec![
                "node_modules".into(),
                "!node_modules/keep".into(),
                "*.env".into(),
            ],
            ..SyncRequest::default()
        };
        let got = sent(dir.path(), &sync);
        let got = paths(&got);
        assert!(got.contains(&"node_modules"));
        assert!(got.contains(&"node_modules/keep/k.js"));
        assert!(!got.contains(&"node_modules/drop"));
        assert!(!got.contains(&"secret.env"));
    }

    #[test]
    fn followpaths_become_includes_and_resolve_links() {
        let dir = tree();
        let sync = SyncRequest {
            follow_paths: vec![
                "link-to-src/main.rs".into(),
                "Dockerfile".into(),
                "missing".into(),
            ],
            ..SyncRequest::default()
        };
        let got = sent(dir.path(), &sync);
        assert_eq!(
            paths(&got),
            ["Dockerfile", "link-to-src", "src", "src/main.rs"]
        );
        // A link pointing outside the root resolves inside the root, never outside.
        let sync = SyncRequest {
            follow_paths: vec!["src/passwd".into()],
            ..SyncRequest::default()
        };
        let got = sent(dir.path(), &sync);
        assert_eq!(paths(&got), ["src", "src/passwd"]);
    }

    #[test]
    fn followpaths_outside_the_root_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ctx");
        fs_err::create_dir_all(root.join("src")).unwrap();
        fs_err::write(root.join("src/main.rs"), "x").unwrap();
        fs_err::write(root.join("Dockerfile"), "x").unwrap();
        // Links beside the context, not in it: they must not be read nor followed.
        std::os::unix::fs::symlink("/src", dir.path().join("outside-link")).unwrap();
        std::os::unix::fs::symlink("ctx/src", dir.path().join("outside-rel")).unwrap();
        for follow in [
            "../outside-link",
            "../outside-rel",
            "src/../../outside-link",
            "../*",
        ] {
            assert_eq!(
                follow_links(&root, &[follow.to_owned(), "Dockerfile".to_owned()]),
                ["Dockerfile"],
                "{follow}"
            );
            let sync = SyncRequest {
                follow_paths: vec![follow.to_owned(), "Dockerfile".to_owned()],
                ..SyncRequest::default()
            };
            assert_eq!(paths(&sent(&root, &sync)), ["Dockerfile"], "{follow}");
        }
    }

    #[test]
    fn include_patterns_with_wildcards() {
        let dir = tree();
        let sync = SyncRequest {
            include_patterns: Some(vec!["**/*.rs".into(), "a/x".into()]),
            ..SyncRequest::default()
        };
        let got = sent(dir.path(), &sync);
        assert_eq!(
            paths(&got),
            ["a", "a/x", "a/x/file", "src", "src/lib.rs", "src/main.rs"]
        );
    }

    #[test]
    fn query_unescape_decodes_plus_and_percent() {
        assert_eq!(query_unescape("a+b%2Fc%C3%A9"), "a b/cé");
        assert_eq!(query_unescape("100%"), "100%");
    }
}
