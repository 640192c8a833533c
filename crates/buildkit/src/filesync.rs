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
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::patterns::{MatchInfo, PatternError, PatternMatcher, clean_path_bytes, glob_match};
use crate::proto::fsutil::types::{Packet, PacketType, Stat, XattrEntry};
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

/// Why a filter could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("invalid includepatterns: {0}")]
    Include(PatternError),
    #[error("invalid excludepatterns: {0}")]
    Exclude(PatternError),
    #[error("resolving followpaths: {0}")]
    FollowPaths(std::io::Error),
}

/// Include/exclude filter of one DiffCopy call: fsutil's `NewFilterFS`.
pub(crate) struct Filter {
    includes: Option<PatternMatcher>,
    excludes: Option<PatternMatcher>,
    /// No include pattern has wildcards (beyond a trailing `/*` or `/**`): a directory that
    /// no include matches is skipped unless some pattern lies below it.
    only_prefix_includes: bool,
    /// Same for the exceptions (`!`) of the exclude patterns.
    only_prefix_exclude_exceptions: bool,
    /// Relative paths never sent (nor anything below them), whatever the patterns say.
    withheld: Vec<Vec<u8>>,
}

/// What the filter decides for one walked entry.
enum Decision {
    /// `filepath.SkipDir`: not sent, not descended.
    SkipDir,
    /// Walked: sent unless `skip` (a directory is then descended and sent lazily, only
    /// before a descendant that is sent).
    Visit {
        skip: bool,
        include_info: MatchInfo,
        exclude_info: MatchInfo,
    },
}

/// fsutil's `patternWithoutTrailingGlob`.
fn without_trailing_glob(p: &[u8]) -> &[u8] {
    let p = p.strip_suffix(b"/**").unwrap_or(p);
    p.strip_suffix(b"/*").unwrap_or(p)
}

/// fsutil's `patternChars` test on the patterns of one kind (inclusions or exceptions).
fn only_prefixes(matcher: &PatternMatcher, exclusions: bool) -> bool {
    !matcher
        .patterns()
        .iter()
        .filter(|p| p.is_exclusion() == exclusions)
        .any(|p| {
            without_trailing_glob(p.as_bytes())
                .iter()
                .any(|b| b"*[]?^\\".contains(b))
        })
}

/// Whether a pattern of that kind, without its trailing glob, lies in or below `dir`.
fn prefix_below(matcher: &PatternMatcher, exclusions: bool, dir: &[u8]) -> bool {
    matcher
        .patterns()
        .iter()
        .filter(|p| p.is_exclusion() == exclusions)
        .any(|p| {
            let pat = without_trailing_glob(p.as_bytes());
            pat.len() > dir.len() && pat.starts_with(dir) && pat[dir.len()] == b'/' || pat == dir
        })
}

