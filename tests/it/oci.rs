//! The native builder and publisher (`fastbuild-oci`) against the test bed's real registries:
//! digests agree with what the registry serves and with skopeo, pushes are reproducible and
//! incremental, auth and TLS work, bad input leaves no manifest behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{TestBed, repo_root, require_bed, sha256, skopeo};
use fastbuild_oci::{
    BaseImage, Compression, ConfigOverrides, Digest, Error, ImageSpec, LayerSpec, MediaTypes,
    PushResult, Reference, RegistryClient, RegistryOptions, Target, build_and_push, error_chain,
};

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it/oci-{name}-{:x}{:x}", nanos, std::process::id())
}

fn native() -> PathBuf {
    repo_root().join("testdata/native")
}

/// A client that ignores the developer's own Docker config.
fn client(empty: &Path) -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        docker_config: Some(empty.join("no-docker-config")),
        ..RegistryOptions::default()
    })
    .unwrap()
}

fn spec(base: BaseImage, app: &Path, config: &Path, compression: Compression) -> ImageSpec {
    ImageSpec {
        base,
        platforms: vec!["linux/amd64".parse().unwrap()],
        layers: vec![
            LayerSpec::new([(app.to_owned(), "/app")]),
            LayerSpec::new([(config.to_owned(), "/etc/app/")]),
        ],
        config: ConfigOverrides {
            entrypoint: Some(vec!["/app/bin/hello".into()]),
            env: vec![("GREETING".into(), "world".into())],
            exposed_ports: vec!["8080".into()],
            ..ConfigOverrides::default()
        },
        compression: Some(compression),
        labels: [(
            "org.opencontainers.image.title".to_owned(),
            "native".to_owned(),
        )]
        .into(),
        ..ImageSpec::default()
    }
}

/// [`spec`] of the `app` and `config` directories of `tree` (a copy of `testdata/native`).
fn tree_spec(base: BaseImage, tree: &Path, compression: Compression) -> ImageSpec {
    spec(base, &tree.join("app"), &tree.join("config"), compression)
}

/// `spec` pushed by `client` to `repo:tag` of the plain registry.
async fn push_tag(
    client: &RegistryClient,
    spec: &ImageSpec,
    bed: &TestBed,
    repo: &str,
    tag: &str,
) -> PushResult {
    build_and_push(spec, &Target::Registry(target(bed, repo, tag)), client)
        .await
        .unwrap()
}

fn target(bed: &TestBed, repo: &str, tag: &str) -> Reference {
    format!("{}/{repo}:{tag}", bed.registry).parse().unwrap()
}

/// Copies `src` to `dst` (symlinks as symlinks), setting every file's mtime to `mtime`, and
/// hard-links `app/etc/greeting.conf` as `app/etc/greeting.hardlink`.
fn copy_tree(src: &Path, dst: &Path, mtime: u64) {
    fs_err::create_dir_all(dst).unwrap();
    for entry in fs_err::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let ft = entry.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs_err::read_link(&from).unwrap(), &to).unwrap();
        } else if ft.is_dir() {
            copy_tree(&from, &to, mtime);
        } else {
            fs_err::copy(&from, &to).unwrap();
            let f = fs_err::File::options().append(true).open(&to).unwrap();
            f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
                .unwrap();
        }
    }
    let conf = dst.join("app/etc/greeting.conf");
    if conf.exists() {
        fs_err::hard_link(&conf, dst.join("app/etc/greeting.hardlink")).unwrap();
    }
}

/// Raw GET against the plain registry, independent of the crate's client.
async fn raw_get(bed: &TestBed, repo: &str, kind: &str, reference: &str) -> (String, Vec<u8>) {
    let url = format!("http://{}/v2/{repo}/{kind}/{reference}", bed.registry);
    let resp = reqwest::Client::new()
        .get(&url)
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (ct, resp.bytes().await.unwrap().to_vec())
}

fn skopeo_digest(image: &str) -> String {
    let image = format!("docker://{image}");
    let raw_digest = sha256(&skopeo(&["inspect", "--tls-verify=false", "--raw", &image]));
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &image,
    ]);
    let digest = String::from_utf8(out).unwrap().trim().to_owned();
    assert_eq!(digest, raw_digest);
    digest
}

