//! `fastbuild doctor` against the test bed.

use std::path::Path;
use std::process::Command;

use crate::common::require_bed;
use crate::common::{example_project, fastbuild, run};

fn git_init(dir: &Path) {
    let ok = Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn doctor_filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]"),
        (r"/tmp/\.tmp[A-Za-z0-9]+", "[PROJECT]"),
        (r"docker-unix://\S+", "docker-unix://[SOCKET]"),
        (r"BuildKit v[0-9][^;]*", "BuildKit [VERSION]"),
        (r"platforms [^\n]*", "platforms [PLATFORMS]"),
        (r"\S*/helm: v\S+", "[HELM]: [VERSION]"),
        (r"\S*/kubectl: [^\n]*", "[KUBECTL]: [VERSION]"),
        (r" +\n", "\n"),
        (r"  +", "  "),
    ]
}

#[test]
fn doctor_passes_on_the_example_project() {
    let _bed = require_bed!();
    let dir = example_project();
    git_init(dir.path());
    let out = run(fastbuild(dir.path()).arg("doctor"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::with_settings!({ filters => doctor_filters() }, {
        insta::assert_snapshot!("doctor_example", text);
    });
}

#[test]
fn doctor_reports_a_tag_only_chart_with_the_fix_and_fails() {
    let _bed = require_bed!();
    let dir = example_project();
    git_init(dir.path());
    // Make the chart tag-only, as the design note's inference_gateway was.
    let tpl = dir.path().join("charts/app/templates/deployment.yaml");
    let text = fs_err::read_to_string(&tpl).unwrap();
    let start = text.find("{{- $repo").unwrap();
    let end = text.find("{{- end }}").unwrap() + "{{- end }}".len();
    let tag_only = format!(
        "{}image: \"{{{{ .Values.image.graph }}}}:{{{{ .Values.image.tag | default \"latest\" }}}}\"{}",
        &text[..start],
        &text[end..]
    );
    fs_err::write(&tpl, tag_only).unwrap();
    let out = run(fastbuild(dir.path()).args(["doctor", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let chart = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "chart api")
        .unwrap();
    assert_eq!(chart["status"], "fail");
    let detail = chart["detail"].as_str().unwrap();
    assert!(
        detail.contains("{{- if .Values.image.digest }}"),
        "{detail}"
    );
    assert_eq!(v["ok"], false);
}

#[test]
fn doctor_warns_when_values_are_not_git_ignored_and_buildkit_is_down() {
    let _bed = require_bed!();
    let dir = example_project();
    git_init(dir.path());
    fs_err::remove_file(dir.path().join(".gitignore")).unwrap();
    let out = run(fastbuild(dir.path()).args([
        "doctor",
        "--json",
        "--buildkit",
        "unix:///nonexistent/buildkitd.sock",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with(name))
            .cloned()
            .unwrap()
    };
    assert_eq!(find("values file api")["status"], "warn");
    assert!(
        find("values file api")["detail"]
            .as_str()
            .unwrap()
            .contains(".gitignore")
    );
    let bk = find("buildkit");
    assert_eq!(bk["status"], "fail");
    assert!(
        bk["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/buildkitd.sock"),
        "{bk}"
    );
    assert_eq!(out.status.code(), Some(1));
}

/// A BuildKit context at the project root would send the values files that every build
/// rewrites: doctor says to `.dockerignore` them, and is quiet once they are (`.fastbuild/`,
/// the history, is never sent, so it is not mentioned).
#[test]
fn doctor_warns_when_the_context_holds_what_every_build_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(
        dir.path().join("fastbuild.yaml"),
        "registry: 127.0.0.1:1\nvalues_dir: tilt-values\nservices:\n  app:\n    context: .\n",
    )
    .unwrap();
    fs_err::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    let warning = |out: &std::process::Output| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "context app")
            .map(|c| c["detail"].as_str().unwrap().to_owned())
    };
    let out = run(fastbuild(dir.path()).args([
        "doctor",
        "--json",
        "--buildkit",
        "unix:///nonexistent.sock",
    ]));
    let w = warning(&out).expect("a context warning");
    assert!(
        w.contains("tilt-values/app.values.yaml")
            && !w.contains(".fastbuild")
            && w.contains(".dockerignore"),
        "{w}"
    );
    fs_err::write(dir.path().join(".dockerignore"), "tilt-values\n").unwrap();
    let out = run(fastbuild(dir.path()).args([
        "doctor",
        "--json",
        "--buildkit",
        "unix:///nonexistent.sock",
    ]));
    assert_eq!(warning(&out), None);
}

/// For local and insecure registries doctor pushes a probe image through the BuildKit daemon,
/// because only the daemon knows whether it can push there; a failure says which daemon
/// setting or address to look at. (`--no-push-probe` skips it.)
#[test]
fn doctor_probes_pushes_through_the_daemon_and_explains_a_failure() {
    let _bed = require_bed!();
    let dir = example_project();
    let probe = |extra: &[&str]| -> Option<serde_json::Value> {
        let out = run(fastbuild(dir.path())
            .args(["doctor", "--json", "--registry", "127.0.0.1:9"])
            .args(extra));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "push via buildkit to 127.0.0.1:9")
            .cloned()
    };
    let c = probe(&[]).expect("a push probe check");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("the daemon cannot reach 127.0.0.1:9"),
        "{c}"
    );
    assert_eq!(probe(&["--no-push-probe"]), None);
}
