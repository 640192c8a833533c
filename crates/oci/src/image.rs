//! Image assembly: base image (or scratch) + built layers + config overrides → config, manifest
//! and (multi-platform) index, serialized deterministically.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::image::{
    Arch, Config, Descriptor, DescriptorBuilder, History, HistoryBuilder, ImageConfiguration,
    ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, Os,
};
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{Compression, Layer, LayerSpec};

/// OCI media types.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker schema2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
}

/// A platform: `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8`, `v7`.
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<this machine's architecture>`.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Whether an image for `other` satisfies a request for `self` (arm64 `v8` = no variant).
    pub fn matches(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            _ => p.variant.clone(),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || norm(self) == norm(other))
    }

    fn to_oci(&self) -> oci_spec::image::Platform {
        let mut p = oci_spec::image::Platform::default();
        p.set_os(Os::from(self.os.as_str()));
        p.set_architecture(Arch::from(self.architecture.as_str()));
        p.set_variant(self.variant.clone());
        p
    }

    fn from_oci(p: &oci_spec::image::Platform) -> Self {
        Self {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*v).to_owned()),
            }),
            _ => Err(Error::InvalidPlatform {
                value: s.to_owned(),
            }),
        }
    }
}

/// What the image starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BaseImage {
    /// An empty filesystem.
    #[default]
    Scratch,
    /// An image reference (`registry/repo:tag` or `@sha256:`); an index is resolved per platform.
    Reference(String),
}

/// Which manifest media types to produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MediaTypes {
    /// OCI image manifest / index / config.
    #[default]
    Oci,
    /// Docker schema2 manifest / manifest list / container config.
    Docker,
}

impl MediaTypes {
    /// The single-image manifest media type.
    pub fn manifest(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_MANIFEST,
            Self::Docker => media::DOCKER_MANIFEST,
        }
    }

    /// The multi-platform index media type.
    pub fn index(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_INDEX,
            Self::Docker => media::DOCKER_LIST,
        }
    }

    /// The config media type.
    pub fn config(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_CONFIG,
            Self::Docker => media::DOCKER_CONFIG,
        }
    }

    /// The media type of a layer compressed with `c`.
    pub fn layer(self, c: Compression) -> &'static str {
        match self {
            Self::Oci => c.oci_media_type(),
            Self::Docker => c.docker_media_type(),
        }
    }

    /// A base layer's media type translated to this style (same bytes, same digest).
    fn translate_layer(self, mt: &str) -> String {
        let pairs = [
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar",
                "application/vnd.oci.image.layer.v1.tar",
            ),
        ];
        for (docker, oci) in pairs {
            match self {
                Self::Oci if mt == docker => return oci.to_owned(),
                Self::Docker if mt == oci => return docker.to_owned(),
                _ => {}
            }
        }
        mt.to_owned()
    }
}

/// Changes applied to the base image's runtime config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigOverrides {
    /// `ENTRYPOINT`; setting it without `cmd` clears the base `CMD` (as a Dockerfile does).
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    pub cmd: Option<Vec<String>>,
    /// `ENV` entries, replacing base entries with the same name.
    pub env: Vec<(String, String)>,
    /// `WORKDIR`.
    pub workdir: Option<String>,
    /// `USER`.
    pub user: Option<String>,
    /// `EXPOSE` entries (`8080/tcp`, `53/udp`; a bare number means tcp).
    pub exposed_ports: Vec<String>,
}

