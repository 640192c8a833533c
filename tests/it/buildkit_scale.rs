//! BuildKit builds at scale and under interruption, against the real test bed:
//!
//! - a ~200 MB context of 20 000 files syncs through the `fastbuild` binary with a bounded peak
//!   RSS (measured by the kernel for the child process, `wait4` `ru_maxrss`), and an unchanged
//!   rebuild sends no file data (the daemon diffs against its copy under the session's shared
//!   key and asks for nothing);
//! - Ctrl-C (SIGINT) during a `RUN` step makes `fastbuild build` exit 130 promptly and leaves no
//!   running solve on the daemon (`Control.ListenBuildHistory` active builds) and no process of
//!   the step on the machine.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fastbuild_buildkit::{BuildOptions, BuildResult, Client, ProgressEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{Daemon, TestBed, note, on_both_daemons};

/// Small files of the generated context, spread over 20 × 10 directories.
const SMALL_FILES: usize = 20_000;
const SMALL_SIZE: usize = 2 * 1024;
/// Large files that bring the context to ~200 MB (39 MiB small + 160 MiB large = 208 MB).
const LARGE_FILES: usize = 4;
const LARGE_SIZE: usize = 40 << 20;
/// Peak RSS allowed for the `fastbuild` process while it syncs that context.
const MAX_RSS_KIB: u64 = 100 * 1024;
/// Build argument carried into the `RUN` steps' environment, unique per test run.
const MARKER_ARG: &str = "FASTBUILD_SCALE_MARKER";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos:x}{:x}", std::process::id())
}

/// Deterministic, incompressible-looking bytes (xorshift64*), seeded per file.
struct Bytes(u64);

