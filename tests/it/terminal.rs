//! The live view as a person sees it: `fastbuild build` run in a real terminal (a private tmux
//! server) at 80×24 and 200×50, the screen captured (`tmux capture-pane`) while it runs and
//! when it is done. The final screen is a snapshot and reads top to bottom: notes, each
//! service's final state, results. No line of the view is wider than the terminal, no line
//! is drawn twice, the results come last.
//!
//! Needs `tmux` (installed by `scripts/testbed install`): without it these tests are skipped
//! with a note, except under `CI=true`, where they fail. The registry tests need the bed too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::filters;
use crate::common::example_project;
use crate::common::{note, require_bed};

/// Whether `tmux` runs; else a skip note (a failure under `CI=true`, as for the bed).
fn require_tmux() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    assert!(
        std::env::var("CI").ok().as_deref() != Some("true"),
        "{test}: `tmux` is not installed; CI=true requires it: run `scripts/testbed install` \
         (or apt-get install tmux)"
    );
    note(&format!(
        "{test}: skipped: tmux not installed (scripts/testbed install)"
    ));
    false
}

/// `fastbuild` running in a pane of its own tmux server (its own socket: the developer's
/// tmux is never touched); the server is killed on drop.
struct Pane {
    dir: tempfile::TempDir,
    width: usize,
}

impl Pane {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("tmux.sock")
    }

    fn status_file(&self) -> PathBuf {
        self.dir.path().join("status")
    }

    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        // -u: UTF-8 (the view cuts lines with `…`); -f /dev/null: no user configuration.
        cmd.arg("-u")
            .arg("-S")
            .arg(self.socket())
            .args(["-f", "/dev/null"]);
        cmd
    }

    /// Starts `fastbuild ARGS` in `project` in a `width`×`height` terminal, with the
    /// environment of [`crate::common::fastbuild`] but colours on (as a person would have it).
    fn start(project: &Path, args: &[&str], width: usize, height: usize) -> Pane {
        let pane = Pane {
            dir: tempfile::tempdir().unwrap(),
            width,
        };
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut line = vec![quote(env!("CARGO_BIN_EXE_fastbuild"))];
        line.extend(args.iter().map(|a| quote(a)));
        let script = pane.dir.path().join("run.sh");
        fs_err::write(
            &script,
            format!(
                "cd {} || exit 99\n{}\necho $? > {}\nexec sleep 600\n",
                quote(&project.display().to_string()),
                line.join(" "),
                quote(&pane.status_file().display().to_string()),
            ),
        )
        .unwrap();
        let status = pane
            .tmux()
            .args(["new-session", "-d", "-s", "fastbuild"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(format!("sh {}", quote(&script.display().to_string())))
            // The server (and so the pane) gets this environment.
            .env(
                "FASTBUILD_CACHE_DIR",
                concat!(env!("CARGO_TARGET_TMPDIR"), "/layer-cache"),
            )
            .env("LC_ALL", "C.UTF-8")
            .env_remove("TMUX")
            .env_remove("NO_COLOR")
            .env_remove("EXPECTED_REF")
            .env_remove("FASTBUILD_FILE")
            .env_remove("FASTBUILD_REGISTRY")
            .env_remove("FASTBUILD_PROGRESS")
            .env_remove("BUILDKIT_PROGRESS")
            .env_remove("SOURCE_DATE_EPOCH")
            .status()
            .unwrap();
        assert!(status.success(), "tmux new-session failed");
        pane
    }

    /// The pane's text, scrollback included, wrapped lines joined (`-J`), trailing blanks cut.
    fn capture(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", "fastbuild"])
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux capture-pane failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let end = lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |i| i + 1);
        lines[..end].join("\n")
    }

    /// Waits for fastbuild to exit, capturing the screen every 100 ms meanwhile; returns the
    /// exit code, the screens seen while it ran and the final one.
    fn wait(&self) -> (i32, Vec<String>, String) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut frames = Vec::new();
        let code = loop {
            if let Ok(s) = fs_err::read_to_string(self.status_file()) {
                break s.trim().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "fastbuild did not finish:\n{}",
                self.capture()
            );
            frames.push(self.capture());
            std::thread::sleep(Duration::from_millis(100));
        };
        // fastbuild has exited; tmux may still be reading its last output.
        let mut last = self.capture();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.capture();
            if now == last {
                break;
            }
            last = now;
        }
        (code, frames, last)
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

