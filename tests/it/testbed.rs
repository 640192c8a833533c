//! First proofs that the test bed is what the other tests take it for: a plain registry, a TLS
//! registry that enforces its htpasswd user and its own CA, the base image, dockerd's API socket
//! with the `/grpc` upgrade `BuildKit` clients use, the standalone buildkitd (unix socket, tcp
//! with mutual TLS) with the pinned upstream `buildctl` and `crane`, and helm v4 rendering the
//! digest-first chart.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{StatusCode, Url};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{TestBed, helm_template_image, require_bed, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A client that trusts only the bed's CA (verification on, no built-in roots).
fn tls_client(bed: &TestBed) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&bed.registry_tls_ca_pem()).expect("parse the bed CA");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .expect("build the TLS client")
}

#[tokio::test]
async fn registry_answers_v2_with_distribution_api_version() {
    let bed = require_bed!();
    let resp = reqwest::get(format!("http://{}/v2/", bed.registry))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let version = resp
        .headers()
        .get("docker-distribution-api-version")
        .expect("Docker-Distribution-API-Version header")
        .to_str()
        .unwrap();
    assert_eq!(version, "registry/2.0");
}

#[tokio::test]
async fn tls_registry_refuses_anonymous_push_and_accepts_its_user() {
    let bed = require_bed!();
    let client = tls_client(&bed);
    let base = Url::parse(&format!("https://{}/", bed.registry_tls)).unwrap();
    let uploads = base.join("v2/fastbuild-it/testbed/blobs/uploads/").unwrap();

    let anonymous = client.post(uploads.clone()).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous
        .headers()
        .get("www-authenticate")
        .expect("WWW-Authenticate");
    assert!(
        challenge.to_str().unwrap().starts_with("Basic "),
        "challenge: {challenge:?}"
    );

    let wrong = client
        .post(uploads.clone())
        .basic_auth(&bed.registry_tls_user, Some("not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // A real push of a unique blob: start the upload, finish it monolithically, read it back.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let blob = format!("fastbuild test bed proof {nanos} {}", std::process::id()).into_bytes();
    let digest = sha256(&blob);
    let started = client
        .post(uploads)
        .basic_auth(&bed.registry_tls_user, Some(&bed.registry_tls_password))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let location = started
        .headers()
        .get("location")
        .expect("Location")
        .to_str()
        .unwrap();
    let mut put = base.join(location).unwrap();
    put.query_pairs_mut().append_pair("digest", &digest);
    let finished = client
        .put(put)
        .basic_auth(&bed.registry_tls_user, Some(&bed.registry_tls_password))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(finished.status(), StatusCode::CREATED);
    assert_eq!(
        finished
            .headers()
            .get("docker-content-digest")
            .unwrap()
            .to_str()
            .unwrap(),
        digest
    );

    let blob_url = base
        .join(&format!("v2/fastbuild-it/testbed/blobs/{digest}"))
        .unwrap();
    let anonymous_get = client.get(blob_url.clone()).send().await.unwrap();
    assert_eq!(anonymous_get.status(), StatusCode::UNAUTHORIZED);
    let got = client
        .get(blob_url)
        .basic_auth(&bed.registry_tls_user, Some(&bed.registry_tls_password))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), blob.as_slice());
}

