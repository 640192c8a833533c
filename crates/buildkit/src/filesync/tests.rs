use super::*;
use crate::proto::fsutil::types::XattrEntry;

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in [
        "a",
        "a/x",
        "a-b",
        "node_modules/keep",
        "node_modules/drop",
        "src",
    ] {
        fs_err::create_dir_all(root.join(d)).unwrap();
    }
    for f in [
        "a/x/file",
        "a/y",
        "a-b/z",
        "node_modules/keep/k.js",
        "node_modules/drop/d.js",
        "src/main.rs",
        "src/lib.rs",
        "README.md",
        "secret.env",
        "Dockerfile",
    ] {
        fs_err::write(root.join(f), f).unwrap();
    }
    std::os::unix::fs::symlink("/etc/passwd", root.join("src/passwd")).unwrap();
    std::os::unix::fs::symlink("src", root.join("link-to-src")).unwrap();
    dir
}

fn strings(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn stats(root: &Path, sync: &SyncRequest) -> Vec<Stat> {
    let filter = Filter::new(root, sync).unwrap();
    let mut out = Vec::new();
    walk(root, &filter, &mut |stat, _| {
        out.push(stat);
        true
    })
    .unwrap();
    out
}

fn sent(root: &Path, sync: &SyncRequest) -> Vec<(String, u32)> {
    stats(root, sync)
        .into_iter()
        .map(|s| (String::from_utf8(s.path).unwrap(), s.mode))
        .collect()
}

fn paths(v: &[(String, u32)]) -> Vec<&str> {
    v.iter().map(|(p, _)| p.as_str()).collect()
}

fn excluding(patterns: &[&str]) -> SyncRequest {
    SyncRequest {
        exclude_patterns: strings(patterns),
        ..SyncRequest::default()
    }
}

#[test]
fn walk_order_is_fsutil_order_with_go_modes() {
    let dir = tree();
    let all = sent(dir.path(), &SyncRequest::default());
    assert_eq!(
        paths(&all),
        [
            "Dockerfile",
            "README.md",
            "a",
            "a/x",
            "a/x/file",
            "a/y",
            "a-b",
            "a-b/z",
            "link-to-src",
            "node_modules",
            "node_modules/drop",
            "node_modules/drop/d.js",
            "node_modules/keep",
            "node_modules/keep/k.js",
            "secret.env",
            "src",
            "src/lib.rs",
            "src/main.rs",
            "src/passwd",
        ]
    );
    let mode = |p: &str| all.iter().find(|(q, _)| q == p).unwrap().1;
    assert_eq!(mode("a") & MODE_DIR, MODE_DIR);
    assert_eq!(mode("src/passwd") & MODE_SYMLINK, MODE_SYMLINK);
    assert_eq!(mode("a/y") & MODE_TYPE, 0);
    let stats = stats(dir.path(), &SyncRequest::default());
    let link = stats.iter().find(|s| s.path == b"src/passwd").unwrap();
    assert_eq!(link.linkname, b"/etc/passwd");
    assert_eq!(link.size, 11, "a symlink's size is its target's length");
    assert!(stats.iter().all(|s| s.uid == 0 && s.gid == 0));
    let d = stats.iter().find(|s| s.path == b"a").unwrap();
    assert_eq!(d.size, 0);
}

#[test]
fn excludes_with_exceptions_emit_parents_lazily() {
    let dir = tree();
    let got = sent(
        dir.path(),
        &excluding(&["node_modules", "!node_modules/keep", "*.env"]),
    );
    let got = paths(&got);
    assert!(got.contains(&"node_modules"));
    assert!(got.contains(&"node_modules/keep"));
    assert!(got.contains(&"node_modules/keep/k.js"));
    assert!(!got.contains(&"node_modules/drop"));
    assert!(!got.contains(&"node_modules/drop/d.js"));
    assert!(!got.contains(&"secret.env"));
    // Nothing kept inside: the excluded parent is not sent at all.
    let got = sent(dir.path(), &excluding(&["a", "!a/nothing/**"]));
    assert!(
        !paths(&got)
            .iter()
            .any(|p| p.starts_with('a') && *p != "a-b" && *p != "a-b/z")
    );
}

/// `**/*.md` then `!docs`: docker excludes `docs/a.md` (fsutil evaluates each level with its
/// parent's per-pattern results; `!docs` was skipped at `docs`).
#[test]
fn markdown_excluded_even_under_an_excepted_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs_err::create_dir_all(root.join("docs/x")).unwrap();
    for f in [
        "docs/a.md",
        "docs/b.txt",
        "docs/x/c.md",
        "top.md",
        "keep.txt",
    ] {
        fs_err::write(root.join(f), f).unwrap();
    }
    let got = sent(root, &excluding(&["**/*.md", "!docs"]));
    assert_eq!(
        paths(&got),
        ["docs", "docs/b.txt", "docs/x", "keep.txt"],
        "as buildctl v0.32.2 sends it"
    );
}

