//! The FileSync request handler's input handling: the daemon-controlled metadata (`dir-name`,
//! `include-patterns`, `exclude-patterns`, `followpaths`, their `-encoded` markers and the
//! query-unescaping), the filter built from it and the walk over a small fixed tree (with
//! symlinks inside, outside and in a loop). Never panics, and the walk only ever sends paths
//! inside the directory, each once, each after its parent.
//!
//! Input: lines `KEY VALUE`; `d`, `i`, `e`, `f` stand for `dir-name`, `include-patterns`,
//! `exclude-patterns`, `followpaths`, and `I`, `E`, `F` for their `-encoded` markers; any other
//! KEY is used as it is.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::symlink;
use std::sync::LazyLock;

use fastbuild_buildkit::fuzzing;
use libfuzzer_sys::fuzz_target;

/// `<tmp>/ctx` is the synced directory, `<tmp>/outside` must never be reached.
static TREE: LazyLock<tempfile::TempDir> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("ctx");
    for d in [
        "a/x",
        "a-b",
        "node_modules/keep",
        "node_modules/drop",
        "src",
        "sp ace",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in [
        "a/x/file",
        "a/y",
        "a-b/z",
        "node_modules/keep/k.js",
        "node_modules/drop/d.js",
        "src/main.rs",
        "Dockerfile",
        ".dockerignore",
        "secret.env",
        "sp ace/f+%20",
    ] {
        std::fs::write(root.join(f), f).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("outside")).unwrap();
    std::fs::write(dir.path().join("outside/secret"), "never sent").unwrap();
    symlink("/etc/passwd", root.join("src/passwd")).unwrap();
    symlink("src", root.join("link-to-src")).unwrap();
    symlink("../outside", root.join("out")).unwrap();
    symlink("..", root.join("up")).unwrap();
    symlink("loop", root.join("loop")).unwrap();
    symlink("a/../link-to-src/../out/secret", root.join("chain")).unwrap();
    dir
});

fn key(short: &str) -> &str {
    match short {
        "d" => "dir-name",
        "i" => "include-patterns",
        "e" => "exclude-patterns",
        "f" => "followpaths",
        "I" => "include-patterns-encoded",
        "E" => "exclude-patterns-encoded",
        "F" => "followpaths-encoded",
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    let root = TREE.path().join("ctx");
    let mut metadata: Vec<(&str, &[u8])> = Vec::new();
    for line in data.split(|b| *b == b'\n').take(32) {
        let (k, v) = match line.iter().position(|b| *b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let Ok(k) = std::str::from_utf8(k) else {
            continue;
        };
        metadata.push((key(k), v));
    }
    let _ = fuzzing::query_unescape(data);
    let dirs = BTreeMap::from([("context".to_owned(), root.as_path())]);
    let Ok(sent) = fuzzing::filesync_request(&dirs, &metadata) else {
        return;
    };
    let mut seen = BTreeSet::new();
    for (path, _mode) in &sent {
        assert!(
            !path.is_empty()
                && !path.starts_with('/')
                && path
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".."),
            "not a clean relative path: {path:?}"
        );
        assert!(
            std::fs::symlink_metadata(root.join(path)).is_ok(),
            "{path:?} is not in the directory"
        );
        if let Some((parent, _)) = path.rsplit_once('/') {
            assert!(seen.contains(parent), "{path:?} sent before its parent");
        }
        assert!(seen.insert(path.as_str()), "{path:?} sent twice");
    }
});
