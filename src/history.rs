//! The digest history of a project: every successful build or push, and every rollback,
//! appends one JSON line to `.fastbuild/history.jsonl` beside `fastbuild.yaml` — what
//! `fastbuild history` lists and `fastbuild rollback` goes back through.
//!
//! Stage: output (written after a service succeeded), read by the `history` and `rollback`
//! commands. Safe under concurrent fastbuild processes: appends and the occasional trim happen
//! under an exclusive `flock` of `.fastbuild/history.lock`, each record is one `write` of one
//! line, and a trim rewrites the file through a temp file and a rename. Bounded: past
//! [`MAX_RECORDS`] the oldest records are dropped. A corrupt or truncated line (a crash, a
//! hand edit) is skipped with a warning, never fatal.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use fastbuild_oci::Digest;

use crate::builder::ImageResult;
use crate::printer::Printer;
use crate::settings::{Destination, ServicePlan};
use serde::{Deserialize, Serialize};

/// Records kept; older ones are dropped when the journal grows past it by a tenth.
pub const MAX_RECORDS: usize = 1000;
/// The journal, relative to the project root.
pub const JOURNAL: &str = ".fastbuild/history.jsonl";
const LOCK: &str = ".fastbuild/history.lock";

/// What made a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `build`, `push` or `watch` pushed this digest.
    Build,
    /// `rollback` pinned this (earlier) digest again.
    Rollback,
}

/// The checkout a build came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// `HEAD`'s commit.
    pub commit: String,
    /// Uncommitted changes to tracked files (`None`: could not be told).
    pub dirty: Option<bool>,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Service.
    pub service: String,
    /// Repository as the cluster pulls it (what the values file pins).
    pub repository: String,
    /// The digest pinned (`sha256:…` in the journal; a line with anything else is not a record).
    pub digest: Digest,
    /// Seconds since the Unix epoch (UTC).
    pub time: u64,
    /// What made it.
    pub kind: Kind,
    /// `buildkit` or `native` (empty for a rollback).
    #[serde(default)]
    pub builder: String,
    /// The checkout, when the project is in a git work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitState>,
    /// The values file written, relative to the project root, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_file: Option<String>,
}

impl Record {
    /// `YYYY-MM-DD HH:MM:SS` UTC.
    pub fn time_shown(&self) -> String {
        crate::printer::time_shown(self.time)
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The git state of `root`'s work tree, if it is one. `git` runs with the repository's
/// fsmonitor hook disabled (a hook would be a program the checkout chooses); a clone carries no
/// `.git/config` of the remote's, so no other configured program comes with an untrusted
/// repository.
pub fn git_state(root: &Path) -> Option<GitState> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["-c", "core.fsmonitor=false", "--no-optional-locks"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--verify", "-q", "HEAD"])?;
    if commit.is_empty() {
        return None;
    }
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    Some(GitState { commit, dirty })
}

/// The git state of project roots, read in the background from the start of a run: `git
/// status` in a large work tree takes a while, and a build's record need not wait for it after
/// the image is pushed. It is the state when the run started — the checkout the build read. A
/// state nobody asks for (a reused build records nothing) is never waited for.
#[derive(Debug, Default)]
pub struct GitStates {
    pending: std::sync::Mutex<BTreeMap<PathBuf, std::thread::JoinHandle<Option<GitState>>>>,
    read: std::sync::Mutex<BTreeMap<PathBuf, Option<GitState>>>,
}

impl GitStates {
    /// Starts reading the state of each distinct root, a thread each.
    pub fn prefetch<'a>(roots: impl IntoIterator<Item = &'a Path>) -> Self {
        let states = Self::default();
        {
            let mut pending = states.pending.lock().expect("not poisoned");
            for root in roots {
                if !pending.contains_key(root) {
                    let owned = root.to_owned();
                    pending.insert(
                        root.to_owned(),
                        std::thread::spawn(move || git_state(&owned)),
                    );
                }
            }
        }
        states
    }

    /// The state of `root`: the one read in the background, else read now.
    pub fn get(&self, root: &Path) -> Option<GitState> {
        if let Some(state) = self.read.lock().expect("not poisoned").get(root) {
            return state.clone();
        }
        let started = self.pending.lock().expect("not poisoned").remove(root);
        let state = match started {
            Some(handle) => handle.join().ok().flatten(),
            None => git_state(root),
        };
        self.read
            .lock()
            .expect("not poisoned")
            .insert(root.to_owned(), state.clone());
        state
    }
}

/// The journal of the project at `root`.
#[derive(Debug, Clone)]
pub struct Journal {
    root: PathBuf,
}

impl Journal {
    /// The journal of the project at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// The journal file.
    pub fn path(&self) -> PathBuf {
        self.root.join(JOURNAL)
    }