async fn manifest_absent(bed: &TestBed, repo: &str, tag: &str) -> bool {
    let url = format!("http://{}/v2/{repo}/manifests/{tag}", bed.registry);
    reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
        == 404
}

#[tokio::test]
async fn native_image_pushes_and_every_digest_checks_out() {
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let repo = unique("native");
    let spec = tree_spec(
        BaseImage::Reference(bed.base_image.clone()),
        &native(),
        Compression::Gzip,
    );
    let pushed = push_tag(&client(tmp.path()), &spec, &bed, &repo, "v1").await;
    assert_eq!(
        pushed.reference,
        format!("{}/{repo}@{}", bed.registry, pushed.digest)
    );
    assert_eq!(pushed.tag, "v1");

    // The registry serves exactly the bytes we hashed, under the tag and under the digest.
    let (ct, manifest) = raw_get(&bed, &repo, "manifests", "v1").await;
    assert_eq!(ct, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(sha256(&manifest), pushed.digest.to_string());
    assert_eq!(manifest.len() as u64, pushed.size);
    let (_, by_digest) = raw_get(&bed, &repo, "manifests", &pushed.digest.to_string()).await;
    assert_eq!(by_digest, manifest);
    assert_eq!(
        skopeo_digest(&format!("{}/{repo}:v1", bed.registry)),
        pushed.digest.to_string()
    );

    // Config and layers: each blob's digest, and each layer's diff_id (gunzip by gzip(1)).
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let config_digest = m["config"]["digest"].as_str().unwrap();
    assert_eq!(
        Some(config_digest.to_owned()),
        pushed.config_digest.map(|d| d.to_string())
    );
    let (_, config) = raw_get(&bed, &repo, "blobs", config_digest).await;
    assert_eq!(sha256(&config), config_digest);
    let c: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(c["config"]["Entrypoint"][0], "/app/bin/hello");
    assert_eq!(c["created"], "1970-01-01T00:00:00Z");
    assert_eq!(c["architecture"], "amd64");
    let layers = m["layers"].as_array().unwrap();
    let diff_ids = c["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    assert!(layers.len() >= 3, "base layer(s) + 2 new layers");
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let digest = layer["digest"].as_str().unwrap();
        let (_, blob) = raw_get(&bed, &repo, "blobs", digest).await;
        assert_eq!(sha256(&blob), digest);
        assert_eq!(blob.len() as u64, layer["size"].as_u64().unwrap());
        let tar = match layer["mediaType"].as_str().unwrap() {
            t if t.ends_with("gzip") => {
                let path = tmp.path().join("layer.gz");
                fs_err::write(&path, &blob).unwrap();
                let out = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
                assert!(out.status.success());
                out.stdout
            }
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => blob.clone(),
            t => panic!("unexpected layer media type {t}"),
        };
        assert_eq!(sha256(&tar), diff_id.as_str().unwrap());
    }
    // The new app layer, as listed by tar(1).
    let app = layers[layers.len() - 2]["digest"].as_str().unwrap();
    let (_, blob) = raw_get(&bed, &repo, "blobs", app).await;
    let path = tmp.path().join("app.tgz");
    fs_err::write(&path, &blob).unwrap();
    let out = Command::new("tar")
        .args(["-tvzf"])
        .arg(&path)
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains("-rwxr-xr-x 0/0") && listing.contains("app/bin/hello"),
        "{listing}"
    );
    assert!(
        listing.contains("app/bin/greeting.conf -> ../etc/greeting.conf"),
        "{listing}"
    );
    assert!(listing.contains("1970-01-01"), "{listing}");
}

