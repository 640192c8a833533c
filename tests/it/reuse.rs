//! Nothing changed, nothing solved (issue 16, item 1): `fastbuild build` reuses the digest of
//! the last build with the same inputs when the registry still serves it, and every kind of
//! input change means a solve. Each case also checks the reused (or rebuilt) digest against a
//! `--force` solve of the same inputs: a skip must never give another digest than a solve.
//!
//! Runs on the bed's standalone buildkitd (the decision is the client's; which daemon solves
//! does not change it).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::buildkit::uuid_like;
use crate::common::{TestBed, assert_ok, fastbuild, require_bed, stderr};

/// A one-service BuildKit project in a temp dir, building with the standalone buildkitd into a
/// repository of its own.
struct Project {
    dir: tempfile::TempDir,
    /// `XDG_CACHE_HOME` (the private key of secret fingerprints), outside the context.
    cache: tempfile::TempDir,
    bed: TestBed,
    repository: String,
}

const IGNORED: &str = "tilt-values\nsecret.txt\nother\n";

/// What one `fastbuild build` said.
#[derive(Debug, Clone, PartialEq)]
struct Built {
    digest: String,
    reused: bool,
}

impl Project {
    fn new(bed: TestBed, dockerfile: &str, extra_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repository = format!("reuse-{}", uuid_like());
        fs_err::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        fs_err::write(dir.path().join("app.txt"), "hello\n").unwrap();
        // What a project keeps out of its context: the values files fastbuild writes (else
        // each new digest would change the context of the next build), secrets, the named
        // context's own directory.
        fs_err::write(dir.path().join(".dockerignore"), IGNORED).unwrap();
        fs_err::write(
            dir.path().join("fastbuild.yaml"),
            format!(
                "registry: {}\nservices:\n  app:\n    builder: buildkit\n    context: .\n    \
                 repository: {repository}\n    build_args:\n      BASE: {}\n{extra_yaml}",
                bed.registry, bed.base_image
            ),
        )
        .unwrap();
        Self {
            dir,
            cache: tempfile::tempdir().unwrap(),
            bed,
            repository,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(p, content).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_for("build", args)
    }

    fn command_for(&self, sub: &str, args: &[&str]) -> Command {
        let mut cmd = fastbuild(self.dir.path());
        cmd.args([sub, "--progress", "json"])
            .args(args)
            .env("BUILDKIT_HOST", &self.bed.buildkitd)
            .env("XDG_CACHE_HOME", self.cache.path());
        cmd
    }

    fn build(&self, args: &[&str]) -> Built {
        let built = self.run("build", args);
        // The values file pins what was reported, reused or not.
        let values = fs_err::read_to_string(self.path("tilt-values/app.values.yaml")).unwrap();
        assert!(values.contains(&built.digest), "{values}");
        built
    }

    fn run(&self, sub: &str, args: &[&str]) -> Built {
        let out = self.command_for(sub, args).output().unwrap();
        assert_ok(&out);
        let result = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "result")
            .unwrap_or_else(|| panic!("no result event:\n{}", stderr(&out)));
        Built {
            digest: result["digest"].as_str().unwrap().to_owned(),
            reused: result["reused"].as_bool().unwrap(),
        }
    }

    /// A build after a change: it must solve; a `--force` solve of the same inputs gives the
    /// same digest, and the next build reuses it.
    fn assert_solves(&self, what: &str) -> String {
        let after = self.build(&[]);
        assert!(
            !after.reused,
            "{what}: the build after it reused the digest"
        );
        let forced = self.build(&["--force"]);
        assert_eq!(
            forced.digest, after.digest,
            "{what}: a forced solve disagrees"
        );
        let again = self.build(&[]);
        assert!(again.reused, "{what}: an unchanged rebuild solved");
        assert_eq!(again.digest, after.digest, "{what}");
        after.digest
    }

