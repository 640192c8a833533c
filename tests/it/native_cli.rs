//! The native builder through the `fastbuild` binary, against the test bed's real registries:
//! a 1 GiB layer pushes in bounded memory, a push killed half-way leaves no manifest and a
//! rerun succeeds, no credential ever reaches the logs (even at `-vv` with `RUST_LOG=trace`),
//! and bad input ends in one clear error with the documented exit code.

use std::io::Write as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{TestBed, registry_repo_dir, repo_root, require_bed, sha256};
use crate::common::{assert_ok, fastbuild, run, served_manifest, served_manifest_digest};

pub(crate) const MIB: u64 = 1024 * 1024;

pub(crate) fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it/native-cli-{name}-{nanos:x}{:x}", std::process::id())
}

/// A temp dir traversable by other users (the unreadable-file case runs the CLI as `nobody`),
/// with a `tmp/` the CLI uses as `TMPDIR` so that its blob spool is removed with the dir even
/// when the process is killed.
pub(crate) fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let tmp = dir.path().join("tmp");
    fs_err::create_dir(&tmp).unwrap();
    set_mode(&tmp, 0o1777);
    dir
}

/// A [`workdir`] with `data/x` holding `content` (a layer source `data:/data`).
pub(crate) fn data_workdir(content: &str) -> tempfile::TempDir {
    let dir = workdir();
    fs_err::create_dir(dir.path().join("data")).unwrap();
    fs_err::write(dir.path().join("data/x"), content).unwrap();
    dir
}

/// A [`workdir`] with `data/big.bin`: `size` bytes of [`random_file`] from `seed`.
pub(crate) fn random_data_workdir(size: u64, seed: u64) -> tempfile::TempDir {
    let dir = workdir();
    fs_err::create_dir(dir.path().join("data")).unwrap();
    random_file(&dir.path().join("data/big.bin"), size, seed);
    dir
}

/// A peak RSS measured (`rss`, bytes) of a few MiB at least (the CLI cannot run in less: a
/// measurement, not a zero) and under 64 MiB while doing `what`.
pub(crate) fn assert_rss_between_4_and_64_mib(rss: u64, what: &str) {
    assert!(rss > 4 * MIB, "{rss}");
    assert!(rss < 64 * MIB, "peak RSS {} KiB while {what}", rss / 1024);
}

/// The `--layer` of the native example: `testdata/native/app` at `/app`.
fn native_app_layer() -> String {
    format!("{}:/app", repo_root().join("testdata/native/app").display())
}

fn set_mode(path: &Path, mode: u32) {
    fs_err::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// `fastbuild` run in `dir` with `TMPDIR=dir/tmp`, no `RUST_LOG` of the developer's, and the
/// project's global flags for a native build.
pub(crate) fn native_cmd(dir: &Path) -> Command {
    let mut cmd = fastbuild(dir);
    cmd.env("TMPDIR", dir.join("tmp")).env_remove("RUST_LOG");
    cmd
}

/// `build app --builder native …` with the layer, base and registry as flags; credentials
/// from `docker_config` (a directory that does not exist keeps the developer's own out).
fn native_build(
    dir: &Path,
    docker_config: &Path,
    registry: &str,
    base: &str,
    layer: &str,
    repo: &str,
) -> Command {
    let mut cmd = native_cmd(dir);
    cmd.args(["build", "app", "--builder", "native", "--no-values"])
        .args(["--base", base, "--layer", layer, "--registry", registry])
        .args(["--repository", repo, "--tag", "v1"])
        .arg("--docker-config")
        .arg(docker_config);
    cmd
}

/// A Docker config directory that does not exist: no credentials.
/// [`native_build`] of the layer `data:/data` to the plain registry, without credentials.
fn data_build(dir: &Path, bed: &TestBed, base: &str, repo: &str) -> Command {
    native_build(dir, &no_creds(dir), &bed.registry, base, "data:/data", repo)
}

pub(crate) fn no_creds(dir: &Path) -> PathBuf {
    dir.join("no-docker-config")
}

/// Writes `size` bytes of xorshift64 output to `path`, 1 MiB at a time. A fixed seed keeps the
/// blob the same from run to run, so the registry's storage holds one copy however often the
/// tests run.
pub(crate) fn random_file(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(
        usize::try_from(MIB).unwrap(),
        fs_err::File::create(path).unwrap(),
    );
    let mut x = seed;
    let mut chunk = vec![0u8; usize::try_from(MIB).unwrap()];
    for _ in 0..size / MIB {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
}

pub(crate) fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The digest of the `app  repo@sha256:…` line the CLI prints.
pub(crate) fn printed_digest(stdout: &str, repository: &str) -> String {
    stdout
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("app"))
                .then(|| words.next())
                .flatten()
        })
        .and_then(|r| r.strip_prefix(&format!("{repository}@")))
        .unwrap_or_else(|| panic!("no `app  {repository}@…` line in stdout:\n{stdout}"))
        .to_owned()
}