#[test]
fn followpaths_become_includes_and_resolve_links() {
    let dir = tree();
    let sync = SyncRequest {
        follow_paths: strings(&["link-to-src/main.rs", "Dockerfile", "missing"]),
        ..SyncRequest::default()
    };
    let got = sent(dir.path(), &sync);
    assert_eq!(
        paths(&got),
        ["Dockerfile", "link-to-src", "src", "src/main.rs"]
    );
    // A link pointing outside the root resolves inside the root, never outside.
    let sync = SyncRequest {
        follow_paths: strings(&["src/passwd"]),
        ..SyncRequest::default()
    };
    let got = sent(dir.path(), &sync);
    assert_eq!(paths(&got), ["src", "src/passwd"]);
    // A wildcard in the last component (filepath.Match, not .dockerignore syntax).
    let sync = SyncRequest {
        follow_paths: strings(&["src/*.rs", "link-*"]),
        ..SyncRequest::default()
    };
    assert_eq!(
        follow_links(dir.path(), &sync.follow_paths)
            .unwrap()
            .unwrap(),
        strings(&["link-*", "src"]),
        "link-to-src resolves to src, which covers src/*.rs"
    );
    // `.` (or a link to the root) means no filter at all.
    assert_eq!(follow_links(dir.path(), &strings(&["."])).unwrap(), None);
}

#[test]
fn followpaths_outside_the_root_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ctx");
    fs_err::create_dir_all(root.join("src")).unwrap();
    fs_err::write(root.join("src/main.rs"), "x").unwrap();
    fs_err::write(root.join("Dockerfile"), "x").unwrap();
    // Links beside the context, not in it: they must not be read nor followed.
    std::os::unix::fs::symlink("/src", dir.path().join("outside-link")).unwrap();
    std::os::unix::fs::symlink("ctx/src", dir.path().join("outside-rel")).unwrap();
    for follow in [
        "../outside-link",
        "../outside-rel",
        "src/../../outside-link",
        "../*",
    ] {
        let follow_paths = strings(&[follow, "Dockerfile"]);
        assert_eq!(
            follow_links(&root, &follow_paths).unwrap().unwrap(),
            strings(&["Dockerfile"]),
            "{follow}"
        );
        let sync = SyncRequest {
            follow_paths,
            ..SyncRequest::default()
        };
        assert_eq!(paths(&sent(&root, &sync)), ["Dockerfile"], "{follow}");
    }
}

#[test]
fn include_patterns_with_wildcards() {
    let dir = tree();
    let sync = SyncRequest {
        include_patterns: Some(strings(&["**/*.rs", "a/x"])),
        ..SyncRequest::default()
    };
    let got = sent(dir.path(), &sync);
    assert_eq!(
        paths(&got),
        ["a", "a/x", "a/x/file", "src", "src/lib.rs", "src/main.rs"]
    );
}

#[test]
fn prefix_only_patterns_skip_directories_as_fsutil() {
    let dir = tree();
    let filter = Filter::new(
        dir.path(),
        &SyncRequest {
            include_patterns: Some(strings(&["a/x/**"])),
            exclude_patterns: strings(&["node_modules", "!node_modules/keep/*"]),
            ..SyncRequest::default()
        },
    )
    .unwrap();
    assert!(filter.only_prefix_includes && filter.only_prefix_exclude_exceptions);
    let decide = |p: &str| filter.decide(p.as_bytes(), true, None).unwrap();
    assert!(matches!(decide("src"), Decision::SkipDir));
    assert!(matches!(decide("a"), Decision::Visit { skip: true, .. }));
    let filter = Filter::new(
        dir.path(),
        &excluding(&["node_modules", "!node_modules/k*"]),
    )
    .unwrap();
    assert!(!filter.only_prefix_exclude_exceptions);
    let filter = Filter::new(dir.path(), &excluding(&["node_modules", "!other"])).unwrap();
    assert!(matches!(
        filter.decide(b"node_modules", true, None).unwrap(),
        Decision::SkipDir
    ));
}

