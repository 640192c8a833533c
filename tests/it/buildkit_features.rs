//! BuildKit features users bring from `docker buildx build`, through both daemons of the bed:
//! SSH agent forwarding (`--ssh`), named contexts (`--build-context`), attestations on request
//! (`--provenance`), the registry cache on a cold daemon.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use fastbuild_buildkit::{BuildOptions, Client, NamedContext, ProgressEvent, SshSource};

use crate::buildkit::{build, logs, push_opts, uuid_like};
use crate::common::{Daemon, OwnBuildkitd, TestBed, on_both_daemons, require_bed};

async fn connect(bed: &TestBed, daemon: Daemon) -> Client {
    Client::connect(bed.buildkit(daemon), None)
        .await
        .expect("connect to the bed's BuildKit")
}

/// A context whose Dockerfile builds on the bed's base with a `RUN` step unique to this call.
fn marker_context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    fs_err::write(
        ctx.path().join("Dockerfile"),
        format!(
            "ARG BASE\nFROM ${{BASE}}\nRUN echo {} > /marker\n",
            uuid_like()
        ),
    )
    .unwrap();
    ctx
}

/// Copies `/usr/bin/ssh-add` and the shared libraries `ldd` names into `root` at the same
/// paths: the bed's base image is busybox, which has no SSH client.
fn install_ssh_add(root: &Path) {
    let copy = |from: &Path| {
        let to = root.join(from.strip_prefix("/").unwrap());
        fs_err::create_dir_all(to.parent().unwrap()).unwrap();
        fs_err::copy(from, &to).unwrap();
    };
    let ssh_add = Path::new("/usr/bin/ssh-add");
    copy(ssh_add);
    let ldd = Command::new("ldd").arg(ssh_add).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux… (0x…)`
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            copy(&fs_err::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p)));
            if fs_err::canonicalize(p).is_ok_and(|c| c != Path::new(p)) {
                // Keep the name the binary asks for (the copy above is the link's target).
                let real = fs_err::canonicalize(p).unwrap();
                let to = root.join(p.strip_prefix('/').unwrap());
                fs_err::create_dir_all(to.parent().unwrap()).unwrap();
                fs_err::copy(&real, &to).unwrap();
            }
        }
    }
}

/// An ssh-agent of the test's own (OpenSSH), killed on drop.
struct Agent {
    socket: PathBuf,
    child: std::process::Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(dir: &Path) -> Agent {
    let socket = dir.join("agent.sock");
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent (openssh-client) is needed for this test");
    for _ in 0..250 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Agent { socket, child }
}

/// A new ed25519 key in `dir`; returns (private key path, `SHA256:…` fingerprint).
fn new_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "fastbuild-test",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&key)
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    (key, fingerprint)
}

/// `RUN --mount=type=ssh ssh-add -l` sees the forwarded key — from a running agent (its
/// socket, as `--ssh default` passes SSH_AUTH_SOCK) and from a key file (loaded into a private
/// agent for the build); a named ID reaches `--mount=type=ssh,id=…`; without `--ssh` the step
/// fails. The key's private half never appears in the build's output.
async fn ssh_agent_is_forwarded_to_run_mounts(bed: TestBed, daemon: Daemon) {
    let client = connect(&bed, daemon).await;
    let keys = tempfile::tempdir().unwrap();
    let (key, fingerprint) = new_key(keys.path());
    let agent = start_agent(keys.path());
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");

    let ctx = tempfile::tempdir().unwrap();
    install_ssh_add(&ctx.path().join("rootfs"));
    let marker = uuid_like();
    fs_err::write(
        ctx.path().join("Dockerfile"),
        format!(
            "ARG BASE\nFROM ${{BASE}}\nCOPY rootfs/ /\n\
             RUN --mount=type=ssh echo {marker} && ssh-add -l\n\
             RUN --mount=type=ssh,id=deploy echo {marker} && ssh-add -l\n"
        ),
    )
    .unwrap();
    let opts = |ssh: BTreeMap<String, SshSource>| BuildOptions {
        context: ctx.path().to_owned(),
        build_args: BTreeMap::from([("BASE".to_owned(), bed.base_image.clone())]),
        no_cache: true,
        ssh,
        ..BuildOptions::default()
    };

    for (how, ssh) in [
        (
            "agent socket",
            BTreeMap::from([
                ("default".to_owned(), SshSource::Agent(agent.socket.clone())),
                ("deploy".to_owned(), SshSource::Agent(agent.socket.clone())),
            ]),
        ),
        (
            "key file",
            BTreeMap::from([
                ("default".to_owned(), SshSource::Keys(vec![key.clone()])),
                ("deploy".to_owned(), SshSource::Keys(vec![key.clone()])),
            ]),
        ),
    ] {
        let (result, events) = build(&client, opts(ssh)).await;
        let logs = logs(&events);
        result.unwrap_or_else(|e| panic!("{how}: {e}\n{logs}"));
        assert_eq!(
            logs.matches(&fingerprint).count(),
            2,
            "{how}: both mounts list the key: {logs}"
        );
        let private = fs_err::read_to_string(&key).unwrap();
        let body = private.lines().nth(1).unwrap();
        assert!(
            !logs.contains(body),
            "{how}: private key material in the output"
        );
    }

    // No agent for `deploy`: the build fails, naming it.
    let (result, events) = build(
        &client,
        opts(BTreeMap::from([(
            "default".to_owned(),
            SshSource::Agent(agent.socket.clone()),
        )])),
    )
    .await;
    let err = result.expect_err("a mount of an ID that is not forwarded fails");
    let text = format!("{err} {}", logs(&events));
    assert!(text.contains("deploy"), "{text}");
}

/// `--build-context core=DIR` serves `COPY --from=core` with the directory's own
/// `.dockerignore` applied (an excluded file never reaches the image), and
/// `--build-context base=docker-image://REF` replaces `FROM base`.
async fn named_contexts_serve_copy_from_and_from(bed: TestBed, daemon: Daemon) {
    let client = connect(&bed, daemon).await;
    let ctx = tempfile::tempdir().unwrap();
    let core = tempfile::tempdir().unwrap();
    fs_err::write(core.path().join("lib.txt"), "core library\n").unwrap();
    fs_err::write(core.path().join("secret.txt"), "never sent\n").unwrap();
    fs_err::write(core.path().join(".dockerignore"), "secret.txt\n").unwrap();
    let marker = uuid_like();
    fs_err::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM base\nCOPY --from=core . /core\n\
             RUN echo {marker} && cat /core/lib.txt && test ! -e /core/secret.txt && ls -a /core\n"
        ),
    )
    .unwrap();
    let opts = BuildOptions {
        context: ctx.path().to_owned(),
        no_cache: true,
        named_contexts: BTreeMap::from([
            ("core".to_owned(), NamedContext::Dir(core.path().to_owned())),
            (
                "base".to_owned(),
                NamedContext::Image(bed.base_image.clone()),
            ),
        ]),
        ..BuildOptions::default()
    };
    let (result, events) = build(&client, opts).await;
    let logs = logs(&events);
    result.unwrap_or_else(|e| panic!("{e}\n{logs}"));
    assert!(logs.contains("core library"), "{logs}");
    assert!(!logs.contains("secret.txt"), "{logs}");
}