/// Bytes uploaded, from the `blobs: N uploaded (B bytes), …` note.
pub(crate) fn bytes_uploaded(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            l.split_once("uploaded (")?
                .1
                .split_once(" bytes)")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `uploaded (N bytes)` note in stderr:\n{stderr}"))
}

async fn tag_status(bed: &TestBed, repo: &str, tag: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{}/v2/{repo}/manifests/{tag}", bed.registry))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The plain registry's in-progress uploads of `repo` (distribution's filesystem storage,
/// `<rootdirectory>/docker/registry/v2/repositories/<repo>/_uploads/<uuid>/data`): uuid and
/// bytes received so far.
pub(crate) fn uploads_in_progress(name: &str, repo: &str) -> Vec<(String, u64)> {
    let dir = registry_repo_dir(name, repo).join("_uploads");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let size = std::fs::metadata(e.path().join("data")).ok()?.len();
            Some((e.file_name().to_string_lossy().into_owned(), size))
        })
        .collect()
}

/// `cmd` started with no stdin, stdout or stderr.
pub(crate) fn spawn_quietly(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `seen` every 10 ms until it gives a value, for at most 60 s and while `child` runs;
/// `failures` say that it exited, and that the time ran out.
pub(crate) fn poll_while_running<T>(
    child: &mut Child,
    failures: [&str; 2],
    mut seen: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = seen() {
            return v;
        }
        assert!(child.try_wait().unwrap().is_none(), "{}", failures[0]);
        assert!(Instant::now() < deadline, "{}", failures[1]);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Forks argv[2..] from a small process, reaps it with `wait4(2)`, writes its `ru_maxrss`
/// (KiB on Linux) to argv[1] and exits with its exit code.
const MAXRSS_PY: &str = "import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], 'w').write(f'{usage.ru_maxrss}\\n')
sys.exit(os.waitstatus_to_exitcode(status))
";

/// Runs `cmd` to completion and returns its output and peak RSS in bytes (`ru_maxrss` from
/// `wait4(2)`).
///
/// Not `wait4` on a child of this process: Rust spawns with vfork/posix_spawn and at `exec`
/// Linux folds the old address space's high-water mark into the new program's `ru_maxrss`, so
/// a direct child of this (large, multi-test) process reports at least this process's peak
/// (`/bin/true` spawned from a 200 MB process reports 200 MB). Nor `busybox time`, which
/// multiplies `ru_maxrss` by 4 (it takes KiB for pages). A python3 shim (python3 comes with
/// the bed) forks the CLI from its own ~10 MB address space: an upper bound, never an
/// underestimate.
pub(crate) fn run_measuring_rss(cmd: &Command, dir: &Path) -> (Output, u64) {
    let rss_file = dir.join("maxrss");
    let mut timed = Command::new("python3");
    timed
        .args(["-c", MAXRSS_PY])
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => timed.env(key, v),
            None => timed.env_remove(key),
        };
    }
    if let Some(cwd) = cmd.get_current_dir() {
        timed.current_dir(cwd);
    }
    let out = timed
        .output()
        .expect("run python3 (installed by scripts/testbed)");
    let kib: u64 = fs_err::read_to_string(&rss_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no max RSS from the shim; stderr:\n{}", text(&out).1));
    (out, kib * 1024)
}

#[tokio::test]
async fn one_gib_layer_pushes_with_peak_rss_under_64_mib() {
    let bed = require_bed!();
    let t0 = Instant::now();
    let dir = random_data_workdir(1024 * MIB, 0x9E37_79B9_7F4A_7C15);
    let generated = t0.elapsed();
    let data = dir.path().join("data");
    let repo = unique("1gib");
    fs_err::write(
        dir.path().join("fastbuild.yaml"),
        format!(
            "registry: {}\ndocker_config: no-docker-config\ncompression: uncompressed\n\
             services:\n  app:\n    builder: native\n    base: scratch\n    repository: {repo}\n    \
             tag: big\n    layers: [{{src: data, dest: /data}}]\n",
            bed.registry
        ),
    )
    .unwrap();

    let t1 = Instant::now();
    let mut cmd = native_cmd(dir.path());
    cmd.args(["build", "app", "--no-values", "--progress", "plain"]);
    let (out, rss) = run_measuring_rss(&cmd, dir.path());
    let pushed_in = t1.elapsed();
    fs_err::remove_file(data.join("big.bin")).unwrap();
    assert_ok(&out);
    let (stdout, stderr) = text(&out);
    let repository = format!("{}/{repo}", bed.registry);
    let digest = printed_digest(&stdout, &repository);
    // The whole gibibyte went over the wire in this run (a fresh repository: nothing to skip).
    let uploaded = bytes_uploaded(&stderr);
    assert!(uploaded > 1024 * MIB, "{uploaded} bytes uploaded\n{stderr}");
    assert_rss_between_4_and_64_mib(rss, "pushing a 1 GiB layer");
    assert_eq!(
        served_manifest_digest(&bed.registry, &repo, "big").await,
        digest
    );
    // The served manifest's layer is the uncompressed 1 GiB tar.
    let manifest: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/{repo}/manifests/{digest}",
            bed.registry
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert!(manifest["layers"][0]["size"].as_u64().unwrap() > 1024 * MIB);
    // Reported with --nocapture: the numbers behind the assertion.
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "1 GiB layer: peak RSS {} KiB, {uploaded} bytes uploaded in {pushed_in:.1?} \
             (data generated in {generated:.1?})",
            rss / 1024
        );
    }
}