#[test]
fn hard_links_point_at_the_first_sent_path_with_full_size() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs_err::create_dir_all(root.join("d")).unwrap();
    fs_err::write(root.join("a"), "hello").unwrap();
    fs_err::hard_link(root.join("a"), root.join("b")).unwrap();
    fs_err::hard_link(root.join("a"), root.join("d/c")).unwrap();
    fs_err::write(root.join("single"), "x").unwrap();
    let link = |stats: &[Stat], p: &str| {
        let s = stats.iter().find(|s| s.path == p.as_bytes()).unwrap();
        assert_eq!(s.mode & MODE_TYPE, 0, "{p} stays a regular file");
        (String::from_utf8(s.linkname.clone()).unwrap(), s.size)
    };
    let all = stats(root, &SyncRequest::default());
    assert_eq!(link(&all, "a"), (String::new(), 5));
    // fsutil sets size 0 then overwrites it with the file size: links carry the full size.
    assert_eq!(link(&all, "b").0, "a");
    assert_eq!(link(&all, "b").1, 5);
    assert_eq!(link(&all, "d/c").0, "a");
    assert_eq!(link(&all, "single").0, "");
    // The first path excluded: the first *sent* path is the target (hardlinks.go).
    let some = stats(root, &excluding(&["a"]));
    assert_eq!(link(&some, "b").0, "");
    assert_eq!(link(&some, "d/c").0, "b");
    // Not requested (include patterns): same.
    let some = stats(
        root,
        &SyncRequest {
            include_patterns: Some(strings(&["d"])),
            ..SyncRequest::default()
        },
    );
    assert_eq!(link(&some, "d/c").0, "");
}

#[test]
fn non_utf8_names_are_sent_as_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bad = OsStr::from_bytes(b"caf\xe9");
    fs_err::create_dir_all(root.join(bad)).unwrap();
    fs_err::write(root.join(bad).join(OsStr::from_bytes(b"x\xff")), "1").unwrap();
    fs_err::write(root.join("ok"), "2").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9"), root.join("link")).unwrap();
    let all = stats(root, &SyncRequest::default());
    let got: Vec<&[u8]> = all.iter().map(|s| s.path.as_slice()).collect();
    assert_eq!(got, [&b"caf\xe9"[..], b"caf\xe9/x\xff", b"link", b"ok"]);
    assert_eq!(all[2].linkname, b"caf\xe9");
    // Excluded by a pattern that does not even look at them: no error.
    let some = stats(root, &excluding(&["ok"]));
    assert_eq!(some.len(), 3);
    // `?` matches one invalid byte (one U+FFFD), `*` any run of them.
    let some = stats(root, &excluding(&["caf?/x?"]));
    let got: Vec<&[u8]> = some.iter().map(|s| s.path.as_slice()).collect();
    assert_eq!(got, [&b"caf\xe9"[..], b"link", b"ok"]);
    // Raw-byte patterns (query-unescaped from the metadata) match raw names.
    let some = stats(
        root,
        &SyncRequest {
            exclude_patterns: vec![b"caf\xe9".to_vec()],
            ..SyncRequest::default()
        },
    );
    assert_eq!(some.len(), 2);
}

#[test]
fn sockets_are_regular_empty_files_fifos_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    let all = stats(root, &SyncRequest::default());
    let sock = all.iter().find(|s| s.path == b"sock").unwrap();
    assert_eq!(
        sock.mode & MODE_TYPE,
        0,
        "socket bit cleared: {:o}",
        sock.mode
    );
    assert_eq!(sock.size, 0);
    let fifo = all.iter().find(|s| s.path == b"fifo").unwrap();
    assert_eq!(fifo.mode & MODE_TYPE, MODE_NAMED_PIPE);
}

#[test]
fn user_xattrs_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs_err::write(&file, "x").unwrap();
    if xattr::set(&file, "user.fastbuild", b"v").is_err() {
        // No user xattrs on this filesystem: nothing to check.
        return;
    }
    let all = stats(dir.path(), &SyncRequest::default());
    assert_eq!(
        all[0].xattrs,
        [XattrEntry {
            key: b"user.fastbuild".to_vec(),
            value: b"v".to_vec()
        }]
    );
}

#[test]
fn walk_errors_on_unreadable_patterns_only_when_evaluated() {
    let dir = tree();
    // `b*[` passes Go's New (only the first chunk is checked) but not its regexp compiler.
    let filter = Filter::new(dir.path(), &excluding(&["x", "b*["])).unwrap();
    let err = walk(dir.path(), &filter, &mut |_, _| true).unwrap_err();
    assert!(
        err.to_string().contains("failed to match excludepatterns"),
        "{err}"
    );
    assert!(Filter::new(dir.path(), &excluding(&["[]a]"])).is_err());
}