    fn crane(&self, args: &[&str]) {
        let out = Command::new(&self.bed.crane)
            .args(args)
            .arg("--insecure")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crane {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_unchanged_service_reuses_its_digest_and_a_forced_solve_agrees() {
    let bed = require_bed!();
    let p = Project::new(bed, "ARG BASE\nFROM ${BASE}\nCOPY app.txt /app.txt\n", "");
    let first = p.build(&[]);
    assert!(!first.reused, "a first build cannot be reused");
    let out = p.command(&[]).output().unwrap();
    assert_ok(&out);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        said.contains("unchanged since its build of") && said.contains(&first.digest),
        "{said}"
    );
    // No solve: no step of the build was reported.
    let steps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"event\":\"step"))
        .count();
    assert_eq!(steps, 0, "{}", String::from_utf8_lossy(&out.stdout));
    let forced = p.build(&["--force"]);
    assert!(!forced.reused);
    assert_eq!(forced.digest, first.digest);
    // `--no-cache` always solves — and may give another digest (its layers carry the files'
    // current times): from then on that is the digest these inputs reuse.
    let uncached = p.build(&["--no-cache"]);
    assert!(!uncached.reused);
    let after_uncached = p.build(&[]);
    assert!(after_uncached.reused);
    assert_eq!(after_uncached.digest, uncached.digest);
    assert_eq!(p.build(&["--force"]).digest, uncached.digest);
    // `push` reuses only when asked, and writes its CI outputs either way.
    // (Written outside the context: a CI output inside it would be a changed input.)
    let digest_out = p.cache.path().join("digest.txt");
    let d = digest_out.to_str().unwrap();
    // (`push` is reproducible by default: other exporter options, its own fingerprint.)
    let pushed = p.run("push", &["--skip-unchanged", "--digest-out", d]);
    assert!(!pushed.reused);
    let skipped = p.run("push", &["--skip-unchanged", "--digest-out", d]);
    assert!(skipped.reused);
    assert_eq!(skipped.digest, pushed.digest);
    assert_eq!(
        fs_err::read_to_string(&digest_out).unwrap().trim(),
        skipped.digest
    );
    let plain = p.run("push", &["--digest-out", d]);
    assert!(!plain.reused);
    assert_eq!(plain.digest, pushed.digest);

    // A touch changes no content: still reused, and BuildKit's own cache agrees (its keys
    // leave modification times out too).
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(p.path("app.txt"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let touched = p.build(&[]);
    assert!(touched.reused);
    assert_eq!(touched.digest, uncached.digest);
    assert_eq!(p.build(&["--force"]).digest, uncached.digest);
}

#[test]
fn every_kind_of_input_change_means_a_solve() {
    let bed = require_bed!();
    let p = Project::new(
        bed,
        "ARG BASE\nFROM ${BASE}\nARG FLAVOUR=plain\nCOPY . /src\n\
         RUN --mount=type=secret,id=tok test -s /run/secrets/tok && echo $FLAVOUR > /flavour\n\
         COPY --from=extra f /extra\n",
        "    secrets:\n      - id=tok,src=secret.txt\n    contexts:\n      extra: ./other\n",
    );
    p.write("secret.txt", "s3cret-1");
    p.write("other/f", "extra-1");
    p.write("kept.txt", "kept");
    let base = p.build(&[]);
    assert!(p.build(&[]).reused);

    // A build arg.
    let arg = p.build(&["--build-arg", "FLAVOUR=spicy"]);
    assert!(!arg.reused, "a changed build arg");
    assert_ne!(arg.digest, base.digest);
    // …and back: the earlier build is still among the recent ones.
    let back = p.build(&[]);
    assert!(back.reused, "back to the earlier build arg");
    assert_eq!(back.digest, base.digest);

    // A secret's value (its id unchanged).
    p.write("secret.txt", "s3cret-2");
    p.assert_solves("a changed secret file");

    // The .dockerignore.
    p.write(".dockerignore", &format!("{IGNORED}kept.txt\n"));
    let ignored = p.assert_solves("a .dockerignore edit");
    assert_ne!(ignored, base.digest, "kept.txt is no longer in /src");
    // …and what it now ignores no longer counts.
    p.write("kept.txt", "changed but ignored");
    assert!(p.build(&[]).reused, "an ignored file changed");

    // A named context directory.
    p.write("other/f", "extra-2");
    p.assert_solves("a named context edit");

    // A context file rewritten with the same size and its old modification time.
    let meta = std::fs::metadata(p.path("app.txt")).unwrap();
    p.write("app.txt", "HELLO\n");
    std::fs::File::options()
        .write(true)
        .open(p.path("app.txt"))
        .unwrap()
        .set_modified(meta.modified().unwrap())
        .unwrap();
    p.assert_solves("same size, same mtime, other bytes");
}

#[test]
fn a_moved_base_tag_means_a_solve() {
    let bed = require_bed!();
    let base = format!("{}/reuse-base-{}:latest", bed.registry, uuid_like());
    let p = Project::new(bed, "ARG BASE\nFROM ${BASE}\nCOPY app.txt /app.txt\n", "");
    p.crane(&["copy", &p.bed.base_image, &base]);
    let first = p.build(&["--build-arg", &format!("BASE={base}")]);
    assert!(p.build(&["--build-arg", &format!("BASE={base}")]).reused);
    // Someone pushes a new image under the same tag.
    p.crane(&["mutate", "--label", "moved=yes", &base]);
    let moved = p.build(&["--build-arg", &format!("BASE={base}")]);
    assert!(!moved.reused, "the base tag moved");
    assert_ne!(moved.digest, first.digest);
    let forced = p.build(&["--build-arg", &format!("BASE={base}"), "--force"]);
    assert_eq!(forced.digest, moved.digest);
}

#[test]
fn a_tag_moved_in_the_push_registry_means_a_solve() {
    let bed = require_bed!();
    let p = Project::new(
        bed,
        "ARG BASE\nFROM ${BASE}\nCOPY app.txt /app.txt\n",
        "    tag: dev\n",
    );
    let first = p.build(&[]);
    assert!(p.build(&[]).reused);
    let target = format!("{}/{}:dev", p.bed.registry, p.repository);
    p.crane(&["copy", &p.bed.base_image, &target]);
    let rebuilt = p.build(&[]);
    assert!(!rebuilt.reused, "`:dev` points elsewhere now");
    assert_eq!(rebuilt.digest, first.digest);
}

/// A loopback HTTP server answering every request with `body` (read at each request).
fn serve(body: Arc<Mutex<Vec<u8>>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).starts_with("HEAD");
            let body = body.lock().unwrap().clone();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if !head {
                let _ = s.write_all(&body);
            }
        }
    });
    format!("http://{addr}/payload.txt")
}