#[tokio::test]
async fn push_killed_mid_upload_leaves_no_manifest_and_a_rerun_succeeds() {
    let bed = require_bed!();
    let dir = random_data_workdir(300 * MIB, 0x2545_F491_4F6C_DD1D);
    let repo = unique("kill");
    let repository = format!("{}/{repo}", bed.registry);
    let build = || {
        let mut cmd = data_build(dir.path(), &bed, "scratch", &repo);
        cmd.args(["--compression", "uncompressed"]);
        cmd
    };

    // Kill once the registry has received at least 1 MiB of the layer's upload.
    let mut child = spawn_quietly(&mut build());
    let received = poll_while_running(
        &mut child,
        [
            "fastbuild exited before its upload was seen",
            "no upload seen within 60 s",
        ],
        || {
            uploads_in_progress("registry", &repo)
                .into_iter()
                .find(|(_, n)| *n >= MIB)
        },
    )
    .1;
    assert!(
        child.try_wait().unwrap().is_none(),
        "fastbuild must still be pushing when killed"
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(received < 300 * MIB, "{received}");

    #[allow(clippy::print_stderr)]
    {
        eprintln!("killed after the registry had received {received} bytes of 300 MiB");
    }

    // Manifests go last: nothing is visible under the tag.
    assert_eq!(tag_status(&bed, &repo, "v1").await, 404);

    // The same build again: succeeds, and the registry serves the digest it prints.
    let out = build().output().unwrap();
    assert_ok(&out);
    let (stdout, stderr) = text(&out);
    let digest = printed_digest(&stdout, &repository);
    assert_eq!(
        served_manifest_digest(&bed.registry, &repo, "v1").await,
        digest
    );
    assert!(bytes_uploaded(&stderr) > 300 * MIB, "{stderr}");
    // The killed run's staged layer (300 MiB in its work dir) was swept by the rerun.
    let leftovers: Vec<String> = fs_err::read_dir(dir.path().join("tmp"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fastbuild-work-"))
        .collect();
    assert!(leftovers.is_empty(), "work dirs left behind: {leftovers:?}");
    // The killed run's upload session stays in the registry (cancelling it needs the `_state`
    // token only the killed process knew); distribution purges stale uploads after a week.
}

/// Where `haystack` leaks one of `secrets` or an `Authorization` value (`Basic …` or
/// `Bearer …` followed by a token): `None` when clean. The answer names the line and the kind of
/// leak, never the secret (test output ends up in CI logs too).
fn find_leak(haystack: &str, secrets: &[&str]) -> Option<String> {
    for (n, line) in haystack.lines().enumerate() {
        for (i, secret) in secrets.iter().enumerate() {
            assert!(secret.len() >= 8, "a secret too short to search for");
            if line.contains(secret) {
                return Some(format!("secret #{i} on output line {}", n + 1));
            }
        }
        let lower = line.to_ascii_lowercase();
        for scheme in ["basic ", "bearer "] {
            for (at, _) in lower.match_indices(scheme) {
                let token = line[at + scheme.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "+/=-_.~".contains(*c))
                    .count();
                if token >= 8 {
                    return Some(format!(
                        "a `{}` credential on output line {}",
                        scheme.trim(),
                        n + 1
                    ));
                }
            }
        }
    }
    None
}

pub(crate) fn docker_config(
    dir: &Path,
    host: &str,
    user: &str,
    password: &str,
) -> (PathBuf, String) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    fs_err::create_dir_all(dir).unwrap();
    fs_err::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    (dir.to_owned(), auth)
}

#[tokio::test]
async fn no_credential_appears_in_trace_logs_of_a_tls_push() {
    use base64::Engine as _;
    let bed = require_bed!();
    let dir = workdir();
    let layer = native_app_layer();
    let password = bed.registry_tls_password.as_str();
    let (cfg, auth) = docker_config(
        &dir.path().join("cfg"),
        &bed.registry_tls,
        &bed.registry_tls_user,
        password,
    );
    let auth_url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{password}", bed.registry_tls_user));
    let traced = |cfg: &Path, repo: &str| {
        let mut cmd = native_build(dir.path(), cfg, &bed.registry_tls, "scratch", &layer, repo);
        cmd.arg("--registry-ca")
            .arg(&bed.registry_tls_ca)
            .args(["-vv", "--progress", "plain"])
            .env("RUST_LOG", "trace");
        cmd
    };

    // The scanner itself catches a header value and a bare secret.
    for leak in [
        "authorization: Basic Zm9vOmJhcjEyMzQ1",
        "token=s3cr3t-value-42",
    ] {
        assert!(find_leak(leak, &["s3cr3t-value-42"]).is_some(), "{leak}");
    }
    assert_eq!(
        find_leak("basic auth; Basic realm=x", &["s3cr3t-value-42"]),
        None
    );

    let repo = unique("secret");
    let out = traced(&cfg, &repo).output().unwrap();
    let (stdout, stderr) = text(&out);
    // First, so that no failure message below can print a leaked secret.
    assert_eq!(
        find_leak(
            &format!("{stdout}\n{stderr}"),
            &[password, auth.as_str(), auth_url_safe.as_str()]
        ),
        None
    );
    assert_ok(&out);
    // Trace logging really was on: the crate's own events and the HTTP stack's.
    assert!(
        stderr.contains("TRACE") && stderr.contains("fastbuild_oci::client"),
        "{stderr}"
    );
    let lines = stderr.lines().count();
    assert!(lines > 200, "only {lines} lines at -vv with RUST_LOG=trace");
    // The push happened: the registry serves the printed digest (read with the credentials).
    let digest = printed_digest(&stdout, &format!("{}/{repo}", bed.registry_tls));
    let ca = reqwest::Certificate::from_pem(&bed.registry_tls_ca_pem()).unwrap();
    let served = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap()
        .get(format!(
            "https://{}/v2/{repo}/manifests/v1",
            bed.registry_tls
        ))
        .basic_auth(&bed.registry_tls_user, Some(password))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status().as_u16(), 200);
    let bytes = served.bytes().await.unwrap();
    assert_eq!(sha256(&bytes), digest);

    // Wrong password: refused, said clearly, and still no secret (neither the wrong one nor
    // the right one) in the logs.
    let wrong = "wrong-password-4f1c9a";
    let (bad_cfg, bad_auth) = docker_config(
        &dir.path().join("bad-cfg"),
        &bed.registry_tls,
        &bed.registry_tls_user,
        wrong,
    );
    let out = traced(&bad_cfg, &unique("secret-bad")).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        find_leak(
            &format!("{stdout}\n{stderr}"),
            &[wrong, bad_auth.as_str(), password, auth.as_str()]
        ),
        None
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let Some((_, error)) = stderr.split_once("\nerror: ") else {
        panic!("no `error:` in stderr:\n{stderr}")
    };
    assert!(
        error.contains(&bed.registry_tls) && error.contains("credentials were refused"),
        "{error}"
    );
}

/// The same command run as `nobody` (uid/gid 65534), from a copy of the binary inside `dir`
/// (traversable by that user): the checkout holding `target/` may not be (CI clones into a
/// private directory).
fn as_nobody(cmd: &Command, dir: &Path) -> Command {
    let copy = dir.join("fastbuild-as-nobody");
    fs_err::copy(env!("CARGO_BIN_EXE_fastbuild"), &copy).unwrap();
    set_mode(&copy, 0o755);
    let mut nobody = Command::new(&copy);
    nobody.args(cmd.get_args());
    if let Some(cwd) = cmd.get_current_dir() {
        nobody.current_dir(cwd);
    }
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => nobody.env(key, v),
            None => nobody.env_remove(key),
        };
    }
    nobody.uid(65534).gid(65534);
    nobody
}

