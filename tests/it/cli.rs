//! End-to-end tests of the `fastbuild` binary: the example project in `testdata/example`
//! built against the real test bed, CI outputs, Helm and Tilt wiring, and bad input.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{
    assert_ok, example_project, fake_helm, fastbuild, require_bed, run, served_manifest_digest,
    stderr, stdout,
};
use crate::common::{assert_one_error, values_digest, values_graph};

#[tokio::test]
async fn example_project_builds_both_services_and_helm_renders_the_digest() {
    let bed = require_bed!();
    let dir = example_project();
    let out = run(fastbuild(dir.path()).args(["build", "--progress", "plain"]));
    assert_ok(&out);
    let text = stdout(&out);
    for service in ["api", "worker"] {
        let values = dir
            .path()
            .join(format!("tilt-values/{service}.values.yaml"));
        let digest = values_digest(&values);
        let graph = values_graph(&values);
        assert_eq!(graph, format!("{}/{service}", bed.registry));
        // The line printed is `service  repo@sha256:…`.
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [service, &format!("{graph}@{digest}")]),
            "stdout lacks the {service} line:\n{text}"
        );
        // The digest is what the registry serves: no lookup was needed to know it.
        assert_eq!(
            served_manifest_digest(&bed.registry, service, &digest).await,
            digest
        );
        // Helm renders base + env + generated values digest-first.
        let helm_home = tempfile::tempdir().unwrap();
        let rendered = bed
            .helm(helm_home.path())
            .current_dir(dir.path())
            .args(["template", service, "charts/app"])
            .args(["--values", &format!("values/{service}.yaml")])
            .args(["--values", &format!("environments/local/{service}.yaml")])
            .args(["--values", &format!("tilt-values/{service}.values.yaml")])
            .output()
            .unwrap();
        assert!(rendered.status.success(), "{}", stderr(&rendered));
        let manifest = stdout(&rendered);
        assert!(
            manifest.contains(&format!("image: \"{graph}@{digest}\"")),
            "helm template did not pin the digest:\n{manifest}"
        );
        // The generated file itself, with the run-specific parts filtered.
        insta::with_settings!({ filters => filters() }, {
            insta::assert_snapshot!(
                format!("values_{service}"),
                fs_err::read_to_string(&values).unwrap()
            );
        });
    }
}

#[tokio::test]
async fn unchanged_rebuild_does_not_rewrite_values_files() {
    let _bed = require_bed!();
    let dir = example_project();
    assert_ok(&run(fastbuild(dir.path()).args(["build", "worker"])));
    let values = dir.path().join("tilt-values/worker.values.yaml");
    let before = fs_err::metadata(&values).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let out = run(fastbuild(dir.path()).args(["build", "worker", "--progress", "plain"]));
    assert_ok(&out);
    assert_eq!(
        fs_err::metadata(&values).unwrap().modified().unwrap(),
        before
    );
    assert!(stderr(&out).contains("unchanged"), "{}", stderr(&out));
}

#[tokio::test]
async fn push_writes_ci_outputs_only_on_success() {
    let bed = require_bed!();
    let dir = example_project();
    let digest_out = dir.path().join("out/digest.txt");
    let ref_out = dir.path().join("out/ref.txt");
    let meta = dir.path().join("out/meta.json");
    let out = run(fastbuild(dir.path())
        .args(["push", "api", "--digest-out"])
        .arg(&digest_out)
        .arg("--metadata-file")
        .arg(&meta));
    assert_ok(&out);
    let digest = fs_err::read_to_string(&digest_out).unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.ends_with('\n') && digest.len() == 72,
        "{digest:?}"
    );
    let digest = digest.trim().to_owned();
    // push does not write values files by default (CI).
    assert!(!dir.path().join("tilt-values/api.values.yaml").exists());
    // A project file names the services: bake's shape, keyed by service, even for one.
    let whole: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(whole.as_object().unwrap().len(), 1, "{whole:#}");
    let m = whole["api"].clone();
    assert_eq!(m["containerimage.digest"], digest.as_str());
    assert_eq!(m["containerimage.descriptor"]["digest"], digest.as_str());
    assert!(m["containerimage.descriptor"]["size"].as_u64().unwrap() > 0);
    assert!(
        m["containerimage.descriptor"]["mediaType"]
            .as_str()
            .unwrap()
            .contains("manifest")
            || m["containerimage.descriptor"]["mediaType"]
                .as_str()
                .unwrap()
                .contains("index")
    );
    assert!(
        m["image.name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/api", bed.registry))
    );
    assert_eq!(
        served_manifest_digest(&bed.registry, "api", &digest).await,
        digest
    );

    // --digest-format ref
    let out = run(fastbuild(dir.path())
        .args(["push", "api", "--digest-format", "ref", "--digest-out"])
        .arg(&ref_out));
    assert_ok(&out);
    assert_eq!(
        fs_err::read_to_string(&ref_out).unwrap(),
        format!("{}/api@{digest}\n", bed.registry)
    );

    // A failing build leaves the earlier files intact.
    fs_err::write(
        dir.path().join("services/api/Dockerfile"),
        "FROM scratch\nRUN exit 3\n",
    )
    .unwrap();
    let out = run(fastbuild(dir.path())
        .args(["push", "api", "--digest-out"])
        .arg(&digest_out)
        .arg("--metadata-file")
        .arg(&meta));
    assert!(!out.status.success());
    assert_eq!(fs_err::read_to_string(&digest_out).unwrap().trim(), digest);
    let m2: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(m2, whole);
}