impl Filter {
    pub(crate) fn new(root: &Path, sync: &SyncRequest) -> Result<Self, FilterError> {
        let mut includes = sync.include_patterns.clone();
        if !sync.follow_paths.is_empty() {
            let targets =
                follow_links(root, &sync.follow_paths).map_err(FilterError::FollowPaths)?;
            if let Some(targets) = targets {
                let mut all = includes.unwrap_or_default();
                all.extend(targets);
                // As fsutil: appended to the include patterns and deduplicated, not re-sorted.
                includes = dedupe_paths(all);
            }
        }
        let includes = match includes {
            Some(list) if !list.is_empty() => {
                Some(PatternMatcher::new(list).map_err(FilterError::Include)?)
            }
            _ => None,
        };
        let excludes = if sync.exclude_patterns.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&sync.exclude_patterns).map_err(FilterError::Exclude)?)
        };
        Ok(Self {
            only_prefix_includes: includes.as_ref().is_none_or(|m| only_prefixes(m, false)),
            only_prefix_exclude_exceptions: excludes
                .as_ref()
                .is_none_or(|m| only_prefixes(m, true)),
            includes,
            excludes,
            withheld: Vec::new(),
        })
    }

    /// The same filter, never sending `rels` (paths relative to the root) or what lies below.
    pub(crate) fn withholding(mut self, rels: Vec<Vec<u8>>) -> Self {
        self.withheld = rels;
        self
    }

    /// fsutil's filter for one walked entry, given the results of its parent directory.
    fn decide(
        &self,
        rel: &[u8],
        is_dir: bool,
        parent: Option<&Visited>,
    ) -> std::io::Result<Decision> {
        if self
            .withheld
            .iter()
            .any(|w| rel.starts_with(w) && (rel.len() == w.len() || rel[w.len()] == b'/'))
        {
            return Ok(Decision::SkipDir);
        }
        let mut skip = false;
        let mut include_info = MatchInfo::default();
        let mut exclude_info = MatchInfo::default();
        if let Some(inc) = &self.includes {
            let parent_info = parent.map(|p| p.include_info.clone()).unwrap_or_default();
            let (matched, info) = inc
                .matches_using_parent_results(rel, &parent_info)
                .map_err(|e| {
                    std::io::Error::other(format!("failed to match includepatterns: {e}"))
                })?;
            include_info = info;
            if !matched {
                if is_dir && self.only_prefix_includes && !prefix_below(inc, false, rel) {
                    return Ok(Decision::SkipDir);
                }
                skip = true;
            }
        }
        if let Some(exc) = &self.excludes {
            let parent_info = parent.map(|p| p.exclude_info.clone()).unwrap_or_default();
            let (matched, info) = exc
                .matches_using_parent_results(rel, &parent_info)
                .map_err(|e| {
                    std::io::Error::other(format!("failed to match excludepatterns: {e}"))
                })?;
            exclude_info = info;
            if matched {
                if is_dir
                    && self.only_prefix_exclude_exceptions
                    && (!exc.has_exclusions() || !prefix_below(exc, true, rel))
                {
                    return Ok(Decision::SkipDir);
                }
                skip = true;
            }
        }
        Ok(Decision::Visit {
            skip,
            include_info,
            exclude_info,
        })
    }

    /// fsutil's `filterFS.Open` check, made when the receiver requests a file: the path or a
    /// parent must match an include and none may match an exclude (`MatchesOrParentMatches`,
    /// which can differ from the walk's per-level results). A refused file is sent empty.
    fn open_allowed(&self, rel: &[u8]) -> bool {
        if let Some(inc) = &self.includes
            && !inc.matches_or_parent_matches(rel).unwrap_or(false)
        {
            return false;
        }
        if let Some(exc) = &self.excludes
            && exc.matches_or_parent_matches(rel).unwrap_or(true)
        {
            return false;
        }
        true
    }
}

/// fsutil's `dedupePaths` (input expected sorted): a `.` means "no filter" (`None`); a path
/// below the previously kept one is dropped (the first compares with "", so a path starting
/// with `/` is dropped too).
fn dedupe_paths(paths: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(paths.len());
    let mut last: Vec<u8> = Vec::new();
    for p in paths {
        if p == b"." {
            return None;
        }
        if p.len() > last.len() && p.starts_with(&last) && p[last.len()] == b'/' {
            continue;
        }
        last.clone_from(&p);
        out.push(p);
    }
    Some(out)
}

/// fsutil's `FollowLinks`: each path plus every symlink on its way resolved (component by
/// component; a wildcard is allowed in the component being resolved), targets taken relative
/// to the root, sorted and deduplicated; `None` when the root itself is one of them.
fn follow_links(root: &Path, paths: &[Vec<u8>]) -> std::io::Result<Option<Vec<Vec<u8>>>> {
    let mut resolved = BTreeSet::new();
    for p in paths {
        resolve_path(root, p, &mut resolved, 0)?;
    }
    Ok(dedupe_paths(resolved.into_iter().collect()))
}

/// `filepath.Join` of two slash paths.
fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut joined = a.to_vec();
    if !a.is_empty() && !b.is_empty() {
        joined.push(b'/');
    }
    joined.extend_from_slice(b);
    if joined.is_empty() {
        return joined;
    }
    clean_path_bytes(&joined)
}

/// `filepath.Dir` and `filepath.Base` of a cleaned relative path.
fn split_dir(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (b".", p),
    }
}

/// fsutil's `isNotExist`: `ENOENT` or `ENOTDIR`.
fn is_not_exist(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

fn resolve_path(
    root: &Path,
    path: &[u8],
    resolved: &mut BTreeSet<Vec<u8>>,
    depth: usize,
) -> std::io::Result<()> {
    if depth > 255 {
        return Err(std::io::Error::other(format!(
            "too many levels of symbolic links resolving `{}`",
            String::from_utf8_lossy(path)
        )));
    }
    let mut rest = join(b".", path);
    if rest == b".." || rest.starts_with(b"../") {
        // Outside the root: nothing there may be read, nor decide what is sent. (fsutil would
        // read it; its pattern could never match a path inside anyway.)
        tracing::debug!(path = %String::from_utf8_lossy(path), "ignoring a followpath outside the directory");
        return Ok(());
    }
    let mut current: Vec<u8> = b".".to_vec();
    loop {
        let (head, tail) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (rest[..i].to_vec(), rest[i + 1..].to_vec()),
            None => (rest.clone(), Vec::new()),
        };
        current = join(&current, &head);
        let targets = read_symlinks(root, &current, true)?;
        rest = tail;
        if (rest.is_empty() || targets.is_some()) && resolved.contains(&current) {
            return Ok(());
        }
        if let Some(targets) = targets {
            resolved.insert(current.clone());
            for target in targets {
                resolve_path(root, &join(&target, &rest), resolved, depth + 1)?;
            }
            return Ok(());
        }
        if rest.is_empty() {
            resolved.insert(current);
            return Ok(());
        }
    }
}