/// Everything that defines an image built by [`crate::build_and_push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Base image.
    pub base: BaseImage,
    /// Platforms to produce; empty = the host platform. More than one gives an index.
    pub platforms: Vec<Platform>,
    /// Layers appended to the base, in order.
    pub layers: Vec<LayerSpec>,
    /// Runtime config changes.
    pub config: ConfigOverrides,
    /// OCI or Docker media types.
    pub media_types: MediaTypes,
    /// Layer compression; `None` = [`Compression::default_for_registry`] for a registry target,
    /// uncompressed for an OCI layout (set it explicitly to compare digests across targets).
    pub compression: Option<Compression>,
    /// Timestamp of every file, of `created` and of history entries (seconds since the epoch).
    pub source_date_epoch: i64,
    /// Labels added to (or replacing those of) the base config.
    pub labels: BTreeMap<String, String>,
    /// Where layer blobs and downloaded base blobs are kept; `None` = a temp dir per build.
    pub cache_dir: Option<PathBuf>,
    /// A persistent layer cache shared across builds (see [`crate::layer_cache`]): a layer whose
    /// sources' metadata is unchanged is taken from it instead of being rebuilt. `None` =
    /// every layer is built.
    pub layer_cache: Option<PathBuf>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self {
            base: BaseImage::Scratch,
            platforms: Vec::new(),
            layers: Vec::new(),
            config: ConfigOverrides::default(),
            media_types: MediaTypes::Oci,
            compression: None,
            source_date_epoch: 0,
            labels: BTreeMap::new(),
            cache_dir: None,
            layer_cache: None,
        }
    }
}

impl ImageSpec {
    /// `source_date_epoch` from the `SOURCE_DATE_EPOCH` environment variable (0 when unset).
    pub fn source_date_epoch_from_env() -> Result<i64> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Err(_) => Ok(0),
            Ok(v) if v.trim().is_empty() => Ok(0),
            Ok(v) => v.trim().parse().map_err(|_| Error::InvalidSpec {
                reason: format!("SOURCE_DATE_EPOCH=`{v}` is not a whole number of seconds"),
            }),
        }
    }

    pub(crate) fn effective_platforms(&self) -> Vec<Platform> {
        if self.platforms.is_empty() {
            vec![Platform::host()]
        } else {
            let mut p = self.platforms.clone();
            p.dedup();
            p
        }
    }
}

/// RFC 3339 UTC timestamp of `secs` since the epoch.
pub(crate) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Serializes `value` as compact JSON with object keys sorted at every level, so equal values
/// always give equal bytes (and digests), whatever map types they were built from.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let value = serde_json::to_value(value).map_err(|e| Error::Json {
        what: "an image document to serialize".to_owned(),
        source: e,
    })?;
    serde_json::to_vec(&sort(value)).map_err(|e| Error::Json {
        what: "an image document to serialize".to_owned(),
        source: e,
    })
}

/// A base image resolved for one platform.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedBase {
    pub(crate) config: ImageConfiguration,
    pub(crate) layers: Vec<Descriptor>,
}

/// The assembled documents of one platform image.
#[derive(Clone, Debug)]
pub(crate) struct Assembled {
    pub(crate) platform: Platform,
    pub(crate) config: bytes::Bytes,
    pub(crate) config_digest: Digest,
    pub(crate) manifest: bytes::Bytes,
    pub(crate) manifest_digest: Digest,
    /// Layer descriptors of the manifest (base first).
    pub(crate) layers: Vec<Descriptor>,
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Result<Descriptor> {
    DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest.to_oci())
        .size(size)
        .build()
        .map_err(|e| Error::InvalidSpec {
            reason: format!("cannot build a descriptor: {e}"),
        })
}

fn port_key(p: &str) -> String {
    if p.contains('/') {
        p.to_owned()
    } else {
        format!("{p}/tcp")
    }
}