/// CI with several services, as buildx bake and ko do it: one `--metadata-file` keyed by
/// service and `--image-refs` with one `repo@digest` per service in service order, both written
/// together; each digest is the manifest the registry serves. `--metadata-format buildx`
/// (flat) takes one service; `--digest-out` with several says what to use instead.
#[tokio::test]
async fn push_of_several_services_writes_bake_metadata_and_image_refs() {
    let bed = require_bed!();
    let dir = example_project();
    let meta = dir.path().join("out/meta.json");
    let refs = dir.path().join("out/refs.txt");
    let out = run(fastbuild(dir.path())
        .args(["push", "--metadata-file"])
        .arg(&meta)
        .arg("--image-refs")
        .arg(&refs));
    assert_ok(&out);
    let m: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&meta).unwrap()).unwrap();
    let lines: Vec<String> = fs_err::read_to_string(&refs)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, service) in lines.iter().zip(["api", "worker"]) {
        let (repo, digest) = line.split_once('@').unwrap();
        assert_eq!(repo, format!("{}/{service}", bed.registry));
        assert_eq!(m[service]["containerimage.digest"], digest, "{m:#}");
        assert_eq!(
            served_manifest_digest(&bed.registry, service, digest).await,
            digest
        );
    }

    let out = run(fastbuild(dir.path())
        .args(["push", "--metadata-format", "buildx", "--metadata-file"])
        .arg(&meta));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--metadata-format bake"),
        "{}",
        stderr(&out)
    );
    let out = run(fastbuild(dir.path())
        .args(["push", "--digest-out"])
        .arg(dir.path().join("out/d.txt")));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--image-refs"), "{}", stderr(&out));

    let flat = dir.path().join("out/flat.json");
    let out = run(fastbuild(dir.path())
        .args([
            "push",
            "worker",
            "--metadata-format",
            "buildx",
            "--metadata-file",
        ])
        .arg(&flat));
    assert_ok(&out);
    let f: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&flat).unwrap()).unwrap();
    assert_eq!(
        f["containerimage.digest"], m["worker"]["containerimage.digest"],
        "{f:#}"
    );
}

/// `--tag` repeated: every tag points at the one digest, for both builders.
#[tokio::test]
async fn repeated_tags_all_point_at_the_one_digest() {
    let bed = require_bed!();
    let dir = example_project();
    let suffix = format!("{:x}", std::process::id());
    for service in ["api", "worker"] {
        let (a, b) = (format!("a-{suffix}"), format!("b-{suffix}"));
        let refs = dir.path().join(format!("{service}.refs"));
        let out = run(fastbuild(dir.path())
            .args(["push", service, "--tag", &a, "--tag", &b, "--image-refs"])
            .arg(&refs));
        assert_ok(&out);
        let line = fs_err::read_to_string(&refs).unwrap();
        let digest = line.trim().split_once('@').unwrap().1.to_owned();
        for t in [&a, &b] {
            assert_eq!(
                served_manifest_digest(&bed.registry, service, t).await,
                digest,
                "{service}:{t}"
            );
        }
    }
}