#[tokio::test]
async fn a_file_swapped_for_a_symlink_is_sent_empty_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("outside-secret");
    std::fs::write(&secret, "do not send").unwrap();
    let swapped = dir.path().join("was-a-file");
    std::os::unix::fs::symlink(&secret, &swapped).unwrap();
    let root: Arc<Path> = Arc::from(dir.path());
    let (tx, mut rx) = mpsc::channel(8);
    assert_eq!(
        send_file(1, &root, b"was-a-file", true, &tx).await.unwrap(),
        0
    );
    // A file the open check refuses is sent empty too, without being opened.
    assert_eq!(
        send_file(2, &root, b"outside-secret", false, &tx)
            .await
            .unwrap(),
        0
    );
    drop(tx);
    let mut packets = 0;
    while let Some(p) = rx.recv().await {
        assert!(p.unwrap().data.is_empty(), "file data was sent");
        packets += 1;
    }
    assert_eq!(packets, 2, "one end-of-file DATA each");
}

/// Hardening L4: `O_NOFOLLOW` guarded only the last component; a parent directory swapped for
/// a symlink between the walk and the read made the sender read a file outside the context.
#[tokio::test]
async fn a_parent_directory_swapped_for_a_symlink_is_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("app.txt"), "OUTSIDE SECRET").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/app.txt"), "inside").unwrap();
    let root: Arc<Path> = Arc::from(dir.path());
    let (tx, mut rx) = mpsc::channel(8);
    // What the walk saw is sent.
    assert_eq!(
        send_file(1, &root, b"src/app.txt", true, &tx)
            .await
            .unwrap(),
        6
    );
    // Then `src` is swapped for a link to a directory outside the context.
    std::fs::rename(dir.path().join("src"), dir.path().join("src.old")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("src")).unwrap();
    assert_eq!(
        send_file(2, &root, b"src/app.txt", true, &tx)
            .await
            .unwrap(),
        0
    );
    drop(tx);
    while let Some(p) = rx.recv().await {
        let p = p.unwrap();
        assert!(
            !String::from_utf8_lossy(&p.data).contains("OUTSIDE"),
            "data from outside the context was sent"
        );
    }
}

#[test]
fn open_check_uses_or_parent_semantics() {
    let dir = tree();
    let filter = Filter::new(dir.path(), &excluding(&["docs", "!docs/keep"])).unwrap();
    assert!(filter.open_allowed(b"docs/keep"));
    assert!(!filter.open_allowed(b"docs/other"));
    let filter = Filter::new(
        dir.path(),
        &SyncRequest {
            include_patterns: Some(strings(&["src"])),
            ..SyncRequest::default()
        },
    )
    .unwrap();
    assert!(filter.open_allowed(b"src/main.rs"));
    assert!(!filter.open_allowed(b"Dockerfile"));
}

#[test]
fn metadata_decoding_as_filesync_decode_opts() {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("dir-name", "context".parse().unwrap());
    md.append("exclude-patterns", "caf%C3%A9".parse().unwrap());
    md.append("exclude-patterns", "a+b%zz".parse().unwrap());
    md.append("exclude-patterns", "raw%E9".parse().unwrap());
    md.insert("exclude-patterns-encoded", "true".parse().unwrap());
    md.append("followpaths", "a+b".parse().unwrap());
    md.insert("followpaths-encoded", "no".parse().unwrap());
    let sync = SyncRequest::from_metadata(&md);
    assert_eq!(sync.dir_name, "context");
    assert_eq!(
        sync.exclude_patterns,
        [b"caf\xc3\xa9".to_vec(), Vec::new(), b"raw\xe9".to_vec()],
        "an invalid escape decodes to \"\" as Go's QueryUnescape error does"
    );
    assert_eq!(sync.follow_paths, [b"a+b".to_vec()], "`no` is not true");
    assert_eq!(sync.include_patterns, None);
}

#[test]
fn query_unescape_decodes_plus_and_percent() {
    assert_eq!(
        query_unescape(b"a+b%2Fc%C3%A9").unwrap(),
        "a b/cé".as_bytes()
    );
    assert_eq!(query_unescape(b"100%"), None);
    assert_eq!(query_unescape(b"%4"), None);
}

