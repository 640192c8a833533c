//! Conformance with upstream `buildctl`: each case is a build context built cold
//! (`--no-cache`) by the upstream client **and** by fastbuild, with the same frontend and
//! exporter options, on the bed's standalone buildkitd; the pushed manifest digests must be
//! equal. A digest covers every layer byte, so equal digests mean the same files, names, modes,
//! owners, times, link targets and hard links reached the daemon.
//!
//! Reproducible inputs on both sides: `SOURCE_DATE_EPOCH=0` (image config and history times)
//! and `rewrite-timestamp=true`: the daemon stamps the directories it receives, and those COPY
//! or a step creates, with the time of the build (verified with buildctl alone), so without the
//! rewrite no two builds of one context agree. The rewrite would also hide the file times that
//! were synced: every case that copies its context to `/ctx` therefore runs a probe step that
//! writes each entry's path, mode, owner, size and link target, and the mtime of every entry
//! but directories, into `/probe.txt` ([`PROBE`]), so that metadata still shows in the digest.
//!
//! On a mismatch the test fails with the differing layer entries of the two images.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use fastbuild_buildkit::{BuildOptions, Client, ProgressEvent, SecretSource};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{TestBed, note, require_bed};

/// Writes the metadata of each entry under `/ctx` into `/probe.txt` (busybox `find`/`stat` of
/// the bed's base): directories without their mtime (the receive time, see the module doc).
const PROBE: &str = "RUN cd /ctx && { find . -type d -print0 | sort -z | xargs -r0 stat -c '%n|%f|%u:%g'; \
                     find . ! -type d -print0 | sort -z | xargs -r0 stat -c '%n|%f|%u:%g|%Y|%s|%N'; } > /probe.txt\n";

/// What a case asks of both clients besides the context.
#[derive(Default)]
struct Spec {
    /// Dockerfile directory relative to the case dir (the `dockerfile` local); the context
    /// when `None`.
    dockerfile_dir: Option<&'static str>,
    /// Dockerfile name (`filename`), `Dockerfile` when `None`.
    filename: Option<&'static str>,
    /// Context directory relative to the case dir; the case dir itself when `None`.
    context_dir: Option<&'static str>,
    target: Option<&'static str>,
    build_args: Vec<(&'static str, &'static str)>,
    labels: Vec<(&'static str, &'static str)>,
    platform: Option<&'static str>,
    /// `(id, file relative to the case dir)`.
    secrets: Vec<(&'static str, &'static str)>,
}

// ---------------------------------------------------------------------------------------------
// context helpers

fn write(dir: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let path = dir.join(rel);
    fs_err::create_dir_all(path.parent().unwrap()).unwrap();
    fs_err::write(path, content).unwrap();
}