#[tokio::test]
async fn same_inputs_with_other_mtimes_give_the_same_digest_and_upload_nothing() {
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    copy_tree(&native(), &a, 1_000);
    copy_tree(&native(), &b, 2_000_000_000);
    let client = client(tmp.path());
    let repo = unique("repro");
    let base = BaseImage::Reference(bed.base_image.clone());
    let spec_a = tree_spec(base.clone(), &a, Compression::None);
    let spec_b = tree_spec(base, &b, Compression::None);

    let first = push_tag(&client, &spec_a, &bed, &repo, "a").await;
    // New repository: base layers are mounted from base/busybox, ours uploaded.
    assert!(first.stats.blobs_mounted >= 1, "{:?}", first.stats);
    assert_eq!(first.stats.blobs_uploaded, 3, "{:?}", first.stats);
    assert!(first.stats.bytes_uploaded > 0);

    let second = push_tag(&client, &spec_b, &bed, &repo, "b").await;
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.stats.blobs_uploaded, 0, "{:?}", second.stats);
    assert_eq!(second.stats.bytes_uploaded, 0);
    assert_eq!(
        second.stats.blobs_skipped,
        first.stats.blobs_mounted + first.stats.blobs_uploaded + first.stats.blobs_skipped
    );

    // An OCI layout from the same inputs has the same digest, and is a valid layout.
    let layout = tmp.path().join("layout");
    let local = build_and_push(&spec_b, &Target::Layout(layout.clone()), &client)
        .await
        .unwrap();
    assert_eq!(local.digest, first.digest);
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], first.digest.to_string());
    let manifest = fs_err::read(layout.join("blobs/sha256").join(first.digest.hex())).unwrap();
    assert_eq!(sha256(&manifest), first.digest.to_string());
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    for layer in m["layers"].as_array().unwrap() {
        let d: Digest = layer["digest"].as_str().unwrap().parse().unwrap();
        let blob = fs_err::read(layout.join("blobs/sha256").join(d.hex())).unwrap();
        assert_eq!(sha256(&blob), d.to_string());
    }
    let layout = format!("oci:{}", layout.display());
    let out = skopeo(&["inspect", "--format", "{{.Digest}}", &layout]);
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        first.digest.to_string()
    );
}

#[tokio::test]
async fn one_changed_file_uploads_only_its_layer_and_the_config() {
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_tree(&native(), &src, 0);
    let client = client(tmp.path());
    let repo = unique("incremental");
    let spec = tree_spec(
        BaseImage::Reference(bed.base_image.clone()),
        &src,
        Compression::Gzip,
    );
    let t = Target::Registry(target(&bed, &repo, "dev"));
    let first = build_and_push(&spec, &t, &client).await.unwrap();
    fs_err::write(
        src.join("config/settings.yaml"),
        "log_level: debug\nport: 8080\n",
    )
    .unwrap();
    let second = build_and_push(&spec, &t, &client).await.unwrap();
    assert_ne!(second.digest, first.digest);
    assert_eq!(second.stats.blobs_uploaded, 2, "{:?}", second.stats);
    let (_, manifest) = raw_get(&bed, &repo, "manifests", "dev").await;
    assert_eq!(sha256(&manifest), second.digest.to_string());
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let n = m["layers"].as_array().unwrap().len();
    let expected =
        m["layers"][n - 1]["size"].as_u64().unwrap() + m["config"]["size"].as_u64().unwrap();
    assert_eq!(second.stats.bytes_uploaded, expected);
}

