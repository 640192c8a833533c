//! The reuse state of a service (`.fastbuild/reuse/<service>.json`): its recent fingerprints
//! with their images, and the stat-keyed content hashes of the files it read. A cache: a
//! missing, unreadable, oversized or foreign file is an empty state (it costs a solve, never a
//! wrong reuse), and it is replaced by rename without an fsync.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::Hasher;
use crate::builder::ImageResult;

const VERSION: u32 = 1;
/// The state is read whole; a larger file is not ours (50,000 files take about 8 MB).
const MAX_BYTES: u64 = 64 << 20;
/// Fingerprints kept per service.
const RECENT: usize = 8;
/// A stat this close to the file's last change (or later) is not trusted: the file may change
/// again within the clock's granularity without its size or times moving.
const RACY_NS: i64 = 2_000_000_000;

/// A file's content hash and the stat it was taken under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    size: i64,
    mtime: i64,
    dev: u64,
    ino: u64,
    ctime: i64,
    sha256: String,
}

/// Content hashes by `<root>\0<relative path>`.
pub type Stamps = BTreeMap<String, Stamp>;

/// A recorded build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// The inputs' fingerprint.
    pub fingerprint: String,
    /// When it was built (seconds since the epoch).
    pub built_at: u64,
    /// What the build produced.
    pub image: ImageResult,
}

/// A service's reuse state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    version: u32,
    recent: Vec<Recorded>,
    stamps: Stamps,
}

/// `<root>/.fastbuild/reuse/<service>.json` (a service name with characters a file name should
/// not have is hex-encoded).
pub fn path(root: &Path, service: &str) -> PathBuf {
    let plain = !service.is_empty()
        && !service.starts_with('.')
        && service
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    let name = if plain {
        service.to_owned()
    } else {
        format!("x-{}", hex::encode(service))
    };
    root.join(".fastbuild")
        .join("reuse")
        .join(format!("{name}.json"))
}

impl State {
    /// The state of `service`, or an empty one.
    pub fn load(root: &Path, service: &str) -> Self {
        let file = path(root, service);
        let read = || -> Result<Self> {
            let f = fs_err::File::open(&file)?;
            // Sized up front: a growing buffer would hold up to twice the file.
            let len = f.metadata().map_or(0, |m| m.len()).min(MAX_BYTES + 1);
            let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            f.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
            anyhow::ensure!(
                bytes.len() as u64 <= MAX_BYTES,
                "larger than {MAX_BYTES} bytes"
            );
            let state: Self = serde_json::from_slice(&bytes)?;
            anyhow::ensure!(state.version == VERSION, "version {}", state.version);
            Ok(state)
        };
        match read() {
            Ok(s) => s,
            Err(e) => {
                if file.exists() {
                    tracing::debug!(file = %file.display(), "reuse state ignored: {e:#}");
                }
                Self::default()
            }
        }
    }

    /// The recorded build with `fingerprint`, if any.
    pub fn find(&self, fingerprint: &str) -> Option<&Recorded> {
        self.recent.iter().find(|r| r.fingerprint == fingerprint)
    }

    /// The content hashes kept, moved out (the state keeps none until [`Self::with_stamps`]).
    pub fn take_stamps(&mut self) -> Stamps {
        std::mem::take(&mut self.stamps)
    }

    /// The same state with the content hashes of the latest walk.
    #[must_use]
    pub fn with_stamps(mut self, stamps: Stamps) -> Self {
        self.stamps = stamps;
        self
    }

    /// The same state with `image` recorded under `fingerprint`, newest first.
    #[must_use]
    pub fn recording(mut self, fingerprint: String, image: &ImageResult) -> Self {
        self.recent.retain(|r| r.fingerprint != fingerprint);
        let mut image = image.clone();
        image.reused = false;
        self.recent.insert(
            0,
            Recorded {
                fingerprint,
                built_at: crate::history::now(),
                image,
            },
        );
        self.recent.truncate(RECENT);
        self
    }

