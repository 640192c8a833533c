use super::*;
use std::os::unix::fs::PermissionsExt;

/// Hardening L4: `O_NOFOLLOW` guarded only the last component; a source directory swapped
/// for a symlink between planning and reading put a file from outside into the layer.
#[test]
fn a_source_directory_swapped_for_a_symlink_is_not_read_through() {
    let outside = tempfile::tempdir().unwrap();
    fs_err::write(outside.path().join("app.conf"), "OUTSIDE SECRET").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs_err::create_dir_all(src.join("etc")).unwrap();
    fs_err::write(src.join("etc/app.conf"), "inside!!!!!!!!").unwrap();
    let spec = LayerSpec::new([(src.clone(), "/app".to_owned())]);
    let mut planner = Planner {
        nodes: BTreeMap::new(),
    };
    planner.add_mapping(&src, "/app").unwrap();
    // Between planning and reading, `etc` becomes a link to a directory outside.
    fs_err::rename(src.join("etc"), src.join("etc.old")).unwrap();
    std::os::unix::fs::symlink(outside.path(), src.join("etc")).unwrap();
    let blobs = dir.path().join("blobs");
    let result = write_layer(&planner, &spec, Compression::None, 0, &blobs);
    let err = result.expect_err("the layer was written through the swapped directory");
    assert!(err.to_string().contains("app.conf"), "{err}");
    for blob in fs_err::read_dir(&blobs).unwrap() {
        let bytes = fs_err::read(blob.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("OUTSIDE"));
    }
}