#[tokio::test]
async fn multi_platform_scratch_image_is_an_index_and_docker_types_on_request() {
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let repo = unique("multi");
    let mut s = tree_spec(
        BaseImage::Scratch,
        &native(),
        Compression::Zstd { level: 3 },
    );
    s.platforms = vec![
        "linux/amd64".parse().unwrap(),
        "linux/arm64".parse().unwrap(),
    ];
    let pushed = push_tag(&client, &s, &bed, &repo, "multi").await;
    assert_eq!(pushed.media_type, "application/vnd.oci.image.index.v1+json");
    assert_eq!(pushed.config_digest, None);
    let (ct, index) = raw_get(&bed, &repo, "manifests", "multi").await;
    assert_eq!(ct, pushed.media_type);
    assert_eq!(sha256(&index), pushed.digest.to_string());
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    for m in index["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let (_, bytes) = raw_get(&bed, &repo, "manifests", d).await;
        assert_eq!(sha256(&bytes), d);
    }

    s.platforms.truncate(1);
    s.media_types = MediaTypes::Docker;
    s.compression = Some(Compression::Gzip);
    let pushed = push_tag(&client, &s, &bed, &repo, "docker").await;
    let (ct, manifest) = raw_get(&bed, &repo, "manifests", "docker").await;
    assert_eq!(ct, "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(sha256(&manifest), pushed.digest.to_string());
    assert_eq!(
        skopeo_digest(&format!("{}/{repo}:docker", bed.registry)),
        pushed.digest.to_string()
    );
    // Without a tag, the default tag is content-derived.
    let untagged: Reference = format!("{}/{repo}", bed.registry).parse().unwrap();
    let p = build_and_push(&s, &Target::Registry(untagged), &client)
        .await
        .unwrap();
    assert_eq!(p.tag, format!("fb-{}", &p.digest.hex()[..12]));
    let (_, again) = raw_get(&bed, &repo, "manifests", &p.tag).await;
    assert_eq!(sha256(&again), p.digest.to_string());
}

fn tls_options(bed: &TestBed, config_dir: &Path) -> RegistryOptions {
    RegistryOptions {
        ca_files: vec![bed.registry_tls_ca.clone()],
        docker_config: Some(config_dir.to_owned()),
        ..RegistryOptions::default()
    }
}

fn scratch_app() -> ImageSpec {
    let mut s = tree_spec(BaseImage::Scratch, &native(), Compression::Gzip);
    s.layers.truncate(1);
    s
}

#[tokio::test]
async fn tls_registry_with_docker_config_and_credential_helper() {
    use base64::Engine as _;
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let repo = unique("tls");
    let t: Reference = format!("{}/{repo}:v1", bed.registry_tls).parse().unwrap();

    // auths entry with base64 user:password.
    let cfg = tmp.path().join("cfg");
    fs_err::create_dir_all(&cfg).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        bed.registry_tls_user, bed.registry_tls_password
    ));
    fs_err::write(
        cfg.join("config.json"),
        format!(
            r#"{{"auths":{{"https://{}":{{"auth":"{auth}"}}}}}}"#,
            bed.registry_tls
        ),
    )
    .unwrap();
    let client = RegistryClient::new(tls_options(&bed, &cfg)).unwrap();
    let pushed = build_and_push(&scratch_app(), &Target::Registry(t.clone()), &client)
        .await
        .unwrap();
    let served = client.get_manifest(&t).await.unwrap();
    assert_eq!(served.digest, pushed.digest);
    assert!(!format!("{client:?}").contains(&bed.registry_tls_password));

    // A base image on the other (plain) registry: its layers are downloaded and uploaded.
    let mut with_base = scratch_app();
    with_base.base = BaseImage::Reference(bed.base_image.clone());
    let t_base: Reference = format!("{}/{}:v1", bed.registry_tls, unique("tls-base"))
        .parse()
        .unwrap();
    let cross = build_and_push(&with_base, &Target::Registry(t_base.clone()), &client)
        .await
        .unwrap();
    assert_eq!(cross.stats.blobs_mounted, 0);
    assert!(cross.stats.blobs_uploaded >= 3, "{:?}", cross.stats);
    let served = client.get_manifest(&t_base).await.unwrap();
    assert_eq!(served.digest, cross.digest);
    let m: serde_json::Value = serde_json::from_slice(&served.bytes).unwrap();
    for layer in m["layers"].as_array().unwrap() {
        let d: Digest = layer["digest"].as_str().unwrap().parse().unwrap();
        let blob = client.get_blob(&t_base, &d).await.unwrap();
        assert_eq!(blob.len() as u64, layer["size"].as_u64().unwrap());
    }

    // credHelpers entry: docker-credential-fbtest on the helper PATH.
    let bin = tmp.path().join("bin");
    fs_err::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-fbtest");
    fs_err::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = '{}' ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{}\",\"Secret\":\"{}\"}}' \"$server\"\n",
            bed.registry_tls, bed.registry_tls_user, bed.registry_tls_password
        ),
    )
    .unwrap();
    fs_err::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg2 = tmp.path().join("cfg2");
    fs_err::create_dir_all(&cfg2).unwrap();
    fs_err::write(
        cfg2.join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"fbtest"}}}}"#, bed.registry_tls),
    )
    .unwrap();
    let mut opts = tls_options(&bed, &cfg2);
    opts.credential_helper_path = Some(
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
        .into(),
    );
    let helper_client = RegistryClient::new(opts).unwrap();
    let again = build_and_push(&scratch_app(), &Target::Registry(t.clone()), &helper_client)
        .await
        .unwrap();
    assert_eq!(again.digest, pushed.digest);
    assert_eq!(again.stats.blobs_uploaded, 0);

    // No credentials: refused with a message saying what to do.
    let anon = RegistryClient::new(tls_options(&bed, &tmp.path().join("none"))).unwrap();
    let t2: Reference = format!("{}/{}:v1", bed.registry_tls, unique("tls-anon"))
        .parse()
        .unwrap();
    let err = build_and_push(&scratch_app(), &Target::Registry(t2), &anon)
        .await
        .unwrap_err();
    let msg = error_chain(&err);
    assert!(matches!(err, Error::Unauthorized { .. }), "{msg}");
    assert!(
        msg.contains("none are configured") && msg.contains("docker login"),
        "{msg}"
    );

    // No CA: the certificate is not trusted, and the error says how to fix it.
    let mut no_ca = tls_options(&bed, &cfg);
    no_ca.ca_files.clear();
    let err = build_and_push(
        &scratch_app(),
        &Target::Registry(t),
        &RegistryClient::new(no_ca).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::TlsUntrusted { .. }),
        "{}",
        error_chain(&err)
    );
    assert!(err.to_string().contains("--registry-ca"), "{err}");
}

