//! A persistent cache of built layer blobs, so unchanged layers are not re-tarred, recompressed
//! and rehashed on every build.
//!
//! Layout under the cache root:
//!
//! - `index/<fingerprint>.json` — `{"digest", "size", "diff_id", "compression"}` of the blob built
//!   from inputs with that fingerprint;
//! - `blobs/sha256/<hex>` — the blobs, named by digest.
//!
//! The fingerprint (see [`build_layer_cached`]) is computed from metadata only:
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
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::Result;
use crate::layer::{Compression, GZIP_LEVEL, Layer, LayerSpec, Node, Planner, write_layer};

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

/// Version of the layer-cache fingerprint: bump it whenever the bytes [`crate::layer::build_layer`] writes for
/// the same inputs change (tar layout, modes, compressor settings, dependency upgrades that
/// change output), so stale cache entries are not used.
const FINGERPRINT_VERSION: &str = "fastbuild-layer-cache-v1";

/// [`crate::layer::build_layer`] through a persistent [`LayerCache`].
///
/// The sources are walked and stat'ed (never read) and fingerprinted; when the cache holds a
/// blob for that fingerprint it is returned (`cache_hit: true`, linked into `blob_dir` when
/// possible). Otherwise the layer is built as without a cache and stored. The result is the
/// same blob either way; cache errors only cost the rebuild (see [`crate::layer_cache`] for
/// what the fingerprint covers and its trust model).
pub fn build_layer_cached(
    spec: &LayerSpec,
    compression: Compression,
    mtime: u64,
    blob_dir: &Path,
    cache: Option<&LayerCache>,
) -> Result<Layer> {
    build_layer_noting_misses(spec, compression, mtime, blob_dir, cache, || {})
}

/// [`build_layer_cached`], calling `on_miss` as soon as the cache is found not to hold the
/// layer (before it is built; not called without a cache).
pub(crate) fn build_layer_noting_misses(
    spec: &LayerSpec,
    compression: Compression,
    mtime: u64,
    blob_dir: &Path,
    cache: Option<&LayerCache>,
    on_miss: impl FnOnce(),
) -> Result<Layer> {
    let started = SystemTime::now();
    let planner = Planner::plan(spec)?;
    let Some(cache) = cache else {
        return write_layer(&planner, spec, compression, mtime, blob_dir);
    };
    let key = fingerprint(&planner, spec, compression, mtime);
    if let Some(layer) = cache.lookup(&key, compression, blob_dir) {
        return Ok(layer);
    }
    on_miss();
    let layer = write_layer(&planner, spec, compression, mtime, blob_dir)?;
    if is_racy(&planner, started, cache.racy_window) {
        tracing::debug!(
            key,
            "a source changed moments before this build; not caching the layer"
        );
    } else {
        cache.store(&key, &layer);
    }
    Ok(layer)
}

fn hash_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// sha256 (hex) over everything the bytes of the layer depend on, metadata standing in for
/// file contents.
fn fingerprint(
    planner: &Planner,
    spec: &LayerSpec,
    compression: Compression,
    mtime: u64,
) -> String {
    let mut h = Sha256::new();
    hash_field(&mut h, FINGERPRINT_VERSION.as_bytes());
    hash_field(&mut h, compression_tag(compression).as_bytes());
    hash_field(&mut h, &mtime.to_le_bytes());
    hash_field(&mut h, &spec.uid.to_le_bytes());
    hash_field(&mut h, &spec.gid.to_le_bytes());
    for (path, node) in &planner.nodes {
        hash_field(&mut h, path.as_bytes());
        match node {
            Node::Dir => hash_field(&mut h, b"dir"),
            Node::Symlink { target } => {
                hash_field(&mut h, b"symlink");
                hash_field(&mut h, target.as_os_str().as_bytes());
            }
            Node::File {
                src,
                exec,
                size,
                inode,
                stamp,
                ..
            } => {
                hash_field(&mut h, b"file");
                hash_field(&mut h, src.as_os_str().as_bytes());
                hash_field(&mut h, &size.to_le_bytes());
                for n in [stamp.mtime.0, stamp.mtime.1, stamp.ctime.0, stamp.ctime.1] {
                    hash_field(&mut h, &n.to_le_bytes());
                }
                hash_field(&mut h, &stamp.dev.to_le_bytes());
                hash_field(&mut h, &stamp.ino.to_le_bytes());
                // Files sharing an inode become tar hard links to the first path.
                hash_field(&mut h, &[u8::from(*exec), u8::from(inode.is_some())]);
            }
        }
    }
    hex::encode(h.finalize())
}

