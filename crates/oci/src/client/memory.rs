//! What a client remembers of registries between runs, when asked to
//! ([`super::RegistryOptions::memory_dir`]): the scheme each registry answered on, so a rebuild
//! does not probe it again, and the blobs recent pushes left in a repository, so a rebuild does
//! not ask for them again.
//!
//! Layout under the directory: `<host>/scheme` (`http` or `https`) and `<host>/repos/<name>.json`
//! (`{"blobs": {"sha256:…": <unix seconds when last pushed or found>}}`), `<host>` as
//! `host[:port]`, `<name>` the repository path. Hosts or names that would not make plain path
//! components are not remembered.
//!
//! Memory is a hint, never trusted over the registry: a remembered `http` is used only for a host
//! allowed plain HTTP now; a push that fails at the transport level (or with the 400 a TLS server
//! gives a plain-HTTP request) on a remembered scheme forgets it and is tried once more after a
//! probe (see [`crate::publish`]); remembered blobs older than [`BLOB_TTL`] are ignored, and
//! a manifest the registry refuses for a blob it lacks (`MANIFEST_BLOB_UNKNOWN`: it lost one)
//! makes the publisher forget the repository's blobs and push again, checking each one. Writes
//! are atomic (temp file + rename), so concurrent runs may share the directory; the last writer
//! wins, which costs the other at most a check it could have skipped. Every I/O error is logged
//! at `debug` level and ignored: memory never fails a push.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::Digest;

/// How long a blob found in or pushed to a repository is remembered as being there.
pub(crate) const BLOB_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most blobs remembered per repository (the most recent are kept).
const MAX_BLOBS: usize = 1024;

#[derive(Clone, Debug)]
pub(super) struct Memory {
    dir: PathBuf,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct RepoEntry {
    blobs: BTreeMap<Digest, u64>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `part` as one plain path component: ASCII letters, digits, `.`, `_`, `-`, `:`; not `.`/`..`.
fn component(part: &str) -> Option<&str> {
    let ok = !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    ok.then_some(part)
}

impl Memory {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn host_dir(&self, host: &str) -> Option<PathBuf> {
        Some(self.dir.join(component(host)?))
    }

    fn repo_file(&self, host: &str, name: &str) -> Option<PathBuf> {
        let mut path = self.host_dir(host)?.join("repos");
        let mut parts = name.split('/').peekable();
        while let Some(part) = parts.next() {
            let part = component(part)?;
            if parts.peek().is_some() {
                path.push(part);
            } else {
                path.push(format!("{part}.json"));
            }
        }
        Some(path)
    }

    /// The scheme `host` answered on last, if remembered.
    pub(super) fn scheme(&self, host: &str) -> Option<&'static str> {
        let path = self.host_dir(host)?.join("scheme");
        match fs_err::read_to_string(&path) {
            Ok(s) => match s.trim() {
                "http" => Some("http"),
                "https" => Some("https"),
                _ => None,
            },
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(error = %e, "cannot read a remembered registry scheme");
                }
                None
            }
        }
    }

    pub(super) fn set_scheme(&self, host: &str, scheme: &str) {
        let Some(dir) = self.host_dir(host) else {
            return;
        };
        if let Err(error) = write_atomic(&dir.join("scheme"), scheme.as_bytes()) {
            tracing::debug!(%error, host, "cannot remember a registry scheme");
        }
    }

    pub(super) fn forget_scheme(&self, host: &str) {
        if let Some(dir) = self.host_dir(host) {
            remove(&dir.join("scheme"));
        }
    }

    fn read_repo(path: &Path) -> RepoEntry {
        match fs_err::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::debug!(%error, "ignoring an unreadable blob memory");
                RepoEntry::default()
            }),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(error = %e, "cannot read a blob memory");
                }
                RepoEntry::default()
            }
        }
    }

    /// The blobs remembered in `name` on `host` within [`BLOB_TTL`].
    pub(super) fn blobs(&self, host: &str, name: &str) -> Vec<Digest> {
        let Some(path) = self.repo_file(host, name) else {
            return Vec::new();
        };
        let fresh_since = now().saturating_sub(BLOB_TTL.as_secs());
        Self::read_repo(&path)
            .blobs
            .into_iter()
            .filter(|(_, at)| *at >= fresh_since)
            .map(|(d, _)| d)
            .collect()
    }

    /// Remembers `digests` as present in `name` on `host` now.
    pub(super) fn add_blobs<'a>(
        &self,
        host: &str,
        name: &str,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) {
        let Some(path) = self.repo_file(host, name) else {
            return;
        };
        let now = now();
        let fresh_since = now.saturating_sub(BLOB_TTL.as_secs());
        let mut entry = Self::read_repo(&path);
        entry.blobs.retain(|_, at| *at >= fresh_since);
        for d in digests {
            entry.blobs.insert(d.clone(), now);
        }
        if entry.blobs.len() > MAX_BLOBS {
            let mut by_age: Vec<(u64, Digest)> =
                entry.blobs.iter().map(|(d, at)| (*at, d.clone())).collect();
            by_age.sort_unstable_by(|a, b| b.cmp(a));
            entry.blobs = by_age
                .into_iter()
                .take(MAX_BLOBS)
                .map(|(at, d)| (d, at))
                .collect();
        }
        let written = serde_json::to_vec(&entry)
            .map_err(io::Error::other)
            .and_then(|bytes| write_atomic(&path, &bytes));
        if let Err(error) = written {
            tracing::debug!(%error, host, name, "cannot remember pushed blobs");
        }
    }

    pub(super) fn forget_blobs(&self, host: &str, name: &str) {
        if let Some(path) = self.repo_file(host, name) {
            remove(&path);
        }
    }
}