    /// Appends `record` (trimming the journal to [`MAX_RECORDS`] when it has grown past it).
    pub fn append(&self, record: &Record) -> Result<()> {
        let dir = self.root.join(".fastbuild");
        fs_err::create_dir_all(&dir)?;
        let lock = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(LOCK))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", self.root.join(LOCK).display()))?;
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let path = self.path();
        {
            let mut f = fs_err::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(line.as_bytes())?;
        }
        let (records, _) = self.read()?;
        if records.len() > MAX_RECORDS + MAX_RECORDS / 10 {
            let keep = &records[records.len() - MAX_RECORDS..];
            let mut text = String::new();
            for r in keep {
                text.push_str(&serde_json::to_string(r)?);
                text.push('\n');
            }
            crate::atomic::write(&path, text.as_bytes())?;
        }
        // The lock goes with `lock`.
        Ok(())
    }

    /// Every readable record, oldest first, and a warning per line that could not be read.
    pub fn read(&self) -> Result<(Vec<Record>, Vec<String>)> {
        let path = self.path();
        let bytes = match fs_err::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()));
            }
            Err(e) => return Err(e.into()),
        };
        let mut records = Vec::new();
        let mut warnings = Vec::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => records.push(r),
                Err(e) => warnings.push(format!(
                    "{}:{}: skipped a line that is not a history record ({e})",
                    path.display(),
                    i + 1
                )),
            }
        }
        Ok((records, warnings))
    }
}

/// The distinct digests `service` was pinned to, newest first (a digest pinned again counts
/// where it was pinned last).
pub fn digests_newest_first(records: &[Record], service: &str) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::new();
    for r in records.iter().rev().filter(|r| r.service == service) {
        if !out.contains(&r.digest) {
            out.push(r.digest.clone());
        }
    }
    out
}

/// Appends a build of `plan` to the project's history (a warning, never a failure, when the
/// journal cannot be written: the image is pushed and the values file written either way).
pub fn record_build(
    plan: &ServicePlan,
    image: &ImageResult,
    values_written: bool,
    git: Option<GitState>,
    printer: &Printer,
) {
    if !matches!(plan.registry.destination, Destination::Registry { .. }) {
        return;
    }
    let record = Record {
        service: plan.name.clone(),
        repository: plan.registry.pull_repository.clone(),
        digest: image.digest.clone(),
        time: now(),
        kind: Kind::Build,
        builder: match plan.builder {
            crate::settings::BuilderPlan::Buildkit(_) => "buildkit",
            crate::settings::BuilderPlan::Native(_) => "native",
        }
        .to_owned(),
        git,
        values_file: values_written.then(|| {
            plan.values_file
                .strip_prefix(&plan.root)
                .unwrap_or(&plan.values_file)
                .display()
                .to_string()
        }),
    };
    if let Err(e) = Journal::new(&plan.root).append(&record) {
        printer.warn(&format!(
            "could not record `{}` in the history ({e:#}); the image and values file are fine",
            plan.name
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(service: &str, digest: char, time: u64) -> Record {
        Record {
            service: service.into(),
            repository: format!("localhost:5000/{service}"),
            digest: format!("sha256:{}", digest.to_string().repeat(64))
                .parse()
                .unwrap(),
            time,
            kind: Kind::Build,
            builder: "native".into(),
            git: None,
            values_file: None,
        }
    }

    #[test]
    fn appends_reads_and_skips_corrupt_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        j.append(&record("api", 'a', 1)).unwrap();
        fs_err::OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(b"{\"service\": \"api\", \"trunc\n")
            .unwrap();
        j.append(&record("api", 'b', 2)).unwrap();
        let (records, warnings) = j.read().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("history.jsonl:2"), "{warnings:?}");
    }

    #[test]
    fn the_journal_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        for i in 0..(MAX_RECORDS + MAX_RECORDS / 10 + 5) {
            j.append(&record("api", 'a', i as u64)).unwrap();
        }
        let (records, _) = j.read().unwrap();
        assert!(
            records.len() <= MAX_RECORDS + MAX_RECORDS / 10,
            "{}",
            records.len()
        );
        assert_eq!(
            records.last().unwrap().time,
            (MAX_RECORDS + MAX_RECORDS / 10 + 4) as u64
        );
    }

    #[test]
    fn digests_are_distinct_newest_first() {
        let rs = [
            record("api", 'a', 1),
            record("api", 'b', 2),
            record("web", 'c', 3),
            record("api", 'a', 4),
            record("api", 'd', 5),
        ];
        let d: Vec<char> = digests_newest_first(&rs, "api")
            .iter()
            .map(|d| d.hex().chars().last().unwrap())
            .collect();
        assert_eq!(d, ['d', 'a', 'b']);
    }

    #[test]
    fn times_are_shown_in_utc() {
        let mut r = record("api", 'a', 0);
        assert_eq!(r.time_shown(), "1970-01-01 00:00:00");
        r.time = 1_796_083_200; // 2026-12-01
        assert_eq!(r.time_shown(), "2026-12-01 00:00:00");
        r.time = 951_825_599; // 2000-02-29 11:59:59
        assert_eq!(r.time_shown(), "2000-02-29 11:59:59");
    }
}
