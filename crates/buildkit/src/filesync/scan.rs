//! A directory as FileSync would send it, without a daemon: the same walk, the same
//! `.dockerignore` filter, the same withheld paths. For callers that must know what a build
//! reads before deciding to run one (fastbuild's "nothing changed since the last build").

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::{Filter, SyncRequest, walk_with_metadata};

/// One entry the daemon would be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedEntry {
    /// Path relative to the root, as sent (raw bytes, `/`-separated).
    pub rel: Vec<u8>,
    /// Path on this machine.
    pub path: PathBuf,
    /// Go `os.FileMode` bits as sent (type and permissions).
    pub mode: u32,
    /// Size in bytes (0 for directories).
    pub size: i64,
    /// Modification time in nanoseconds, as sent.
    pub mod_time: i64,
    /// Symlink target, or for a later hard link the first path of its inode.
    pub linkname: Vec<u8>,
    /// Device numbers of a device node.
    pub device: (i64, i64),
    /// Extended attributes as sent (name, value), sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// What says the file may have changed without its size or time doing so: (device, inode,
    /// change time in ns). `None` for a directory sent before its first sent descendant.
    pub identity: Option<(u64, u64, i64)>,
}

impl ScannedEntry {
    /// Whether this is a regular file whose bytes the daemon would ask for (not a directory,
    /// link, device, or a hard link to an earlier path).
    pub fn is_regular(&self) -> bool {
        self.mode & super::MODE_TYPE == 0 && self.linkname.is_empty()
    }
}

/// Walks `root` and calls `f` for every entry a FileSync request with `exclude_patterns` (the
/// `.dockerignore` lines) and no include patterns would send, in the order it would send them.
/// `withheld` are absolute paths never sent (see [`crate::BuildOptions::withheld`]); `root`
/// should be canonical, as the build's own roots are.
///
/// # Errors
/// A bad pattern, or an I/O error while walking.
pub fn scan_dir(
    root: &Path,
    exclude_patterns: &[Vec<u8>],
    withheld: &[PathBuf],
    f: &mut dyn FnMut(ScannedEntry),
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let request = SyncRequest {
        dir_name: String::new(),
        include_patterns: None,
        exclude_patterns: exclude_patterns.to_vec(),
        follow_paths: Vec::new(),
    };
    let withheld: Vec<Vec<u8>> = withheld
        .iter()
        .filter_map(|w| w.strip_prefix(root).ok())
        .filter(|rel| !rel.as_os_str().is_empty())
        .map(|rel| rel.as_os_str().as_bytes().to_vec())
        .collect();
    let filter = Filter::new(root, &request)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?
        .withholding(withheld);
    walk_with_metadata(root, &filter, &mut |stat, path, meta| {
        f(ScannedEntry {
            rel: stat.path,
            path,
            mode: stat.mode,
            size: stat.size,
            mod_time: stat.mod_time,
            linkname: stat.linkname,
            device: (stat.devmajor, stat.devminor),
            xattrs: stat.xattrs.into_iter().map(|x| (x.key, x.value)).collect(),
            identity: meta.map(|m| (m.dev(), m.ino(), m.ctime() * 1_000_000_000 + m.ctime_nsec())),
        });
        true
    })
}