#[test]
fn tilt_fragment_is_valid_starlark_and_follows_the_note() {
    let dir = example_project();
    // No helm found: the design note's Helm 3 flags (`--atomic`).
    let out = run(fastbuild(dir.path())
        .arg("tilt")
        .env("HELM", "/nonexistent/helm"));
    assert_ok(&out);
    let text = stdout(&out);
    // Starlark is syntactically a subset of Python: python3's parser must accept it.
    let mut py = Command::new("python3")
        .args(["-c", "import ast,sys; ast.parse(sys.stdin.read())"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    assert!(py.wait().unwrap().success(), "not parseable:\n{text}");
    assert!(text.contains("image_keys=[]"));
    assert!(!text.contains("image_deps"));
    assert!(text.contains("resource_deps=[],"));
    assert!(text.contains("k8s_upsert_timeout_secs=600"));
    insta::assert_snapshot!("tilt_fragment", text);
}

#[test]
fn helm_print_is_the_notes_invocation() {
    let dir = example_project();
    // A Helm 3 on PATH (the design note's flags), whatever is installed on this machine.
    let bin = tempfile::tempdir().unwrap();
    fake_helm(&bin.path().join("helm"), "");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(fastbuild(dir.path())
        .args(["helm", "api", "--print"])
        .env("HELM", "helm")
        .env("PATH", path));
    assert_ok(&out);
    insta::assert_snapshot!("helm_print", stdout(&out));
    let argv = shell_words::split(stdout(&out).trim()).unwrap();
    assert_eq!(&argv[..3], ["helm", "upgrade", "--install"]);
    // The release and chart come after `--`: never read as flags.
    assert_eq!(&argv[argv.len() - 3..], ["--", "api", "charts/app"]);
    let values: Vec<&str> = argv
        .windows(2)
        .filter(|w| w[0] == "--values")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(
        values,
        [
            "values/api.yaml",
            "environments/local/api.yaml",
            "tilt-values/api.values.yaml"
        ]
    );
    assert!(argv.contains(&"--wait".to_owned()) && argv.contains(&"--atomic".to_owned()));
}

#[test]
fn helm_run_needs_the_values_file_first() {
    let dir = example_project();
    let out = run(fastbuild(dir.path()).args(["helm", "api", "--run", "--helm", "/bin/true"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("run `fastbuild build api` first"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn helm_run_skips_when_nothing_changed() {
    let dir = example_project();
    let values = dir.path().join("tilt-values/api.values.yaml");
    fs_err::create_dir_all(values.parent().unwrap()).unwrap();
    fs_err::write(
        &values,
        format!("image:\n  digest: sha256:{}\n", "1".repeat(64)),
    )
    .unwrap();
    // A fake helm that records its argv (the real one needs a cluster for `upgrade`).
    let log = dir.path().join("helm.log");
    let fake = dir.path().join("fake-helm");
    fake_helm(&fake, &format!("echo \"$@\" >> {}\n", log.display()));
    let helm_run = |dir: &Path| {
        run(fastbuild(dir)
            .args(["helm", "api", "--run", "--helm"])
            .arg(&fake))
    };
    assert_ok(&helm_run(dir.path()));
    let second = helm_run(dir.path());
    assert_ok(&second);
    assert!(stderr(&second).contains("skipped"), "{}", stderr(&second));
    assert_eq!(fs_err::read_to_string(&log).unwrap().lines().count(), 1);
    // A new digest deploys again.
    fs_err::write(
        &values,
        format!("image:\n  digest: sha256:{}\n", "2".repeat(64)),
    )
    .unwrap();
    assert_ok(&helm_run(dir.path()));
    assert_eq!(fs_err::read_to_string(&log).unwrap().lines().count(), 2);
    let argv = fs_err::read_to_string(&log).unwrap();
    assert!(argv.starts_with("upgrade --install "), "{argv}");
    assert!(argv.contains(" -- api "), "{argv}");
}

#[test]
fn bad_project_file_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(
        dir.path().join("fastbuild.yaml"),
        "services:\n  api:\n    contxt: .\n",
    )
    .unwrap();
    let out = run(fastbuild(dir.path()).arg("build"));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("fastbuild.yaml:3:5: unknown key `contxt`; did you mean `context`?"),
        "{err}"
    );
    assert_one_error(&out);
}

/// Hardening L3: a service named `../../ESCAPED` wrote its values file outside the project,
/// and a release named `--post-renderer=./x` reached helm as a flag.
#[test]
fn hostile_service_release_and_namespace_names_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("project");
    fs_err::create_dir_all(dir.join("charts/app")).unwrap();
    fs_err::write(
        dir.join("charts/app/Chart.yaml"),
        "apiVersion: v2\nname: app\nversion: 0.1.0\n",
    )
    .unwrap();
    let cases = [
        (
            "../../ESCAPED",
            "services:\n  ../../ESCAPED:\n    builder: native\n    base: scratch\n",
            "invalid service name `../../ESCAPED`",
        ),
        (
            "--help",
            "services:\n  \"--help\":\n    builder: native\n    base: scratch\n",
            "invalid service name `--help`",
        ),
        (
            "api",
            "services:\n  api:\n    helm: {chart: charts/app, release: \"--post-renderer=./x\"}\n",
            "invalid Helm release name `--post-renderer=./x`",
        ),
        (
            "api",
            "services:\n  api:\n    helm: {chart: charts/app, namespace: \"../../etc\"}\n",
            "invalid namespace `../../etc`",
        ),
    ];
    for (name, yaml, expected) in cases {
        fs_err::write(dir.join("fastbuild.yaml"), yaml).unwrap();
        let build = ["build", "--no-push"];
        let helm = ["helm", "--print", "--", name];
        for args in [&build[..], &helm[..]] {
            let out = run(fastbuild(&dir).args(args));
            assert_eq!(out.status.code(), Some(2), "{yaml} {args:?}: {out:?}");
            assert!(
                stderr(&out).contains(expected),
                "{yaml} {args:?}: {}",
                stderr(&out)
            );
            assert_one_error(&out);
        }
    }
    // Nothing was written outside the project (nor inside it).
    let mut left: Vec<String> = fs_err::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["project"]);
    assert!(!dir.join("tilt-values").exists());
}

/// Hardening M1: a project file could send any directory of the machine as a build context
/// or native layer, read secret files anywhere, or write values files anywhere.
#[test]
fn project_file_paths_outside_the_project_need_an_explicit_allow() {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("project");
    fs_err::create_dir_all(&dir).unwrap();
    let private = outside.path().join("private");
    fs_err::create_dir_all(&private).unwrap();
    fs_err::write(private.join("id_rsa"), "PRIVATE KEY\n").unwrap();
    fs_err::write(
        dir.join("fastbuild.yaml"),
        "services:\n  leak:\n    builder: native\n    base: scratch\n    layers: [{src: ../private, dest: /loot}]\n",
    )
    .unwrap();
    let out = run(fastbuild(&dir).args(["build", "--no-push"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("`services.leak.layers[0].src` is `../private`, outside the project root")
            && err.contains("--allow fs.read="),
        "{err}"
    );
    assert_one_error(&out);
    // The user allows it explicitly: the build goes ahead.
    let allow = format!("fs.read={}", private.display());
    let out = run(fastbuild(&dir).args(["--allow", &allow, "build", "--no-push"]));
    assert_ok(&out);
    assert!(stdout(&out).contains("sha256:"), "{}", stdout(&out));
    // The same from the environment.
    let out = run(fastbuild(&dir)
        .env("FASTBUILD_ALLOW", &allow)
        .args(["build", "--no-push"]));
    assert_ok(&out);
}

#[test]
fn unknown_service_lists_the_known_ones() {
    let dir = example_project();
    let out = run(fastbuild(dir.path()).args(["build", "nope"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown service `nope`")
            && stderr(&out).contains("known services: api, worker"),
        "{}",
        stderr(&out)
    );
    assert_one_error(&out);
}

#[test]
fn missing_chart_is_reported() {
    let dir = example_project();
    fs_err::remove_dir_all(dir.path().join("charts/app")).unwrap();
    fs_err::create_dir_all(dir.path().join("tilt-values")).unwrap();
    fs_err::write(
        dir.path().join("tilt-values/api.values.yaml"),
        "image: {}\n",
    )
    .unwrap();
    let out = run(fastbuild(dir.path()).args(["helm", "api", "--run", "--helm", "/bin/true"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("chart") && stderr(&out).contains("not found"),
        "{}",
        stderr(&out)
    );
    assert_one_error(&out);
}

#[test]
fn unwritable_values_dir_fails_clearly_and_writes_nothing() {
    let _bed = require_bed!();
    let dir = example_project();
    // A file where the values directory should be.
    fs_err::write(dir.path().join("tilt-values"), "not a dir").unwrap();
    let out = run(fastbuild(dir.path()).args(["build", "worker"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("values file of `worker`") && err.contains("tilt-values"),
        "{err}"
    );
    assert_one_error(&out);
    assert!(
        dir.path().join("tilt-values").is_file(),
        "the blocking file was replaced"
    );
}

/// No project file and no `--context`: every command that builds or generates says what to
/// create (exit 2), instead of inventing a service named after the directory; nothing is
/// written.
#[test]
fn no_project_file_and_no_flags_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["build", "--registry", "localhost:1"][..],
        &["tilt"],
        &["push", "api"],
        &["helm", "api"],
    ] {
        let out = run(fastbuild(dir.path()).args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("no fastbuild.yaml")
                && err.contains("--context")
                && err.contains("services:")
                && err.contains("Dockerfile"),
            "{args:?}: {err}"
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 0);
}

/// Paths and ports vary per run; snapshots filter them.
pub fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]"),
        (r"/tmp/\.tmp[A-Za-z0-9]+", "[TMP]"),
    ]
}

#[tokio::test]
async fn tilt_expected_ref_is_honoured_and_the_values_still_pin_the_digest() {
    let bed = require_bed!();
    let dir = example_project();
    let expected = format!("{}/tilt-worker:tilt-0123456789abcdef", bed.registry);
    let ref_out = dir.path().join("ref.txt");
    let out = run(fastbuild(dir.path())
        .args(["build", "worker", "--image-ref-out"])
        .arg(&ref_out)
        .env("EXPECTED_REF", &expected));
    assert_ok(&out);
    // Tilt's outputs_image_ref_to wants repo:tag, never a bare digest reference.
    assert_eq!(
        fs_err::read_to_string(&ref_out).unwrap(),
        format!("{expected}\n")
    );
    let values = dir.path().join("tilt-values/worker.values.yaml");
    let digest = values_digest(&values);
    assert_eq!(
        values_graph(&values),
        format!("{}/tilt-worker", bed.registry)
    );
    assert_eq!(
        served_manifest_digest(&bed.registry, "tilt-worker", "tilt-0123456789abcdef").await,
        digest
    );
}

#[test]
fn no_push_prints_the_digest_and_writes_nothing() {
    let _bed = require_bed!();
    let dir = example_project();
    let out = run(fastbuild(dir.path()).args(["build", "worker", "--no-push"]));
    assert_ok(&out);
    assert!(stdout(&out).contains("sha256:"), "{}", stdout(&out));
    assert!(!dir.path().join("tilt-values").exists());
}

#[test]
fn output_oci_layout_matches_the_pushed_digest() {
    let _bed = require_bed!();
    let dir = example_project();
    let out = run(fastbuild(dir.path()).args(["build", "worker", "--progress", "quiet"]));
    assert_ok(&out);
    let pushed = values_digest(&dir.path().join("tilt-values/worker.values.yaml"));
    let layout = dir.path().join("layout");
    let out = run(fastbuild(dir.path())
        .args(["build", "worker", "--output"])
        .arg(format!("oci:{}", layout.display())));
    assert_ok(&out);
    assert!(stdout(&out).contains(&pushed), "{}", stdout(&out));
    assert!(layout.join("oci-layout").is_file() && layout.join("index.json").is_file());
}

#[test]
fn sigint_during_watch_exits_130_and_writes_nothing_partial() {
    let _bed = require_bed!();
    let dir = example_project();
    let dockerfile = dir.path().join("services/api/Dockerfile");
    let text = fs_err::read_to_string(&dockerfile).unwrap();
    fs_err::write(
        &dockerfile,
        text.replace("RUN chmod", "RUN sleep 30 && chmod"),
    )
    .unwrap();
    let mut child = fastbuild(dir.path())
        .args(["watch", "api", "--progress", "plain"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    // Wait for the slow step to start (plain progress prints finished steps; COPY precedes it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("COPY src/") || std::time::Instant::now() > deadline {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = std::time::Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "watch should exit 130 on Ctrl-C");
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert!(!dir.path().join("tilt-values/api.values.yaml").exists());
}

#[test]
fn helm_4_gets_rollback_on_failure_instead_of_the_deprecated_atomic() {
    let bed = require_bed!();
    let dir = example_project();
    let out = run(fastbuild(dir.path())
        .args(["helm", "api", "--print"])
        .env("HELM", &bed.helm));
    assert_ok(&out);
    let line = stdout(&out);
    assert!(
        line.contains(" --rollback-on-failure ") && !line.contains("--atomic"),
        "{line}"
    );
    // The fragment picks the flag when Tilt loads it, from the helm there: the bed's Helm 4.
    let out = run(fastbuild(dir.path()).arg("tilt").env("HELM", &bed.helm));
    assert_ok(&out);
    let calls = eval_tilt_fragment(&stdout(&out), None);
    let flags = calls["helm_resource"][0]["flags"].to_string();
    assert!(
        flags.contains("--rollback-on-failure") && !flags.contains("--atomic"),
        "{flags}"
    );
}

/// Runs a Tilt fragment in python3 — Starlark's syntax and these expressions' semantics are a
/// subset of Python's — with stand-ins for Tilt's builtins that record their calls; `local()`
/// really runs its command in a shell (with `path` as `PATH` when given), as Tilt does when it
/// loads a Tiltfile. Returns `{builtin: [kwargs and positional args of each call]}`.
fn eval_tilt_fragment(text: &str, path: Option<&std::ffi::OsStr>) -> serde_json::Value {
    const STUBS: &str = r#"
import json, os, subprocess, sys
calls = {}
def record(kind):
    def f(*args, **kwargs):
        calls.setdefault(kind, []).append({"args": list(args), **kwargs})
    return f
def load(*args): pass
def local(cmd, quiet=False, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout
env = dict(local=local, load=load, local_resource=record("local_resource"),
           helm_resource=record("helm_resource"), update_settings=record("update_settings"))
exec(compile(sys.stdin.read(), "Tiltfile.fastbuild", "exec"), env)
print(json.dumps(calls))
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", STUBS])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let mut child = cmd.spawn().expect("python3");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fragment did not run: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The fragment for a team: each helm resource waits for its build (and the dep-free
/// sentinel), builds depend on nothing (no cycle), Helm 3 machines get `--atomic` and Helm 4
/// ones `--rollback-on-failure` from the same file, `rollback_on_failure: false` drops the flag,
/// session-wide settings only with `--session-settings`, every shell command quoted.
#[test]
fn tilt_fragment_orders_deploys_after_builds_and_suits_helm_3_and_4() {
    let dir = example_project();
    let bin = dir.path().join("fake-bin");
    fs_err::create_dir_all(&bin).unwrap();
    fake_helm(&bin.join("helm"), "exit 0");
    // The default probes `helm` on the PATH of whoever runs Tilt (HELM would pin a path).
    let out = run(fastbuild(dir.path()).arg("tilt").env_remove("HELM"));
    assert_ok(&out);
    let text = stdout(&out);
    assert!(!text.contains("\nupdate_settings("), "opt-in only:\n{text}");
    let path_v3 = std::env::join_paths(
        std::iter::once(bin.clone())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let calls = eval_tilt_fragment(&text, Some(&path_v3));
    let locals = calls["local_resource"].as_array().unwrap();
    for service in ["api", "worker"] {
        let build = locals
            .iter()
            .find(|c| c["args"][0] == format!("{service}-build"))
            .unwrap();
        assert!(build.get("resource_deps").is_none(), "{build}");
        let cmd = build["cmd"].as_str().unwrap();
        assert_eq!(
            shell_words::split(cmd).unwrap(),
            ["fastbuild", "build", service, "--progress", "plain"]
        );
        let sentinel = locals
            .iter()
            .find(|c| c["args"][0] == format!("{service}-digest-ready"))
            .unwrap();
        assert_eq!(sentinel["resource_deps"], serde_json::json!([]));
        let helm = calls["helm_resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["args"][0] == service)
            .unwrap();
        assert_eq!(
            helm["resource_deps"],
            serde_json::json!([
                format!("{service}-build"),
                format!("{service}-digest-ready")
            ])
        );
        assert!(helm["flags"].to_string().contains("\"--atomic\""), "{helm}");
    }

    // rollback_on_failure: false for worker; --session-settings emits update_settings.
    let yaml = dir.path().join("fastbuild.yaml");
    let text = fs_err::read_to_string(&yaml).unwrap().replacen(
        "      values:\n        - values/worker.yaml",
        "      rollback_on_failure: false\n      values:\n        - values/worker.yaml",
        1,
    );
    fs_err::write(&yaml, text).unwrap();
    let out = run(fastbuild(dir.path())
        .args(["tilt", "--session-settings"])
        .env_remove("HELM"));
    assert_ok(&out);
    let calls = eval_tilt_fragment(&stdout(&out), Some(&path_v3));
    assert_eq!(calls["update_settings"].as_array().unwrap().len(), 1);
    let helm = &calls["helm_resource"];
    let flags = |i: usize| helm[i]["flags"].to_string();
    assert!(flags(0).contains("--atomic"), "{}", flags(0));
    assert!(
        !flags(1).contains("--atomic") && !flags(1).contains("--rollback"),
        "{}",
        flags(1)
    );
    // The same per-service choice reaches `fastbuild helm`, and the flag turns it off too.
    let out = run(fastbuild(dir.path())
        .args(["helm", "worker", "--print"])
        .env_remove("HELM"));
    assert_ok(&out);
    assert!(!stdout(&out).contains("--atomic"), "{}", stdout(&out));
    let out = run(fastbuild(dir.path())
        .args(["helm", "api", "--print", "--no-rollback-on-failure"])
        .env_remove("HELM"));
    assert_ok(&out);
    assert!(!stdout(&out).contains("--atomic"), "{}", stdout(&out));
}

/// Logs (`-v`, `-vv`) going into a pipe or a CI log carry no ANSI colour codes, even with
/// `NO_COLOR` unset; they are coloured only when stderr is a terminal.
#[test]
fn logs_into_a_pipe_carry_no_ansi_colours() {
    let dir = example_project();
    let out = run(fastbuild(dir.path())
        .env_remove("NO_COLOR")
        .args(["-vv", "tilt"]));
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("TRACE"), "-vv logs something: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape in piped logs: {err:?}"
    );
}

/// `BUILDKIT_PROGRESS` (buildx's variable) chooses the progress mode when neither
/// `--progress` nor `FASTBUILD_PROGRESS` does: `rawjson` gives JSON lines on stdout, the flag
/// wins over it, and an unknown value is a warning.
#[test]
fn buildkit_progress_is_honoured_below_the_flag() {
    let _bed = require_bed!();
    let dir = example_project();
    let json_lines = |out: &Output| {
        let text = stdout(out);
        !text.trim().is_empty()
            && text
                .lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    };
    let out = run(fastbuild(dir.path())
        .env("BUILDKIT_PROGRESS", "rawjson")
        .args(["build", "worker", "--no-push"]));
    assert_ok(&out);
    assert!(json_lines(&out), "JSON lines: {}", stdout(&out));
    let out = run(fastbuild(dir.path())
        .env("BUILDKIT_PROGRESS", "rawjson")
        .args(["build", "worker", "--no-push", "--progress", "plain"]));
    assert_ok(&out);
    assert!(!json_lines(&out), "--progress wins: {}", stdout(&out));
    let out = run(fastbuild(dir.path())
        .env("BUILDKIT_PROGRESS", "sparkly")
        .args(["build", "worker", "--no-push"]));
    assert_ok(&out);
    assert!(
        stderr(&out).contains("BUILDKIT_PROGRESS=`sparkly`"),
        "{}",
        stderr(&out)
    );
}

/// A named context directory is an input of its service: the Tilt fragment's build resource
/// lists it in `deps` (as watch does), and a project file may not name one outside itself.
#[test]
fn named_context_directories_are_inputs_and_stay_inside_the_project() {
    let dir = example_project();
    fs_err::create_dir_all(dir.path().join("packages/core")).unwrap();
    let yaml = dir.path().join("fastbuild.yaml");
    let text = fs_err::read_to_string(&yaml).unwrap().replacen(
        "    context: services/api\n",
        "    context: services/api\n    contexts: {core: packages/core}\n",
        1,
    );
    fs_err::write(&yaml, &text).unwrap();
    let out = run(fastbuild(dir.path()).arg("tilt"));
    assert_ok(&out);
    let calls = eval_tilt_fragment(&stdout(&out), None);
    let build = calls["local_resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["args"][0] == "api-build")
        .unwrap()
        .clone();
    assert!(
        build["deps"].to_string().contains("packages/core"),
        "{build}"
    );

    fs_err::write(
        &yaml,
        text.replace(
            "contexts: {core: packages/core}",
            "contexts: {core: ../elsewhere}",
        ),
    )
    .unwrap();
    let out = run(fastbuild(dir.path()).arg("tilt"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("services.api.contexts.core"),
        "{}",
        stderr(&out)
    );
}