/// `repo:tag` as the plain registry serves it: digest and JSON.
async fn manifest(bed: &TestBed, repo: &str, tag: &str) -> (String, serde_json::Value) {
    crate::common::served_manifest(&bed.registry, repo, tag).await
}

/// Provenance only when asked: without it the pushed image is one manifest whose digest a
/// no-op rebuild keeps; with `mode=max` the pushed index holds an attestation manifest beside
/// the image, and the digest reported is the index's.
async fn provenance_is_attached_only_on_request(bed: TestBed, daemon: Daemon) {
    let client = connect(&bed, daemon).await;
    let ctx = marker_context();
    let repo = format!("features/provenance-{}", uuid_like());
    let opts = |tag: &str, provenance: Option<&str>| BuildOptions {
        oci_mediatypes: Some(true),
        provenance: provenance.map(str::to_owned),
        ..push_opts(&bed, ctx.path(), &repo, tag)
    };
    let (plain, events) = build(&client, opts("plain", None)).await;
    let plain = plain.unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
    let (again, _) = build(&client, opts("plain", None)).await;
    assert_eq!(
        again.unwrap().digest,
        plain.digest,
        "no-op rebuild, same digest"
    );
    let (served, m) = manifest(&bed, &repo, "plain").await;
    assert_eq!(served, plain.digest.to_string());
    assert_eq!(
        m["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{m:#}"
    );

    let (with, events) = build(&client, opts("prov", Some("mode=max"))).await;
    let with = with.unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
    let (served, index) = manifest(&bed, &repo, "prov").await;
    assert_eq!(served, with.digest.to_string());
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index:#}"
    );
    let manifests = index["manifests"].as_array().unwrap();
    assert!(
        manifests
            .iter()
            .any(|m| m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"),
        "{index:#}"
    );
    assert_ne!(with.digest, plain.digest);
}

/// `--platform linux/amd64,linux/386` from a multi-platform base, `RUN` steps included (both
/// run natively on x86_64): one pushed index with a manifest per platform, each image's `RUN`
/// output for its own platform, and the digest reported is the index's.
async fn multi_platform_build_pushes_one_index(bed: TestBed, daemon: Daemon) {
    let client = connect(&bed, daemon).await;
    let ctx = tempfile::tempdir().unwrap();
    let marker = uuid_like();
    fs_err::write(
        ctx.path().join("Dockerfile"),
        format!(
            "ARG BASE\nFROM ${{BASE}}\nARG TARGETPLATFORM\n\
             RUN echo \"{marker} $TARGETPLATFORM $(uname -m)\" > /platform && cat /platform\n"
        ),
    )
    .unwrap();
    let repo = format!("features/multi-{marker}");
    let opts = BuildOptions {
        context: ctx.path().to_owned(),
        build_args: BTreeMap::from([("BASE".to_owned(), bed.base_image_multi.clone())]),
        platforms: vec!["linux/amd64".into(), "linux/386".into()],
        image_names: vec![format!("{}/{repo}:v1", bed.registry)],
        push: true,
        registry_insecure: true,
        oci_mediatypes: Some(true),
        ..BuildOptions::default()
    };
    let (result, events) = build(&client, opts).await;
    let logs = logs(&events);
    let result = result.unwrap_or_else(|e| panic!("{e}\n{logs}"));
    assert!(logs.contains(&format!("{marker} linux/amd64")), "{logs}");
    assert!(logs.contains(&format!("{marker} linux/386")), "{logs}");
    let (served, index) = manifest(&bed, &repo, "v1").await;
    assert_eq!(
        served,
        result.digest.to_string(),
        "the reported digest is the index's"
    );
    let platforms = crate::common::index_platforms(&index);
    assert_eq!(platforms, ["linux/amd64", "linux/386"], "{index:#}");
}

/// An SBOM generator of the test's own, per BuildKit's scanner protocol (the image's command
/// runs with the image to scan at `$BUILDKIT_SCAN_SOURCE` and writes in-toto statements into
/// `$BUILDKIT_SCAN_DESTINATION`): busybox and a shell script that counts the files. Docker's
/// own scanner image (syft) lives on Docker Hub, out of these machines' reach. Built and pushed
/// by fastbuild's native builder; returns its `repo@digest`.
async fn sbom_scanner_image(bed: &TestBed) -> String {
    use fastbuild_oci::{BaseImage, ConfigOverrides, ImageSpec, LayerSpec, RegistryClient, Target};
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(
        dir.path().join("scan.sh"),
        "#!/bin/sh\nn=$(find \"$BUILDKIT_SCAN_SOURCE\" -type f | wc -l)\n\
         printf '{\"_type\":\"https://in-toto.io/Statement/v0.1\",\"predicateType\":\"https://spdx.dev/Document\",\
         \"subject\":[],\"predicate\":{\"spdxVersion\":\"SPDX-2.3\",\"SPDXID\":\"SPDXRef-DOCUMENT\",\
         \"name\":\"fastbuild-test-scan\",\"dataLicense\":\"CC0-1.0\",\"comment\":\"files: %s\"}}' \"$n\" \
         > \"$BUILDKIT_SCAN_DESTINATION/sbom.spdx.json\"\n",
    )
    .unwrap();
    let spec = ImageSpec {
        base: BaseImage::Reference(bed.base_image.clone()),
        platforms: vec!["linux/amd64".parse().unwrap()],
        layers: vec![LayerSpec::new([(dir.path().join("scan.sh"), "/scan.sh")])],
        config: ConfigOverrides {
            cmd: Some(vec!["/bin/sh".into(), "/scan.sh".into()]),
            ..ConfigOverrides::default()
        },
        ..ImageSpec::default()
    };
    let repo = format!("{}/features/sbom-scanner", bed.registry);
    let client = RegistryClient::new(fastbuild_oci::RegistryOptions {
        docker_config: Some(dir.path().join("no-docker-config")),
        ..fastbuild_oci::RegistryOptions::default()
    })
    .unwrap();
    let pushed = fastbuild_oci::build_and_push(
        &spec,
        &Target::Registry(format!("{repo}:v1").parse().unwrap()),
        &client,
    )
    .await
    .unwrap();
    format!("{repo}@{}", pushed.digest)
}

/// `--sbom` on request: the pushed index carries an SPDX attestation made by the scanner
/// (here the test's own generator image, see [`sbom_scanner_image`]); without it, none.
async fn sbom_is_attached_only_on_request(bed: TestBed, daemon: Daemon) {
    let scanner = sbom_scanner_image(&bed).await;
    let client = connect(&bed, daemon).await;
    let ctx = marker_context();
    let repo = format!("features/sbom-{}", uuid_like());
    let opts = |tag: &str, sbom: Option<String>| BuildOptions {
        oci_mediatypes: Some(true),
        sbom,
        ..push_opts(&bed, ctx.path(), &repo, tag)
    };
    let (with, events) = build(&client, opts("sbom", Some(format!("generator={scanner}")))).await;
    let with = with.unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
    let (served, index) = manifest(&bed, &repo, "sbom").await;
    assert_eq!(served, with.digest.to_string());
    let attestation = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest")
        .unwrap_or_else(|| panic!("no attestation manifest: {index:#}"))
        .clone();
    let (_, att) = manifest(&bed, &repo, attestation["digest"].as_str().unwrap()).await;
    assert!(
        att["layers"].as_array().unwrap().iter().any(|l| {
            l["annotations"]["in-toto.io/predicate-type"] == "https://spdx.dev/Document"
        }),
        "{att:#}"
    );

    let (without, _) = build(&client, opts("plain", None)).await;
    let (_, m) = manifest(&bed, &repo, "plain").await;
    assert_eq!(
        m["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{m:#}"
    );
    assert_ne!(without.unwrap().digest, with.digest);
}

on_both_daemons!(
    sbom_is_attached_only_on_request,
    multi_platform_build_pushes_one_index,
    ssh_agent_is_forwarded_to_run_mounts,
    named_contexts_serve_copy_from_and_from,
    provenance_is_attached_only_on_request,
);

fn cached_steps(events: &[ProgressEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::VertexCached { name, .. } if name.contains("RUN ") => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// The registry cache, proven cold: a build exports `--cache-to type=registry,mode=max`; a
/// brand-new buildkitd (empty state: what a CI runner starts with) then answers every `RUN`
/// step from `--cache-from` (given as buildx's bare-reference shorthand), while the same cold
/// start without it runs them all. A daemon of the test's own: pruning a shared one would
/// disturb the tests running beside this one.
#[tokio::test]
async fn registry_cache_turns_every_step_into_a_hit_on_a_cold_daemon() {
    let bed = require_bed!();
    let ctx = tempfile::tempdir().unwrap();
    let marker = uuid_like();
    fs_err::write(
        ctx.path().join("Dockerfile"),
        format!("ARG BASE\nFROM ${{BASE}}\nRUN echo {marker} > /one\nRUN echo {marker} > /two\n"),
    )
    .unwrap();
    let cache_ref = format!("{}/features/cache-{marker}:buildcache", bed.registry);
    let repo = format!("{}/features/cached-{marker}", bed.registry);
    let spec = |s: &str| fastbuild_buildkit::CacheSpec {
        kind: "registry".into(),
        attrs: s
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let opts = |imports: Vec<fastbuild_buildkit::CacheSpec>,
                exports: Vec<fastbuild_buildkit::CacheSpec>,
                tag: &str| BuildOptions {
        context: ctx.path().to_owned(),
        build_args: BTreeMap::from([("BASE".to_owned(), bed.base_image.clone())]),
        image_names: vec![format!("{repo}:{tag}")],
        push: true,
        registry_insecure: true,
        cache_imports: imports,
        cache_exports: exports,
        ..BuildOptions::default()
    };

    let export = vec![spec(&format!("ref={cache_ref},mode=max"))];
    let mut one = None;
    // Cold, exporting the cache; then cold again without it: every RUN step runs.
    for opts in [opts(vec![], export, "one"), opts(vec![], vec![], "cold")] {
        let (r, events) = build_cold(&bed, opts).await;
        let result = r.unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
        one.get_or_insert(result);
        assert!(
            cached_steps(&events).is_empty(),
            "{:?}",
            cached_steps(&events)
        );
    }
    let one = one.unwrap();

    // Cold, with the cache (the shorthand `--cache-from REF`): every RUN step is a hit, and
    // the image is the first one.
    let shorthand = fastbuild::settings::cache_spec(&cache_ref).unwrap();
    let (r, events) = build_cold(&bed, opts(vec![shorthand], vec![], "warm")).await;
    let warm_result = r.unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
    let hits = cached_steps(&events);
    assert_eq!(
        hits.len(),
        2,
        "both RUN steps from the registry cache: {hits:?}"
    );
    assert_eq!(warm_result.digest, one.digest);
}

/// `opts` built on a buildkitd of the test's own (a cold cache), stopped afterwards.
async fn build_cold(
    bed: &TestBed,
    opts: BuildOptions,
) -> (
    Result<fastbuild_buildkit::BuildResult, fastbuild_buildkit::Error>,
    Vec<ProgressEvent>,
) {
    let daemon = OwnBuildkitd::start(bed);
    let client = Client::connect(&daemon.address, None).await.unwrap();
    build(&client, opts).await
}

/// A pool of daemons (`buildkit:` as a list): ten services spread over two buildkitds by
/// rendezvous hashing (and a third member that is not there, skipped with a warning); one
/// daemon is killed while it builds: its services move to the other and every service still
/// gets a digest.
#[tokio::test]
async fn a_builder_pool_survives_a_killed_daemon() {
    let bed = require_bed!();
    let mut first = OwnBuildkitd::start(&bed);
    let second = OwnBuildkitd::start(&bed);
    let dir = tempfile::tempdir().unwrap();
    let marker = uuid_like();
    let mut yaml = format!(
        "registry: {}\nparallel: 10\nbuildkit:\n  - {}\n  - {}\n  - unix:///nonexistent/fastbuild-dead.sock\nservices:\n",
        bed.registry, first.address, second.address
    );
    for i in 0..10 {
        let ctx = dir.path().join(format!("s{i}"));
        fs_err::create_dir_all(&ctx).unwrap();
        fs_err::write(
            ctx.join("Dockerfile"),
            format!("ARG BASE\nFROM ${{BASE}}\nRUN echo s{i}-{marker} && sleep 4\n"),
        )
        .unwrap();
        let _ = write!(
            yaml,
            "  s{i}:\n    context: s{i}\n    repository: features/pool-s{i}\n    build_args: {{BASE: \"{}\"}}\n",
            bed.base_image
        );
    }
    fs_err::write(dir.path().join("fastbuild.yaml"), yaml).unwrap();
    let child = crate::common::fastbuild(dir.path())
        .env_remove("BUILDKIT_HOST")
        .args(["build", "--progress", "plain"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Kill the first daemon once it is building.
    let client = Client::connect(&first.address, None).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if !client.active_builds().await.unwrap_or_default().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no build reached the first daemon"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(client);
    first.kill();

    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    for i in 0..10 {
        let values = dir.path().join(format!("tilt-values/s{i}.values.yaml"));
        assert!(values.is_file(), "s{i} has no values file:\n{err}");
    }
    assert!(
        err.contains(&format!(
            "is unreachable or went away; building on `{}`",
            second.address
        )),
        "the moved services say so:\n{err}"
    );
    assert!(
        err.contains("fastbuild-dead.sock"),
        "the missing member is named:\n{err}"
    );
}
