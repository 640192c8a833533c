//! The Solve request of a build: the options checked and turned into the session's dirs, the
//! frontend's and the exporter's attributes, and the cache options — no daemon involved.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{BuildOptions, CacheSpec, Compression, NamedContext};
use crate::error::{Error, Result};
use crate::proto::moby::buildkit::v1 as control;

/// Session directory names the build itself uses; a named context may not take them.
const RESERVED_DIRS: &[&str] = &["context", "dockerfile"];

/// The Solve request and session dirs derived from the options.
pub(super) struct Prepared {
    /// Session dirs by name (`context`, `dockerfile`, named contexts).
    pub dirs: BTreeMap<String, PathBuf>,
    /// The `dockerfile.v0` frontend's attributes.
    pub frontend_attrs: BTreeMap<String, String>,
    /// The exporter's attributes.
    pub exporter_attrs: BTreeMap<String, String>,
    /// Cache imports and exports.
    pub cache: control::CacheOptions,
    /// The Dockerfile as the user named it (for error messages).
    pub dockerfile_display: String,
}

/// The session's shared key: a stable hash of the (canonical) context path, like Docker's
/// CLI. The daemon files each synced local dir under `NAME:HINT:SHARED_KEY` and, on the next
/// build with the same key, diffs the files against that copy and asks only for what changed.
/// An empty or random key would make every context on the machine share (or never find) that
/// copy, so a rebuild of an unchanged context could resend all of it.
pub(super) fn shared_key(context: &std::path::Path) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"fastbuild-context\0");
    hasher.update(context.as_os_str().as_encoded_bytes());
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// What a Solve of some [`BuildOptions`] asks of the daemon, worked out without one: for
/// callers that fingerprint a build's inputs (every option that reaches the daemon is here, so
/// a new one cannot be forgotten by them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolveRequest {
    /// Frontend options (`filename`, `build-arg:…`, `target`, `platform`, `context:…`, …).
    pub frontend_attrs: BTreeMap<String, String>,
    /// Exporter attributes (`name`, `push`, `compression`, …).
    pub exporter_attrs: BTreeMap<String, String>,
    /// Cache imports.
    pub cache_imports: Vec<CacheSpec>,
    /// Cache exports.
    pub cache_exports: Vec<CacheSpec>,
    /// The local dirs the session serves, by name (`context`, `dockerfile`, named contexts),
    /// canonical.
    pub dirs: BTreeMap<String, PathBuf>,
}

/// The Solve request `opts` makes (see [`SolveRequest`]).
///
/// # Errors
/// As [`crate::Client::build`] would fail before reaching the daemon: a missing context or
/// Dockerfile, conflicting options.
pub fn solve_request(opts: &BuildOptions) -> Result<SolveRequest> {
    let prepared = prepare(opts)?;
    Ok(SolveRequest {
        frontend_attrs: prepared.frontend_attrs,
        exporter_attrs: prepared.exporter_attrs,
        cache_imports: opts.cache_imports.clone(),
        cache_exports: opts.cache_exports.clone(),
        dirs: prepared.dirs,
    })
}

fn bool_attr(v: bool) -> String {
    if v { "true" } else { "false" }.to_owned()
}

