//! Connection helpers (`docker-container://`, `podman-container://`, `nerdctl-container://`,
//! `kube-pod://`, `ssh://`): fastbuild runs the command buildctl's helper runs and speaks gRPC
//! over its stdio; the session (file sync, auth) goes through it too.
//!
//! No container engine other than the bed's dockerd, no cluster and no remote host can run on
//! these machines, so each command is a stand-in on `PATH` that records its argv and then does
//! what the real one does at the far end: `buildctl dial-stdio` (the bed's upstream buildctl)
//! to the bed's standalone buildkitd. The argv must be exactly buildctl's.

use std::path::Path;

use crate::common::{TestBed, require_bed};
use crate::common::{assert_ok, example_project, fastbuild, run, stderr};

/// A stand-in `program` in `bin` that appends its argv (one line, words separated by `|`) to
/// `log` and relays stdio to the bed's buildkitd with `buildctl dial-stdio`.
fn stand_in(bin: &Path, program: &str, bed: &TestBed, log: &Path) {
    let script = format!(
        "#!/bin/sh\n\
         (printf '%s' {program}; for a in \"$@\"; do printf '|%s' \"$a\"; done; echo) >> '{log}'\n\
         exec '{buildctl}' --addr '{addr}' dial-stdio\n",
        log = log.display(),
        buildctl = bed.buildctl.display(),
        addr = bed.buildkitd,
    );
    let path = bin.join(program);
    fs_err::write(&path, script).unwrap();
    fs_err::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// The name and detail of the first doctor check (of `doctor --json` output) whose name starts
/// with `prefix`.
fn doctor_check(out: &std::process::Output, prefix: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap_or_default().starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` check: {v:#}"))
        .clone();
    (
        c["name"].as_str().unwrap().to_owned(),
        c["detail"].as_str().unwrap().to_owned(),
    )
}

fn path_with(bin: &Path) -> std::ffi::OsString {
    std::env::join_paths(std::iter::once(bin.to_owned()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap()
}

/// Every helper scheme builds and pushes the example's BuildKit service (its context synced
/// through the session over the command's stdio), running exactly buildctl's argv.
#[test]
fn every_connection_helper_builds_and_pushes_through_its_command() {
    let bed = require_bed!();
    let dir = example_project();
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("argv.log");
    for program in ["docker", "podman", "nerdctl", "kubectl", "ssh"] {
        stand_in(bin.path(), program, &bed, &log);
    }
    let cases: [(&str, &str); 7] = [
        (
            "docker-container://buildx_buildkit_fb0",
            "docker|exec|-i|buildx_buildkit_fb0|buildctl|dial-stdio",
        ),
        (
            "docker-container://bk?context=colima",
            "docker|--context=colima|exec|-i|bk|buildctl|dial-stdio",
        ),
        (
            "podman-container://bk",
            "podman|exec|-i|bk|buildctl|dial-stdio",
        ),
        (
            "nerdctl-container://bk?namespace=buildkit",
            "nerdctl|exec|--namespace|buildkit|-i|bk|buildctl|dial-stdio",
        ),
        (
            "kube-pod://buildkitd-0?namespace=ci&container=buildkitd",
            "kubectl|--context=|--namespace=ci|exec|--container=buildkitd|-i|buildkitd-0|--|buildctl|dial-stdio",
        ),
        (
            // buildx's kubernetes driver (a deployment per node).
            "kube-deployment://builder0?namespace=buildkit",
            "kubectl|--context=|--namespace=buildkit|exec|-i|deployment/builder0|--|buildctl|dial-stdio",
        ),
        (
            "ssh://builder@build-host:2222/run/buildkit/buildkitd.sock",
            "ssh|-l|builder|-p|2222|--|build-host|buildctl|--addr|unix:///run/buildkit/buildkitd.sock|dial-stdio",
        ),
    ];
    for (address, argv) in cases {
        let _ = fs_err::remove_file(&log);
        let out = run(fastbuild(dir.path())
            .env("PATH", path_with(bin.path()))
            .args(["build", "api", "--no-cache", "--buildkit", address]));
        assert_ok(&out);
        let recorded = fs_err::read_to_string(&log).unwrap();
        assert!(
            recorded.lines().next() == Some(argv),
            "{address}: ran {recorded:?}, buildctl runs {argv:?}"
        );
    }
}

/// A helper command that fails (no such container) is reported with its own stderr and exit
/// status, naming the command.
#[test]
fn a_failing_helper_command_is_reported_with_its_stderr() {
    let _bed = require_bed!();
    let dir = example_project();
    let bin = tempfile::tempdir().unwrap();
    let docker = bin.path().join("docker");
    fs_err::write(
        &docker,
        "#!/bin/sh\necho 'Error response from daemon: No such container: nope' >&2\nexit 1\n",
    )
    .unwrap();
    fs_err::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Known race (found 2026-12-01, not fixed yet): in about 1 run of 10 the gRPC stream sees
    // the helper's end as a plain EOF ("stream closed because of a broken pipe") before the
    // relay has its exit status and stderr, and the message says only that the connection was
    // lost. The failure is still reported (exit 1); the test asks for the helper's own words
    // within three runs, so it fails when they never come through.
    let mut last = String::new();
    for _ in 0..3 {
        let out = run(fastbuild(dir.path())
            .env("PATH", path_with(bin.path()))
            .args(["build", "api", "--buildkit", "docker-container://nope"]));
        assert_eq!(out.status.code(), Some(1));
        last = stderr(&out);
        if last.contains("docker exec -i nope buildctl dial-stdio")
            && last.contains("No such container: nope")
            && last.contains("exit status: 1")
        {
            return;
        }
    }
    panic!("the helper's failure never came through with its stderr:\n{last}");
}

/// The default BuildKit is the one of the Docker endpoint the docker CLI would use: with no
/// `--buildkit`, `BUILDKIT_HOST` or `DOCKER_HOST`, the current context of the Docker config
/// (written by the real `docker context create` / `docker context use` of the bed's docker CLI),
/// then `DOCKER_CONTEXT` over it, then `DOCKER_HOST` over both; doctor says which and why.
#[test]
fn docker_contexts_choose_the_default_buildkit_as_the_docker_cli_does() {
    let bed = require_bed!();
    let docker_cli = bed.docker_cli.clone();
    let config = tempfile::tempdir().unwrap();
    let sock = bed.docker_socket();
    let docker = |args: &[&str]| {
        let out = std::process::Command::new(&docker_cli)
            .env("DOCKER_CONFIG", config.path())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", stderr(&out));
    };
    let host = format!("host=unix://{}", sock.display());
    docker(&["context", "create", "fbctx", "--docker", &host]);
    docker(&["context", "create", "other", "--docker", &host]);
    docker(&["context", "use", "fbctx"]);

    let dir = example_project();
    let fb = |extra_env: &[(&str, String)], args: &[&str]| {
        let mut cmd = fastbuild(dir.path());
        cmd.env("DOCKER_CONFIG", config.path())
            .env_remove("BUILDKIT_HOST")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        run(cmd.args(args))
    };
    let buildkit_check = |out: &std::process::Output| doctor_check(out, "buildkit ");

    let out = fb(&[], &["build", "api"]);
    assert_ok(&out);
    let (name, detail) = buildkit_check(&fb(&[], &["doctor", "--json"]));
    assert_eq!(name, format!("buildkit docker-unix://{}", sock.display()));
    assert!(
        detail.contains("Docker context `fbctx` (currentContext in"),
        "{detail}"
    );

    let (_, detail) = buildkit_check(&fb(
        &[("DOCKER_CONTEXT", "other".into())],
        &["doctor", "--json"],
    ));
    assert!(
        detail.contains("Docker context `other` (DOCKER_CONTEXT)"),
        "{detail}"
    );
    let (_, detail) = buildkit_check(&fb(
        &[
            ("DOCKER_CONTEXT", "other".into()),
            ("DOCKER_HOST", format!("unix://{}", sock.display())),
        ],
        &["doctor", "--json"],
    ));
    assert!(detail.contains("chosen by DOCKER_HOST"), "{detail}");

    let out = fb(&[("DOCKER_CONTEXT", "nope".into())], &["build", "api"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Docker context `nope` is not in the context store"),
        "{}",
        stderr(&out)
    );
}

/// buildx builders by name, from the instance store the real `docker buildx create` writes
/// (the bed's buildx 0.13 as a docker CLI plugin): a `remote` builder on the standalone
/// buildkitd's mutual-TLS listener builds with `--builder`, with `BUILDX_BUILDER`, and as
/// buildx's current builder (`docker buildx use`), doctor saying which; a
/// `docker-container` builder is reached as `docker-container://buildx_buildkit_<node>`
/// (here through the recording stand-in: starting its container needs a BuildKit image, which
/// these machines cannot pull); errors name the builder.
#[test]
fn buildx_builders_are_reached_by_name() {
    let bed = require_bed!();
    let config = tempfile::tempdir().unwrap();
    let plugins = config.path().join("cli-plugins");
    fs_err::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(
        std::env::var("DOCKER_BUILDX").expect("DOCKER_BUILDX from the bed"),
        plugins.join("docker-buildx"),
    )
    .unwrap();
    let docker = |args: &[&str]| {
        let out = std::process::Command::new(&bed.docker_cli)
            .env("DOCKER_CONFIG", config.path())
            .env("DOCKER_HOST", &bed.docker_host)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", stderr(&out));
    };
    let [ca, cert, key] = bed.buildkitd_tls.clone();
    docker(&[
        "buildx",
        "create",
        "--name",
        "fbremote",
        "--driver",
        "remote",
        "--driver-opt",
        &format!(
            "cacert={},cert={},key={},servername=localhost",
            ca.display(),
            cert.display(),
            key.display()
        ),
        &bed.buildkitd_tcp,
    ]);
    docker(&[
        "buildx",
        "create",
        "--name",
        "fbcont",
        "--driver",
        "docker-container",
    ]);

    let dir = example_project();
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("argv.log");
    stand_in(bin.path(), "docker", &bed, &log);
    let fb = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = fastbuild(dir.path());
        cmd.env("DOCKER_CONFIG", config.path())
            .env("DOCKER_HOST", &bed.docker_host)
            .env("PATH", path_with(bin.path()))
            .env_remove("BUILDKIT_HOST")
            .env_remove("BUILDX_BUILDER");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd.args(args))
    };
    let doctor_detail =
        |env: &[(&str, &str)]| doctor_check(&fb(env, &["doctor", "--json"]), "buildkit ");

    assert_ok(&fb(
        &[],
        &["build", "api", "--no-cache", "--builder", "fbremote"],
    ));
    assert_ok(&fb(
        &[("BUILDX_BUILDER", "fbremote")],
        &["build", "api", "--no-cache"],
    ));
    let (name, detail) = doctor_detail(&[("BUILDX_BUILDER", "fbremote")]);
    assert_eq!(name, format!("buildkit {}", bed.buildkitd_tcp));
    assert!(
        detail.contains("buildx builder `fbremote` (BUILDX_BUILDER)"),
        "{detail}"
    );

    docker(&["buildx", "use", "fbremote"]);
    assert_ok(&fb(&[], &["build", "api", "--no-cache"]));
    let (_, detail) = doctor_detail(&[]);
    assert!(detail.contains("buildx's current builder"), "{detail}");

    let _ = fs_err::remove_file(&log);
    assert_ok(&fb(
        &[],
        &["build", "api", "--no-cache", "--builder", "fbcont"],
    ));
    assert_eq!(
        fs_err::read_to_string(&log).unwrap().lines().next(),
        Some("docker|exec|-i|buildx_buildkit_fbcont0|buildctl|dial-stdio")
    );

    let out = fb(&[], &["build", "api", "--builder", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no buildx builder `nosuch`"),
        "{}",
        stderr(&out)
    );
}

/// With no registry configured, the registry a local cluster advertises (KEP-1755's
/// `local-registry-hosting` ConfigMap, as kind and k3d write it) is used: pushes go to `host`,
/// the values file pins `hostFromContainerRuntime`, doctor says where it came from. No cluster
/// runs on these machines: `kubectl` is a stand-in that checks it is asked exactly for the
/// ConfigMap and prints one whose `host` is the bed's registry.
#[test]
fn a_cluster_advertised_registry_is_used_when_none_is_configured() {
    let bed = require_bed!();
    let bin = tempfile::tempdir().unwrap();
    let kubectl = bin.path().join("kubectl");
    fs_err::write(
        &kubectl,
        format!(
            "#!/bin/sh\n\
             [ \"$*\" = 'get configmap local-registry-hosting --namespace kube-public --output jsonpath={{.data.localRegistryHosting\\.v1}} --request-timeout=5s' ] || {{ echo \"unexpected: $*\" >&2; exit 1; }}\n\
             printf 'host: \"{}\"\\nhostFromContainerRuntime: \"kind-registry:5000\"\\nhostFromClusterNetwork: \"kind-registry:5000\"\\nhelp: \"https://kind.sigs.k8s.io/docs/user/local-registry/\"\\n'\n",
            bed.registry
        ),
    )
    .unwrap();
    fs_err::set_permissions(
        &kubectl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(dir.path().join("dist")).unwrap();
    fs_err::write(dir.path().join("dist/app"), "app\n").unwrap();
    fs_err::write(
        dir.path().join("fastbuild.yaml"),
        format!(
            "values_dir: values\nservices:\n  worker:\n    builder: native\n    base: {}\n    \
             layers: [{{src: dist, dest: /app}}]\n",
            bed.base_image
        ),
    )
    .unwrap();
    let fb = |kubectl: &Path, args: &[&str]| {
        run(fastbuild(dir.path())
            .env("KUBECTL", kubectl)
            .env_remove("FASTBUILD_REGISTRY")
            .args(args))
    };
    let out = fb(&kubectl, &["build", "worker"]);
    assert_ok(&out);
    let values: serde_json::Value = serde_saphyr::from_str(
        &fs_err::read_to_string(dir.path().join("values/worker.values.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(values["image"]["graph"], "kind-registry:5000/worker");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}/worker@sha256:", bed.registry)),
        "pushed to the ConfigMap's host"
    );
    let (_, detail) = doctor_check(
        &fb(&kubectl, &["doctor", "--json"]),
        &format!("registry {}", bed.registry),
    );
    assert!(detail.contains("local-registry-hosting"), "{detail}");

    // No cluster (kubectl fails): no registry, and the error says what to set.
    let out = fb(Path::new("/bin/false"), &["build", "worker"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("has no registry"), "{}", stderr(&out));
}

/// Kills the child on drop.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real OpenSSH server (Debian's openssh-server) on a loopback port, with a per-test host key
/// and client key, whose sessions get `remote_path` first on `PATH` and `env`; and a client
/// side: an `ssh` wrapper dir (`client_bin`) that hands the real `ssh` the per-test config
/// (`-F`), as a user's `~/.ssh/config` would. Stopped on drop.
struct Sshd {
    port: u16,
    client_bin: std::path::PathBuf,
    _server: Kill,
    _dir: tempfile::TempDir,
}

impl Sshd {
    fn start(remote_path: &Path, env: &[(&str, String)]) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let keygen = |file: &Path| {
            let ok = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(file)
                .status()
                .unwrap();
            assert!(ok.success());
        };
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        fs_err::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut set_env = format!("PATH={}:/usr/bin:/bin", remote_path.display());
        for (k, v) in env {
            set_env.push(' ');
            set_env.push_str(k);
            set_env.push('=');
            set_env.push_str(v);
        }
        fs_err::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                 AuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nSetEnv {set_env}\n",
                hk = d.join("host_key").display(),
                pid = d.join("sshd.pid").display(),
                ak = d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        // sshd's privilege separation directory (absent where no sshd ever ran).
        let _ = fs_err::create_dir_all("/run/sshd");
        let mut sshd = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sshd (openssh-server, installed by the bed)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.try_wait() {
                let mut err = String::new();
                std::io::Read::read_to_string(sshd.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("sshd exited ({status}): {err}");
            }
            assert!(std::time::Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let client_bin = d.join("client-bin");
        fs_err::create_dir_all(&client_bin).unwrap();
        fs_err::write(
            d.join("ssh_config"),
            format!(
                "Host 127.0.0.1\n  IdentityFile {}\n  StrictHostKeyChecking no\n  \
                 UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n",
                d.join("client_key").display()
            ),
        )
        .unwrap();
        let wrapper = client_bin.join("ssh");
        fs_err::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec /usr/bin/ssh -F '{}' \"$@\"\n",
                d.join("ssh_config").display()
            ),
        )
        .unwrap();
        fs_err::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Sshd {
            port,
            client_bin,
            _server: Kill(sshd),
            _dir: dir,
        }
    }
}

/// `ssh://` for real: `buildctl dial-stdio` on the far side of a real sshd (the bed's buildctl
/// on the session's PATH) relaying to the standalone buildkitd's socket.
#[test]
fn ssh_reaches_buildkit_through_a_real_sshd() {
    let bed = require_bed!();
    let remote_bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&bed.buildctl, remote_bin.path().join("buildctl")).unwrap();
    let sshd = Sshd::start(remote_bin.path(), &[]);
    let socket = bed
        .buildkitd
        .strip_prefix("unix://")
        .expect("the bed's buildkitd is a unix socket");
    let project = example_project();
    let out = run(fastbuild(project.path())
        .env("PATH", path_with(&sshd.client_bin))
        .args([
            "build",
            "api",
            "--no-cache",
            "--buildkit",
            &format!("ssh://root@127.0.0.1:{}{socket}", sshd.port),
        ]));
    assert_ok(&out);
}

/// A Docker context whose endpoint is `ssh://` (made by the real `docker context create`), as
/// the default: fastbuild runs `ssh … docker system dial-stdio` as the docker CLI does, through a
/// real sshd whose sessions find the bed's docker CLI and dockerd, and builds on that dockerd's
/// BuildKit through the `/grpc` upgrade carried over ssh.
#[test]
fn a_docker_context_with_an_ssh_endpoint_builds_on_the_remote_dockerd() {
    let bed = require_bed!();
    let remote_bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&bed.docker_cli, remote_bin.path().join("docker")).unwrap();
    let sshd = Sshd::start(
        remote_bin.path(),
        &[("DOCKER_HOST", bed.docker_host.clone())],
    );
    let config = tempfile::tempdir().unwrap();
    let created = std::process::Command::new(&bed.docker_cli)
        .env("DOCKER_CONFIG", config.path())
        .env_remove("DOCKER_HOST")
        .args(["context", "create", "remote", "--docker"])
        .arg(format!("host=ssh://root@127.0.0.1:{}", sshd.port))
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", stderr(&created));
    let project = example_project();
    let fb = |args: &[&str]| {
        run(fastbuild(project.path())
            .env("PATH", path_with(&sshd.client_bin))
            .env("DOCKER_CONFIG", config.path())
            .env("DOCKER_CONTEXT", "remote")
            .env_remove("DOCKER_HOST")
            .env_remove("BUILDKIT_HOST")
            .args(args))
    };
    assert_ok(&fb(&["build", "api", "--no-cache"]));
    let (name, detail) = doctor_check(&fb(&["doctor", "--json"]), "buildkit ");
    assert_eq!(
        name,
        format!("buildkit docker-ssh://root@127.0.0.1:{}", sshd.port)
    );
    assert!(
        detail.contains("Docker context `remote` (DOCKER_CONTEXT)"),
        "{detail}"
    );
}