/// A `tracing` log line (`-v`): `2026-…Z DEBUG …`; printed above the view, as long as it is.
fn is_log(line: &str) -> bool {
    line.len() > 28 && line.starts_with("20") && line.as_bytes()[10] == b'T'
}

/// No line wider than `width` (but `results`, complete on stdout whatever the width, or the
/// part of one that a capture caught being written, and logs), none twice.
fn assert_fits_and_no_repeats(screen: &str, width: usize, results: &[&str]) {
    let mut seen = std::collections::BTreeSet::new();
    for line in screen.lines().filter(|l| !l.is_empty()) {
        if !results.iter().any(|r| r.starts_with(line)) && !is_log(line) {
            assert!(
                console::measure_text_width(line) <= width,
                "a line wider than the terminal ({width}):\n{line}\n--- screen:\n{screen}"
            );
        }
        assert!(
            seen.insert(line),
            "a line shown twice:\n{line}\n--- screen:\n{screen}"
        );
    }
}

/// The final screen's last lines are `results`; the lines before them are the services'
/// final states (`name  pushed …`), in the same order.
fn assert_results_last(screen: &str, results: &[&str]) {
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines.len() >= 2 * results.len(), "{screen}");
    let (states, tail) = lines[lines.len() - 2 * results.len()..].split_at(results.len());
    assert_eq!(tail, results, "the results come last:\n{screen}");
    for (state, result) in states.iter().zip(results) {
        let service = result.split_whitespace().next().unwrap();
        assert!(
            state.starts_with(service) && state.contains("  pushed "),
            "final state of `{service}` right above the results:\n{screen}"
        );
    }
}

/// Snapshot filters: [`filters`] plus the digests that the view cut at the terminal's edge,
/// the clocks and the native builder's upload counts (the bed's registry keeps blobs across
/// runs).
fn screen_filters() -> Vec<(&'static str, &'static str)> {
    let mut f = filters();
    f.extend([
        (r"sha256:[0-9a-f]{0,63}…", "sha256:[DIGEST]…"),
        (r"\b\d+\.\ds\b", "[TIME]"),
        (
            r"blobs: \d+ uploaded \(\d+ bytes\), \d+ already there, \d+ mounted",
            "blobs: [STATS]",
        ),
    ]);
    f
}

/// The worker of the example project, built by the native builder on `scratch` into an OCI
/// layout: no daemon, no registry.
fn native_build_screen(width: usize, height: usize) {
    if !require_tmux() {
        return;
    }
    let project = example_project();
    let layout = project.path().join("layout");
    let out = format!("oci:{}", layout.display());
    let pane = Pane::start(
        project.path(),
        &["build", "worker", "--base", "scratch", "--output", &out],
        width,
        height,
    );
    let (code, frames, screen) = pane.wait();
    assert_eq!(code, 0, "fastbuild failed:\n{screen}");
    let result = screen.lines().last().unwrap_or_default();
    assert!(
        result.starts_with(&format!("worker  {out}@sha256:")) && result.len() == 8 + out.len() + 72,
        "the result, complete:\n{screen}"
    );
    assert_results_last(&screen, &[result]);
    assert_fits_and_no_repeats(&screen, pane.width, &[result]);
    for frame in &frames {
        assert_fits_and_no_repeats(frame, pane.width, &[result]);
    }
    insta::with_settings!({ filters => screen_filters() }, {
        insta::assert_snapshot!(format!("native_{width}x{height}"), screen);
    });
}

