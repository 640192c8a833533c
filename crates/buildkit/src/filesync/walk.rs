//! The sending side's walk of a synced directory, as fsutil does it for buildctl: the filter
//! (include/exclude patterns with per-level parent results, fsutil's `SkipDir` rules,
//! `followpaths`), the stat of each entry (Go `os.FileMode` bits, xattrs, hard links), and the
//! depth-first walk in bytewise name order with lazily sent parent directories.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::SyncRequest;
use crate::patterns::{MatchInfo, PatternError, PatternMatcher, clean_path_bytes, glob_match};
use crate::proto::fsutil::types::{Stat, XattrEntry};

// Go os.FileMode bits.
pub(crate) const MODE_DIR: u32 = 1 << 31;
pub(crate) const MODE_SYMLINK: u32 = 1 << 27;
pub(crate) const MODE_DEVICE: u32 = 1 << 26;
pub(crate) const MODE_NAMED_PIPE: u32 = 1 << 25;
pub(crate) const MODE_SETUID: u32 = 1 << 23;
pub(crate) const MODE_SETGID: u32 = 1 << 22;
pub(crate) const MODE_CHAR_DEVICE: u32 = 1 << 21;
pub(crate) const MODE_STICKY: u32 = 1 << 20;
/// `os.ModeType`: entries with any of these bits carry no data.
pub(crate) const MODE_TYPE: u32 = MODE_DIR
    | MODE_SYMLINK
    | MODE_NAMED_PIPE
    | (1 << 24)
    | MODE_DEVICE
    | MODE_CHAR_DEVICE
    | (1 << 19);

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
    pub(crate) only_prefix_includes: bool,
    /// Same for the exceptions (`!`) of the exclude patterns.
    pub(crate) only_prefix_exclude_exceptions: bool,
    /// Relative paths never sent (nor anything below them), whatever the patterns say.
    withheld: Vec<Vec<u8>>,
}

/// What the filter decides for one walked entry.
pub(crate) enum Decision {
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
pub(crate) fn without_trailing_glob(p: &[u8]) -> &[u8] {
    let p = p.strip_suffix(b"/**").unwrap_or(p);
    p.strip_suffix(b"/*").unwrap_or(p)
}

/// fsutil's `patternChars` test on the patterns of one kind (inclusions or exceptions).
pub(crate) fn only_prefixes(matcher: &PatternMatcher, exclusions: bool) -> bool {
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

/// `matcher` on `rel`, from its parent directory's results (none at the root); `which` names
/// the patterns in the error, as fsutil does.
fn matching(
    matcher: &PatternMatcher,
    rel: &[u8],
    parent: Option<&MatchInfo>,
    which: &str,
) -> std::io::Result<(bool, MatchInfo)> {
    matcher
        .matches_using_parent_results(rel, &parent.cloned().unwrap_or_default())
        .map_err(|e| std::io::Error::other(format!("failed to match {which}: {e}")))
}

/// Whether a pattern of that kind, without its trailing glob, lies in or below `dir`.
pub(crate) fn prefix_below(matcher: &PatternMatcher, exclusions: bool, dir: &[u8]) -> bool {
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
    pub(crate) fn decide(
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
            let parent_info = parent.map(|p| &p.include_info);
            let (matched, info) = matching(inc, rel, parent_info, "includepatterns")?;
            include_info = info;
            if !matched {
                if is_dir && self.only_prefix_includes && !prefix_below(inc, false, rel) {
                    return Ok(Decision::SkipDir);
                }
                skip = true;
            }
        }
        if let Some(exc) = &self.excludes {
            let parent_info = parent.map(|p| &p.exclude_info);
            let (matched, info) = matching(exc, rel, parent_info, "excludepatterns")?;
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
    pub(crate) fn open_allowed(&self, rel: &[u8]) -> bool {
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
pub(crate) fn dedupe_paths(paths: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
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
pub(crate) fn follow_links(
    root: &Path,
    paths: &[Vec<u8>],
) -> std::io::Result<Option<Vec<Vec<u8>>>> {
    let mut resolved = BTreeSet::new();
    for p in paths {
        resolve_path(root, p, &mut resolved, 0)?;
    }
    Ok(dedupe_paths(resolved.into_iter().collect()))
}

/// `filepath.Join` of two slash paths.
pub(crate) fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
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
pub(crate) fn split_dir(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (b".", p),
    }
}

/// fsutil's `isNotExist`: `ENOENT` or `ENOTDIR`.
pub(crate) fn is_not_exist(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

pub(crate) fn resolve_path(
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
pub(crate) fn contains_wildcards(name: &[u8]) -> bool {
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

pub(crate) fn os_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"." {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// fsutil's `readSymlink`: the targets (`/`-rooted, cleaned) of the symlink at `rel`, or with
/// a wildcard in the last component, of every symlink that matches it (`filepath.Match`);
/// `None` when there is none.
pub(crate) fn read_symlinks(
    root: &Path,
    rel: &[u8],
    wildcard: bool,
) -> std::io::Result<Option<Vec<Vec<u8>>>> {
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
pub(crate) fn read_xattrs(path: &Path) -> std::io::Result<Vec<XattrEntry>> {
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
pub(crate) fn make_stat(
    rel: &[u8],
    path: &Path,
    meta: &std::fs::Metadata,
) -> std::io::Result<Stat> {
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
pub(crate) struct Visited {
    /// Relative path plus `/`.
    prefix: Vec<u8>,
    /// Its stat, until it is sent.
    pending: Option<(Stat, PathBuf)>,
    include_info: MatchInfo,
    exclude_info: MatchInfo,
}

/// One directory being listed.
pub(crate) struct Frame {
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
    walk_with_metadata(root, filter, &mut |stat, path, _| emit(stat, path))
}

/// [`walk`], also handing over the `lstat` of each entry sent in walk order (`None` for a
/// directory sent late, before its first sent descendant): what a caller keeping a stat cache
/// (inode, change time) needs beyond the fsutil [`Stat`].
pub(crate) fn walk_with_metadata(
    root: &Path,
    filter: &Filter,
    emit: &mut dyn FnMut(Stat, PathBuf, Option<&std::fs::Metadata>) -> bool,
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
                    && !emit(parent_stat, parent_path, None)
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
            if !emit(stat, abs.clone(), Some(&meta)) {
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