/// Removes a buildx builder (its container and state volume) on drop.
struct BuildxBuilder {
    docker_cli: std::path::PathBuf,
    docker_host: String,
    config: std::path::PathBuf,
    name: String,
}

impl Drop for BuildxBuilder {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.docker_cli)
            .env("DOCKER_CONFIG", &self.config)
            .env("DOCKER_HOST", &self.docker_host)
            .args(["buildx", "rm", "--force", &self.name])
            .output();
    }
}

/// The `docker-container` driver for real: an image of the bed's own buildkitd and buildctl
/// (go-built from the module proxy) with Debian's runc and the libraries `ldd` names, on the
/// busybox base — no image can be pulled here, so fastbuild's native builder makes it —
/// started in the bed's dockerd by the real `docker buildx create --driver docker-container
/// --bootstrap`; fastbuild reaches it by `--builder NAME` and by
/// `docker-container://buildx_buildkit_NAME0`, through the real `docker exec -i … buildctl
/// dial-stdio`, and builds and pushes the example's BuildKit service.
#[test]
fn docker_container_builder_made_by_buildx_builds_for_real() {
    let bed = require_bed!();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let copy = |from: &Path, to: &str| {
        let dest = root.join(to.trim_start_matches('/'));
        fs_err::create_dir_all(dest.parent().unwrap()).unwrap();
        fs_err::copy(fs_err::canonicalize(from).unwrap(), &dest).unwrap();
    };
    let tools = bed.buildctl.parent().unwrap();
    copy(&tools.join("buildkitd"), "/usr/bin/buildkitd");
    copy(&tools.join("buildctl"), "/usr/bin/buildctl");
    let runc = crate::common::which("runc").expect("runc");
    copy(&runc, "/usr/sbin/runc");
    let ldd = std::process::Command::new("ldd")
        .arg(&runc)
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(p) = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'))
        {
            copy(Path::new(p), p);
        }
    }
    for d in ["var/lib/buildkit", "run", "tmp"] {
        fs_err::create_dir_all(root.join(d)).unwrap();
    }
    let image = format!("{}/testbed/buildkit", bed.registry);
    let out = run(fastbuild(work.path())
        .args([
            "build",
            "buildkit",
            "--builder",
            "native",
            "--layer",
            "root:/",
        ])
        .args(["--base", &bed.base_image, "--registry", &bed.registry])
        .args([
            "--repository",
            "testbed/buildkit",
            "--tag",
            "fastbuild-test",
        ])
        .args(["--entrypoint", "buildkitd", "--no-values"]));
    assert_ok(&out);

    let config = work.path().join("docker-config");
    fs_err::create_dir_all(config.join("cli-plugins")).unwrap();
    std::os::unix::fs::symlink(
        std::env::var("DOCKER_BUILDX").expect("DOCKER_BUILDX from the bed"),
        config.join("cli-plugins/docker-buildx"),
    )
    .unwrap();
    let name = format!("fbc{:x}", std::process::id());
    let builder = BuildxBuilder {
        docker_cli: bed.docker_cli.clone(),
        docker_host: bed.docker_host.clone(),
        config: config.clone(),
        name: name.clone(),
    };
    let created = std::process::Command::new(&bed.docker_cli)
        .env("DOCKER_CONFIG", &config)
        .env("DOCKER_HOST", &bed.docker_host)
        .args([
            "buildx",
            "create",
            "--name",
            &name,
            "--driver",
            "docker-container",
        ])
        .args([
            "--driver-opt",
            &format!("image={image}:fastbuild-test,network=host"),
        ])
        .arg("--bootstrap")
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "buildx create: {}",
        stderr(&created)
    );

    // The real docker CLI on PATH, for `docker exec`.
    let bin = work.path().join("bin");
    fs_err::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&bed.docker_cli, bin.join("docker")).unwrap();
    let project = example_project();
    for how in [
        vec!["--builder".to_owned(), name.clone()],
        vec![
            "--buildkit".to_owned(),
            format!("docker-container://buildx_buildkit_{name}0"),
        ],
    ] {
        let out = run(fastbuild(project.path())
            .env("PATH", path_with(&bin))
            .env("DOCKER_CONFIG", &config)
            .env("DOCKER_HOST", &bed.docker_host)
            .env_remove("BUILDKIT_HOST")
            .args(["build", "api", "--no-cache"])
            .args(&how));
        assert_ok(&out);
    }
    drop(builder);
}
