//! `.dockerignore` parsing and matching: never panics, and matching stays fast (run with
//! libFuzzer's `-timeout`, as `scripts/fuzz` does).
//!
//! Input: `.dockerignore` text, optionally followed by a line `--` and paths to match, one a
//! line. The patterns' own text is matched too (wildcards taken literally), so matching runs
//! even when the input has no paths.
#![no_main]

use fastbuild_buildkit::patterns::{PatternMatcher, clean_path, parse_dockerignore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (ignore, paths) = match text.split_once("\n--\n") {
        Some((ignore, paths)) => (ignore, paths),
        None => (&*text, ""),
    };
    let patterns = parse_dockerignore(ignore);
    let Ok(matcher) = PatternMatcher::new(&patterns) else {
        return;
    };
    let candidates = paths
        .lines()
        .chain(patterns.iter().map(|p| p.trim_start_matches('!')))
        .take(64);
    for candidate in candidates {
        // Paths reach the matcher cleaned and relative, as the walk produces them.
        let cleaned = clean_path(candidate);
        let path = cleaned.trim_start_matches('/');
        let _ = matcher.matches(path);
        for pattern in matcher.patterns() {
            let _ = pattern.matches_path(path.as_bytes());
        }
    }
});
