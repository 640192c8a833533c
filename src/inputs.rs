//! What a service's build reads and what a change to it means: the `.dockerignore` that applies
//! to a Dockerfile build (as the Dockerfile frontend picks and parses it), and the matcher of
//! what it keeps out of the context — shared by the BuildKit adapter, `watch`, the Tilt
//! fragment and `doctor`, none of which talks to a builder for it.

use std::path::{Path, PathBuf};

use fastbuild_buildkit::patterns::{PatternMatcher, parse_dockerignore_bytes};

use crate::settings::BuildkitPlan;

/// The `.dockerignore` that applies to a Dockerfile build: `<Dockerfile>.dockerignore` first,
/// then `<context>/.dockerignore`.
pub fn ignore_file_for(context: &Path, dockerfile: &Path) -> Option<PathBuf> {
    let specific = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    if specific.is_file() {
        return Some(specific);
    }
    let general = context.join(".dockerignore");
    general.is_file().then_some(general)
}

/// The ignore patterns of a build, parsed as the Dockerfile frontend parses them (empty when
/// there is no ignore file).
pub fn ignore_patterns(b: &BuildkitPlan) -> Vec<String> {
    ignore_lines(b)
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// The ignore file's patterns as bytes (a `.dockerignore` need not be UTF-8).
fn ignore_lines(b: &BuildkitPlan) -> Vec<Vec<u8>> {
    ignore_file_for(&b.context, &b.dockerfile)
        .and_then(|f| std::fs::read(f).ok())
        .map(|bytes| parse_dockerignore_bytes(&bytes))
        .unwrap_or_default()
}

/// A matcher for the paths (relative to the context) that the ignore file keeps out of the
/// build context; `None` when nothing is excluded.
pub fn excluder(b: &BuildkitPlan) -> Option<PatternMatcher> {
    let patterns = ignore_lines(b);
    if patterns.is_empty() {
        return None;
    }
    PatternMatcher::new(patterns).ok()
}
