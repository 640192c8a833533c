//! Digest history and rollback (`fastbuild history`, `fastbuild rollback`) and the CI form
//! `push --values-out`, against the bed's registry and helm.

use std::process::Stdio;

use crate::common::require_bed;
use crate::common::{
    assert_ok, example_project, fastbuild, run, served_manifest_digest, stderr, stdout,
};

/// The digest a values file pins, read with the YAML parser.
fn pinned(path: &std::path::Path) -> String {
    let v: serde_json::Value =
        serde_saphyr::from_str(&fs_err::read_to_string(path).unwrap()).unwrap();
    v["image"]["digest"].as_str().unwrap().to_owned()
}

fn history(dir: &std::path::Path, service: &str) -> Vec<serde_json::Value> {
    let out = run(fastbuild(dir).args(["history", service, "--json"]));
    assert_ok(&out);
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Three builds give three digests in the history (newest first); `rollback --steps 2` pins
/// the first again after the registry confirms it, records itself, and `helm template`
/// renders it; a digest the registry does not have is refused and nothing changes.
#[tokio::test]
async fn three_builds_then_rollback_two_steps_is_what_helm_renders() {
    let bed = require_bed!();
    let dir = example_project();
    let worker = dir.path().join("services/worker/dist/worker");
    let values = dir.path().join("tilt-values/worker.values.yaml");
    let mut digests = Vec::new();
    for i in 0..3 {
        fs_err::write(&worker, format!("#!/bin/sh\necho build {i}\n")).unwrap();
        let out = run(fastbuild(dir.path()).args(["build", "worker"]));
        assert_ok(&out);
        digests.push(pinned(&values));
    }
    assert_eq!(
        digests
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
    let h = history(dir.path(), "worker");
    let listed: Vec<&str> = h.iter().map(|r| r["digest"].as_str().unwrap()).collect();
    assert_eq!(listed, [&digests[2], &digests[1], &digests[0]]);
    assert!(
        h.iter()
            .all(|r| r["kind"] == "build" && r["builder"] == "native")
    );
    assert_eq!(h[0]["values_file"], "tilt-values/worker.values.yaml");

    // The table a person reads.
    let out = run(fastbuild(dir.path()).args(["history", "worker"]));
    assert_ok(&out);
    let table = stdout(&out);
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.lines().all(|l| l.chars().count() <= 80),
        "fits an 80-column terminal:\n{table}"
    );

    let out = run(fastbuild(dir.path()).args(["rollback", "worker", "--steps", "2"]));
    assert_ok(&out);
    assert_eq!(pinned(&values), digests[0]);
    assert!(stdout(&out).contains(&digests[0]), "{}", stdout(&out));
    let h = history(dir.path(), "worker");
    assert_eq!(h[0]["kind"], "rollback");
    assert_eq!(h[0]["digest"], digests[0].as_str());
    assert_eq!(
        served_manifest_digest(&bed.registry, "worker", &digests[0]).await,
        digests[0]
    );
    let helm_home = tempfile::tempdir().unwrap();
    let rendered = bed
        .helm(helm_home.path())
        .current_dir(dir.path())
        .args(["template", "worker", "charts/app"])
        .args(["--values", "values/worker.yaml"])
        .args(["--values", "environments/local/worker.yaml"])
        .args(["--values", "tilt-values/worker.values.yaml"])
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    assert!(
        stdout(&rendered).contains(&format!("{}/worker@{}", bed.registry, digests[0])),
        "{}",
        stdout(&rendered)
    );

    // A digest the registry does not have: refused, values file untouched.
    let missing = format!("sha256:{}", "0".repeat(64));
    let out = run(fastbuild(dir.path()).args(["rollback", "worker", "--to", &missing]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no longer has"), "{}", stderr(&out));
    assert_eq!(pinned(&values), digests[0]);
    // Too many steps: a usage error naming what there is.
    let out = run(fastbuild(dir.path()).args(["rollback", "worker", "--steps", "9"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("goes too far"), "{}", stderr(&out));
}

/// Two fastbuild processes building at once both land in the history, and a corrupt line
/// (a crash mid-write, a hand edit) is skipped with a warning.
#[test]
fn concurrent_builds_both_land_in_the_history() {
    let _bed = require_bed!();
    let dir = example_project();
    let children: Vec<_> = ["api", "worker"]
        .iter()
        .map(|s| {
            fastbuild(dir.path())
                .args(["build", s, "--progress", "quiet"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let journal = dir.path().join(".fastbuild/history.jsonl");
    let text = fs_err::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    fs_err::write(&journal, format!("{text}{{\"service\": \"api\", trunc\n")).unwrap();
    let out = run(fastbuild(dir.path()).args(["history", "--json"]));
    assert_ok(&out);
    assert_eq!(stdout(&out).lines().count(), 2);
    assert!(stderr(&out).contains("history.jsonl:3"), "{}", stderr(&out));
}

/// CI: `push --values-out FILE` writes the values file for Helmfile in the same run that
/// pushes, with the configured keys — no history needed on a fresh runner.
#[tokio::test]
async fn push_values_out_writes_the_values_file_in_the_same_run() {
    let bed = require_bed!();
    let dir = example_project();
    let out_file = dir.path().join("env/prod/worker.values.yaml");
    let digest_out = dir.path().join("env/prod/digest.txt");
    let out = run(fastbuild(dir.path())
        .args(["push", "worker", "--values-out"])
        .arg(&out_file)
        .arg("--digest-out")
        .arg(&digest_out));
    assert_ok(&out);
    let digest = fs_err::read_to_string(&digest_out)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(pinned(&out_file), digest);
    assert_eq!(
        served_manifest_digest(&bed.registry, "worker", &digest).await,
        digest
    );
    // Several services: one file cannot hold them; a usage error says what to use.
    let out = run(fastbuild(dir.path()).args(["push", "--values-out", "x.yaml"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