pub(crate) fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    fs_err::create_dir_all(root.join("bin")).unwrap();
    fs_err::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs_err::write(root.join("bin/run"), "#!/bin/sh\necho hi\n").unwrap();
    fs_err::set_permissions(root.join("bin/run"), std::fs::Permissions::from_mode(0o700)).unwrap();
    fs_err::write(root.join("etc/app.conf"), "a=1\n").unwrap();
    fs_err::set_permissions(
        root.join("etc/app.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs_err::hard_link(
        root.join("etc/app.conf"),
        root.join("etc/conf.d/linked.conf"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../etc/app.conf", root.join("bin/conf")).unwrap();
    fs_err::write(dir.path().join("single.txt"), "single\n").unwrap();
    dir
}

pub(crate) fn spec(dir: &Path) -> LayerSpec {
    LayerSpec::new([
        (dir.join("src"), "/app".to_owned()),
        (dir.join("single.txt"), "/opt/data/".to_owned()),
    ])
}

fn entries(layer: &Layer) -> Vec<(String, String, u32, u64, u64, String)> {
    let bytes = fs_err::read(&layer.path).unwrap();
    let tar_bytes = match layer.compression {
        Compression::None => bytes,
        Compression::Gzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        Compression::Zstd { .. } => zstd::decode_all(&bytes[..]).unwrap(),
    };
    assert_eq!(Digest::of(&tar_bytes), layer.diff_id);
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                format!("{:?}", h.entry_type()),
                h.mode().unwrap(),
                h.mtime().unwrap(),
                h.uid().unwrap(),
                e.link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn layer_entries_are_sorted_normalised_and_keep_links() {
    let dir = fixture();
    let cache = tempfile::tempdir().unwrap();
    let layer = build_layer(
        &spec(dir.path()),
        Compression::None,
        1_700_000_000,
        cache.path(),
    )
    .unwrap();
    assert_eq!(layer.digest, layer.diff_id);
    assert_eq!(
        Digest::of(&fs_err::read(&layer.path).unwrap()),
        layer.digest
    );
    let got = entries(&layer);
    let t = 1_700_000_000;
    let expected: Vec<(String, String, u32, u64, u64, String)> = [
        ("app/", "Directory", 0o755, ""),
        ("app/bin/", "Directory", 0o755, ""),
        ("app/bin/conf", "Symlink", 0o777, "../etc/app.conf"),
        ("app/bin/run", "Regular", 0o755, ""),
        ("app/etc/", "Directory", 0o755, ""),
        ("app/etc/app.conf", "Regular", 0o644, ""),
        ("app/etc/conf.d/", "Directory", 0o755, ""),
        (
            "app/etc/conf.d/linked.conf",
            "Link",
            0o644,
            "app/etc/app.conf",
        ),
        ("opt/", "Directory", 0o755, ""),
        ("opt/data/", "Directory", 0o755, ""),
        ("opt/data/single.txt", "Regular", 0o644, ""),
    ]
    .into_iter()
    .map(|(p, ty, m, l)| (p.to_owned(), ty.to_owned(), m, t, 0, l.to_owned()))
    .collect();
    assert_eq!(got, expected);
}

#[test]
fn layer_digest_ignores_host_mtimes_and_is_pinned() {
    let a = fixture();
    let b = fixture();
    filetime_touch(&b.path().join("src/bin/run"));
    let cache = tempfile::tempdir().unwrap();
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd { level: ZSTD_LEVEL },
    ] {
        let la = build_layer(&spec(a.path()), compression, 0, cache.path()).unwrap();
        let lb = build_layer(&spec(b.path()), compression, 0, cache.path()).unwrap();
        assert_eq!(la.digest, lb.digest, "{compression:?}");
        assert_eq!(la.diff_id, lb.diff_id);
        assert_eq!(entries(&la).len(), 11);
    }
    // The exact bytes are pinned: a change here changes every image digest users have.
    let layer = build_layer(&spec(a.path()), Compression::Gzip, 0, cache.path()).unwrap();
    insta::assert_snapshot!(
        format!("{} {} {}", layer.digest, layer.diff_id, layer.size),
        @"sha256:0f233c54d31e6893881e85efa13a116c7b608eb65f087c9eae1aa634fc6bdd69 sha256:1113304b97f65b9bc1e1585fbdfc659e7dc48757cdcdbfcb4adead53a7946a15 306"
    );
}

fn filetime_touch(path: &Path) {
    let f = fs_err::OpenOptions::new().append(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
        .unwrap();
}

#[test]
fn mtime_and_owner_are_configurable() {
    let dir = fixture();
    let cache = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path());
    s.uid = 1000;
    s.gid = 1000;
    let layer = build_layer(&s, Compression::Zstd { level: 1 }, 42, cache.path()).unwrap();
    assert!(entries(&layer).iter().all(|e| e.3 == 42 && e.4 == 1000));
}

#[test]
fn symlink_escaping_its_root_is_an_error_naming_both_paths() {
    let dir = fixture();
    let root = dir.path().join("src");
    std::os::unix::fs::symlink("../../single.txt", root.join("bin/escape")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let err = build_layer(&spec(dir.path()), Compression::None, 0, cache.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::SymlinkEscape { .. }), "{msg}");
    assert!(
        msg.contains("bin/escape") && msg.contains("../../single.txt"),
        "{msg}"
    );
    assert!(msg.contains(&root.display().to_string()), "{msg}");

    fs_err::remove_file(root.join("bin/escape")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
    let err = build_layer(&spec(dir.path()), Compression::None, 0, cache.path()).unwrap_err();
    assert!(matches!(err, Error::SymlinkEscape { .. }), "{err}");
}

#[test]
fn symlink_chains_leaving_the_root_are_errors() {
    let dir = fixture();
    let root = dir.path().join("src");
    let cache = tempfile::tempdir().unwrap();
    // Each link is lexically inside the root; together they lead to its parent.
    std::os::unix::fs::symlink("..", root.join("bin/up")).unwrap();
    std::os::unix::fs::symlink("bin/up/../single.txt", root.join("chain")).unwrap();
    let err = build_layer(&spec(dir.path()), Compression::None, 0, cache.path()).unwrap_err();
    assert!(matches!(err, Error::SymlinkEscape { .. }), "{err}");
    assert!(err.to_string().contains("chain"), "{err}");

    // Chains that stay inside, dangling links and loops are fine.
    fs_err::remove_file(root.join("chain")).unwrap();
    std::os::unix::fs::symlink("bin/up/etc/app.conf", root.join("inside")).unwrap();
    std::os::unix::fs::symlink("missing/../x", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("loop-b", root.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a/..", root.join("loop-b")).unwrap();
    build_layer(&spec(dir.path()), Compression::None, 0, cache.path()).unwrap();
}

#[test]
fn missing_source_and_parent_dest_are_errors() {
    let cache = tempfile::tempdir().unwrap();
    let err = build_layer(
        &LayerSpec::new([("/nonexistent/fastbuild", "/x")]),
        Compression::None,
        0,
        cache.path(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("`/nonexistent/fastbuild` does not exist")
    );
    let dir = fixture();
    let err = build_layer(
        &LayerSpec::new([(dir.path().join("single.txt"), "/a/../b")]),
        Compression::None,
        0,
        cache.path(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidDestination { .. }), "{err}");
}

#[test]
fn a_file_replacing_a_directory_drops_only_what_was_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for p in ["a/x", "a/y/z", "a-b", "a.c", "a0", "ab", "b"] {
        let p = tree.join(p);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(&p, "t").unwrap();
    }
    let file = dir.path().join("file");
    fs_err::write(&file, "f").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let spec = LayerSpec::new([(tree, "/r"), (file, "/r/a")]);
    let layer = build_layer(&spec, Compression::None, 0, cache.path()).unwrap();
    let paths: Vec<String> = entries(&layer).into_iter().map(|e| e.0).collect();
    assert_eq!(
        paths,
        ["r/", "r/a", "r/a-b", "r/a.c", "r/a0", "r/ab", "r/b"],
        "`r/a` became a file: `r/a/...` is gone, its siblings stay"
    );
}

#[test]
fn default_compression_depends_on_the_registry() {
    let fast = Compression::Zstd {
        level: ZSTD_FAST_LEVEL,
    };
    assert_eq!(Compression::default_for_registry("127.0.0.1:5000"), fast);
    assert_eq!(Compression::default_for_registry("localhost:5000"), fast);
    assert_eq!(Compression::default_for_registry("registry.local"), fast);
    assert_eq!(
        Compression::default_for_registry("k3d-dev-registry:5000"),
        fast
    );
    assert_eq!(
        Compression::default_for_registry("ghcr.io"),
        Compression::Gzip
    );
}