/// Runs a failing build and checks the one-error contract: exit `code`, nothing on stdout, a
/// single `error:` block, no panic; returns that block.
fn expect_error(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let starts = stderr.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(starts, 1, "{stderr}");
    let (_, error) = stderr.split_once("error:").unwrap();
    error.to_owned()
}

#[tokio::test]
async fn bad_input_through_the_cli_is_one_clear_error_with_its_exit_code() {
    let bed = require_bed!();
    let dir = workdir();
    let layer = native_app_layer();
    let repo = unique("bad");
    let none = no_creds(dir.path());
    let build = |base: &str, layer: &str| {
        native_build(dir.path(), &none, &bed.registry, base, layer, &repo)
    };

    // Missing layer source: a usage error, before any network.
    let missing = dir.path().join("no/such/dir");
    let e = expect_error(
        &mut build("scratch", &format!("{}:/app", missing.display())),
        2,
    );
    assert!(
        e.contains(&format!("`{}`", missing.display())) && e.contains("does not exist"),
        "{e}"
    );

    // Base image not found: names the reference.
    let nowhere = format!("{}/base/does-not-exist:latest", bed.registry);
    let e = expect_error(&mut build(&nowhere, &layer), 1);
    assert!(
        e.contains(&format!("`{nowhere}`")) && e.contains("not found"),
        "{e}"
    );

    // Wrong platform: lists what the base has.
    let e = expect_error(
        build(&bed.base_image, &layer).args(["--platform", "linux/s390x"]),
        1,
    );
    assert!(
        e.contains(&bed.base_image)
            && e.contains("linux/s390x")
            && e.contains("available: linux/amd64"),
        "{e}"
    );

    // A FIFO among the sources (reading it would block forever): refused, named.
    let src = dir.path().join("src");
    fs_err::create_dir(&src).unwrap();
    fs_err::write(src.join("ok.txt"), "ok\n").unwrap();
    let fifo = src.join("pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let src_layer = format!("{}:/app", src.display());
    let e = expect_error(&mut build("scratch", &src_layer), 1);
    assert!(e.contains(&format!("`{}`", fifo.display())), "{e}");
    fs_err::remove_file(&fifo).unwrap();

    // An unreadable file. Root (CAP_DAC_OVERRIDE) reads a mode-000 file anyway: then the CLI
    // runs as `nobody` (uid/gid 65534) for this case; the work dir is traversable by it and
    // its TMPDIR world-writable.
    let locked = src.join("locked.txt");
    fs_err::write(&locked, "secret\n").unwrap();
    set_mode(&locked, 0o000);
    let mut cmd = build("scratch", &src_layer);
    if std::fs::File::open(&locked).is_ok() {
        cmd = as_nobody(&cmd, dir.path());
    }
    let e = expect_error(&mut cmd, 1);
    assert!(
        e.contains(&format!("`{}`", locked.display())) && e.contains("Permission denied"),
        "{e}"
    );

    // None of the failures pushed a manifest.
    assert_eq!(tag_status(&bed, &repo, "v1").await, 404);
}

/// `--platform linux/amd64,linux/arm64` (comma-separated, as buildx takes it) gives the native
/// builder both platforms: one index with a manifest per platform; a base without one of them
/// is named in the error.
#[tokio::test]
async fn comma_separated_platforms_give_one_index_with_a_manifest_each() {
    let bed = require_bed!();
    let dir = data_workdir("x\n");
    let repo = unique("platforms");
    let out = run(data_build(dir.path(), &bed, "scratch", &repo)
        .args(["--platform", "linux/amd64,linux/arm64"]));
    assert_ok(&out);
    let (_, index) = served_manifest(&bed.registry, &repo, "v1").await;
    let platforms = crate::common::index_platforms(&index);
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{index:#}");

    let out = run(
        data_build(dir.path(), &bed, &bed.base_image, &unique("platforms-base"))
            .args(["--platform", "linux/amd64,linux/arm64"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no `linux/arm64` image"), "{err}");
}

/// The native builder from a multi-platform base: `--platform linux/amd64,linux/386` gives one
/// index with a manifest per platform, each on its own base manifest and all with the same
/// added layer; the values file pins the index digest the registry serves.
#[tokio::test]
async fn multi_platform_base_gives_an_index_and_the_values_pin_it() {
    let bed = require_bed!();
    let dir = data_workdir("x\n");
    let repo = unique("multi");
    let out = run(native_cmd(dir.path())
        .args([
            "build",
            "app",
            "--builder",
            "native",
            "--layer",
            "data:/data",
        ])
        .args(["--base", &bed.base_image_multi, "--registry", &bed.registry])
        .args(["--repository", &repo, "--platform", "linux/amd64,linux/386"])
        .args(["--values-dir", "values"])
        .arg("--docker-config")
        .arg(no_creds(dir.path())));
    assert_ok(&out);
    let values = fs_err::read_to_string(dir.path().join("values/app.values.yaml")).unwrap();
    let values: serde_json::Value = serde_saphyr::from_str(&values).unwrap();
    let digest = values["image"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        served_manifest_digest(&bed.registry, &repo, &digest).await,
        digest
    );
    let (_, index) = served_manifest(&bed.registry, &repo, &digest).await;
    let manifests = index["manifests"].as_array().unwrap();
    let platforms: Vec<&str> = manifests
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["amd64", "386"], "{index:#}");
    let mut added = Vec::new();
    let mut bases = Vec::new();
    for m in manifests {
        let (_, image) = served_manifest(&bed.registry, &repo, m["digest"].as_str().unwrap()).await;
        let layers = image["layers"].as_array().unwrap();
        bases.push(layers[0]["digest"].clone());
        added.push(layers.last().unwrap()["digest"].clone());
    }
    assert_eq!(added[0], added[1], "the same added layer on each platform");
    assert_ne!(bases[0], bases[1], "each platform on its own base");
}