fn chmod(dir: &Path, rel: &str, mode: u32) {
    fs_err::set_permissions(dir.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(dir: &Path, rel: &str, secs: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let f = std::fs::File::options()
        .read(true)
        .open(dir.join(rel))
        .or_else(|_| std::fs::File::open(dir.join(rel)))
        .unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

/// Writes each `(path, content)`.
fn files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        write(dir, rel, content);
    }
}

/// Writes each name, with the name as its content.
fn named(dir: &Path, names: &[&str]) {
    for name in names {
        write(dir, name, name);
    }
}

/// Each `(path, link target)`.
fn symlinks(dir: &Path, links: &[(&str, &str)]) {
    for (rel, target) in links {
        let path = dir.join(rel);
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }
}

/// Each of `new` a hard link to `existing`.
fn hard_link_all(dir: &Path, existing: &str, new: &[&str]) {
    for new in new {
        let path = dir.join(new);
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::hard_link(dir.join(existing), path).unwrap();
    }
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
}

/// A Dockerfile of `body` on the bed's base (`ARG BASE`, `FROM $BASE`).
fn based(body: &str) -> String {
    format!("ARG BASE\nFROM $BASE\n{body}")
}

/// A Dockerfile on the bed's base: `before`, `COPY . /ctx/`, `after` and the metadata probe.
fn copy_all_with(before: &str, after: &str) -> String {
    based(&format!("{before}COPY . /ctx/\n{after}{PROBE}"))
}

/// The Dockerfile [`based`] on `body`; nothing else asked of the clients.
fn dockerfile(dir: &Path, body: &str) -> Spec {
    write(dir, "Dockerfile", based(body));
    Spec::default()
}

/// A `COPY . /ctx/` image of the bed's base plus the metadata probe: the whole context lands
/// in one layer.
fn copy_all(dir: &Path) -> Spec {
    write(dir, "Dockerfile", copy_all_with("", ""));
    Spec::default()
}

/// [`copy_all`] with `patterns` as the `.dockerignore`.
fn copy_ignoring(dir: &Path, patterns: &str) -> Spec {
    copy_all(dir);
    write(dir, ".dockerignore", patterns);
    Spec::default()
}

fn tree(dir: &Path) {
    files(
        dir,
        &[
            ("src/main.go", "package main\n"),
            ("src/util/strings.go", "package util\n"),
            ("README.md", "# readme\n"),
            ("docs/guide.md", "guide\n"),
            ("docs/img/logo.svg", "<svg/>\n"),
            ("tmp/cache.bin", "cache\n"),
            ("build/out/app", "binary\n"),
            ("build/keep/notes.txt", "keep\n"),
            ("app.log", "log\n"),
            ("nested/deep/app.log", "log\n"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// the corpus

macro_rules! cases {
    ($($name:ident => $setup:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let bed = require_bed!();
                run_case(&bed, stringify!($name), $setup).await;
            }
        )*
        /// Every case name, for the corpus size check.
        const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

cases! {
    dockerignore_double_star => |d: &Path| {
        tree(d);
        copy_ignoring(d, "**/*.log\n**/tmp\n**/img/**\n")
    };
    dockerignore_reinclude_inside_excluded_dir => |d: &Path| {
        tree(d);
        copy_ignoring(d, "build\n!build/keep\n!build/out/app\ndocs/\n!docs/**/*.svg\n")
    };
    dockerignore_question_mark_and_classes => |d: &Path| {
        named(d, &["file1.txt", "file2.txt", "file10.txt", "data-a.bin", "data-b.bin", "data-d.bin", "x[1].txt"]);
        copy_ignoring(d, "file?.txt\ndata-[a-c].bin\n")
    };
    dockerignore_anchored_trailing_slash_and_inner_star => |d: &Path| {
        tree(d);
        files(d, &[("only-root.txt", "root\n"), ("sub/only-root.txt", "sub\n"), ("pkg/a/gen/x.go", "x\n"), ("pkg/b/gen/y.go", "y\n"), ("pkg/b/keep.go", "k\n")]);
        copy_ignoring(d, "/only-root.txt\ntmp/\n./build/out/\npkg/*/gen\n")
    };
    dockerignore_comments_blank_lines_and_spaces => |d: &Path| {
        tree(d);
        write(d, "#notacomment.txt", "hash\n");
        copy_ignoring(d, "\u{feff}# a comment\n\n   README.md   \n# docs\n\\#notacomment.txt\n\t\nnested\n")
    };
    dockerignore_lists_the_dockerfile_and_itself => |d: &Path| { tree(d); copy_ignoring(d, "Dockerfile\n.dockerignore\n*.md\n") };
    dockerignore_beside_a_custom_named_dockerfile => |d: &Path| {
        tree(d);
        // The context's own .dockerignore (`src`) loses to the Dockerfile's.
        files(d, &[("ci/app.Dockerfile", &copy_all_with("", "")), ("ci/app.Dockerfile.dockerignore", "docs\n*.log\n"), (".dockerignore", "src\n")]);
        Spec { dockerfile_dir: Some("ci"), filename: Some("app.Dockerfile"), ..Spec::default() }
    };
    dockerignore_escaped_brackets_like_nextjs_routes => |d: &Path| {
        files(d, &[("app/[slug]/page.tsx", "slug\n"), ("app/[id]/page.tsx", "id\n"), ("app/s/page.tsx", "s\n"), ("[keep]/x.txt", "keep\n")]);
        copy_ignoring(d, "app/\\[slug\\]\n\\[keep\\]\n!\\[keep\\]\n")
    };
    dockerignore_exception_names_a_parent_directory => |d: &Path| { tree(d); copy_ignoring(d, "**/*.md\n!docs\n") };
    dockerignore_excludes_everything_but_some => |d: &Path| { tree(d); copy_ignoring(d, "*\n!src\n!Dockerfile\n!docs/*.md\n") };
    symlinks_relative_absolute_and_dangling => |d: &Path| {
        write(d, "data/real.txt", "real\n");
        symlinks(d, &[("rel", "data/real.txt"), ("data/up", "../rel"), ("abs", "/etc/passwd"), ("dangling", "does/not/exist"), ("outside", "../../../../etc/hostname")]);
        copy_all(d)
    };
    symlink_to_a_directory_and_loops => |d: &Path| {
        write(d, "dir/inner/file.txt", "inner\n");
        symlinks(d, &[("linkdir", "dir"), ("self", "self"), ("a", "b"), ("b", "a")]);
        write(d, "Dockerfile", copy_all_with("", "COPY linkdir/inner /via-link/\n"));
        Spec::default()
    };
    hard_links => |d: &Path| {
        write(d, "a/original.txt", "shared content\n");
        hard_link_all(d, "a/original.txt", &["b/link1.txt", "c/link2.txt"]);
        write(d, "solo.txt", "solo\n");
        copy_all(d)
    };
    hard_link_whose_first_path_is_ignored => |d: &Path| {
        write(d, "a-ignored/original.txt", "shared content\n");
        hard_link_all(d, "a-ignored/original.txt", &["b/link1.txt", "c/link2.txt"]);
        copy_ignoring(d, "a-ignored\n")
    };
    modes_setuid_setgid_sticky_and_private => |d: &Path| {
        for (f, m) in [("suid", 0o4755), ("sgid", 0o2755), ("exec", 0o755), ("private", 0o600), ("ro", 0o444)] {
            write(d, f, f);
            chmod(d, f, m);
        }
        for (dir, m) in [("sticky", 0o1777), ("closed", 0o700)] {
            fs_err::create_dir_all(d.join(dir)).unwrap();
            write(d, &format!("{dir}/f"), "f");
            chmod(d, dir, m);
        }
        copy_all(d)
    };
    empty_dirs_and_empty_files => |d: &Path| {
        for e in ["empty", "a/b/c/empty", "only-dirs/x/y"] {
            fs_err::create_dir_all(d.join(e)).unwrap();
        }
        files(d, &[("zero", ""), ("a/zero", "")]);
        copy_all(d)
    };
    fifos => |d: &Path| {
        write(d, "regular.txt", "r\n");
        sh(d, "mkfifo pipe && mkdir -p sub && mkfifo -m 0600 sub/private-pipe");
        copy_all(d)
    };
    xattrs => |d: &Path| {
        files(d, &[("tagged.txt", "tagged\n"), ("plain.txt", "plain\n")]);
        sh(d, "python3 -c \"import os; os.setxattr('tagged.txt', 'user.fastbuild', b'conformance')\"");
        copy_all(d)
    };
    mtimes_in_1970_and_2100 => |d: &Path| {
        for (f, content, secs) in [("epoch.txt", "1970\n", 0), ("old/one-second.txt", "1970\n", 1), ("future.txt", "2100\n", 4_102_444_800)] {
            write(d, f, content);
            set_mtime(d, f, secs);
        }
        copy_all(d)
    };
    spaces_and_unicode_names => |d: &Path| {
        named(d, &["with space.txt", "dir with spaces/inner file", "ünïcödé.txt", "日本語/ファイル.txt", "emoji-🚀.txt", "tab\tname", "quote'\"name", "percent%20+plus"]);
        copy_all(d)
    };
    non_utf8_names => |d: &Path| {
        fs_err::write(d.join(OsStr::from_bytes(b"caf\xe9.txt")), "latin-1 name\n").unwrap();
        fs_err::create_dir_all(d.join(OsStr::from_bytes(b"dir-\xff\xfe"))).unwrap();
        fs_err::write(d.join(OsStr::from_bytes(b"dir-\xff\xfe/inner")), "inner\n").unwrap();
        write(d, "ascii.txt", "ascii\n");
        copy_all(d)
    };
    non_utf8_name_excluded_by_dockerignore => |d: &Path| {
        for (name, content) in [(&b"junk-\xe9.tmp"[..], "junk\n"), (&b"keep-\xe9.txt"[..], "keep\n")] {
            fs_err::write(d.join(OsStr::from_bytes(name)), content).unwrap();
        }
        write(d, "ascii.txt", "ascii\n");
        copy_ignoring(d, "*.tmp\n")
    };
    twenty_thousand_files => |d: &Path| {
        for i in 0..20_000 {
            write(d, &format!("f/{:03}/{i:05}.txt", i % 100), format!("{i}\n"));
        }
        copy_all(d)
    };
    hundred_megabyte_file => |d: &Path| {
        // Incompressible-ish, deterministic content.
        let mut data = vec![0u8; 100 * 1024 * 1024];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        write(d, "big.bin", data);
        copy_all(d)
    };
    add_local_tar_gz => |d: &Path| {
        files(d, &[("payload/a.txt", "a\n"), ("payload/sub/b.txt", "b\n")]);
        sh(d, "tar --sort=name --mtime=@1000000 --owner=0 --group=0 --numeric-owner -czf archive.tar.gz payload && rm -r payload");
        dockerfile(d, "ADD archive.tar.gz /extracted/\nADD archive.tar.gz /again\n")
    };
    copy_chown_chmod_and_link => |d: &Path| {
        files(d, &[("app/config.yaml", "k: v\n"), ("app/run.sh", "#!/bin/sh\n"), ("static/index.html", "<html/>\n")]);
        dockerfile(d, "COPY --chown=1000:1000 app/ /app/\nCOPY --chmod=0750 app/run.sh /usr/local/bin/run\nCOPY --link static/ /srv/\nCOPY --link --chown=65534:65534 --chmod=0640 app/config.yaml /etc/app.yaml\n")
    };
    copy_wildcards => |d: &Path| {
        named(d, &["a1.txt", "a2.txt", "b1.txt", "src/x.go", "src/y.go", "src/y_test.go", "cfg/one.json", "cfg/two.yaml"]);
        dockerfile(d, "COPY a?.txt /one/\nCOPY src/*.go /two/\nCOPY cfg/*.[jy]* /three/\nCOPY [ab]1.txt /four/\n")
    };
    heredocs => |d: &Path| dockerfile(d, "COPY <<EOF /etc/greeting\nhello from a heredoc\nEOF\nRUN <<EOT sh\nset -e\necho step one > /one\necho step two > /two\nEOT\nCOPY --chmod=0755 <<-'SCRIPT' /usr/local/bin/hi\n\t#!/bin/sh\n\techo hi $USER\nSCRIPT\n");
    multi_stage_copy_from_and_target => |d: &Path| {
        write(d, "src/app.txt", "app\n");
        write(d, "Dockerfile", "ARG BASE\nFROM $BASE AS build\nCOPY src/ /src/\nRUN cat /src/app.txt > /artifact && echo built >> /artifact\n\nFROM $BASE AS runtime\nCOPY --from=build /artifact /app/artifact\n\nFROM runtime AS debug\nRUN echo debug > /debug\n\nFROM $BASE AS unused\nRUN exit 1\n");
        Spec { target: Some("runtime"), ..Spec::default() }
    };
    arg_before_from_and_build_args => |d: &Path| {
        write(d, "Dockerfile", "ARG BASE\nARG VERSION=1.0\nFROM $BASE\nARG VERSION\nARG MODE=dev\nENV APP_VERSION=$VERSION APP_MODE=$MODE\nLABEL version=$VERSION\nRUN echo \"$VERSION $MODE\" > /version\n");
        Spec { build_args: vec![("VERSION", "2.5"), ("MODE", "prod")], ..Spec::default() }
    };
    secrets_mount => |d: &Path| {
        files(d, &[("secrets/token", "s3cr3t-value\n"), ("app.txt", "app\n"), (".dockerignore", "secrets\n")]);
        Spec { secrets: vec![("token", "secrets/token")], ..dockerfile(d, "COPY app.txt /app.txt\nRUN --mount=type=secret,id=token wc -c < /run/secrets/token > /token-size\n") }
    };
    labels_and_build_args_with_unicode => |d: &Path| Spec {
        build_args: vec![("GREETING", "grüß dich — こんにちは")],
        labels: vec![("org.example.title", "Büro ☕ app"), ("org.example.empty", "")],
        ..dockerfile(d, "ARG GREETING\nENV GREETING=$GREETING\nLABEL inline=\"ünï\"\n")
    };
    platform_linux_amd64 => |d: &Path| {
        write(d, "app.txt", "app\n");
        write(d, "Dockerfile", "ARG BASE\nFROM --platform=$TARGETPLATFORM $BASE\nARG TARGETPLATFORM\nARG BUILDPLATFORM\nCOPY app.txt /app.txt\nRUN echo \"$TARGETPLATFORM from $BUILDPLATFORM\" > /platform\n");
        Spec { platform: Some("linux/amd64"), ..Spec::default() }
    };
    no_cache_reruns_steps_on_both => |d: &Path| dockerfile(d, "RUN echo fixed > /fixed && mkdir -p /var/lib/app\n");
    dockerfile_outside_the_context => |d: &Path| {
        files(d, &[("ctx/app/main.sh", "#!/bin/sh\n"), ("ctx/.dockerignore", "*.md\n"), ("ctx/README.md", "readme\n"), ("docker/Dockerfile", &copy_all_with("", ""))]);
        Spec { context_dir: Some("ctx"), dockerfile_dir: Some("docker"), ..Spec::default() }
    };
    probe_of_a_tricky_tree => |d: &Path| {
        tree(d);
        symlinks(d, &[("link", "src/main.go")]);
        write(d, "exec.sh", "#!/bin/sh\n");
        chmod(d, "exec.sh", 0o755);
        set_mtime(d, "README.md", 1_234_567_890);
        write(d, ".dockerignore", "tmp\n*.log\n");
        copy_all(d)
    };
    copy_selected_paths_and_dirs => |d: &Path| {
        tree(d);
        write(d, "Dockerfile", copy_all_with("COPY src/util /util/\nCOPY docs /docs\nCOPY README.md build/keep/ /misc/\n", ""));
        write(d, ".dockerignore", "build/out\n");
        Spec::default()
    };
}

#[test]
fn the_corpus_has_at_least_30_cases() {
    assert!(CASES.len() >= 30, "only {} cases", CASES.len());
}

// ---------------------------------------------------------------------------------------------
// The `.dockerignore` walk differential: pattern lists over one tree of awkward names, sent by
// both clients; what reaches the daemon must be the same set of files (the digests cover the
// names, the probe their metadata). fsutil's walk decides, not patternmatcher's table semantics:
// the walker reuses each directory's match results for its children.

/// Names that exercise classes, escapes, dots, `#`, markdown under docs, deep nesting.
const WALK_TREE: &[&str] = &[
    "Dockerfile.keep",
    "README.md",
    "a.txt",
    "ab.txt",
    "b.md",
    "#hash.txt",
    "[x].txt",
    "x].txt",
    "*star.txt",
    "app/[slug]/page.tsx",
    "app/[id]/page.tsx",
    "app/x/page.tsx",
    "app/x/y/z.md",
    "docs/a.md",
    "docs/b.txt",
    "docs/deep/c.md",
    "docs/deep/er/d.txt",
    "dist/out.js",
    "dist/keep/k.js",
    "dist/a/b/c.js",
    "node_modules/p/index.js",
    "node_modules/p/README.md",
    "src/a/a.go",
    "src/b/b_test.go",
    "src/ab/x.go",
    ".git/config",
    ".env",
    "sub/.env",
    "a/b/a/b.txt",
];

fn walk_tree(d: &Path, patterns: &str) -> Spec {
    named(d, WALK_TREE);
    copy_ignoring(d, patterns)
}

macro_rules! walk_cases {
    ($($name:ident => $patterns:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let bed = require_bed!();
            run_case(&bed, stringify!($name), |d: &Path| walk_tree(d, $patterns)).await;
        }
    )*};
}

walk_cases! {
    walk_exception_of_a_parent_directory => "**/*.md\n!docs\n";
    walk_exception_of_a_parent_with_star => "**/*.md\n!docs/**\n";
    walk_escaped_brackets => "app/\\[slug\\]\n\\[x\\].txt\n";
    walk_bare_closing_bracket => "x].txt\n";
    walk_escaped_star_and_hash => "\\*star.txt\n\\#hash.txt\n";
    walk_everything_then_reinclude => "*\n!src\n!docs/deep\n!Dockerfile.keep\n";
    walk_double_star_reinclude_inside_excluded => "dist\n!dist/keep/**\n!**/c.js\n";
    walk_classes_and_negated_classes => "[ab].txt\n[!a]*.md\nsrc/[a-b]/*\n";
    walk_question_marks => "?.txt\n??.txt\nsrc/?/*.go\n";
    walk_anchored_and_dot_slash => "/a.txt\n./docs/b.txt\n/src/../README.md\n";
    walk_trailing_slashes_and_double_star_suffix => "dist/\nnode_modules/**\ndocs/deep/**\n";
    walk_double_star_in_the_middle => "app/**/page.tsx\n!app/x/**\n**/er/**\n";
    walk_reinclude_then_exclude_again => "docs\n!docs/deep\ndocs/deep/er\n";
    walk_dotfiles => ".*\n**/.env\n!.git\n";
    walk_nested_same_names => "a/b\n!a/b/a\n";
    walk_exception_without_wildcard_under_star => "*/\n!src/a\n";
}

/// A small deterministic generator (xorshift) for random pattern lists over [`WALK_TREE`].
fn random_patterns(seed: u64) -> String {
    const PARTS: &[&str] = &[
        "*",
        "**",
        "?",
        "a*",
        "*.md",
        "*.txt",
        "[ab]*",
        "[!a]*",
        "docs",
        "src",
        "dist",
        "app",
        "deep",
        "x",
        "\\[slug\\]",
        "[a-c]?",
        "*.js",
        "keep",
        "er",
        ".env",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut lines = Vec::new();
    for _ in 0..2 + next(4) {
        let segments = 1 + next(2);
        let mut pattern: Vec<&str> = (0..segments).map(|_| PARTS[next(PARTS.len())]).collect();
        pattern.dedup();
        let mut line = pattern.join("/");
        if next(3) == 0 {
            line.insert(0, '!');
        } else if next(6) == 0 {
            line.insert(0, '/');
        }
        if next(6) == 0 {
            line.push('/');
        }
        lines.push(line);
    }
    lines.join("\n") + "\n"
}

macro_rules! random_walk_cases {
    ($($name:ident => $seed:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let bed = require_bed!();
            let patterns = random_patterns($seed);
            note(&format!("{}: .dockerignore = {patterns:?}", stringify!($name)));
            run_case(&bed, stringify!($name), |d: &Path| walk_tree(d, &patterns)).await;
        }
    )*};
}

random_walk_cases! {
    walk_random_01 => 1;
    walk_random_02 => 2;
    walk_random_03 => 3;
    walk_random_04 => 4;
    walk_random_05 => 5;
    walk_random_06 => 6;
    walk_random_07 => 7;
    walk_random_08 => 8;
    walk_random_09 => 9;
    walk_random_10 => 10;
    walk_random_11 => 11;
    walk_random_12 => 12;
    walk_random_13 => 13;
    walk_random_14 => 14;
    walk_random_15 => 15;
    walk_random_16 => 16;
}

// ---------------------------------------------------------------------------------------------
// running a case

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos:x}", name.replace('_', "-"))
}

/// A case set up: what it asks, its directories, the repository both builds push to.
struct Case<'a> {
    spec: &'a Spec,
    /// The case directory (paths of the [`Spec`] are relative to it).
    dir: &'a Path,
    context: &'a Path,
    dockerfile_dir: &'a Path,
    repo: &'a str,
}

async fn run_case(bed: &TestBed, name: &str, setup: impl FnOnce(&Path) -> Spec) {
    let root = tempfile::tempdir().unwrap();
    let case_dir = root.path().join("case");
    fs_err::create_dir_all(&case_dir).unwrap();
    let spec = setup(&case_dir);
    let context = spec
        .context_dir
        .map_or_else(|| case_dir.clone(), |c| case_dir.join(c));
    let dockerfile_dir = spec
        .dockerfile_dir
        .map_or_else(|| context.clone(), |c| case_dir.join(c));
    let repo = format!("conformance/{}", unique(name));
    let case = Case {
        spec: &spec,
        dir: &case_dir,
        context: &context,
        dockerfile_dir: &dockerfile_dir,
        repo: &repo,
    };

    let reference = buildctl_build(bed, &case, root.path());
    let ours = fastbuild_build(bed, &case).await;
    note(&format!(
        "conformance {name}: buildctl {reference} fastbuild {ours} {}",
        if reference == ours {
            "equal"
        } else {
            "DIFFERENT"
        }
    ));
    if reference != ours {
        let diff = describe_difference(bed, &repo).await;
        panic!(
            "case `{name}`: fastbuild's digest differs from buildctl's\n  buildctl:  {reference}\n  fastbuild: {ours}\n{diff}"
        );
    }
}

/// The reference build with upstream `buildctl`; returns `containerimage.digest`.
fn buildctl_build(bed: &TestBed, case: &Case<'_>, scratch: &Path) -> String {
    let Case {
        spec,
        dir: case_dir,
        context,
        dockerfile_dir,
        repo,
    } = *case;
    let metadata = scratch.join("buildctl-metadata.json");
    let mut cmd = Command::new(&bed.buildctl);
    cmd.args([
        "--addr",
        &bed.buildkitd,
        "build",
        "--frontend",
        "dockerfile.v0",
    ])
    .arg("--local")
    .arg(format!("context={}", context.display()))
    .arg("--local")
    .arg(format!("dockerfile={}", dockerfile_dir.display()))
    .args(["--no-cache", "--progress", "plain"])
    .arg("--metadata-file")
    .arg(&metadata);
    let mut opts: Vec<String> = vec![
        format!("build-arg:BASE={}", bed.base_image),
        "build-arg:SOURCE_DATE_EPOCH=0".to_owned(),
    ];
    if let Some(f) = spec.filename {
        opts.push(format!("filename={f}"));
    }
    if let Some(t) = spec.target {
        opts.push(format!("target={t}"));
    }
    if let Some(p) = spec.platform {
        opts.push(format!("platform={p}"));
    }
    opts.extend(
        spec.build_args
            .iter()
            .map(|(k, v)| format!("build-arg:{k}={v}")),
    );
    opts.extend(spec.labels.iter().map(|(k, v)| format!("label:{k}={v}")));
    for o in opts {
        cmd.arg("--opt").arg(o);
    }
    for (id, src) in &spec.secrets {
        cmd.arg("--secret")
            .arg(format!("id={id},src={}", case_dir.join(src).display()));
    }
    cmd.arg("--output").arg(format!(
        "type=image,name={}/{repo}:buildctl,push=true,registry.insecure=true,\
         source-date-epoch=0,rewrite-timestamp=true",
        bed.registry
    ));
    let out = cmd.output().expect("run buildctl");
    assert!(
        out.status.success(),
        "buildctl failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&metadata).unwrap()).unwrap();
    let digest = meta["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no containerimage.digest in {meta}"))
        .to_owned();
    // The upstream registry client agrees on what was pushed.
    let crane = Command::new(&bed.crane)
        .args(["digest", "--insecure"])
        .arg(format!("{}/{repo}:buildctl", bed.registry))
        .output()
        .expect("run crane");
    assert!(crane.status.success(), "crane digest: {crane:?}");
    assert_eq!(String::from_utf8_lossy(&crane.stdout).trim(), digest);
    digest
}

/// The same build through fastbuild's BuildKit client on the same daemon.
async fn fastbuild_build(bed: &TestBed, case: &Case<'_>) -> String {
    let client = Client::connect(&bed.buildkitd, None)
        .await
        .expect("connect to the standalone buildkitd");
    let mut build_args: BTreeMap<String, String> = case
        .spec
        .build_args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    build_args.insert("BASE".to_owned(), bed.base_image.clone());
    let opts = BuildOptions {
        context: case.context.to_owned(),
        dockerfile: Some(
            case.dockerfile_dir
                .join(case.spec.filename.unwrap_or("Dockerfile")),
        ),
        target: case.spec.target.map(str::to_owned),
        build_args,
        labels: case
            .spec
            .labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        platforms: case.spec.platform.map(str::to_owned).into_iter().collect(),
        no_cache: true,
        secrets: case
            .spec
            .secrets
            .iter()
            .map(|(id, src)| ((*id).to_owned(), SecretSource::File(case.dir.join(src))))
            .collect(),
        image_names: vec![format!("{}/{}:fastbuild", bed.registry, case.repo)],
        push: true,
        registry_insecure: true,
        source_date_epoch: Some(0),
        rewrite_timestamp: true,
        ..BuildOptions::default()
    };
    let (tx, mut rx) = mpsc::channel::<ProgressEvent>(1024);
    let drain = tokio::spawn(async move {
        let mut logs = String::new();
        while let Some(e) = rx.recv().await {
            if let ProgressEvent::Log { data, .. } = e {
                logs.push_str(&String::from_utf8_lossy(&data));
            }
        }
        logs
    });
    let result = client.build(opts, tx, CancellationToken::new()).await;
    let logs = drain.await.unwrap();
    match result {
        Ok(r) => r.digest.to_string(),
        Err(e) => panic!("fastbuild build failed: {e}\n{logs}"),
    }
}

// ---------------------------------------------------------------------------------------------
// explaining a mismatch

async fn get(bed: &TestBed, repo: &str, what: &str) -> Vec<u8> {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v2/{repo}/{what}", bed.registry))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "GET {what}: {}", resp.status());
    resp.bytes().await.unwrap().to_vec()
}

/// One line per tar entry of a (gzip) layer: path, type, mode, owner, mtime, size, link.
fn layer_entries(blob: &[u8]) -> Vec<String> {
    let reader: Box<dyn std::io::Read> = if blob.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let mut hash = sha2::Sha256::default();
        let mut buf = Vec::new();
        entry.read_to_end(&mut buf).unwrap();
        sha2::Digest::update(&mut hash, &buf);
        let pax: Vec<String> = entry
            .pax_extensions()
            .ok()
            .flatten()
            .map(|exts| {
                exts.filter_map(Result::ok)
                    .map(|e| {
                        format!(
                            "{}={}",
                            e.key().unwrap_or("?"),
                            String::from_utf8_lossy(e.value_bytes())
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(format!(
            "{path} type={:?} mode={:o} uid={} gid={} mtime={} size={} link={link} sha={} pax={pax:?}",
            h.entry_type(),
            h.mode().unwrap_or(0),
            h.uid().unwrap_or(0),
            h.gid().unwrap_or(0),
            h.mtime().unwrap_or(0),
            h.size().unwrap_or(0),
            &hex::encode(sha2::Digest::finalize(hash))[..12],
        ));
    }
    out
}

async fn describe_difference(bed: &TestBed, repo: &str) -> String {
    use std::fmt::Write as _;
    let mut report = String::new();
    let [a, b] = manifests(bed, repo).await;
    let layers = |m: &serde_json::Value| -> Vec<String> {
        m["layers"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .map(|l| l["digest"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    if a["config"] != b["config"] {
        let mut configs = Vec::new();
        for m in [&a, &b] {
            let digest = m["config"]["digest"].as_str().unwrap_or_default();
            let bytes = get(bed, repo, &format!("blobs/{digest}")).await;
            configs.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        let _ = writeln!(
            report,
            "config differs:\n  buildctl:  {}\n  fastbuild: {}",
            configs[0], configs[1]
        );
    }
    let (la, lb) = (layers(&a), layers(&b));
    if la.len() != lb.len() {
        let _ = writeln!(report, "layer count differs: {} vs {}", la.len(), lb.len());
    }
    for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
        if x == y {
            continue;
        }
        let ea = layer_entries(&get(bed, repo, &format!("blobs/{x}")).await);
        let eb = layer_entries(&get(bed, repo, &format!("blobs/{y}")).await);
        let _ = writeln!(report, "layer {i} differs ({x} vs {y}):");
        for line in ea.iter().filter(|l| !eb.contains(l)).take(16) {
            let _ = writeln!(report, "  buildctl only:  {line}");
        }
        for line in eb.iter().filter(|l| !ea.contains(l)).take(16) {
            let _ = writeln!(report, "  fastbuild only: {line}");
        }
    }
    if report.is_empty() {
        let _ = writeln!(report, "manifests:\n  buildctl:  {a}\n  fastbuild: {b}");
    }
    report
}

/// The manifests of both builds: buildctl's, then fastbuild's.
async fn manifests(bed: &TestBed, repo: &str) -> [serde_json::Value; 2] {
    let mut out = Vec::new();
    for tag in ["buildctl", "fastbuild"] {
        let bytes = get(bed, repo, &format!("manifests/{tag}")).await;
        out.push(serde_json::from_slice(&bytes).unwrap());
    }
    out.try_into().unwrap()
}