#[test]
fn add_from_a_url_and_a_syntax_directive_always_solve() {
    let bed = require_bed!();
    let body = Arc::new(Mutex::new(b"one".to_vec()));
    let url = serve(Arc::clone(&body));
    let p = Project::new(
        bed,
        &format!("ARG BASE\nFROM ${{BASE}}\nADD {url} /payload.txt\n"),
        "",
    );
    let first = p.build(&[]);
    let second = p.build(&[]);
    assert!(!second.reused, "ADD <url> is never skipped");
    *body.lock().unwrap() = b"two".to_vec();
    let third = p.build(&[]);
    assert!(!third.reused);
    assert_ne!(third.digest, first.digest, "the new payload was fetched");

    // `# syntax=` names a frontend image, which can move: never skipped. (The bed has no
    // frontend image to run, so the solve fails — which is what shows it was attempted.)
    p.write(
        "Dockerfile",
        &format!(
            "# syntax={}/no-such-frontend:1\nARG BASE\nFROM ${{BASE}}\n",
            p.bed.registry
        ),
    );
    for _ in 0..2 {
        let out = p.command(&[]).output().unwrap();
        assert!(!out.status.success(), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains("unchanged since"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn the_state_file_never_holds_a_secret_or_its_plain_hash() {
    use sha2::Digest as _;
    let bed = require_bed!();
    let p = Project::new(
        bed,
        "ARG BASE\nFROM ${BASE}\nRUN --mount=type=secret,id=tok test -s /run/secrets/tok\n",
        "    secrets:\n      - id=tok,src=secret.txt\n",
    );
    let secret = "correct-horse-battery-staple";
    p.write("secret.txt", secret);
    p.build(&[]);
    assert!(p.build(&[]).reused);
    let state_file: &Path = &fastbuild::reuse::state_file(p.dir.path(), "app");
    let state = fs_err::read_to_string(state_file).unwrap();
    let plain = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    assert!(!state.contains(secret) && !state.contains(&plain));
    // (A file in the context is hashed plainly, as every context file is: the daemon is sent
    // its bytes anyway. The secret file here is kept out of the context, as secrets are.)
}

/// The corpus: a seeded random walk of edits over a small tree (content, new and deleted
/// files, modes, symlinks, renames, `.dockerignore` toggles, touches, nothing at all, and
/// returns to earlier states); after each, `build` (reused or not, as the inputs say) and a
/// `--force` solve must give the same digest, and a reuse must happen exactly when the tree is
/// one the recent builds saw.
#[test]
fn over_a_corpus_of_edits_a_reused_digest_is_what_a_solve_gives() {
    let bed = require_bed!();
    let p = Project::new(bed, "ARG BASE\nFROM ${BASE}\nCOPY . /ctx/\n", "");
    let mut seed: u64 = 0x5eed_0016;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let files = ["a.txt", "src/b.txt", "src/deep/c.txt", "d.bin"];
    for f in files {
        p.write(f, f);
    }
    let mut built_trees = std::collections::BTreeMap::new();
    let mut reuses = 0;
    for step in 0..24 {
        let f = files[next(files.len() as u64) as usize];
        let what = match next(9) {
            0 => {
                p.write(f, &format!("{f} v{}", next(3)));
                "edit"
            }
            1 => {
                let _ = fs_err::remove_file(p.path(f));
                "delete"
            }
            2 => {
                use std::os::unix::fs::PermissionsExt as _;
                if let Ok(m) = std::fs::metadata(p.path(f)) {
                    let mode = if m.permissions().mode() & 0o111 == 0 {
                        0o755
                    } else {
                        0o644
                    };
                    std::fs::set_permissions(p.path(f), std::fs::Permissions::from_mode(mode))
                        .unwrap();
                }
                "chmod"
            }
            3 => {
                let _ = fs_err::remove_file(p.path("link"));
                std::os::unix::fs::symlink(f, p.path("link")).unwrap();
                "symlink"
            }
            4 => {
                let ignored = fs_err::read_to_string(p.path(".dockerignore")).unwrap();
                let toggled = if ignored.contains("d.bin") {
                    IGNORED.to_owned()
                } else {
                    format!("{IGNORED}d.bin\n")
                };
                p.write(".dockerignore", &toggled);
                "ignore toggle"
            }
            5 => {
                if p.path(f).exists() {
                    let later =
                        std::time::SystemTime::now() + std::time::Duration::from_secs(next(100));
                    std::fs::File::options()
                        .write(true)
                        .open(p.path(f))
                        .unwrap()
                        .set_modified(later)
                        .unwrap();
                }
                "touch"
            }
            6 => {
                if p.path(f).exists() {
                    fs_err::rename(p.path(f), p.path("renamed.txt")).unwrap();
                    fs_err::rename(p.path("renamed.txt"), p.path(f)).unwrap();
                }
                "rename and back"
            }
            7 => {
                p.write(f, f);
                "back to the first content"
            }
            _ => "nothing",
        };
        let tree = tree_state(p.dir.path());
        let built = p.build(&[]);
        let forced = p.build(&["--force"]);
        assert_eq!(
            built.digest, forced.digest,
            "step {step} ({what} {f}): reused={} but a solve disagrees",
            built.reused
        );
        let known = built_trees.get(&tree);
        assert_eq!(
            built.reused,
            known.is_some(),
            "step {step} ({what} {f}): reuse should happen exactly for a tree seen before"
        );
        if let Some(d) = known {
            assert_eq!(&built.digest, d, "step {step} ({what} {f})");
            reuses += 1;
        }
        built_trees.insert(tree, built.digest);
    }
    assert!(
        reuses >= 3,
        "the walk reused only {reuses} times: a weak corpus"
    );
}

/// What the context holds as the daemon would see it (names, modes, links, contents; not
/// times), for the test's own bookkeeping of which trees it has built.
fn tree_state(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt as _;
    let ignored = fs_err::read_to_string(root.join(".dockerignore")).unwrap();
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs_err::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if rel == ".fastbuild"
                || ignored
                    .lines()
                    .any(|l| rel == l || rel.starts_with(&format!("{l}/")))
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let content = if meta.is_symlink() {
                fs_err::read_link(e.path())
                    .unwrap()
                    .display()
                    .to_string()
                    .into_bytes()
            } else if meta.is_dir() {
                stack.push(e.path());
                Vec::new()
            } else {
                fs_err::read(e.path()).unwrap()
            };
            out.push((rel, meta.permissions().mode(), content));
        }
    }
    out.sort();
    out
}