/// Builds the config and manifest for one platform.
pub(crate) fn assemble(
    spec: &ImageSpec,
    platform: &Platform,
    base: Option<&ResolvedBase>,
    layers: &[Layer],
) -> Result<Assembled> {
    let created = rfc3339(spec.source_date_epoch.max(0));
    let mut config = base.map(|b| b.config.clone()).unwrap_or_default();
    config.set_os(Os::from(platform.os.as_str()));
    config.set_architecture(Arch::from(platform.architecture.as_str()));
    config.set_variant(platform.variant.clone());
    config.set_created(Some(created.clone()));

    let mut rc: Config = config.config().clone().unwrap_or_default();
    let o = &spec.config;
    if let Some(ep) = &o.entrypoint {
        rc.set_entrypoint(Some(ep.clone()));
        if o.cmd.is_none() {
            rc.set_cmd(None);
        }
    }
    if let Some(cmd) = &o.cmd {
        rc.set_cmd(Some(cmd.clone()));
    }
    if !o.env.is_empty() {
        let mut env: Vec<String> = rc.env().clone().unwrap_or_default();
        for (k, v) in &o.env {
            let prefix = format!("{k}=");
            let entry = format!("{k}={v}");
            if let Some(slot) = env.iter_mut().find(|e| e.starts_with(&prefix) || *e == k) {
                *slot = entry;
            } else {
                env.push(entry);
            }
        }
        rc.set_env(Some(env));
    }
    if let Some(w) = &o.workdir {
        rc.set_working_dir(Some(w.clone()));
    }
    if let Some(u) = &o.user {
        rc.set_user(Some(u.clone()));
    }
    if !o.exposed_ports.is_empty() {
        let mut ports: Vec<String> = rc.exposed_ports().clone().unwrap_or_default();
        ports.extend(o.exposed_ports.iter().map(|p| port_key(p)));
        ports.sort();
        ports.dedup();
        rc.set_exposed_ports(Some(ports));
    }
    if !spec.labels.is_empty() {
        let mut labels = rc.labels().clone().unwrap_or_default();
        labels.extend(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        rc.set_labels(Some(labels));
    }
    config.set_config(Some(rc));

    let mut rootfs = config.rootfs().clone();
    if base.is_none() {
        rootfs.set_typ("layers".to_owned());
    }
    let mut history: Vec<History> = config.history().clone().unwrap_or_default();
    for (layer, layer_spec) in layers.iter().zip(&spec.layers) {
        rootfs.diff_ids_mut().push(layer.diff_id.to_string());
        let dests: Vec<&str> = layer_spec.entries.iter().map(|(_, d)| d.as_str()).collect();
        history.push(
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(format!("fastbuild native layer: {}", dests.join(" ")))
                .comment("fastbuild")
                .build()
                .map_err(|e| Error::InvalidSpec {
                    reason: format!("cannot build a history entry: {e}"),
                })?,
        );
    }
    config.set_rootfs(rootfs);
    config.set_history(Some(history));

    let config_bytes = canonical_json(&config)?;
    let config_digest = Digest::of(&config_bytes);
    let mt = spec.media_types;
    let mut layer_descs: Vec<Descriptor> = Vec::new();
    if let Some(b) = base {
        for d in &b.layers {
            let mut d = d.clone();
            d.set_media_type(MediaType::from(
                mt.translate_layer(d.media_type().as_ref()).as_str(),
            ));
            layer_descs.push(d);
        }
    }
    for l in layers {
        layer_descs.push(descriptor(mt.layer(l.compression), &l.digest, l.size)?);
    }
    let manifest: ImageManifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(mt.manifest()))
        .config(descriptor(
            mt.config(),
            &config_digest,
            config_bytes.len() as u64,
        )?)
        .layers(layer_descs.clone())
        .build()
        .map_err(|e| Error::InvalidSpec {
            reason: format!("cannot build a manifest: {e}"),
        })?;
    let manifest_bytes = canonical_json(&manifest)?;
    Ok(Assembled {
        platform: platform.clone(),
        config_digest,
        config: config_bytes.into(),
        manifest_digest: Digest::of(&manifest_bytes),
        manifest: manifest_bytes.into(),
        layers: layer_descs,
    })
}

/// Builds the index over several platform images.
pub(crate) fn assemble_index(mt: MediaTypes, images: &[Assembled]) -> Result<bytes::Bytes> {
    let mut manifests = Vec::new();
    for a in images {
        let mut d = descriptor(mt.manifest(), &a.manifest_digest, a.manifest.len() as u64)?;
        d.set_platform(Some(a.platform.to_oci()));
        manifests.push(d);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(mt.index()))
        .manifests(manifests)
        .build()
        .map_err(|e| Error::InvalidSpec {
            reason: format!("cannot build an index: {e}"),
        })?;
    Ok(canonical_json(&index)?.into())
}

/// The platforms listed in an index (for error messages).
pub(crate) fn index_platforms(index: &oci_spec::image::ImageIndex) -> Vec<(Platform, Descriptor)> {
    index
        .manifests()
        .iter()
        .filter_map(|d| {
            d.platform()
                .as_ref()
                .map(|p| (Platform::from_oci(p), d.clone()))
        })
        .collect()
}