fn remove(path: &Path) {
    match fs_err::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::debug!(%error, "cannot forget a registry memory"),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_blobs_are_remembered_per_host_and_repository() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memory::new(dir.path().to_owned());
        assert_eq!(m.scheme("127.0.0.1:5000"), None);
        m.set_scheme("127.0.0.1:5000", "http");
        assert_eq!(m.scheme("127.0.0.1:5000"), Some("http"));
        assert_eq!(m.scheme("127.0.0.1:5001"), None);
        m.forget_scheme("127.0.0.1:5000");
        assert_eq!(m.scheme("127.0.0.1:5000"), None);

        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        m.add_blobs("127.0.0.1:5000", "team/app", [&a]);
        m.add_blobs("127.0.0.1:5000", "team/app", [&b]);
        assert_eq!(m.blobs("127.0.0.1:5000", "team/app"), {
            let mut v = vec![a.clone(), b.clone()];
            v.sort();
            v
        });
        assert!(m.blobs("127.0.0.1:5000", "team/other").is_empty());
        assert!(m.blobs("127.0.0.1:5000", "team").is_empty());
        m.forget_blobs("127.0.0.1:5000", "team/app");
        assert!(m.blobs("127.0.0.1:5000", "team/app").is_empty());
    }

    #[test]
    fn names_that_are_not_plain_path_components_are_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memory::new(dir.path().join("mem"));
        m.set_scheme("..", "http");
        m.set_scheme("a/b", "http");
        m.add_blobs("127.0.0.1:5000", "team/../../x", [&Digest::of(b"a")]);
        m.add_blobs("127.0.0.1:5000", "/abs", [&Digest::of(b"a")]);
        assert!(!dir.path().join("mem").exists());
    }

    #[test]
    fn stale_and_unreadable_entries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memory::new(dir.path().to_owned());
        let path = m.repo_file("r", "app").unwrap();
        let old = Digest::of(b"old");
        let stale = now() - BLOB_TTL.as_secs() - 1;
        write_atomic(
            &path,
            format!(r#"{{"blobs":{{"{old}":{stale}}}}}"#).as_bytes(),
        )
        .unwrap();
        assert!(m.blobs("r", "app").is_empty());
        write_atomic(&path, b"not json").unwrap();
        assert!(m.blobs("r", "app").is_empty());
        write_atomic(&m.host_dir("r").unwrap().join("scheme"), b"gopher").unwrap();
        assert_eq!(m.scheme("r"), None);
    }
}
