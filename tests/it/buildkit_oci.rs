//! `fastbuild build --builder buildkit --output oci:DIR`: BuildKit's `oci` exporter streams the
//! image back over the session (`FileSend`) and fastbuild unpacks it into an OCI image layout.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{Daemon, TestBed, on_both_daemons, require_bed, sha256, skopeo};
use crate::common::{assert_ok, fastbuild, run};

/// A context with a Dockerfile that copies `hello.txt` onto the bed's base image.
fn context(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(
        dir.path().join("Dockerfile"),
        "ARG BASE\nFROM $BASE\nCOPY hello.txt /hello.txt\n",
    )
    .unwrap();
    fs_err::write(dir.path().join("hello.txt"), text).unwrap();
    dir
}

fn build_to_layout(bed: &TestBed, daemon: Daemon, context: &Path, layout: &Path) -> Command {
    let mut cmd = fastbuild(context);
    cmd.env("BUILDKIT_HOST", bed.buildkit(daemon))
        .args([
            "build",
            "--builder",
            "buildkit",
            "--context",
            ".",
            "--repository",
            "app",
            "--build-arg",
            &format!("BASE={}", bed.base_image),
            "--no-values",
            "--progress",
            "plain",
            "--output",
        ])
        .arg(format!("oci:{}", layout.display()));
    cmd
}

/// The digest in the `app  oci:DIR@sha256:…` result line.
fn printed_digest(out: &Output, layout: &Path) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("oci:{}@", layout.display());
    let line = stdout
        .lines()
        .find(|l| l.starts_with("app") && l.contains(&prefix))
        .unwrap_or_else(|| panic!("no result line for `{prefix}` in:\n{stdout}"));
    let digest = line.split_once(&prefix).unwrap().1.trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{line}"
    );
    digest
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs_err::read(path).unwrap()).unwrap()
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(algorithm).join(hex)
}

/// Checks the layout entry, blob and content of the image `digest` and returns its ref name.
fn check_image(layout: &Path, digest: &str, hello: &str) -> String {
    let index = read_json(&layout.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == digest)
        .unwrap_or_else(|| panic!("`{digest}` is not in index.json: {index}"));
    assert_eq!(
        entry["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{entry}"
    );
    let manifest_bytes = fs_err::read(blob_path(layout, digest)).unwrap();
    assert_eq!(entry["size"], manifest_bytes.len());
    let actual = sha256(&manifest_bytes);
    assert_eq!(
        actual, digest,
        "the manifest blob does not hash to its name"
    );

    // Every blob the manifest names is there with the right bytes.
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    for d in std::iter::once(&manifest["config"]).chain(layers) {
        let d_digest = d["digest"].as_str().unwrap();
        let bytes = fs_err::read(blob_path(layout, d_digest)).unwrap();
        assert_eq!(sha256(&bytes), d_digest);
        assert_eq!(d["size"], bytes.len());
    }

    // The last layer is the COPY: it holds hello.txt with the context's content.
    let last = layers.last().unwrap();
    assert_eq!(
        last["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(blob_path(layout, last["digest"].as_str().unwrap()))
        .arg("hello.txt")
        .output()
        .expect("run tar");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), hello);

    entry["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_else(|| panic!("no ref name: {entry}"))
        .to_owned()
}

/// `skopeo inspect oci:DIR[:REF]` and the digest it reports.
fn skopeo_digest(layout: &Path, reference: Option<&str>) -> String {
    let target = match reference {
        Some(r) => format!("oci:{}:{r}", layout.display()),
        None => format!("oci:{}", layout.display()),
    };
    let json: serde_json::Value = serde_json::from_slice(&skopeo(&["inspect", &target])).unwrap();
    json["Digest"].as_str().unwrap().to_owned()
}

async fn buildkit_output_oci_writes_a_layout_with_the_reported_digest(
    bed: TestBed,
    daemon: Daemon,
) {
    let ctx = context("first\n");
    let out_dir = tempfile::tempdir().unwrap();
    let layout = out_dir.path().join("layout");

    let out = run(&mut build_to_layout(&bed, daemon, ctx.path(), &layout));
    assert_ok(&out);
    let first = printed_digest(&out, &layout);
    assert_eq!(
        fs_err::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let name = check_image(&layout, &first, "first\n");
    assert_eq!(name, format!("fb-{}", &first["sha256:".len()..][..12]));
    assert_eq!(
        read_json(&layout.join("index.json"))["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(skopeo_digest(&layout, None), first);

    // A second image goes into the same layout next to the first.
    fs_err::write(ctx.path().join("hello.txt"), "second\n").unwrap();
    let out = run(&mut build_to_layout(&bed, daemon, ctx.path(), &layout));
    assert_ok(&out);
    let second = printed_digest(&out, &layout);
    assert_ne!(first, second);
    let second_name = check_image(&layout, &second, "second\n");
    check_image(&layout, &first, "first\n");
    assert_eq!(
        read_json(&layout.join("index.json"))["manifests"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(skopeo_digest(&layout, Some(&second_name)), second);
    assert_eq!(skopeo_digest(&layout, Some(&name)), first);
    // Nothing but the layout (no temp files left behind).
    let mut top: Vec<String> = fs_err::read_dir(&layout)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["blobs", "index.json", "oci-layout"]);
    for e in fs_err::read_dir(layout.join("blobs/sha256")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "leftover `{name}`");
    }
}

on_both_daemons!(buildkit_output_oci_writes_a_layout_with_the_reported_digest);

#[test]
fn buildkit_output_oci_into_a_file_fails_naming_the_layout() {
    let bed = require_bed!();
    let daemon = Daemon::Dockerd;
    let ctx = context("x\n");
    let out_dir = tempfile::tempdir().unwrap();
    let layout = out_dir.path().join("not-a-dir");
    fs_err::write(&layout, "occupied").unwrap();

    let out = run(&mut build_to_layout(&bed, daemon, ctx.path(), &layout));
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write the OCI image layout")
            && stderr.contains(&layout.display().to_string()),
        "{stderr}"
    );
    assert_eq!(fs_err::read_to_string(&layout).unwrap(), "occupied");
}