#[test]
fn native_build_screen_80x24() {
    native_build_screen(80, 24);
}

#[test]
fn native_build_screen_200x50() {
    native_build_screen(200, 50);
}

/// Both services of the example project pushed to the bed's registry, the BuildKit one with
/// a slow step whose command line is far wider than any terminal: the view is seen running
/// (the frames), cut to the width, never repeated, and gives way to the results. With
/// `verbose` (`-v`, debug logs all along): the logs are printed above the view, never into or
/// below it (no snapshot then: logs carry times).
fn registry_build_screen(width: usize, height: usize, verbose: bool) {
    let _bed = require_bed!();
    if !require_tmux() {
        return;
    }
    let project = example_project();
    let dockerfile = project.path().join("services/api/Dockerfile");
    let text = fs_err::read_to_string(&dockerfile).unwrap();
    // Unique to this run: BuildKit runs a step only once for concurrent identical builds (the
    // other tests of this module), and this one must be seen running.
    let nonce = project.path().file_name().unwrap().to_string_lossy();
    let long = "a-long-argument-".repeat(16);
    fs_err::write(
        &dockerfile,
        text.replace(
            "RUN chmod",
            &format!("RUN sleep 3 && echo {long}{nonce} && chmod"),
        ),
    )
    .unwrap();
    let args: &[&str] = if verbose {
        &["build", "--no-cache", "-v"]
    } else {
        &["build", "--no-cache"]
    };
    let pane = Pane::start(project.path(), args, width, height);
    let (code, frames, screen) = pane.wait();
    assert_eq!(code, 0, "fastbuild failed:\n{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    let results = &lines[lines.len().saturating_sub(2)..];
    assert!(
        results.len() == 2
            && results[0].starts_with("api     ")
            && results[1].starts_with("worker  ")
            && results
                .iter()
                .all(|r| r.contains("/api@sha256:") || r.contains("/worker@sha256:")),
        "two results:\n{screen}"
    );
    assert_results_last(&screen, results);
    assert_fits_and_no_repeats(&screen, pane.width, results);
    let running: Vec<&String> = frames
        .iter()
        .filter(|f| f.contains("building step") && f.contains("RUN sleep 3"))
        .collect();
    assert!(
        !running.is_empty(),
        "the slow step was never seen running; frames:\n{}",
        frames.join("\n-----\n")
    );
    for frame in &frames {
        assert_fits_and_no_repeats(frame, pane.width, results);
        // While the view is drawn, it is the bottom of the screen: nothing printed below it.
        if let Some(i) = frame
            .lines()
            .position(|l| l.starts_with("api     building"))
        {
            let below: Vec<&str> = frame.lines().skip(i + 1).collect();
            assert!(
                below
                    .iter()
                    .all(|l| l.starts_with("worker  ") || l.starts_with("        => ")),
                "the live view is the last thing on screen:\n{frame}"
            );
        }
    }
    // Logs only above the final states.
    let first_state = lines.len() - 4;
    assert!(!lines[first_state..].iter().any(|l| is_log(l)), "{screen}");
    if verbose {
        assert!(lines.iter().any(|l| is_log(l)), "-v logs:\n{screen}");
    }
    // The long step is cut at the edge, its clock kept.
    let step = running[running.len() - 1]
        .lines()
        .find(|l| l.starts_with("api     building step"))
        .unwrap();
    assert!(
        step.ends_with('s') && console::measure_text_width(step) <= width,
        "{step}"
    );
    if !verbose {
        insta::with_settings!({ filters => screen_filters() }, {
            insta::assert_snapshot!(format!("registry_{width}x{height}"), screen);
        });
    }
}

#[test]
fn registry_build_screen_80x24() {
    registry_build_screen(80, 24, false);
}

#[test]
fn registry_build_screen_200x50() {
    registry_build_screen(200, 50, false);
}

#[test]
fn registry_build_logs_stay_above_the_view_80x24() {
    registry_build_screen(80, 24, true);
}