#[test]
fn dedupe_paths_as_fsutil() {
    assert_eq!(
        dedupe_paths(strings(&["a", "a/b", "ab", "b/c", "b/c/d"])),
        Some(strings(&["a", "ab", "b/c"]))
    );
    assert_eq!(dedupe_paths(strings(&["/abs", "x"])), Some(strings(&["x"])));
    assert_eq!(dedupe_paths(strings(&["a", "."])), None);
}

/// Prints the walk in `testdata/fsutil-oracle`'s format, to compare with buildctl's code:
/// `FSUTIL_ORACLE_DIR=/some/dir FSUTIL_ORACLE_OPTS='{"exclude":["x"]}' cargo test -p
/// fastbuild-buildkit --lib oracle_format -- --ignored --nocapture`.
#[test]
#[ignore = "development tool: needs FSUTIL_ORACLE_DIR"]
#[allow(clippy::print_stdout, reason = "prints the walk for comparison")]
fn oracle_format() {
    fn hex(b: &[u8]) -> String {
        b.iter().fold(String::new(), |mut out, x| {
            use std::fmt::Write as _;
            let _ = write!(out, "{x:02x}");
            out
        })
    }
    fn bstr(b: &[u8]) -> serde_json::Value {
        match std::str::from_utf8(b) {
            Ok(s) => s.into(),
            Err(_) => serde_json::json!({ "hex": hex(b) }),
        }
    }
    fn list(v: &serde_json::Value) -> Vec<Vec<u8>> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| match s {
                        serde_json::Value::String(s) => s.as_bytes().to_vec(),
                        other => panic!("unsupported {other}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    let root = PathBuf::from(std::env::var("FSUTIL_ORACLE_DIR").unwrap());
    let opts: serde_json::Value =
        serde_json::from_str(&std::env::var("FSUTIL_ORACLE_OPTS").unwrap_or("{}".into())).unwrap();
    let sync = SyncRequest {
        include_patterns: opts.get("include").map(list),
        exclude_patterns: opts.get("exclude").map(list).unwrap_or_default(),
        follow_paths: opts.get("follow").map(list).unwrap_or_default(),
        ..SyncRequest::default()
    };
    let filter = Filter::new(&root, &sync).unwrap();
    let mut out = Vec::new();
    let result = walk(&root, &filter, &mut |stat, abs| {
        out.push((stat, abs));
        true
    });
    for (id, (s, abs)) in out.iter().enumerate() {
        let mut o = serde_json::json!({
            "id": id, "path": bstr(&s.path), "mode": s.mode, "size": s.size,
            "uid": s.uid, "gid": s.gid, "mod_time": s.mod_time,
        });
        if !s.linkname.is_empty() {
            o["linkname"] = bstr(&s.linkname);
        }
        if s.devmajor != 0 {
            o["devmajor"] = s.devmajor.into();
        }
        if s.devminor != 0 {
            o["devminor"] = s.devminor.into();
        }
        if !s.xattrs.is_empty() {
            o["xattrs"] = s
                .xattrs
                .iter()
                .map(|x| {
                    (
                        String::from_utf8_lossy(&x.key).into_owned(),
                        serde_json::Value::from(hex(&x.value)),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        if s.mode & MODE_TYPE == 0 {
            let data = if filter.open_allowed(&s.path) {
                std::fs::read(abs).map_or(0, |d| d.len())
            } else {
                0
            };
            o["data"] = data.into();
        }
        println!("{o}");
    }
    if let Err(e) = result {
        println!("ERR {e}");
    }
}

/// The client's own state directory is never sent, whatever the patterns say (fastbuild's
/// `.fastbuild/`: its history changes on every build), and nothing below it either; a
/// sibling with a longer name is sent.
#[test]
fn withheld_paths_are_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs_err::create_dir_all(root.join(".fastbuild/stamps")).unwrap();
    for (path, text) in [
        (".fastbuild/history.jsonl", "{}\n"),
        (".fastbuild-other", "kept\n"),
        ("app.txt", "app\n"),
    ] {
        fs_err::write(root.join(path), text).unwrap();
    }
    let filter = Filter::new(root, &SyncRequest::default())
        .unwrap()
        .withholding(vec![b".fastbuild".to_vec()]);
    let mut out = Vec::new();
    walk(root, &filter, &mut |stat, _| {
        out.push(String::from_utf8_lossy(&stat.path).into_owned());
        true
    })
    .unwrap();
    assert_eq!(out, [".fastbuild-other", "app.txt"]);
}