/// Whether a source file's ctime is within `window` of `started` (or later): it may have been
/// rewritten within the timestamp granularity after being read, so its metadata cannot vouch
/// for the bytes that were read.
fn is_racy(planner: &Planner, started: SystemTime, window: std::time::Duration) -> bool {
    let Some(threshold) = started
        .checked_sub(window)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    else {
        return true;
    };
    let threshold = (
        i64::try_from(threshold.as_secs()).unwrap_or(i64::MAX),
        i64::from(threshold.subsec_nanos()),
    );
    planner
        .nodes
        .values()
        .any(|node| matches!(node, Node::File { stamp, .. } if stamp.ctime >= threshold))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    use crate::layer::build_layer;
    use crate::layer::tests::{fixture, spec};

    /// A cache that stores fresh files too (the fixtures are created moments before the build).
    fn eager_cache(root: &Path) -> LayerCache {
        LayerCache {
            racy_window: std::time::Duration::ZERO,
            ..LayerCache::new(root)
        }
    }

    fn cached_blob(cache: &LayerCache, layer: &Layer) -> PathBuf {
        cache.root.join("blobs/sha256").join(layer.digest.hex())
    }

    fn same_blob(a: &Layer, b: &Layer) {
        assert_eq!(
            (&a.digest, &a.diff_id, a.size, a.compression),
            (&b.digest, &b.diff_id, b.size, b.compression)
        );
        assert_eq!(
            fs_err::read(&a.path).unwrap(),
            fs_err::read(&b.path).unwrap()
        );
    }

    #[test]
    fn layer_cache_hit_gives_the_same_bytes_without_reading_sources() {
        let dir = fixture();
        let cache_root = tempfile::tempdir().unwrap();
        let cache = eager_cache(cache_root.path());
        let zstd = Compression::Zstd { level: 1 };
        for compression in [Compression::None, Compression::Gzip, zstd] {
            let work = tempfile::tempdir().unwrap();
            let plain = build_layer(&spec(dir.path()), compression, 7, work.path()).unwrap();
            let first =
                build_layer_cached(&spec(dir.path()), compression, 7, work.path(), Some(&cache))
                    .unwrap();
            assert!(!first.cache_hit && !plain.cache_hit);
            same_blob(&plain, &first);
            let blob = cached_blob(&cache, &first);
            assert_eq!(
                fs_err::read(&blob).unwrap(),
                fs_err::read(&plain.path).unwrap()
            );

            let work2 = tempfile::tempdir().unwrap();
            let second = build_layer_cached(
                &spec(dir.path()),
                compression,
                7,
                work2.path(),
                Some(&cache),
            )
            .unwrap();
            assert!(second.cache_hit, "{compression:?}");
            same_blob(&plain, &second);
            // Linked into the build's own blob dir, so trimming the cache cannot break a push.
            assert_eq!(second.path, work2.path().join(second.digest.hex()));
        }
        // Another entry mtime, owner or level is another layer: a miss.
        let work = tempfile::tempdir().unwrap();
        let other_mtime =
            build_layer_cached(&spec(dir.path()), zstd, 8, work.path(), Some(&cache)).unwrap();
        assert!(!other_mtime.cache_hit);
        let mut owned = spec(dir.path());
        owned.uid = 1;
        let other_owner = build_layer_cached(&owned, zstd, 7, work.path(), Some(&cache)).unwrap();
        assert!(!other_owner.cache_hit);
        let level = Compression::Zstd { level: 2 };
        let other_level =
            build_layer_cached(&spec(dir.path()), level, 7, work.path(), Some(&cache)).unwrap();
        assert!(!other_level.cache_hit);
    }

    #[test]
    fn same_size_edit_with_the_old_mtime_restored_is_a_miss() {
        let dir = fixture();
        let cache_root = tempfile::tempdir().unwrap();
        let cache = eager_cache(cache_root.path());
        let work = tempfile::tempdir().unwrap();
        let c = Compression::Gzip;
        let before =
            build_layer_cached(&spec(dir.path()), c, 0, work.path(), Some(&cache)).unwrap();
        let file = dir.path().join("src/etc/app.conf");
        let old = fs_err::metadata(&file).unwrap();
        let old_mtime = old.modified().unwrap();
        // ctime ticks with the kernel's (possibly coarse) clock: retry until it moved.
        for i in 0..200 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            fs_err::write(&file, format!("a={}\n", i % 8 + 2)).unwrap();
            fs_err::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap()
                .set_modified(old_mtime)
                .unwrap();
            let meta = fs_err::metadata(&file).unwrap();
            if (meta.ctime(), meta.ctime_nsec()) != (old.ctime(), old.ctime_nsec()) {
                break;
            }
        }
        let meta = fs_err::metadata(&file).unwrap();
        assert_eq!((meta.modified().unwrap(), meta.len()), (old_mtime, 4));
        assert_ne!(fs_err::read(&file).unwrap(), b"a=1\n");

        let after = build_layer_cached(&spec(dir.path()), c, 0, work.path(), Some(&cache)).unwrap();
        assert!(!after.cache_hit, "ctime changed: the layer must be rebuilt");
        assert_ne!(after.diff_id, before.diff_id);
        let plain = build_layer(&spec(dir.path()), c, 0, work.path()).unwrap();
        same_blob(&plain, &after);
        let again = build_layer_cached(&spec(dir.path()), c, 0, work.path(), Some(&cache)).unwrap();
        assert!(again.cache_hit);
        same_blob(&plain, &again);
    }

    #[test]
    fn missing_or_damaged_cache_entries_lead_to_a_rebuild() {
        let dir = fixture();
        let cache_root = tempfile::tempdir().unwrap();
        let cache = eager_cache(cache_root.path());
        let c = Compression::None;
        let build = || {
            let work = tempfile::tempdir().unwrap();
            let layer =
                build_layer_cached(&spec(dir.path()), c, 0, work.path(), Some(&cache)).unwrap();
            assert_eq!(
                Digest::of(&fs_err::read(&layer.path).unwrap()),
                layer.digest
            );
            layer
        };
        let first = build();
        let blob = cached_blob(&cache, &first);

        // Truncated blob: a miss, rebuilt and stored again.
        let bytes = fs_err::read(&blob).unwrap();
        fs_err::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
        let rebuilt = build();
        assert!(!rebuilt.cache_hit);
        assert_eq!(rebuilt.digest, first.digest);
        assert_eq!(fs_err::read(&blob).unwrap(), bytes);
        assert!(build().cache_hit);

        // Missing blob.
        fs_err::remove_file(&blob).unwrap();
        assert!(!build().cache_hit);
        assert!(build().cache_hit);

        // Unreadable index entry.
        let index = fs_err::read_dir(cache.root.join("index"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs_err::write(&index, "{not json").unwrap();
        assert!(!build().cache_hit);
        assert!(build().cache_hit);

        // A cache that cannot be created never fails the build.
        let file = cache_root.path().join("a-file");
        fs_err::write(&file, "").unwrap();
        let broken = eager_cache(&file);
        let work = tempfile::tempdir().unwrap();
        let layer =
            build_layer_cached(&spec(dir.path()), c, 0, work.path(), Some(&broken)).unwrap();
        assert!(!layer.cache_hit);
        assert_eq!(layer.digest, first.digest);
    }

    #[test]
    fn layers_with_just_changed_sources_are_not_stored() {
        let dir = fixture();
        let cache_root = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(cache_root.path());
        let work = tempfile::tempdir().unwrap();
        let c = Compression::None;
        for _ in 0..2 {
            let layer =
                build_layer_cached(&spec(dir.path()), c, 0, work.path(), Some(&cache)).unwrap();
            assert!(!layer.cache_hit);
        }
        assert!(!cache.root.join("index").exists());
    }

    #[test]
    fn layer_cache_evicts_least_recently_used_blobs() {
        let dir = fixture();
        let cache_root = tempfile::tempdir().unwrap();
        let mut cache = eager_cache(cache_root.path());
        let work = tempfile::tempdir().unwrap();
        let c = Compression::None;
        let a = build_layer_cached(&spec(dir.path()), c, 1, work.path(), Some(&cache)).unwrap();
        let b = build_layer_cached(&spec(dir.path()), c, 2, work.path(), Some(&cache)).unwrap();
        // `a` used long ago, `b` recently; room for one of them.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        fs_err::File::open(cached_blob(&cache, &a))
            .unwrap()
            .set_modified(old)
            .unwrap();
        cache.max_bytes = a.size + b.size + 1;
        let c3 = build_layer_cached(&spec(dir.path()), c, 3, work.path(), Some(&cache)).unwrap();
        assert!(!c3.cache_hit);
        assert!(!cached_blob(&cache, &a).exists());
        assert!(cached_blob(&cache, &b).exists() && cached_blob(&cache, &c3).exists());
        assert_eq!(
            fs_err::read_dir(cache.root.join("index")).unwrap().count(),
            2
        );
        assert!(
            build_layer_cached(&spec(dir.path()), c, 2, work.path(), Some(&cache))
                .unwrap()
                .cache_hit
        );
        assert!(
            !build_layer_cached(&spec(dir.path()), c, 1, work.path(), Some(&cache))
                .unwrap()
                .cache_hit
        );
    }

    /// Planning used to drop the nodes under each new file by scanning every node: quadratic
    /// (40k files took seconds, 80k about a minute, on a cache hit too). 100k files must plan,
    /// build and hit the cache well within a bound that only the quadratic blow-up exceeds.
    #[test]
    fn a_hundred_thousand_files_plan_in_linear_time() {
        const FILES: usize = 100_000;
        const PER_DIR: usize = 1000;
        // Sources in memory when possible: creating 100k files on a busy disk takes a minute.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let out = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for i in 0..FILES {
            let d = src.join(format!("d{:03}", i / PER_DIR));
            if i % PER_DIR == 0 {
                fs_err::create_dir_all(&d).unwrap();
            }
            fs_err::File::create(d.join(format!("f{i:06}"))).unwrap();
        }
        let (done, finished) = std::sync::mpsc::channel();
        let root = out.path().to_owned();
        std::thread::spawn(move || {
            let spec = LayerSpec::new([(src, "/app")]);
            let cache = eager_cache(&root.join("cache"));
            let work = root.join("work");
            let built = build_layer_cached(&spec, Compression::None, 0, &work, Some(&cache));
            let hit = build_layer_cached(&spec, Compression::None, 0, &work, Some(&cache));
            let _ = done.send((built, hit));
        });
        let (built, hit) = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("planning 100k files took more than 60 s: quadratic again?");
        let (built, hit) = (built.unwrap(), hit.unwrap());
        assert!(!built.cache_hit && hit.cache_hit);
        assert_eq!(built.digest, hit.digest);
        let mut archive = tar::Archive::new(fs_err::File::open(&built.path).unwrap());
        let count = archive.entries().unwrap().count();
        // Every file, its directory and `app/`.
        assert_eq!(count, FILES + FILES / PER_DIR + 1);
    }
}