pub(super) fn prepare(opts: &BuildOptions) -> Result<Prepared> {
    let context = fs_err::canonicalize(&opts.context).map_err(|e| Error::Io {
        path: opts.context.clone(),
        source: e,
    })?;
    if !context.is_dir() {
        return Err(Error::InvalidOptions(format!(
            "the build context `{}` is not a directory",
            opts.context.display()
        )));
    }
    let dockerfile_given = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let dockerfile = fs_err::canonicalize(&dockerfile_given).map_err(|e| Error::Io {
        path: dockerfile_given.clone(),
        source: e,
    })?;
    let (Some(dockerfile_dir), Some(filename)) = (
        dockerfile.parent(),
        dockerfile.file_name().and_then(|n| n.to_str()),
    ) else {
        return Err(Error::InvalidOptions(format!(
            "the Dockerfile path `{}` has no file name",
            dockerfile_given.display()
        )));
    };

    let mut fa = BTreeMap::new();
    fa.insert("filename".to_owned(), filename.to_owned());
    if let Some(target) = &opts.target {
        fa.insert("target".to_owned(), target.clone());
    }
    for (k, v) in &opts.build_args {
        fa.insert(format!("build-arg:{k}"), v.clone());
    }
    for (k, v) in &opts.labels {
        fa.insert(format!("label:{k}"), v.clone());
    }
    if !opts.platforms.is_empty() {
        fa.insert("platform".to_owned(), opts.platforms.join(","));
    }
    if opts.no_cache {
        fa.insert("no-cache".to_owned(), String::new());
    }
    if let Some(epoch) = opts.source_date_epoch {
        fa.insert("build-arg:SOURCE_DATE_EPOCH".to_owned(), epoch.to_string());
    }
    if !opts.cache_imports.is_empty() {
        let json = serde_json::to_string(&opts.cache_imports).expect("cache specs serialize");
        fa.insert("cache-imports".to_owned(), json);
    }
    if let Some(sbom) = &opts.sbom {
        fa.insert("attest:sbom".to_owned(), sbom.clone());
    }
    if let Some(provenance) = &opts.provenance {
        fa.insert("attest:provenance".to_owned(), provenance.clone());
    }
    let mut named_dirs = BTreeMap::new();
    for (name, ctx) in &opts.named_contexts {
        if name.is_empty() || RESERVED_DIRS.contains(&name.as_str()) || name.contains(',') {
            return Err(Error::InvalidOptions(format!(
                "`{name}` cannot name a build context (empty, reserved or with a comma)"
            )));
        }
        let value = match ctx {
            NamedContext::Image(reference) => format!("docker-image://{reference}"),
            NamedContext::Dir(dir) => {
                let real = fs_err::canonicalize(dir).map_err(|e| Error::Io {
                    path: dir.clone(),
                    source: e,
                })?;
                if !real.is_dir() {
                    return Err(Error::InvalidOptions(format!(
                        "the build context `{name}` (`{}`) is not a directory",
                        dir.display()
                    )));
                }
                named_dirs.insert(name.clone(), real);
                format!("local:{name}")
            }
        };
        fa.insert(format!("context:{name}"), value);
    }

    let mut ea = BTreeMap::new();
    if !opts.image_names.is_empty() {
        ea.insert("name".to_owned(), opts.image_names.join(","));
    }
    if opts.push && opts.oci_layout.is_some() {
        return Err(Error::InvalidOptions(
            "`push` and `oci_layout` exclude each other: the `oci` exporter does not push"
                .to_owned(),
        ));
    }
    if opts.push {
        if opts.image_names.is_empty() {
            return Err(Error::InvalidOptions(
                "`push` needs at least one image name (`registry/repository:tag`)".to_owned(),
            ));
        }
        ea.insert("push".to_owned(), bool_attr(true));
    }
    if opts.push_by_digest {
        ea.insert("push-by-digest".to_owned(), bool_attr(true));
    }
    if opts.registry_insecure {
        ea.insert("registry.insecure".to_owned(), bool_attr(true));
    }
    if let Some(c) = opts.compression {
        ea.insert("compression".to_owned(), c.name().to_owned());
    }
    if let Some(level) = opts.compression_level.or(match opts.compression {
        // BuildKit's zstd default is this level: not sent, so the attributes stay buildctl's.
        Some(Compression::Zstd { level }) if level != fastbuild_oci::layer::ZSTD_LEVEL => {
            u32::try_from(level).ok()
        }
        _ => None,
    }) {
        ea.insert("compression-level".to_owned(), level.to_string());
    }
    if opts.force_compression {
        ea.insert("force-compression".to_owned(), bool_attr(true));
    }
    if let Some(oci) = opts.oci_mediatypes {
        ea.insert("oci-mediatypes".to_owned(), bool_attr(oci));
    }
    if let Some(epoch) = opts.source_date_epoch {
        ea.insert("source-date-epoch".to_owned(), epoch.to_string());
        if opts.rewrite_timestamp {
            ea.insert("rewrite-timestamp".to_owned(), bool_attr(true));
        }
    }

    let entry = |c: &CacheSpec| control::CacheOptionsEntry {
        r#type: c.kind.clone(),
        attrs: c.attrs.clone().into_iter().collect(),
    };
    let cache = control::CacheOptions {
        exports: opts.cache_exports.iter().map(entry).collect(),
        imports: opts.cache_imports.iter().map(entry).collect(),
        ..control::CacheOptions::default()
    };

    let mut dirs = BTreeMap::from([
        ("context".to_owned(), context),
        ("dockerfile".to_owned(), dockerfile_dir.to_owned()),
    ]);
    dirs.extend(named_dirs);
    Ok(Prepared {
        dirs,
        frontend_attrs: fa,
        exporter_attrs: ea,
        cache,
        dockerfile_display: dockerfile_given.display().to_string(),
    })
}