impl Bytes {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn small_file(i: usize) -> String {
    format!("src/d{:02}/e{}/f{i:05}.bin", i / 1000, i / 100 % 10)
}

/// Writes the ~200 MB context: [`SMALL_FILES`] small files in nested dirs, [`LARGE_FILES`]
/// large ones, and `dockerfile` as `Dockerfile`. Returns the number of regular files.
fn generate_context(dir: &Path, dockerfile: &str) -> usize {
    let mut buf = vec![0u8; SMALL_SIZE];
    for i in 0..SMALL_FILES {
        let path = dir.join(small_file(i));
        if i % 100 == 0 {
            fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        }
        Bytes::new(i as u64).fill(&mut buf);
        fs_err::write(path, &buf).unwrap();
    }
    fs_err::create_dir_all(dir.join("blobs")).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..LARGE_FILES {
        let mut file = fs_err::File::create(dir.join(format!("blobs/large-{i}.bin"))).unwrap();
        let mut bytes = Bytes::new(1_000_000 + i as u64);
        for _ in 0..LARGE_SIZE / chunk.len() {
            bytes.fill(&mut chunk);
            file.write_all(&chunk).unwrap();
        }
    }
    fs_err::write(dir.join("Dockerfile"), dockerfile).unwrap();
    SMALL_FILES + LARGE_FILES + 1
}

/// Exit code, stdout, stderr and peak RSS (KiB) of a finished child process.
struct Measured {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    max_rss_kib: u64,
}

/// Runs `cmd` to completion and reaps it with `wait4`, which returns the kernel's account of
/// the child's peak resident set size (`ru_maxrss`, KiB on Linux). Nothing to install, and
/// exact: it is the high-water mark of that process, not a sample.
fn run_measuring_peak_rss(cmd: &mut Command) -> Measured {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fastbuild");
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let (status, usage) = wait4(pid);
    // The child is reaped: `child` must not be waited on again (dropping it does not wait).
    drop(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Measured {
        code,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap(),
    }
}

/// `wait4(pid, &status, 0, &rusage)`, retried on `EINTR`.
#[allow(unsafe_code)]
fn wait4(pid: libc::pid_t) -> (libc::c_int, libc::rusage) {
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain integers and `timeval`s, for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are valid for writes for the duration of the call; `pid` is
        // our own child that nothing else waits for.
        let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        if rc == pid {
            return (status, usage);
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4({pid}): {err}"
        );
    }
}

/// `fastbuild build` of `context` with flags only (no project file), pushing to the bed's
/// plain registry with plain progress on stderr.
fn fastbuild_build(
    bed: &TestBed,
    daemon: Daemon,
    context: &Path,
    repository: &str,
    marker: &str,
) -> Command {
    let mut cmd = crate::common::fastbuild(context);
    cmd.env("BUILDKIT_HOST", bed.buildkit(daemon)).args([
        "build",
        "--builder",
        "buildkit",
        "--context",
        ".",
        "--repository",
        repository,
        "--registry",
        &bed.registry,
        "--build-arg",
        &format!("BASE={}", bed.base_image),
        "--build-arg",
        &format!("{MARKER_ARG}={marker}"),
        "--no-cache",
        "--no-values",
        "--progress",
        "plain",
    ]);
    cmd
}

/// Runs a library build, draining its progress.
async fn library_build(client: &Client, opts: BuildOptions) -> BuildResult {
    let (tx, mut rx) = mpsc::channel::<ProgressEvent>(1024);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let result = client
        .build(opts, tx, CancellationToken::new())
        .await
        .expect("library build of the large context");
    drain.await.unwrap();
    result
}

async fn large_context_syncs_with_bounded_rss_and_unchanged_rebuild_sends_no_file_data(
    bed: TestBed,
    daemon: Daemon,
) {
    let ctx = tempfile::tempdir().unwrap();
    let marker = unique("scale");
    // The bind mount reads the whole context without copying it into a layer: the sync is
    // complete, the image stays small.
    let files = generate_context(
        ctx.path(),
        &format!(
            "ARG BASE\nFROM ${{BASE}}\nARG {MARKER_ARG}\n\
             RUN --mount=type=bind,target=/ctx echo \"${MARKER_ARG}\" \
             && echo \"files=$(find /ctx -type f | wc -l)\" && du -sk /ctx\n"
        ),
    );
    let repository = unique("scale/ctx");

    // 1. The CLI syncs all of it (a fresh path: nothing to diff against) with bounded memory.
    let started = Instant::now();
    let mut cmd = fastbuild_build(&bed, daemon, ctx.path(), &repository, &marker);
    let run = tokio::task::spawn_blocking(move || run_measuring_peak_rss(&mut cmd))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        run.code,
        Some(0),
        "fastbuild build failed:\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    // The step saw every file of the context, so all of them were synced.
    assert!(
        run.stderr.contains(&format!("files={files}")),
        "the RUN step must see all {files} files:\n{}",
        run.stderr
    );
    assert!(run.stdout.contains(&repository), "{}", run.stdout);
    note(&format!(
        "fastbuild synced {files} files (~{} MB) in {elapsed:.1?}, peak RSS {} KiB",
        (SMALL_FILES * SMALL_SIZE + LARGE_FILES * LARGE_SIZE) / 1_000_000,
        run.max_rss_kib
    ));
    assert!(
        run.max_rss_kib < MAX_RSS_KIB,
        "peak RSS of fastbuild was {} KiB (limit {MAX_RSS_KIB} KiB) for a ~200 MB context",
        run.max_rss_kib
    );

    // 2. Library builds of the same directory reuse the daemon's copy (same shared key): one
    //    changed file is all that is sent, then nothing at all.
    let client = Client::connect(bed.buildkit(daemon), None)
        .await
        .expect("connect to the bed's BuildKit");
    let opts = |tag: &str| BuildOptions {
        context: ctx.path().to_owned(),
        image_names: vec![format!("{}/{repository}:{tag}", bed.registry)],
        push: true,
        registry_insecure: true,
        build_args: BTreeMap::from([
            ("BASE".to_owned(), bed.base_image.clone()),
            (MARKER_ARG.to_owned(), marker.clone()),
        ]),
        // As the binary does: its own state (the history the build above appended to) is
        // never build input.
        withheld: vec![ctx.path().join(".fastbuild")],
        ..BuildOptions::default()
    };
    let changed = small_file(12_345);
    let mut content = vec![0u8; SMALL_SIZE];
    Bytes::new(u64::MAX).fill(&mut content);
    fs_err::write(ctx.path().join(&changed), &content).unwrap();

    let one_changed = library_build(&client, opts("one-changed")).await;
    let sent = &one_changed.sync_stats["context"];
    assert_eq!(
        sent.files_sent,
        [changed.clone()].into(),
        "only the changed file is sent: {} files, {} bytes",
        sent.files_sent.len(),
        sent.bytes_sent
    );
    assert_eq!(sent.bytes_sent, SMALL_SIZE as u64);

    let unchanged = library_build(&client, opts("unchanged")).await;
    let sent = &unchanged.sync_stats["context"];
    assert!(
        sent.calls >= 1,
        "the context was synced ({} DiffCopy calls)",
        sent.calls
    );
    assert!(
        sent.paths.len() >= files,
        "every path was announced again ({} of at least {files})",
        sent.paths.len()
    );
    assert!(
        sent.files_sent.is_empty() && sent.bytes_sent == 0,
        "an unchanged rebuild sent {} files ({} bytes), e.g. {:?}",
        sent.files_sent.len(),
        sent.bytes_sent,
        sent.files_sent.iter().take(5).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C

/// PIDs of processes on this machine whose environment holds `NAME=value` (the bed's daemon
/// runs its containers here, so a `RUN` step's processes show up in `/proc`).
fn processes_with_env(name: &str, value: &str) -> Vec<u32> {
    let needle = format!("{name}={value}");
    let mut pids = Vec::new();
    for entry in fs_err::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go, and some environments are unreadable: skip those.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Refs of the daemon's active builds whose `build-arg:MARKER_ARG` is `marker`.
async fn active_builds_with_marker(client: &Client, marker: &str) -> Vec<String> {
    let key = format!("build-arg:{MARKER_ARG}");
    client
        .active_builds()
        .await
        .expect("ListenBuildHistory (active builds)")
        .into_iter()
        .filter(|b| b.frontend_attrs.get(&key).map(String::as_str) == Some(marker))
        .map(|b| b.build_ref)
        .collect()
}

/// Sends `signal` (`INT`: what Ctrl-C in a terminal does; `TERM`: what CI runners, Tilt and
/// `kill` send) to `pid`.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

async fn ctrl_c_mid_build_exits_130_and_leaves_no_running_solve(bed: TestBed, daemon: Daemon) {
    signal_mid_build_cancels_the_solve(bed, daemon, "INT", 130).await;
}

async fn sigterm_mid_build_exits_143_and_leaves_no_running_solve(bed: TestBed, daemon: Daemon) {
    signal_mid_build_cancels_the_solve(bed, daemon, "TERM", 143).await;
}

/// `signal` during a `RUN` step: fastbuild exits with `code` promptly, the solve and the
/// step's processes are gone from the daemon, and no CI output was written.
async fn signal_mid_build_cancels_the_solve(bed: TestBed, daemon: Daemon, signal: &str, code: i32) {
    let client = Client::connect(bed.buildkit(daemon), None)
        .await
        .expect("connect to the bed's BuildKit");
    let ctx = tempfile::tempdir().unwrap();
    fs_err::write(
        ctx.path().join("Dockerfile"),
        format!(
            "ARG BASE\nFROM ${{BASE}}\nARG {MARKER_ARG}\n\
             RUN echo \"step started ${MARKER_ARG}\" && sleep 60\n"
        ),
    )
    .unwrap();
    let marker = unique("ctrlc");
    let outputs = tempfile::tempdir().unwrap();
    let (digest_out, metadata) = (
        outputs.path().join("digest.txt"),
        outputs.path().join("meta.json"),
    );
    let mut cmd = fastbuild_build(&bed, daemon, ctx.path(), &unique("scale/ctrlc"), &marker);
    cmd.arg("--digest-out")
        .arg(&digest_out)
        .arg("--metadata-file")
        .arg(&metadata);
    let mut child = tokio::process::Command::from(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fastbuild");
    let pid = child.id().unwrap();

    // Follow stderr; wait until the RUN step prints its first line.
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut all = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
            let _ = line_tx.send(line);
        }
        all
    });
    let started_line = format!("step started {marker}");
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = line_rx.recv().await {
            if line.contains(&started_line) {
                return;
            }
        }
        panic!("fastbuild ended before the RUN step started");
    })
    .await
    .expect("the RUN step starts within 2 minutes");