#[tokio::test]
async fn bad_input_is_a_clear_error_and_pushes_no_manifest() {
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let repo = unique("bad");
    let t = Target::Registry(target(&bed, &repo, "v1"));
    let base = BaseImage::Reference(bed.base_image.clone());

    let missing = tmp.path().join("missing");
    let s = spec(
        base.clone(),
        &missing,
        &native().join("config"),
        Compression::None,
    );
    let err = build_and_push(&s, &t, &client).await.unwrap_err();
    assert!(
        matches!(err, Error::SourceMissing { .. }),
        "{}",
        error_chain(&err)
    );
    assert!(err.to_string().contains(&missing.display().to_string()));

    let src = tmp.path().join("escape");
    copy_tree(&native(), &src, 0);
    std::os::unix::fs::symlink("../../../etc/passwd", src.join("app/bin/passwd")).unwrap();
    let s = tree_spec(base.clone(), &src, Compression::None);
    let err = build_and_push(&s, &t, &client).await.unwrap_err();
    assert!(
        matches!(err, Error::SymlinkEscape { .. }),
        "{}",
        error_chain(&err)
    );
    let msg = err.to_string();
    assert!(
        msg.contains("app/bin/passwd") && msg.contains("../../../etc/passwd"),
        "{msg}"
    );

    let nowhere = format!("{}/base/does-not-exist:latest", bed.registry);
    let s = tree_spec(
        BaseImage::Reference(nowhere.clone()),
        &native(),
        Compression::None,
    );
    let err = build_and_push(&s, &t, &client).await.unwrap_err();
    assert!(
        matches!(err, Error::BaseNotFound { .. }),
        "{}",
        error_chain(&err)
    );
    assert!(err.to_string().contains(&nowhere));

    let mut s = tree_spec(base, &native(), Compression::None);
    s.platforms = vec!["linux/s390x".parse().unwrap()];
    let err = build_and_push(&s, &t, &client).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PlatformNotFound { .. }), "{msg}");
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/amd64"),
        "{msg}"
    );

    assert!(manifest_absent(&bed, &repo, "v1").await);
}