pub(crate) fn config_platform(config: &ImageConfiguration) -> Platform {
    Platform {
        os: config.os().to_string(),
        architecture: config.architecture().to_string(),
        variant: config.variant().clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn platforms_parse_display_and_match() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        let plain: Platform = "linux/arm64".parse().unwrap();
        assert!(plain.matches(&p) && p.matches(&plain));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        let v6: Platform = "linux/arm/v6".parse().unwrap();
        assert!(!v7.matches(&v6));
        assert!(!"linux/amd64".parse::<Platform>().unwrap().matches(&plain));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let mut a = std::collections::HashMap::new();
        for k in ["zeta", "alpha", "mid"] {
            a.insert(
                k.to_owned(),
                serde_json::json!({"b": 1, "a": [ {"y": 1, "x": 2} ]}),
            );
        }
        let bytes = canonical_json(&a).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"alpha":{"a":[{"x":2,"y":1}],"b":1},"mid":{"a":[{"x":2,"y":1}],"b":1},"zeta":{"a":[{"x":2,"y":1}],"b":1}}"#
        );
    }

    fn scratch_spec() -> ImageSpec {
        ImageSpec {
            platforms: vec!["linux/amd64".parse().unwrap()],
            config: ConfigOverrides {
                entrypoint: Some(vec!["/app/run".into()]),
                env: vec![("A".into(), "1".into()), ("PATH".into(), "/app".into())],
                workdir: Some("/app".into()),
                user: Some("1000:1000".into()),
                exposed_ports: vec!["8080".into(), "53/udp".into()],
                ..ConfigOverrides::default()
            },
            labels: [
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ]
            .into(),
            ..ImageSpec::default()
        }
    }

    #[test]
    fn scratch_image_config_and_manifest_are_deterministic() {
        let spec = scratch_spec();
        let layer = Layer {
            path: PathBuf::from("/unused"),
            digest: Digest::of(b"blob"),
            size: 4,
            diff_id: Digest::of(b"tar"),
            compression: Compression::Gzip,
            cache_hit: false,
        };
        let mut spec_with_layer = spec.clone();
        spec_with_layer.layers = vec![LayerSpec::new([("/x", "/app")])];
        let [a, b] = [(), ()].map(|()| {
            assemble(
                &spec_with_layer,
                &spec.platforms[0],
                None,
                std::slice::from_ref(&layer),
            )
            .unwrap()
        });
        assert_eq!(a.manifest, b.manifest);
        let config: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
        insta::assert_snapshot!(serde_json::to_string_pretty(&config).unwrap(), @r#"
        {
          "architecture": "amd64",
          "config": {
            "Entrypoint": [
              "/app/run"
            ],
            "Env": [
              "A=1",
              "PATH=/app"
            ],
            "ExposedPorts": {
              "53/udp": {},
              "8080/tcp": {}
            },
            "Labels": {
              "a": "1",
              "b": "2"
            },
            "User": "1000:1000",
            "WorkingDir": "/app"
          },
          "created": "1970-01-01T00:00:00Z",
          "history": [
            {
              "comment": "fastbuild",
              "created": "1970-01-01T00:00:00Z",
              "created_by": "fastbuild native layer: /app"
            }
          ],
          "os": "linux",
          "rootfs": {
            "diff_ids": [
              "sha256:90aebae315675cbf04612de4f7d5874850f48e0b8dd82becbeaa47ca93f5ebfb"
            ],
            "type": "layers"
          }
        }
        "#);
        let manifest: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(manifest["mediaType"], media::OCI_MANIFEST);
        assert_eq!(manifest["config"]["digest"], a.config_digest.to_string());
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            Compression::Gzip.oci_media_type()
        );
        assert_eq!(a.manifest_digest, Digest::of(&a.manifest));

        let mut docker = spec_with_layer.clone();
        docker.media_types = MediaTypes::Docker;
        let d = assemble(&docker, &spec.platforms[0], None, &[layer]).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&d.manifest).unwrap();
        assert_eq!(manifest["mediaType"], media::DOCKER_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], media::DOCKER_CONFIG);
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        let index = assemble_index(MediaTypes::Oci, &[a]).unwrap();
        let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
        assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    }
}
