//! A persistent cache of built layer blobs, so unchanged layers are not re-tarred, recompressed
//! and rehashed on every build.
//!
//! Layout under the cache root:
//!
//! - `index/<fingerprint>.json` — `{"digest", "size", "diff_id", "compression"}` of the blob built
//!   from inputs with that fingerprint;
//! - `blobs/sha256/<hex>` — the blobs, named by digest.
//!
//! The fingerprint (see [`crate::layer::build_layer_cached`]) is computed from metadata only:
//! destination paths and kinds, and for files the source path, size, mtime and ctime in
//! nanoseconds, device, inode and exec bit; symlink targets; the compression, its level, the
//! entry mtime and owner. Like `make`, and like BuildKit's metadata differ (fsutil), file
//! contents are **not** re-read when that metadata is identical. ctime cannot be set from user
//! space and changes on every write, rename or chmod, so an edit that restores the old mtime and
//! size is still seen. To avoid the "racy" case (a file rewritten within the timestamp
//! granularity right after it was read), a layer whose newest ctime is within
//! [`LayerCache::racy_window`] of the build's start is built but not stored.
//!
//! A cached blob is used when its index entry parses, names the same compression and the blob
//! exists with the recorded size; it is not rehashed (a same-size corruption of the cache is not
//! detected: delete the cache directory to recover). Writes are atomic (temp file + rename in the
//! same directory), so concurrent fastbuild processes may share a cache: two of them storing the
//! same blob rename identical bytes onto each other. The blob directory is kept under
//! [`LayerCache::max_bytes`] by deleting least-recently-used blobs (blob mtime, refreshed on every
//! hit) and the index entries pointing at them. Every cache I/O error is logged at `debug` level
//! and degrades to a normal build; the cache never fails a build, and the bytes built are the same
//! with or without it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::layer::{Compression, GZIP_LEVEL, Layer};

/// Default bound of the blob directory: 2 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
/// Default [`LayerCache::racy_window`]: 2 s (covers coarse kernel clocks and 2 s FAT stamps).
pub const DEFAULT_RACY_WINDOW: Duration = Duration::from_secs(2);

/// Temp files in the blob directory start with this; those older than an hour are leftovers of
/// killed processes and are removed when the cache is trimmed.
const TEMP_PREFIX: &str = ".tmp-";
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// A persistent layer cache rooted at a directory (created on first store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerCache {
    /// The cache root (`index/` and `blobs/sha256/` live under it).
    pub root: PathBuf,
    /// Bound of the total size of the cached blobs, enforced after each store.
    pub max_bytes: u64,
    /// A layer with a source file whose ctime is this close to (or after) the start of its
    /// build is not stored: the file may have been rewritten within the timestamp granularity.
    pub racy_window: Duration,
}

#[derive(Serialize, Deserialize)]
struct IndexEntry {
    digest: Digest,
    size: u64,
    diff_id: Digest,
    compression: String,
}

/// A stable name of a compression and its level, for fingerprints and index entries.
pub(crate) fn compression_tag(c: Compression) -> String {
    match c {
        Compression::None => "none".to_owned(),
        Compression::Gzip => format!("gzip-{GZIP_LEVEL}"),
        Compression::Zstd { level } => format!("zstd-{level}"),
    }
}