    /// Writes the state (temp file + rename: never half a file; no fsync: it is a cache),
    /// streamed: with tens of thousands of files the JSON is megabytes, and holding it (and the
    /// old file, to compare) would double the peak memory of a build. An unchanged state leaves
    /// the file as it was.
    pub fn save(mut self, root: &Path, service: &str) -> Result<()> {
        self.version = VERSION;
        let file = path(root, service);
        let dir = file.parent().expect("the state file has a directory");
        fs_err::create_dir_all(dir)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot create a temporary file in `{}`", dir.display()))?;
        let new_hash = {
            let mut out = HashingWriter {
                inner: std::io::BufWriter::new(tmp.as_file()),
                hash: Sha256::new(),
            };
            serde_json::to_writer(&mut out, &self)?;
            std::io::Write::flush(&mut out)
                .with_context(|| format!("cannot write `{}`", tmp.path().display()))?;
            out.hash.finalize()
        };
        if file_sha256(&file).is_some_and(|old| old == new_hash) {
            return Ok(());
        }
        tmp.persist(&file)
            .with_context(|| format!("cannot replace `{}`", file.display()))?;
        Ok(())
    }
}

/// Writes through to `inner` and hashes what it writes.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The sha256 of the file at `path` (read in pieces), if it can be read.
fn file_sha256(path: &Path) -> Option<sha2::digest::Output<Sha256>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut hash = Sha256::new();
    std::io::copy(&mut f, &mut hash).ok()?;
    Some(hash.finalize())
}

/// The fingerprint of the tree at `root` as FileSync would send it with the ignore `patterns`,
/// never `withheld`: every entry's path, mode, size, link target, device numbers and xattrs,
/// and each file's content hash — taken from `previous` when its stat is unchanged and was
/// settled, else read. Every hash used goes into `stamps` (settled ones only).
pub fn hash_tree(
    root: &Path,
    patterns: &[Vec<u8>],
    withheld: &[PathBuf],
    previous: &Stamps,
    stamps: &mut Stamps,
) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let prefix = format!("{}\0", root.display());
    let mut h = Hasher(Sha256::new());
    let mut failure: Option<anyhow::Error> = None;
    let mut key = prefix.clone();
    fastbuild_buildkit::scan_dir(root, patterns, withheld, &mut |entry| {
        if failure.is_some() {
            return;
        }
        h.field("path", &entry.rel);
        h.field(
            "stat",
            format!(
                "{:o} {} {}:{}",
                entry.mode, entry.size, entry.device.0, entry.device.1
            )
            .as_bytes(),
        );
        if !entry.linkname.is_empty() {
            h.field("link", &entry.linkname);
        }
        for (name, value) in &entry.xattrs {
            h.field("xattr", name);
            h.field("value", value);
        }
        if !entry.is_regular() {
            return;
        }
        key.truncate(prefix.len());
        // Raw-byte names that are not UTF-8 are hashed every time (never cached).
        let cacheable = std::str::from_utf8(&entry.rel)
            .map(|rel| key.push_str(rel))
            .is_ok();
        let (dev, ino, ctime) = entry.identity.unwrap_or_default();
        let known = previous.get(&key).filter(|s| {
            cacheable
                && s.size == entry.size
                && s.mtime == entry.mod_time
                && (s.dev, s.ino, s.ctime) == (dev, ino, ctime)
        });
        let sha = match known {
            Some(s) => s.sha256.clone(),
            None => match hash_file(&entry.path) {
                Ok(sha) => sha,
                Err(e) => {
                    failure = Some(e);
                    return;
                }
            },
        };
        h.field("content", sha.as_bytes());
        let settled = entry.mod_time < now - RACY_NS && ctime < now - RACY_NS;
        if cacheable && settled && entry.identity.is_some() {
            stamps.insert(
                key.clone(),
                Stamp {
                    size: entry.size,
                    mtime: entry.mod_time,
                    dev,
                    ino,
                    ctime,
                    sha256: sha,
                },
            );
        }
    })
    .with_context(|| format!("cannot walk `{}`", root.display()))?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(h.finish())
}

/// SHA-256 of a file's bytes (not following a symlink that replaced it since the walk).
fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(hex::encode(sha.finalize()))
}

/// A keyed hash of a secret's value, so that the state file never holds a plain hash of it (a
/// short secret could be guessed from one): SHA-256 over a private 32-byte key kept in the
/// user's cache directory (`$XDG_CACHE_HOME/fastbuild/reuse.key`, mode 0600, created on first
/// use) and the value. `None` when there is no such key and none can be made.
pub fn keyed_hash(value: &[u8]) -> Option<String> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    keyed_hash_in(&dir, value)
}