    // The signals are real: the solve is active on the daemon and the step's processes run.
    let active = active_builds_with_marker(&client, &marker).await;
    assert_eq!(active.len(), 1, "the running build is listed as active");
    let step_pids = processes_with_env(MARKER_ARG, &marker);
    assert!(
        !step_pids.is_empty(),
        "the RUN step's processes are visible"
    );

    send_signal(pid, signal);
    let interrupted = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap_or_else(|_| panic!("fastbuild exits within 10 s of SIG{signal}"))
        .unwrap();
    let exit_after = interrupted.elapsed();
    let stderr = reader.await.unwrap();
    assert_eq!(
        status.code(),
        Some(code),
        "exit code after SIG{signal} ({status}); stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("nothing partial was written"),
        "stderr:\n{stderr}"
    );
    assert!(
        !digest_out.exists() && !metadata.exists(),
        "no CI output after SIG{signal}"
    );

    // Cancellation reaches the daemon asynchronously: poll for up to 10 s.
    let deadline = interrupted + Duration::from_secs(10);
    let (solves, procs) = loop {
        let solves = active_builds_with_marker(&client, &marker).await;
        let procs = processes_with_env(MARKER_ARG, &marker);
        if solves.is_empty() && procs.is_empty() || Instant::now() > deadline {
            break (solves, procs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        solves.is_empty(),
        "solves still running on the daemon 10 s after SIG{signal}: {solves:?} (was {active:?})"
    );
    assert!(
        procs.is_empty(),
        "RUN step processes still running 10 s after SIG{signal}: {procs:?} (were {step_pids:?})"
    );
    note(&format!(
        "fastbuild exited {code} {exit_after:.1?} after SIG{signal}; daemon idle for this build \
         {:.1?} after it (solve {active:?}, step pids {step_pids:?})",
        interrupted.elapsed()
    ));
    // The daemon is still usable.
    assert!(!client.list_workers().await.unwrap().is_empty());
}

on_both_daemons!(
    large_context_syncs_with_bounded_rss_and_unchanged_rebuild_sends_no_file_data,
    ctrl_c_mid_build_exits_130_and_leaves_no_running_solve,
    sigterm_mid_build_exits_143_and_leaves_no_running_solve,
);