/// fsutil's `containsWildcards`.
fn contains_wildcards(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn os_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"." {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// fsutil's `readSymlink`: the targets (`/`-rooted, cleaned) of the symlink at `rel`, or with
/// a wildcard in the last component, of every symlink that matches it (`filepath.Match`);
/// `None` when there is none.
fn read_symlinks(root: &Path, rel: &[u8], wildcard: bool) -> std::io::Result<Option<Vec<Vec<u8>>>> {
    let (dir, base) = split_dir(rel);
    if wildcard && contains_wildcards(base) {
        let mut names: Vec<Vec<u8>> = match fs_err::read_dir(os_path(root, dir)) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().into_vec())
                .collect(),
            Err(e) if is_not_exist(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        names.sort();
        let mut out: Option<Vec<Vec<u8>>> = None;
        for name in names {
            if glob_match(base, &name).unwrap_or(false)
                && let Some(targets) = read_symlinks(root, &join(dir, &name), false)?
            {
                out.get_or_insert_default().extend(targets);
            }
        }
        return Ok(out);
    }
    if rel == b"." {
        return Ok(None);
    }
    let full = os_path(root, rel);
    let meta = match fs_err::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) if is_not_exist(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_symlink() {
        return Ok(None);
    }
    let link = fs_err::read_link(&full)?.into_os_string().into_vec();
    let link = clean_path_bytes(&link);
    let target = if link.starts_with(b"/") {
        link
    } else {
        join(b"/", &join(dir, &link))
    };
    Ok(Some(vec![target]))
}

/// Go `os.FileMode` of a file as fsutil sends it (`mkstat`): the socket bit is cleared, so a
/// socket goes out as a regular file (and is sent empty: it cannot be opened).
pub(crate) fn go_mode(meta: &std::fs::Metadata) -> u32 {
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
    }
    mode
}

/// Extended attributes as fsutil's `loadXattr`: none where unsupported, `com.apple.*` left
/// out, attributes that cannot be read skipped; sorted by name.
fn read_xattrs(path: &Path) -> std::io::Result<Vec<XattrEntry>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("failed to xattr {}: {e}", path.display()),
            ));
        }
    };
    let mut out: Vec<XattrEntry> = names
        .map(OsStringExt::into_vec)
        .filter(|name| !name.starts_with(b"com.apple."))
        .filter_map(|name| {
            let value = xattr::get(path, OsStr::from_bytes(&name)).ok()??;
            Some(XattrEntry { key: name, value })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// fsutil's `mkstat` + `setUnixOpt` (hard links are handled by the walk), with uid and gid
/// 0 as buildctl's `resetUIDAndGID` sets them.
fn make_stat(rel: &[u8], path: &Path, meta: &std::fs::Metadata) -> std::io::Result<Stat> {
    let ft = meta.file_type();
    let mut stat = Stat {
        path: rel.to_vec(),
        mode: go_mode(meta),
        uid: 0,
        gid: 0,
        // Go's `UnixNano`: wraps outside 1678..2262 instead of failing.
        mod_time: meta
            .mtime()
            .wrapping_mul(1_000_000_000)
            .wrapping_add(meta.mtime_nsec()),
        ..Stat::default()
    };
    if !ft.is_dir() {
        // Go tests the type bits with `&` (`S_IFBLK` = 0o060000, `S_IFCHR` = 0o020000), so
        // symlinks and sockets take their (normally zero) rdev too.
        let st_mode = meta.mode();
        if st_mode & 0o060_000 != 0 || st_mode & 0o020_000 != 0 {
            let rdev = meta.rdev();
            stat.devmajor = ((rdev >> 8) & 0xfff) as i64;
            stat.devminor = ((rdev & 0xff) | ((rdev >> 12) & 0xf_ff00)) as i64;
        }
        stat.size = meta.size() as i64;
        if ft.is_symlink() {
            stat.linkname = fs_err::read_link(path)?.into_os_string().into_vec();
        }
    }
    stat.xattrs = read_xattrs(path)?;
    Ok(stat)
}

/// A directory walked and kept for its children: fsutil's `visitedDir`.
struct Visited {
    /// Relative path plus `/`.
    prefix: Vec<u8>,
    /// Its stat, until it is sent.
    pending: Option<(Stat, PathBuf)>,
    include_info: MatchInfo,
    exclude_info: MatchInfo,
}

/// One directory being listed.
struct Frame {
    abs: PathBuf,
    rel: Vec<u8>,
    /// Names sorted bytewise (Go `os.ReadDir`), with whether the directory entry says "dir".
    names: Vec<(OsString, bool)>,
    next: usize,
}

impl Frame {
    fn read(abs: PathBuf, rel: Vec<u8>) -> std::io::Result<Self> {
        let mut names = Vec::new();
        for entry in fs_err::read_dir(&abs)? {
            let entry = entry?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            names.push((entry.file_name(), is_dir));
        }
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            abs,
            rel,
            names,
            next: 0,
        })
    }
}