/// [`keyed_hash`] with the key under `cache_dir`.
fn keyed_hash_in(cache_dir: &Path, value: &[u8]) -> Option<String> {
    let key = private_key(&cache_dir.join("fastbuild"))?;
    let mut sha = Sha256::new();
    sha.update(b"fastbuild-secret\0");
    sha.update(key);
    sha.update(value);
    Some(hex::encode(sha.finalize()))
}

fn private_key(dir: &Path) -> Option<[u8; 32]> {
    let file = dir.join("reuse.key");
    let read = |file: &Path| -> Option<[u8; 32]> {
        let bytes = std::fs::read(file).ok()?;
        bytes.try_into().ok()
    };
    if let Some(key) = read(&file) {
        return Some(key);
    }
    std::fs::create_dir_all(dir).ok()?;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut key))
        .ok()?;
    let tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .ok()?;
    std::fs::write(tmp.path(), key).ok()?;
    // Another process may have made one meanwhile: the first key stays.
    match tmp.persist_noclobber(&file) {
        Ok(_) => Some(key),
        Err(_) => read(&file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_become_safe_file_names() {
        let root = Path::new("/p");
        assert_eq!(path(root, "api"), Path::new("/p/.fastbuild/reuse/api.json"));
        assert_eq!(
            path(root, "../x"),
            Path::new("/p/.fastbuild/reuse/x-2e2e2f78.json")
        );
    }

    #[test]
    fn unchanged_files_are_not_read_again_and_recent_changes_are() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs_err::write(root.join("a"), "one").unwrap();
        fs_err::write(root.join("b"), "two").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for f in ["a", "b"] {
            std::fs::File::options()
                .write(true)
                .open(root.join(f))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let mut first = Stamps::default();
        let d1 = hash_tree(root, &[], &[], &Stamps::default(), &mut first).unwrap();
        // Only `b`'s ctime is recent (set_modified changes it): nothing is settled yet.
        assert!(first.is_empty(), "{first:?}");
        // A forged stamp for `a` with its current stat is believed: the cache is used.
        let meta = std::fs::symlink_metadata(root.join("a")).unwrap();
        let mut forged = Stamps::default();
        forged.insert(
            format!("{}\0a", root.display()),
            Stamp {
                size: 3,
                mtime: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                dev: meta.dev(),
                ino: meta.ino(),
                ctime: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                sha256: "forged".into(),
            },
        );
        let d2 = hash_tree(root, &[], &[], &forged, &mut Stamps::default()).unwrap();
        assert_ne!(d1, d2, "the stamp's hash was used");
        // Changed content under the same size: a new stat (ctime), so read again.
        fs_err::write(root.join("a"), "eno").unwrap();
        let d3 = hash_tree(root, &[], &[], &forged, &mut Stamps::default()).unwrap();
        assert_ne!(d3, d2);
        assert_ne!(d3, d1);
    }

    #[test]
    fn ignored_and_withheld_paths_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs_err::write(root.join("kept"), "k").unwrap();
        fs_err::create_dir(root.join(".fastbuild")).unwrap();
        let patterns = vec![b"*.log".to_vec()];
        let withheld = vec![root.join(".fastbuild")];
        let d = |s: &mut Stamps| hash_tree(root, &patterns, &withheld, &Stamps::default(), s);
        let before = d(&mut Stamps::default()).unwrap();
        fs_err::write(root.join("x.log"), "noise").unwrap();
        fs_err::write(root.join(".fastbuild/state"), "noise").unwrap();
        assert_eq!(d(&mut Stamps::default()).unwrap(), before);
        fs_err::write(root.join("kept2"), "k").unwrap();
        assert_ne!(d(&mut Stamps::default()).unwrap(), before);
    }

    #[test]
    fn secrets_are_hashed_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let a = keyed_hash_in(dir.path(), b"hunter2").unwrap();
        assert_eq!(keyed_hash_in(dir.path(), b"hunter2").unwrap(), a);
        assert_ne!(keyed_hash_in(dir.path(), b"hunter3").unwrap(), a);
        let plain = hex::encode(Sha256::digest(b"hunter2"));
        assert_ne!(a, plain);
        let key = dir.path().join("fastbuild/reuse.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