#[tokio::test]
async fn tls_registry_is_not_trusted_without_the_bed_ca() {
    let bed = require_bed!();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(true)
        .build()
        .unwrap();
    let err = client
        .get(format!("https://{}/v2/", bed.registry_tls))
        .send()
        .await
        .expect_err("the bed's self-made CA must not be trusted by default");
    assert!(
        err.is_connect(),
        "expected a TLS/connect error, got {err:?}"
    );
    // The same request with the CA gets through TLS (and is then refused for lack of auth).
    let resp = tls_client(&bed)
        .get(format!("https://{}/v2/", bed.registry_tls))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn base_image_is_a_linux_amd64_manifest_in_the_registry() {
    let bed = require_bed!();
    let (repo_at_host, tag) = bed
        .base_image
        .rsplit_once(':')
        .expect("base image has a tag");
    let (host, repo) = repo_at_host.split_once('/').expect("base image has a host");
    assert_eq!(host, bed.registry);
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served_digest = resp
        .headers()
        .get("docker-content-digest")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha256(&body), served_digest);
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = client
        .get(format!("http://{host}/v2/{repo}/blobs/{config_digest}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&config), config_digest);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
}

/// Sends `request` on a fresh connection to the Docker API socket; returns the response head
/// (and whatever body bytes arrived with it when `to_end`).
async fn docker_socket_exchange(bed: &TestBed, request: &str, to_end: bool) -> String {
    let mut stream = tokio::net::UnixStream::connect(bed.docker_socket())
        .await
        .expect("connect to the Docker API socket");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    if to_end {
        stream.read_to_end(&mut buf).await.unwrap();
    } else {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed before the end of the response head"
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn dockerd_pings_and_upgrades_grpc_to_h2c() {
    let bed = require_bed!();
    assert!(
        bed.buildkit_host.starts_with("docker-unix://"),
        "{}",
        bed.buildkit_host
    );
    assert_eq!(
        bed.buildkit_host.trim_start_matches("docker-unix://"),
        bed.docker_socket().to_str().unwrap()
    );
    let ping = docker_socket_exchange(
        &bed,
        "GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
        true,
    )
    .await;
    assert!(ping.starts_with("HTTP/1.1 200"), "{ping}");
    assert!(ping.ends_with("\r\n\r\nOK"), "{ping}");
    let version = docker_socket_exchange(
        &bed,
        "GET /version HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
        true,
    )
    .await;
    assert!(version.contains("\"Version\":\"26.1."), "{version}");

    let upgrade = docker_socket_exchange(
        &bed,
        "POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        false,
    )
    .await;
    assert!(
        upgrade.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{upgrade}"
    );
    assert!(
        upgrade.to_ascii_lowercase().contains("upgrade: h2c"),
        "{upgrade}"
    );
}

/// Runs a reference tool of the bed and returns its stdout; fails with its output otherwise.
fn tool_output(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn reference_tools_are_the_pinned_upstream_versions() {
    let bed = require_bed!();
    let buildctl = tool_output(std::process::Command::new(&bed.buildctl).arg("--version"));
    assert!(
        buildctl.contains(" v0.32.2"),
        "buildctl --version: {buildctl}"
    );
    let crane = tool_output(std::process::Command::new(&bed.crane).arg("version"));
    assert_eq!(crane.trim(), "v0.22.1");
}

#[test]
fn standalone_buildkitd_has_an_oci_worker_on_its_unix_socket() {
    let bed = require_bed!();
    assert!(bed.buildkitd.starts_with("unix://"), "{}", bed.buildkitd);
    let workers = tool_output(
        std::process::Command::new(&bed.buildctl)
            .args(["--addr", &bed.buildkitd, "debug", "workers", "--format"])
            .arg("{{range .}}{{.Labels}}{{end}}"),
    );
    assert!(
        workers.contains("org.mobyproject.buildkit.worker.executor:oci")
            && workers.contains("org.mobyproject.buildkit.worker.snapshotter:overlayfs"),
        "{workers}"
    );
}

#[test]
fn standalone_buildkitd_tcp_listener_requires_a_client_certificate() {
    let bed = require_bed!();
    let [ca, cert, key] = &bed.buildkitd_tls;
    let with_cert = tool_output(
        std::process::Command::new(&bed.buildctl)
            .args(["--addr", &bed.buildkitd_tcp, "--tlsservername", "localhost"])
            .arg("--tlscacert")
            .arg(ca)
            .arg("--tlscert")
            .arg(cert)
            .arg("--tlskey")
            .arg(key)
            .args(["debug", "workers"]),
    );
    assert!(with_cert.contains("linux/amd64"), "{with_cert}");
    let without = std::process::Command::new(&bed.buildctl)
        .args(["--addr", &bed.buildkitd_tcp, "--tlsservername", "localhost"])
        .arg("--tlscacert")
        .arg(ca)
        .args(["--timeout", "5", "debug", "workers"])
        .output()
        .unwrap();
    assert!(
        !without.status.success(),
        "accepted without a client certificate: {without:?}"
    );
}

#[test]
fn helm_version_is_v4() {
    let bed = require_bed!();
    let home = tempfile::tempdir().unwrap();
    let out = bed
        .helm(home.path())
        .args(["version", "--short"])
        .output()
        .unwrap();
    assert!(out.status.success(), "helm version: {out:?}");
    let version = String::from_utf8(out.stdout).unwrap();
    assert!(
        version.starts_with("v4."),
        "helm version --short: {version}"
    );
}

/// The `image:` line `helm template` renders for the app chart with `sets`.
fn rendered_image(bed: &TestBed, sets: &[&str]) -> String {
    let args: Vec<&str> = sets.iter().flat_map(|set| ["--set", set]).collect();
    helm_template_image(bed, &args)
}

#[test]
fn helm_template_renders_digest_first() {
    let bed = require_bed!();
    let repo = format!("{}/fastbuild-it/app", bed.registry);
    let digest = sha256(b"fastbuild digest-first chart");
    let graph = format!("image.graph={repo}");
    let digest_set = format!("image.digest={digest}");

    // Digest wins over a tag.
    assert_eq!(
        rendered_image(&bed, &[&graph, &digest_set, "image.tag=v1"]),
        format!("\"{repo}@{digest}\"")
    );
    // Tag without digest.
    assert_eq!(
        rendered_image(&bed, &[&graph, "image.tag=v1"]),
        format!("\"{repo}:v1\"")
    );
    // Neither: the bare repository.
    assert_eq!(rendered_image(&bed, &[&graph]), format!("\"{repo}\""));
}