/// Walks `root` (blocking) and calls `emit` for each entry to send, in fsutil order, as
/// buildctl's stack does it: `filepath.WalkDir` (names sorted bytewise, depth first) under
/// fsutil's filter (per-level pattern results, directories sent lazily before their first
/// sent descendant, `SkipDir` only where fsutil's prefix rules allow) and its hard-link reset
/// (a later path of an inode already sent goes out with `linkname` = the first sent path).
/// `emit` returns false when the receiver is gone.
pub(crate) fn walk(
    root: &Path,
    filter: &Filter,
    emit: &mut dyn FnMut(Stat, PathBuf) -> bool,
) -> std::io::Result<()> {
    let mut parents: Vec<Visited> = Vec::new();
    let mut first_sent: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut frames = vec![Frame::read(root.to_path_buf(), Vec::new())?];
    while let Some(frame) = frames.last_mut() {
        let Some((name, entry_is_dir)) = frame.names.get(frame.next).cloned() else {
            frames.pop();
            continue;
        };
        frame.next += 1;
        let abs = frame.abs.join(&name);
        let mut rel = frame.rel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let stated = fs_err::symlink_metadata(&abs)
            .and_then(|meta| make_stat(&rel, &abs, &meta).map(|stat| (meta, stat)));
        let (meta, mut stat) = match stated {
            Ok(v) => v,
            Err(e) if is_not_exist(&e) => {
                // Gone since the listing: fsutil turns this into `SkipDir`, which for a file
                // also skips the rest of its directory.
                if !entry_is_dir {
                    frame.next = frame.names.len();
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let is_dir = meta.is_dir();
        while parents.last().is_some_and(|p| !rel.starts_with(&p.prefix)) {
            parents.pop();
        }
        let Decision::Visit {
            skip,
            include_info,
            exclude_info,
        } = filter.decide(&rel, is_dir, parents.last())?
        else {
            continue;
        };
        if !skip {
            for parent in &mut parents {
                if let Some((parent_stat, parent_path)) = parent.pending.take()
                    && !emit(parent_stat, parent_path)
                {
                    return Ok(());
                }
            }
            if !is_dir && !meta.file_type().is_symlink() && meta.nlink() > 1 {
                match first_sent.entry((meta.dev(), meta.ino())) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        stat.linkname.clone_from(first.get());
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(rel.clone());
                    }
                }
            }
            if !emit(stat, abs.clone()) {
                return Ok(());
            }
            if !is_dir {
                continue;
            }
            parents.push(Visited {
                prefix: [rel.as_slice(), b"/"].concat(),
                pending: None,
                include_info,
                exclude_info,
            });
        } else if is_dir {
            parents.push(Visited {
                prefix: [rel.as_slice(), b"/"].concat(),
                pending: Some((stat, abs.clone())),
                include_info,
                exclude_info,
            });
        } else {
            continue;
        }
        match Frame::read(abs, rel) {
            Ok(f) => frames.push(f),
            Err(e) if is_not_exist(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
                // As fsutil: an ID is served once.
                let Some((rel, path)) = files.lock().expect("files lock").remove(&msg.id) else {
                    break Err(Status::invalid_argument(format!(
                        "invalid file id {}",
                        msg.id
                    )));
                };
                let tx = tx.clone();
                let readers = readers.clone();
                let stats = stats.clone();
                let dir_name = dir_name.clone();
                let filter = filter.clone();
                let read_root = read_root.clone();
                tasks.spawn(async move {
                    let _permit = readers.acquire_owned().await;
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

#[cfg(test)]
mod tests;