impl LayerCache {
    /// A cache at `root` with [`DEFAULT_MAX_BYTES`] and [`DEFAULT_RACY_WINDOW`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            racy_window: DEFAULT_RACY_WINDOW,
        }
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    fn index_path(&self, key: &str) -> PathBuf {
        self.index_dir().join(format!("{key}.json"))
    }

    /// The layer cached under `key`, linked into `blob_dir` (the build's blob directory) when
    /// possible; `None` on a miss or any error.
    pub(crate) fn lookup(
        &self,
        key: &str,
        compression: Compression,
        blob_dir: &Path,
    ) -> Option<Layer> {
        match self.try_lookup(key, compression, blob_dir) {
            Ok(found) => found,
            Err(error) => {
                tracing::debug!(%error, key, "layer cache lookup failed; building the layer");
                None
            }
        }
    }

    fn try_lookup(
        &self,
        key: &str,
        compression: Compression,
        blob_dir: &Path,
    ) -> io::Result<Option<Layer>> {
        let bytes = match fs_err::read(self.index_path(key)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let entry: IndexEntry = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        if entry.compression != compression_tag(compression) {
            return Ok(None);
        }
        let cached = self.blob_dir().join(entry.digest.hex());
        let meta = match fs_err::metadata(&cached) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(key, digest = %entry.digest, "cached layer blob is gone");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if !meta.is_file() || meta.len() != entry.size {
            tracing::debug!(
                key,
                digest = %entry.digest,
                expected = entry.size,
                found = meta.len(),
                "cached layer blob has the wrong size"
            );
            return Ok(None);
        }
        if let Err(error) = touch(&cached) {
            tracing::debug!(%error, "cannot refresh the mtime of a cached layer blob");
        }
        let path = link_into(&cached, blob_dir, entry.digest.hex());
        tracing::debug!(key, digest = %entry.digest, "layer cache hit");
        Ok(Some(Layer {
            path,
            digest: entry.digest,
            size: entry.size,
            diff_id: entry.diff_id,
            compression,
            cache_hit: true,
        }))
    }

    /// Stores `layer` (a blob just built) under `key`, then trims the cache; errors are logged.
    pub(crate) fn store(&self, key: &str, layer: &Layer) {
        if let Err(error) = self.try_store(key, layer) {
            tracing::debug!(%error, key, "cannot store a layer in the layer cache");
            return;
        }
        if let Err(error) = self.trim() {
            tracing::debug!(%error, "cannot trim the layer cache");
        }
    }

    fn try_store(&self, key: &str, layer: &Layer) -> io::Result<()> {
        let blobs = self.blob_dir();
        fs_err::create_dir_all(&blobs)?;
        let dest = blobs.join(layer.digest.hex());
        let present = fs_err::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == layer.size);
        if present {
            touch(&dest)?;
        } else {
            let tmp = blobs.join(format!(
                "{TEMP_PREFIX}{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let placed = fs_err::hard_link(&layer.path, &tmp).or_else(|error| {
                tracing::debug!(%error, "cannot hard-link a layer blob into the cache; copying");
                fs_err::copy(&layer.path, &tmp).map(drop)
            });
            let renamed = placed.and_then(|()| fs_err::rename(&tmp, &dest));
            // Also after a successful rename: renaming a link onto the same inode is a no-op
            // that leaves the source name behind.
            let _ = fs_err::remove_file(&tmp);
            renamed?;
        }
        let index_dir = self.index_dir();
        fs_err::create_dir_all(&index_dir)?;
        let entry = serde_json::to_vec(&IndexEntry {
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
            compression: compression_tag(layer.compression),
        })
        .map_err(io::Error::other)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&index_dir)?;
        io::Write::write_all(&mut tmp, &entry)?;
        tmp.persist(self.index_path(key)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Deletes least-recently-used blobs until the blob directory fits in `max_bytes`, then the
    /// index entries whose blob is gone; removes stale temp files on the way.
    fn trim(&self) -> io::Result<()> {
        let now = SystemTime::now();
        let mut blobs = Vec::new();
        let mut total: u64 = 0;
        for entry in fs_err::read_dir(self.blob_dir())? {
            let entry = entry?;
            // Entries may vanish under a concurrent trim.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified()?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                if now
                    .duration_since(modified)
                    .is_ok_and(|age| age > STALE_TEMP_AGE)
                {
                    let _ = fs_err::remove_file(entry.path());
                }
                continue;
            }
            total += meta.len();
            blobs.push((modified, meta.len(), entry.path()));
        }
        if total <= self.max_bytes {
            return Ok(());
        }
        blobs.sort();
        for (_, len, path) in blobs {
            if total <= self.max_bytes {
                break;
            }
            match fs_err::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(blob = %path.display(), "evicted from the layer cache");
                    total -= len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => total -= len,
                Err(error) => tracing::debug!(%error, "cannot evict a layer cache blob"),
            }
        }
        let blob_dir = self.blob_dir();
        for entry in fs_err::read_dir(self.index_dir())? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = fs_err::read(&path) else {
                continue;
            };
            let dangling = match serde_json::from_slice::<IndexEntry>(&bytes) {
                Ok(e) => !blob_dir.join(e.digest.hex()).exists(),
                Err(_) => true,
            };
            if dangling {
                let _ = fs_err::remove_file(&path);
            }
        }
        Ok(())
    }
}

/// Marks a blob as recently used.
fn touch(path: &Path) -> io::Result<()> {
    fs_err::File::open(path)?.set_modified(SystemTime::now())
}

/// A hard link to `cached` at `blob_dir/<hex>`, so a concurrent trim cannot pull the blob from
/// under the upload; `cached` itself when linking is impossible (another file system).
fn link_into(cached: &Path, blob_dir: &Path, hex: &str) -> PathBuf {
    let dest = blob_dir.join(hex);
    let linked = fs_err::create_dir_all(blob_dir).and_then(|()| fs_err::hard_link(cached, &dest));
    match linked {
        Ok(()) => dest,
        // Same digest, same bytes: another layer of this build made it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => dest,
        Err(error) => {
            tracing::debug!(%error, "using the cached layer blob in place");
            cached.to_owned()
        }
    }
}