#[tokio::test]
async fn chunked_upload_and_default_compression_against_the_real_registry() {
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    fs_err::create_dir_all(&src).unwrap();
    // ~1 MiB of poorly compressible bytes: several 64 KiB PATCH chunks.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let bytes: Vec<u8> = (0..1_048_576)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs_err::write(src.join("blob.bin"), &bytes).unwrap();
    let client = RegistryClient::new(RegistryOptions {
        docker_config: Some(tmp.path().join("none")),
        chunk_size: 64 * 1024,
        ..RegistryOptions::default()
    })
    .unwrap();
    let repo = unique("chunked");
    let s = ImageSpec {
        layers: vec![LayerSpec::new([(src, "/data")])],
        compression: None,
        ..ImageSpec::default()
    };
    let pushed = build_and_push(&s, &Target::Registry(target(&bed, &repo, "c")), &client)
        .await
        .unwrap();
    let (_, manifest) = raw_get(&bed, &repo, "manifests", "c").await;
    assert_eq!(sha256(&manifest), pushed.digest.to_string());
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    // Loopback registry: zstd level 1 by default.
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let digest = m["layers"][0]["digest"].as_str().unwrap();
    let (_, blob) = raw_get(&bed, &repo, "blobs", digest).await;
    assert_eq!(sha256(&blob), digest);
    assert!(blob.len() > 1_000_000, "{}", blob.len());
    assert_eq!(
        pushed.stats.bytes_uploaded,
        blob.len() as u64 + m["config"]["size"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn tagging_an_existing_manifest_keeps_its_digest() {
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let client = client(tmp.path());
    let repo = unique("retag");
    let pushed = build_and_push(
        &scratch_app(),
        &Target::Registry(target(&bed, &repo, "first")),
        &client,
    )
    .await
    .unwrap();
    let by_digest: Reference = pushed.reference.parse().unwrap();
    let digest = client
        .tag_manifest(&by_digest, &target(&bed, &repo, "second"))
        .await
        .unwrap();
    assert_eq!(digest, pushed.digest);
    let (_, manifest) = raw_get(&bed, &repo, "manifests", "second").await;
    assert_eq!(sha256(&manifest), pushed.digest.to_string());
}

/// The native publisher against the bed's token-auth registry (distribution's Bearer
/// challenges, the bed's token server): anonymous tokens grant nothing, so the push is refused
/// naming the registry; with an `auths` entry the token comes by GET with Basic credentials,
/// with an `identitytoken` by the OAuth2 refresh-token POST; the pushed manifest is served.
#[tokio::test]
async fn token_registry_push_with_basic_credentials_and_identity_token() {
    use base64::Engine as _;
    let bed = require_bed!();
    let tmp = tempfile::tempdir().unwrap();
    let options = |cfg: &Path| RegistryOptions {
        docker_config: Some(cfg.to_owned()),
        ..RegistryOptions::default()
    };
    let target = |name: &str| -> Reference {
        format!("{}/{}:v1", bed.registry_token, unique(name))
            .parse()
            .unwrap()
    };
    let anonymous = RegistryClient::new(options(&tmp.path().join("none"))).unwrap();
    let t = target("token-anon");
    let err = build_and_push(&scratch_app(), &Target::Registry(t.clone()), &anonymous)
        .await
        .unwrap_err();
    assert!(
        error_chain(&err).contains(&bed.registry_token),
        "the refusal names the registry: {}",
        error_chain(&err)
    );

    for (name, entry, via) in [
        (
            "token-basic",
            format!(
                r#"{{"auth":"{}"}}"#,
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    bed.registry_token_user, bed.registry_token_password
                ))
            ),
            "get-basic",
        ),
        (
            "token-identity",
            format!(r#"{{"identitytoken":"{}"}}"#, bed.registry_token_password),
            "post-refresh-token",
        ),
    ] {
        let cfg = tmp.path().join(name);
        fs_err::create_dir_all(&cfg).unwrap();
        fs_err::write(
            cfg.join("config.json"),
            format!(r#"{{"auths":{{"{}":{entry}}}}}"#, bed.registry_token),
        )
        .unwrap();
        let client = RegistryClient::new(options(&cfg)).unwrap();
        let t = target(name);
        let pushed = build_and_push(&scratch_app(), &Target::Registry(t.clone()), &client)
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", error_chain(&e)));
        assert_eq!(client.get_manifest(&t).await.unwrap().digest, pushed.digest);
        let entries = crate::common::token_requests(&bed, &t.repository);
        assert!(
            entries
                .iter()
                .any(|e| e["via"] == via && e["status"] == 200 && e["account"] == "fastbuild"),
            "{name}: expected a token by {via}: {entries:#?}"
        );
    }
}