/// Validates the options without talking to the daemon (paths exist, push has names).
pub fn validate(opts: &BuildOptions) -> Result<()> {
    prepare(opts).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_key_is_stable_per_context_path() {
        let a = shared_key(std::path::Path::new("/src/app"));
        assert_eq!(a, shared_key(std::path::Path::new("/src/app")));
        assert_ne!(a, shared_key(std::path::Path::new("/src/other")));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn request_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        fs_err::create_dir(&ctx).unwrap();
        fs_err::write(dir.path().join("build.Dockerfile"), "FROM scratch\n").unwrap();
        let opts = BuildOptions {
            context: ctx.clone(),
            dockerfile: Some(dir.path().join("build.Dockerfile")),
            target: Some("final".into()),
            build_args: BTreeMap::from([("A".into(), "1".into())]),
            labels: BTreeMap::from([("l".into(), "v".into())]),
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            no_cache: true,
            image_names: vec!["127.0.0.1:5000/x:y".into()],
            push: true,
            registry_insecure: true,
            compression: Some(Compression::Zstd { level: 3 }),
            compression_level: Some(3),
            force_compression: true,
            oci_mediatypes: Some(true),
            source_date_epoch: Some(0),
            rewrite_timestamp: true,
            cache_imports: vec![CacheSpec::registry("127.0.0.1:5000/x:cache")],
            cache_exports: vec![CacheSpec::inline()],
            ..BuildOptions::default()
        };
        let p = prepare(&opts).unwrap();
        assert_eq!(
            p.dirs["dockerfile"],
            fs_err::canonicalize(dir.path()).unwrap()
        );
        assert_eq!(p.dirs["context"], fs_err::canonicalize(&ctx).unwrap());
        // `frontend|exporter KEY=VALUE`: attributes the request must carry.
        let wanted = r#"
frontend filename=build.Dockerfile
frontend target=final
frontend build-arg:A=1
frontend label:l=v
frontend platform=linux/amd64,linux/arm64
frontend no-cache=
frontend build-arg:SOURCE_DATE_EPOCH=0
frontend cache-imports=[{"Type":"registry","Attrs":{"ref":"127.0.0.1:5000/x:cache"}}]
exporter name=127.0.0.1:5000/x:y
exporter push=true
exporter registry.insecure=true
exporter compression=zstd
exporter compression-level=3
exporter force-compression=true
exporter oci-mediatypes=true
exporter rewrite-timestamp=true
"#;
        for line in wanted.lines().skip(1) {
            let (attrs, key_value) = line.split_once(' ').unwrap();
            let (key, value) = key_value.split_once('=').unwrap();
            let attrs = match attrs {
                "frontend" => &p.frontend_attrs,
                "exporter" => &p.exporter_attrs,
                other => panic!("not a kind of attributes: {other}"),
            };
            assert_eq!(attrs[key], value, "{line}");
        }
        assert_eq!(p.cache.exports[0].r#type, "inline");
    }

    #[test]
    fn push_without_names_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let opts = BuildOptions {
            context: dir.path().to_owned(),
            push: true,
            ..BuildOptions::default()
        };
        assert!(matches!(prepare(&opts), Err(Error::InvalidOptions(_))));
    }
}
