//! `fastbuild promote` and `fastbuild prune` against the test bed's real registries: images
//! (single and multi-platform) copied from the plain registry to the TLS + auth one keep their
//! manifests byte for byte (as `crane` reads them too) and Helm renders the promoted digest; a
//! copy inside one registry mounts instead of uploading; a copy killed mid-layer resumes and
//! moves only what is missing; a 1 GiB image is copied in bounded memory; prune keeps the
//! newest and the pinned digests, deletes the rest, and names a registry with deletion disabled.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestBed, note, require_bed, sha256, values_key};
use crate::common::{assert_ok, run};
use crate::common::{helm_template_image, registry_repo_dir, testbed_dir};
use crate::native_cli::{
    MIB, assert_rss_between_4_and_64_mib, bytes_uploaded, data_workdir, docker_config, native_cmd,
    poll_while_running, random_data_workdir, random_file, run_measuring_rss, spawn_quietly, text,
    unique, uploads_in_progress, workdir,
};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Status and bytes of a manifest as the plain registry (`tls: false`) or the TLS one (with
/// the bed's credentials) serves it.
async fn served(bed: &TestBed, tls: bool, repo: &str, reference: &str) -> (u16, Vec<u8>) {
    let request = if tls {
        let ca = reqwest::Certificate::from_pem(&bed.registry_tls_ca_pem()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap()
            .get(format!(
                "https://{}/v2/{repo}/manifests/{reference}",
                bed.registry_tls
            ))
            .basic_auth(&bed.registry_tls_user, Some(&bed.registry_tls_password))
    } else {
        reqwest::Client::new().get(format!(
            "http://{}/v2/{repo}/manifests/{reference}",
            bed.registry
        ))
    };
    let resp = request.header("Accept", ACCEPT).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// The manifest bytes `crane manifest` reads for `reference` (credentials from `docker_config`,
/// the bed's CA trusted).
fn crane_manifest(bed: &TestBed, docker_config: &Path, reference: &str) -> Vec<u8> {
    let mut cmd = Command::new(&bed.crane);
    cmd.arg("manifest");
    if reference.starts_with(&bed.registry) {
        cmd.arg("--insecure");
    }
    let out = cmd
        .arg(reference)
        .env("DOCKER_CONFIG", docker_config)
        .env("SSL_CERT_FILE", &bed.registry_tls_ca)
        .output()
        .expect("run crane");
    assert!(out.status.success(), "crane manifest {reference}: {out:?}");
    out.stdout
}

/// A Docker config directory with the TLS registry's credentials.
fn tls_login(bed: &TestBed, dir: &Path) -> PathBuf {
    docker_config(
        &dir.join("docker"),
        &bed.registry_tls,
        &bed.registry_tls_user,
        &bed.registry_tls_password,
    )
    .0
}

/// `fastbuild promote SERVICE --values VALUES --to-registry TO` with the TLS registry's
/// credentials and CA.
fn promote(bed: &TestBed, dir: &Path, service: &str, values: &str, to: &str) -> Command {
    let mut cmd = native_cmd(dir);
    cmd.args(["promote", service, "--values", values, "--to-registry", to])
        .args(["--progress", "plain", "--docker-config"])
        .arg(tls_login(bed, dir))
        .arg("--registry-ca")
        .arg(&bed.registry_tls_ca);
    cmd
}

/// The `image:` line `helm template` renders for the bed's app chart with values file `values`.
fn helm_image(bed: &TestBed, values: &Path) -> String {
    helm_template_image(bed, &["-f", values.to_str().unwrap()])
}

/// `(uploaded, bytes, already there, mounted)` from the `copied to …` note.
fn copy_stats(stderr: &str) -> (u64, u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("copied to "))
        .unwrap_or_else(|| panic!("no `copied to` note in:\n{stderr}"));
    let blobs = line.split_once("blobs: ").unwrap().1;
    let numbers: Vec<u64> = blobs
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(numbers.len(), 4, "{line}");
    (numbers[0], numbers[1], numbers[2], numbers[3])
}

/// A project of native services on the bed's plain registry, values files in `values/`.
fn write_project(dir: &Path, bed: &TestBed, services: &str) {
    fs_err::write(
        dir.join("fastbuild.yaml"),
        format!(
            "registry: {}\nvalues_dir: values\ndocker_config: no-docker-config\nservices:\n{services}",
            bed.registry
        ),
    )
    .unwrap();
}

/// The service `app` of a project: native, on scratch, pushed to `repo` uncompressed and
/// reproducible, with `layers` (the items of the YAML list).
fn uncompressed_app(repo: &str, layers: &str) -> String {
    format!(
        "  app:\n    builder: native\n    base: scratch\n    repository: {repo}\n    \
         compression: uncompressed\n    reproducible: true\n    layers: [{layers}]\n"
    )
}

/// [`write_project`], then `fastbuild build` of all its services.
fn write_and_build(dir: &Path, bed: &TestBed, services: &str) {
    write_project(dir, bed, services);
    assert_ok(&run(native_cmd(dir).args(["build", "--progress", "plain"])));
}

#[tokio::test]
async fn promote_copies_single_and_multi_platform_images_byte_for_byte_and_helm_renders_them() {
    let bed = require_bed!();
    let dir = data_workdir(&unique("content"));
    let (single, multi) = (unique("promote-single"), unique("promote-multi"));
    write_and_build(
        dir.path(),
        &bed,
        &format!(
            "  single:\n    builder: native\n    base: {}\n    repository: {single}\n    \
             layers: [{{src: data, dest: /data}}]\n  \
             multi:\n    builder: native\n    base: {}\n    repository: {multi}\n    \
             platforms: [linux/amd64, linux/386]\n    layers: [{{src: data, dest: /data}}]\n",
            bed.base_image, bed.base_image_multi
        ),
    );
    let to = format!("{}/promoted", bed.registry_tls);
    let login = tls_login(&bed, dir.path());

    for (service, repo, manifests) in [("single", &single, 1), ("multi", &multi, 3)] {
        let digest = values_key(
            &dir.path().join(format!("values/{service}.values.yaml")),
            "image.digest",
        );
        let env_values = format!("environments/prod/{service}.image.yaml");
        let out = run(&mut promote(&bed, dir.path(), service, &env_values, &to));
        assert_ok(&out);
        let (stdout, stderr) = text(&out);
        let target_repo = format!("promoted/{repo}");
        assert_eq!(
            stdout,
            format!("{service}  {to}/{repo}@{digest}\n"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("{manifests} manifest(s)")),
            "{stderr}"
        );
        let (uploaded, _, skipped, mounted) = copy_stats(&stderr);
        assert!(uploaded >= 2 && skipped == 0 && mounted == 0, "{stderr}");

        // The top manifest and every one it lists: the same bytes in both registries, and the
        // same as `crane manifest` reads from each.
        let (status, top) = served(&bed, false, repo, &digest).await;
        assert_eq!(status, 200);
        assert_eq!(sha256(&top), digest);
        let mut digests = vec![digest.clone()];
        let parsed: serde_json::Value = serde_json::from_slice(&top).unwrap();
        for m in parsed["manifests"].as_array().into_iter().flatten() {
            digests.push(m["digest"].as_str().unwrap().to_owned());
        }
        assert_eq!(digests.len(), manifests);
        for d in &digests {
            let (_, source) = served(&bed, false, repo, d).await;
            let (status, target) = served(&bed, true, &target_repo, d).await;
            assert_eq!(status, 200, "{d} at the target");
            assert_eq!(source, target, "{d}: manifests differ");
            assert_eq!(sha256(&target), *d);
            let by_crane = crane_manifest(&bed, &login, &format!("{to}/{repo}@{d}"));
            assert_eq!(by_crane, target, "crane reads other bytes for {d}");
            let from_crane = crane_manifest(&bed, &login, &format!("{}/{repo}@{d}", bed.registry));
            assert_eq!(from_crane, source);
        }
        // Tagged with the content tag at the target too.
        let tag = format!("fb-{}", &digest[7..19]);
        let (status, tagged) = served(&bed, true, &target_repo, &tag).await;
        assert_eq!((status, sha256(&tagged)), (200, digest.clone()), "{tag}");

        // The promoted values file pins the target, and Helm renders it.
        let promoted = dir.path().join(&env_values);
        assert!(
            fs_err::read_to_string(&promoted)
                .unwrap()
                .starts_with(&format!("# Generated by fastbuild for service `{service}`. Do not edit: it is rewritten on each `fastbuild promote`.\n")),
        );
        assert_eq!(values_key(&promoted, "image.graph"), format!("{to}/{repo}"));
        assert_eq!(values_key(&promoted, "image.digest"), digest);
        assert_eq!(
            helm_image(&bed, &promoted),
            format!("\"{to}/{repo}@{digest}\"")
        );

        // Again: nothing to move, the values file is left as it is.
        let out = run(&mut promote(&bed, dir.path(), service, &env_values, &to));
        assert_ok(&out);
        let (_, stderr) = text(&out);
        let (uploaded, bytes, skipped, _) = copy_stats(&stderr);
        assert_eq!((uploaded, bytes), (0, 0), "{stderr}");
        assert!(skipped >= 2, "{stderr}");
        assert!(stderr.contains("unchanged"), "{stderr}");
    }
}

/// The bed's registry log (`$FASTBUILD_TESTBED_DIR/logs/registry.log`): its access-log lines
/// (`127.0.0.1 - - […] "METHOD URI HTTP/1.1" STATUS …`) naming `path`.
fn registry_requests(path: &str) -> Vec<String> {
    fs_err::read_to_string(testbed_dir().join("logs/registry.log"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("127.0.0.1 - -") && l.contains(path))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn promote_within_one_registry_mounts_every_blob_and_uploads_none() {
    let bed = require_bed!();
    let dir = data_workdir(&unique("mounted"));
    let repo = unique("promote-mount");
    write_and_build(
        dir.path(),
        &bed,
        &format!(
            "  app:\n    builder: native\n    base: {}\n    repository: {repo}\n    \
             layers: [{{src: data, dest: /data}}]\n",
            bed.base_image
        ),
    );
    let digest = values_key(&dir.path().join("values/app.values.yaml"), "image.digest");
    let to = format!("{}/stage", bed.registry);
    let out = run(native_cmd(dir.path()).args([
        "promote",
        "app",
        "--values",
        "stage.yaml",
        "--to-registry",
        &to,
        "--progress",
        "plain",
    ]));
    assert_ok(&out);
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, format!("app  {to}/{repo}@{digest}\n"));
    // The base layer, the added layer and the config: all mounted, no byte sent.
    let (uploaded, bytes, skipped, mounted) = copy_stats(&stderr);
    assert_eq!(
        (uploaded, bytes, skipped, mounted),
        (0, 0, 0, 3),
        "{stderr}"
    );
    // The registry saw the same: mounts answered 201, and no upload of the target's.
    let uploads = registry_requests(&format!("/v2/stage/{repo}/blobs/uploads/"));
    assert_eq!(uploads.len(), 3, "{uploads:#?}");
    for line in &uploads {
        assert!(
            line.contains("\"POST /v2/stage/")
                && line.contains("mount=sha256")
                && line.contains("\" 201 "),
            "not a mount: {line}"
        );
    }
    assert_eq!(
        sha256(
            &served(&bed, false, &format!("stage/{repo}"), &digest)
                .await
                .1
        ),
        digest
    );
}

/// Bytes received so far by the uploads in progress into `repo` of the bed registry `name`
/// (`registry`, `registry-tls`): distribution's `_uploads/<uuid>/data` files.
/// Whether blob `digest` is linked into `repo` of the bed registry `name`.
fn blob_linked(name: &str, repo: &str, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    registry_repo_dir(name, repo)
        .join("_layers/sha256")
        .join(hex)
        .join("link")
        .is_file()
}

#[tokio::test]
async fn a_promote_killed_mid_layer_resumes_and_copies_only_what_is_missing() {
    let bed = require_bed!();
    let dir = workdir();
    for d in ["big", "small"] {
        fs_err::create_dir(dir.path().join(d)).unwrap();
    }
    random_file(
        &dir.path().join("big/big.bin"),
        300 * MIB,
        0x2545_F491_4F6C_DD1D,
    );
    fs_err::write(dir.path().join("small/s.txt"), "small\n").unwrap();
    let repo = unique("promote-kill");
    write_and_build(
        dir.path(),
        &bed,
        &uncompressed_app(&repo, "{src: big, dest: /big}, {src: small, dest: /small}"),
    );
    fs_err::remove_file(dir.path().join("big/big.bin")).unwrap();
    let digest = values_key(&dir.path().join("values/app.values.yaml"), "image.digest");
    let manifest: serde_json::Value =
        serde_json::from_slice(&served(&bed, false, &repo, &digest).await.1).unwrap();
    let big = &manifest["layers"][0];
    let (big_digest, big_size) = (
        big["digest"].as_str().unwrap(),
        big["size"].as_u64().unwrap(),
    );
    let small = [
        manifest["layers"][1]["digest"].as_str().unwrap(),
        manifest["config"]["digest"].as_str().unwrap(),
    ];
    assert!(big_size > 300 * MIB);
    let target_repo = format!("resume/{repo}");
    let to = format!("{}/resume", bed.registry_tls);

    // Kill once the small blobs are in and the big one is under way (≥ 1 MiB received).
    let mut child = spawn_quietly(&mut promote(&bed, dir.path(), "app", "prod.yaml", &to));
    let received = poll_while_running(
        &mut child,
        [
            "fastbuild exited before its copy was seen under way",
            "no copy seen within 60 s",
        ],
        || {
            let small_in = small
                .iter()
                .all(|d| blob_linked("registry-tls", &target_repo, d));
            let big = uploads_in_progress("registry-tls", &target_repo)
                .into_iter()
                .find(|(_, n)| *n >= MIB);
            big.filter(|_| small_in).map(|(_, n)| n)
        },
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    note(&format!(
        "killed after the target had received {received} bytes of {big_size}"
    ));
    assert!(!blob_linked("registry-tls", &target_repo, big_digest));
    // Manifests go last: nothing is visible at the target.
    assert_eq!(served(&bed, true, &target_repo, &digest).await.0, 404);
    assert!(!dir.path().join("prod.yaml").exists());

    // Again: only the big layer moves, and the image is complete with the same digest.
    let out = run(&mut promote(&bed, dir.path(), "app", "prod.yaml", &to));
    assert_ok(&out);
    let (_, stderr) = text(&out);
    assert_eq!(copy_stats(&stderr), (1, big_size, 2, 0), "{stderr}");
    let (status, bytes) = served(&bed, true, &target_repo, &digest).await;
    assert_eq!((status, sha256(&bytes)), (200, digest.clone()));
    assert_eq!(
        values_key(&dir.path().join("prod.yaml"), "image.digest"),
        digest
    );
}

#[tokio::test]
async fn promote_copies_a_one_gib_image_with_peak_rss_under_64_mib() {
    let bed = require_bed!();
    let dir = random_data_workdir(1024 * MIB, 0x9E37_79B9_7F4A_7C15);
    let repo = unique("promote-1gib");
    write_and_build(
        dir.path(),
        &bed,
        &uncompressed_app(&repo, "{src: data, dest: /data}"),
    );
    fs_err::remove_file(dir.path().join("data/big.bin")).unwrap();
    let digest = values_key(&dir.path().join("values/app.values.yaml"), "image.digest");

    let to = format!("{}/rss", bed.registry_tls);
    let t0 = Instant::now();
    let (out, rss) = run_measuring_rss(
        &promote(&bed, dir.path(), "app", "prod.yaml", &to),
        dir.path(),
    );
    let elapsed = t0.elapsed();
    assert_ok(&out);
    let (_, stderr) = text(&out);
    let uploaded = bytes_uploaded(&stderr);
    assert!(uploaded > 1024 * MIB, "{uploaded} bytes copied\n{stderr}");
    assert_rss_between_4_and_64_mib(rss, "copying a 1 GiB image");
    let (status, bytes) = served(&bed, true, &format!("rss/{repo}"), &digest).await;
    assert_eq!((status, sha256(&bytes)), (200, digest));
    note(&format!(
        "promote of a 1 GiB image (plain HTTP → TLS + basic auth, streamed): peak RSS {} KiB, \
         {uploaded} bytes in {elapsed:.1?}",
        rss / 1024
    ));
}

/// Builds `app` of the project in `dir` with `content` in its layer and `SOURCE_DATE_EPOCH`
/// `epoch` (the image's `created`); the digest its values file then pins.
fn build_version(dir: &Path, content: &str, epoch: u64) -> String {
    fs_err::write(dir.join("data/x"), content).unwrap();
    assert_ok(&run(native_cmd(dir)
        .args(["build", "app", "--progress", "plain"])
        .env("SOURCE_DATE_EPOCH", epoch.to_string())));
    values_key(&dir.join("values/app.values.yaml"), "image.digest")
}

/// The digests of the `app  VERB REPO@DIGEST (TAGS)` lines of a prune.
fn pruned(stdout: &str, verb: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("app  {verb} ")))
        .map(|rest| {
            rest.split_once('@')
                .unwrap()
                .1
                .split(' ')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn prune_keeps_the_newest_and_the_pinned_and_deletes_the_rest() {
    let bed = require_bed!();
    let dir = workdir();
    fs_err::create_dir(dir.path().join("data")).unwrap();
    let repo = unique("prune");
    write_project(
        dir.path(),
        &bed,
        &format!(
            "  app:\n    builder: native\n    base: scratch\n    repository: {repo}\n    \
             layers: [{{src: data, dest: /data}}]\n"
        ),
    );
    // Five images, created at 1000, 2000, … 5000; the values file pins the last.
    let d: Vec<String> = (1..=5)
        .map(|i| build_version(dir.path(), &format!("v{i} {repo}"), i * 1000))
        .collect();
    // d[1] is tagged `release` too; d[0] is pinned by another environment's values file.
    let crane = Command::new(&bed.crane)
        .args(["tag", "--insecure"])
        .arg(format!("{}/{repo}@{}", bed.registry, d[1]))
        .arg("release")
        .output()
        .unwrap();
    assert!(crane.status.success(), "{crane:?}");
    assert_ok(&run(native_cmd(dir.path()).args([
        "promote",
        "app",
        "--values",
        "prod.yaml",
        "--digest",
        &d[0],
    ])));
    let prune = |extra: &[&str]| -> Output {
        run(native_cmd(dir.path())
            .args([
                "prune",
                "app",
                "--keep",
                "2",
                "--values",
                "prod.yaml",
                "--progress",
                "plain",
            ])
            .args(extra))
    };

    // A history that records d[2] last makes it the newest: d[3] would go instead. (The
    // builds above wrote their own records; this history replaces them.)
    fs_err::create_dir_all(dir.path().join(".fastbuild")).unwrap();
    fs_err::write(
        dir.path().join(".fastbuild/history.jsonl"),
        format!(
            "{{\"service\":\"app\",\"repository\":\"x\",\"digest\":\"{}\",\"time\":99999,\"kind\":\"build\"}}\nnot json\n",
            d[2]
        ),
    )
    .unwrap();
    let out = prune(&["--dry-run"]);
    assert_ok(&out);
    let (stdout, stderr) = text(&out);
    assert_eq!(pruned(&stdout, "would delete"), [d[3].clone()], "{stderr}");
    assert!(
        stderr.contains("history.jsonl:2: skipped a line that is not a history record"),
        "{stderr}"
    );
    for digest in &d {
        assert_eq!(
            served(&bed, false, &repo, digest).await.0,
            200,
            "dry run deleted {digest}"
        );
    }

    // By creation time: d[4] (also pinned) and d[3] are the newest two; d[2] goes.
    fs_err::remove_file(dir.path().join(".fastbuild/history.jsonl")).unwrap();
    let out = prune(&[]);
    assert_ok(&out);
    let (stdout, stderr) = text(&out);
    assert_eq!(pruned(&stdout, "deleted"), [d[2].clone()], "{stderr}");
    for (digest, why) in [
        (&d[4], "pinned by "),
        (&d[3], "among the 2 newest"),
        (&d[1], "also tagged `release`"),
        (&d[0], "prod.yaml"),
    ] {
        let keep = format!("keep {}/{repo}@{digest}: ", bed.registry);
        assert!(
            stderr.lines().any(|l| l.contains(&keep) && l.contains(why)),
            "{digest} {why}:\n{stderr}"
        );
    }
    assert_eq!(served(&bed, false, &repo, &d[2]).await.0, 404);
    for digest in [&d[0], &d[1], &d[3], &d[4]] {
        assert_eq!(served(&bed, false, &repo, digest).await.0, 200, "{digest}");
    }
    let tags: serde_json::Value =
        reqwest::get(format!("http://{}/v2/{repo}/tags/list", bed.registry))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        !tags.contains(&format!("fb-{}", &d[2][7..19]).as_str()),
        "{tags:?}"
    );
    assert_eq!(tags.len(), 5, "four content tags and `release`: {tags:?}");

    // Without the other environment's file, d[0] is no longer pinned.
    let out = run(native_cmd(dir.path()).args(["prune", "app", "--keep", "2", "--dry-run"]));
    assert_ok(&out);
    assert_eq!(pruned(&text(&out).0, "would delete"), [d[0].clone()]);
}

/// A `docker-registry serve` of the test's own on a free loopback port, deletes disabled;
/// killed on drop.
struct OwnRegistry {
    host: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnRegistry {
    async fn start() -> OwnRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        fs_err::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  \
                 filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: false\nhttp:\n  \
                 addr: {host}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run docker-registry (installed by scripts/testbed)");
        let mut own = OwnRegistry {
            host,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(format!("http://{}/v2/", own.host))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return own;
            }
            assert!(
                own.child.try_wait().unwrap().is_none(),
                "docker-registry exited"
            );
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn prune_names_a_registry_with_deletion_disabled_and_what_to_set() {
    let _bed = require_bed!();
    let registry = OwnRegistry::start().await;
    let dir = workdir();
    fs_err::create_dir(dir.path().join("data")).unwrap();
    fs_err::write(
        dir.path().join("fastbuild.yaml"),
        format!(
            "registry: {}\nvalues_dir: values\ndocker_config: no-docker-config\nservices:\n  \
             app:\n    builder: native\n    base: scratch\n    repository: app\n    \
             layers: [{{src: data, dest: /data}}]\n",
            registry.host
        ),
    )
    .unwrap();
    let old = build_version(dir.path(), "old", 1000);
    let new = build_version(dir.path(), "new", 2000);
    assert_ne!(old, new);
    let out = run(native_cmd(dir.path()).args(["prune", "--keep", "1", "--progress", "plain"]));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let error = stderr.split_once("error: ").map_or("", |(_, e)| e);
    assert!(
        error.contains(&format!(
            "registry `{}` has deletion disabled",
            registry.host
        )) && error.contains("405")
            && error.contains("UNSUPPORTED")
            && error.contains("storage: delete: enabled: true")
            && error.contains("REGISTRY_STORAGE_DELETE_ENABLED=true"),
        "{stderr}"
    );
    // Nothing went.
    for digest in [&old, &new] {
        let status = reqwest::Client::new()
            .get(format!(
                "http://{}/v2/app/manifests/{digest}",
                registry.host
            ))
            .header("Accept", ACCEPT)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200, "{digest}");
    }
}
