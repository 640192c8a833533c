//! `fastbuild watch` with real file changes against the test bed.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, TestBed, require_bed};
use crate::common::{example_project, fake_helm, fastbuild, served_manifest_digest};

/// A running `fastbuild watch --progress json`, its JSON events read on a thread.
struct Watch {
    child: Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Watch {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let mut child = fastbuild(dir)
            .args(["watch", "--progress", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fastbuild watch");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Self {
            child,
            events: rx,
            seen: Vec::new(),
        }
    }

    /// [`Self::start`], then the first result of `service` and the events of the next 500 ms
    /// (the first build's late events).
    fn started(dir: &Path, args: &[&str], service: &str) -> (Self, Value) {
        let mut w = Self::start(dir, args);
        let first = w.result_for(service);
        let _ = w.drain(Duration::from_millis(500));
        (w, first)
    }

    /// Waits for an event matching `pred`; panics with everything seen after `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "timed out waiting for {what}; events seen:\n{:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Every event that arrives within `window`.
    fn drain(&mut self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v.clone());
            out.push(v);
        }
        out
    }

    /// The first result of each of `services`, in whatever order they finish.
    fn results_for(&mut self, services: &[&str]) -> Vec<Value> {
        let mut out: Vec<Option<Value>> = vec![None; services.len()];
        while out.iter().any(Option::is_none) {
            let v = self.wait_for("initial results", Duration::from_secs(120), |v| {
                v["event"] == "result"
            });
            if let Some(i) = services.iter().position(|s| v["service"] == *s) {
                out[i].get_or_insert(v);
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    fn result_for(&mut self, service: &str) -> Value {
        let s = service.to_owned();
        self.wait_for(
            &format!("a result for {service}"),
            Duration::from_secs(120),
            move |v| v["event"] == "result" && v["service"] == s.as_str(),
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SIGINT, as Ctrl-C would; then make sure it is gone.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The digest in the values file of `service` (the example's `tilt-values/`).
fn values_digest(dir: &Path, service: &str) -> String {
    common::values_digest(&dir.join(format!("tilt-values/{service}.values.yaml")))
}

/// The values file of `service` holds the digest of `result`.
fn assert_values_hold(dir: &Path, service: &str, result: &Value) {
    assert_eq!(
        values_digest(dir, service),
        result["digest"].as_str().unwrap()
    );
}

/// The digest of a `result` event: in the values file of `service`, served by the registry
/// as its manifest's digest.
async fn assert_published(bed: &TestBed, dir: &Path, service: &str, result: &Value) -> String {
    let digest = result["digest"].as_str().unwrap().to_owned();
    assert_eq!(values_digest(dir, service), digest);
    assert_eq!(
        served_manifest_digest(&bed.registry, service, &digest).await,
        digest
    );
    digest
}

/// A one-shot `fastbuild ARGS` of the same project prints `digest`.
fn assert_one_shot_prints(dir: &Path, args: &[&str], digest: &str) {
    let out = fastbuild(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(digest),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Writes the example worker's binary (a shell script) with `body`.
fn edit_worker(dir: &Path, body: &str) {
    fs_err::write(
        dir.join("services/worker/dist/worker"),
        format!("#!/bin/sh\n{body}\n"),
    )
    .unwrap();
}

/// Replaces `from` by `to` in the file at `rel`; returns its text before.
fn replace_in(dir: &Path, rel: &str, from: &str, to: &str) -> String {
    let path = dir.join(rel);
    let text = fs_err::read_to_string(&path).unwrap();
    fs_err::write(&path, text.replace(from, to)).unwrap();
    text
}

fn builds_of(events: &[Value], service: &str) -> usize {
    events
        .iter()
        .filter(|v| v["event"] == "build_started" && v["service"] == service)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_one_file_rebuilds_only_its_service() {
    let bed = require_bed!();
    let dir = example_project();
    let mut w = Watch::start(dir.path(), &[]);
    let [first_api, first_worker]: [Value; 2] =
        w.results_for(&["api", "worker"]).try_into().unwrap();
    let _ = w.drain(Duration::from_millis(500));

    edit_worker(dir.path(), "echo changed");
    let r = w.result_for("worker");
    assert_ne!(r["digest"], first_worker["digest"]);
    assert_published(&bed, dir.path(), "worker", &r).await;
    let later = w.drain(Duration::from_millis(1500));
    let all: Vec<Value> = w.seen.clone();
    assert_eq!(builds_of(&all, "api"), 1, "api was rebuilt: {later:#?}");
    assert_eq!(builds_of(&all, "worker"), 2, "{all:#?}");
    assert_values_hold(dir.path(), "api", &first_api);
}

#[tokio::test(flavor = "multi_thread")]
async fn excluded_and_generated_files_trigger_nothing() {
    let _bed = require_bed!();
    let dir = example_project();
    // Put the generated values file inside the watched context: writing it must not loop.
    let mut w = Watch::start(
        dir.path(),
        &[
            "api",
            "--values-file",
            "services/api/src/generated.values.yaml",
        ],
    );
    w.result_for("api");
    let _ = w.drain(Duration::from_millis(800));
    // `*.log` is in services/api/.dockerignore.
    fs_err::write(dir.path().join("services/api/debug.log"), "noise").unwrap();
    fs_err::create_dir_all(dir.path().join("services/api/tmp")).unwrap();
    fs_err::write(dir.path().join("services/api/tmp/scratch.txt"), "noise").unwrap();
    let events = w.drain(Duration::from_millis(1500));
    assert_eq!(
        builds_of(&w.seen, "api"),
        1,
        "unexpected rebuild: {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_saves_gives_one_build_of_the_final_content() {
    let bed = require_bed!();
    let dir = example_project();
    let (mut w, _) = Watch::started(dir.path(), &["worker", "--debounce", "300"], "worker");
    let file = dir.path().join("services/worker/dist/worker");
    for i in 0..10 {
        // editor-style save: write a temp file, rename over the original
        let tmp = dir.path().join("services/worker/dist/.worker.swp");
        fs_err::write(&tmp, format!("#!/bin/sh\necho save {i}\n")).unwrap();
        fs_err::rename(&tmp, &file).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = w.result_for("worker");
    let _ = w.drain(Duration::from_millis(1500));
    assert_eq!(builds_of(&w.seen, "worker"), 2, "{:#?}", w.seen);
    let digest = assert_published(&bed, dir.path(), "worker", &r).await;
    // The final content is what was built: an identical one-shot build gives the same digest.
    assert_one_shot_prints(dir.path(), &["build", "worker", "--no-push"], &digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_during_a_build_cancels_it_and_the_final_digest_matches() {
    let bed = require_bed!();
    let dir = example_project();
    // A slow step, so the second change lands mid-build.
    replace_in(
        dir.path(),
        "services/api/Dockerfile",
        "RUN chmod",
        "RUN sleep 4 && chmod",
    );
    let mut w = Watch::start(dir.path(), &["api"]);
    w.result_for("api");
    let version = dir.path().join("services/api/src/VERSION");
    fs_err::write(&version, "2.0.0\n").unwrap();
    w.wait_for("the rebuild to start", Duration::from_secs(10), |v| {
        v["event"] == "build_started" && v["generation"] == 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    fs_err::write(&version, "3.0.0\n").unwrap();
    w.wait_for("the cancel", Duration::from_secs(10), |v| {
        v["event"] == "cancelled"
    });
    let r = w.result_for("api");
    let digest = assert_published(&bed, dir.path(), "api", &r).await;
    // A one-shot build of the final content gives the same digest (reproducible builds).
    assert_one_shot_prints(
        dir.path(),
        &["build", "api", "--progress", "quiet"],
        &digest,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_build_then_a_fix_recovers_without_restarting() {
    let _bed = require_bed!();
    let dir = example_project();
    let mut w = Watch::start(dir.path(), &["api"]);
    let good = w.result_for("api");
    let dockerfile = dir.path().join("services/api/Dockerfile");
    let text = fs_err::read_to_string(&dockerfile).unwrap();
    fs_err::write(&dockerfile, format!("{text}RUN exit 7\n")).unwrap();
    w.wait_for("the failure", Duration::from_secs(120), |v| {
        v["event"] == "failed" && v["service"] == "api"
    });
    // The values file keeps its last good digest.
    assert_values_hold(dir.path(), "api", &good);
    fs_err::write(&dockerfile, format!("{text}RUN echo fixed\n")).unwrap();
    let fixed = w.result_for("api");
    assert_ne!(fixed["digest"], good["digest"]);
    assert_values_hold(dir.path(), "api", &fixed);
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_fastbuild_yaml_reloads_and_rebuilds_what_changed() {
    let _bed = require_bed!();
    let dir = example_project();
    let mut w = Watch::start(dir.path(), &[]);
    let [first_api, first_worker]: [Value; 2] =
        w.results_for(&["api", "worker"]).try_into().unwrap();
    let _ = w.drain(Duration::from_millis(500));
    let file = dir.path().join("fastbuild.yaml");
    let text = replace_in(
        dir.path(),
        "fastbuild.yaml",
        "WORKER_MODE: local",
        "WORKER_MODE: reloaded",
    );
    let r = w.result_for("worker");
    assert_ne!(r["digest"], first_worker["digest"]);
    let _ = w.drain(Duration::from_millis(1500));
    assert_eq!(
        builds_of(&w.seen, "api"),
        1,
        "api did not change: {:#?}",
        w.seen
    );
    assert_values_hold(dir.path(), "api", &first_api);
    // A broken project file keeps the previous settings and the loop alive.
    fs_err::write(&file, "services: [not a map\n").unwrap();
    let _ = w.drain(Duration::from_millis(800));
    fs_err::write(
        &file,
        text.replace("WORKER_MODE: local", "WORKER_MODE: fixed"),
    )
    .unwrap();
    let fixed = w.result_for("worker");
    assert_ne!(fixed["digest"], r["digest"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_mode_sees_changes_too() {
    let _bed = require_bed!();
    let dir = example_project();
    let mut w = Watch::start(dir.path(), &["worker", "--poll"]);
    let first = w.result_for("worker");
    edit_worker(dir.path(), "echo polled");
    let r = w.result_for("worker");
    assert_ne!(r["digest"], first["digest"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_runs_helm_on_a_new_digest_only_and_never_concurrently() {
    let _bed = require_bed!();
    let dir = example_project();
    // A fake helm: records each upgrade, takes 1.5 s, and notes any overlap.
    let log = dir.path().join("helm.log");
    let fake = dir.path().join("fake-helm");
    fake_helm(
        &fake,
        &format!(
            "L={log}\n\
             if [ -e \"$L.lock\" ]; then echo OVERLAP >> \"$L\"; fi\n\
             touch \"$L.lock\"; echo \"start $*\" >> \"$L\"; sleep 1.5; echo end >> \"$L\"; rm -f \"$L.lock\"\n",
            log = log.display()
        ),
    );
    let mut w = Watch::start(
        dir.path(),
        &["worker", "--deploy", "--helm", fake.to_str().unwrap()],
    );
    let first = w.result_for("worker");
    // Two changes in quick succession while the first deploy is running.
    std::thread::sleep(Duration::from_millis(300));
    let file = dir.path().join("services/worker/dist/worker");
    fs_err::write(&file, "#!/bin/sh\necho one\n").unwrap();
    let second = w.result_for("worker");
    assert_ne!(second["digest"], first["digest"]);
    // Saving the same content again gives the same digest: no deploy.
    fs_err::write(&file, "#!/bin/sh\necho one\n").unwrap();
    let _ = w.drain(Duration::from_secs(5));
    let text = fs_err::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("OVERLAP"), "concurrent deploys:\n{text}");
    let starts: Vec<&str> = text.lines().filter(|l| l.starts_with("start ")).collect();
    assert_eq!(starts.len(), 2, "one deploy per new digest:\n{text}");
    assert!(
        starts[0].starts_with("start upgrade --install ") && starts[0].contains(" -- worker "),
        "{text}"
    );
}

/// Hardening M4: after `rm -rf dist; mkdir dist` (as bundlers do) one rebuild happened, then
/// edits in the new directory were never seen and the values file kept a stale digest.
#[tokio::test(flavor = "multi_thread")]
async fn a_watched_directory_deleted_and_created_again_is_still_watched() {
    let _bed = require_bed!();
    let dir = example_project();
    let (mut w, first) = Watch::started(dir.path(), &["worker"], "worker");
    let dist = dir.path().join("services/worker/dist");
    fs_err::remove_dir_all(&dist).unwrap();
    fs_err::create_dir_all(&dist).unwrap();
    fs_err::write(dist.join("worker"), "#!/bin/sh\necho rebuilt dist\n").unwrap();
    let second = w.result_for("worker");
    assert_ne!(second["digest"], first["digest"]);
    let _ = w.drain(Duration::from_millis(800));
    // An edit inside the re-created directory is seen.
    fs_err::write(dist.join("worker"), "#!/bin/sh\necho edited again\n").unwrap();
    let third = w.result_for("worker");
    assert_ne!(third["digest"], second["digest"]);
    assert_values_hold(dir.path(), "worker", &third);
}

/// Hardening M5: any event restarted the debounce window, so a log file written every 50 ms
/// outside every service delayed a real build for as long as it was written.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_continuously_outside_every_service_does_not_starve_a_build() {
    let _bed = require_bed!();
    let dir = example_project();
    // A window much longer than the gaps between the noise's writes (20 ms).
    let (mut w, _) = Watch::started(dir.path(), &["worker", "--debounce", "500"], "worker");
    // Noise beside fastbuild.yaml (its directory is watched) for 40 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = {
        let stop = stop.clone();
        let log = dir.path().join("dev-server.log");
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(40)
            {
                fs_err::write(&log, format!("line {i}\n")).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    edit_worker(dir.path(), "echo while noisy");
    // Well before the noise ends (40 s): the build is not held back by it.
    let started = Instant::now();
    w.result_for("worker");
    let waited = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    noise.join().unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "the build waited {waited:?} for the noise to stop"
    );
}

/// Hardening L1: an edit of fastbuild.yaml adding a watch path whose parent does not exist
/// made watch exit.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_watch_path_that_does_not_exist_yet_keeps_watch_running() {
    let _bed = require_bed!();
    let dir = example_project();
    let (mut w, first) = Watch::started(dir.path(), &["worker"], "worker");
    replace_in(
        dir.path(),
        "fastbuild.yaml",
        "    entrypoint: [\"/app/worker\"]",
        "    entrypoint: [\"/app/worker\"]\n    watch: [not/there/yet]",
    );
    let _ = w.drain(Duration::from_millis(1500));
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "watch exited: {:#?}",
        w.seen
    );
    // Still watching: an edit rebuilds.
    edit_worker(dir.path(), "echo still watching");
    let r = w.result_for("worker");
    assert_ne!(r["digest"], first["digest"]);
    // And the new path, once created, is watched too.
    fs_err::create_dir_all(dir.path().join("not/there/yet")).unwrap();
    let _ = w.drain(Duration::from_secs(1));
    fs_err::write(dir.path().join("not/there/yet/input.txt"), "x").unwrap();
    w.wait_for(
        "a rebuild for the new watch path",
        Duration::from_secs(20),
        |v| {
            v["event"] == "build_started"
                && v["service"] == "worker"
                && v["paths"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p.as_str().is_some_and(|p| p.contains("not/there/yet")))
                })
        },
    );
}
