//! The publisher: builds the layers, resolves the base, assembles the image and puts it in a
//! registry (only missing blobs, manifest last) or an OCI image layout; returns the digest.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use futures::{StreamExt as _, TryStreamExt as _};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::client::{BlobData, BlobOutcome, RegistryClient, Repo};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{
    Assembled, BaseImage, ImageSpec, Platform, ResolvedBase, assemble, assemble_index,
    config_platform, index_platforms, media,
};
use crate::layer::{Compression, Layer};
use crate::layer_cache::{LayerCache, build_layer_noting_misses};
use crate::reference::Reference;

mod early;
mod layout;
use early::EarlySessions;
pub(crate) use layout::layout_temp_file;
use layout::write_layout;

/// Where the image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A registry repository; its tag is used, or `fb-<12 hex of the digest>` when it has none.
    Registry(Reference),
    /// An OCI image layout directory (created if needed; `index.json` is updated).
    Layout(PathBuf),
}

/// Blob transfer counters of one push.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Blobs whose bytes were sent.
    pub blobs_uploaded: u64,
    /// Blobs already present at the target.
    pub blobs_skipped: u64,
    /// Blobs mounted from the base repository (no bytes sent).
    pub blobs_mounted: u64,
    /// Blob bytes sent (manifests not counted).
    pub bytes_uploaded: u64,
}

impl PushStats {
    /// The tally of what happened to each blob.
    pub(crate) fn from_outcomes(outcomes: impl IntoIterator<Item = BlobOutcome>) -> Self {
        let mut stats = Self::default();
        for o in outcomes {
            match o {
                BlobOutcome::Skipped => stats.blobs_skipped += 1,
                BlobOutcome::Mounted => stats.blobs_mounted += 1,
                BlobOutcome::Uploaded(n) => {
                    stats.blobs_uploaded += 1;
                    stats.bytes_uploaded += n;
                }
            }
        }
        stats
    }
}

/// The outcome of [`build_and_push`].
#[derive(Clone, Debug)]
pub struct PushResult {
    /// Digest of the top-level manifest (or index) — sha256 of the exact bytes pushed.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Config digest for a single-platform image; `None` for an index.
    pub config_digest: Option<Digest>,
    /// OCI descriptor of the top-level manifest.
    pub descriptor: Descriptor,
    /// `registry/repo@sha256:…`, or `oci:DIR@sha256:…` for a layout.
    pub reference: String,
    /// The tag it was pushed under.
    pub tag: String,
    /// Blob transfer counters.
    pub stats: PushStats,
}

/// The default tag of an image: `fb-` and the first 12 hex digits of its digest.
pub fn default_tag(digest: &Digest) -> String {
    format!("fb-{}", &digest.hex()[..12])
}

/// Where the bytes of a blob come from.
#[derive(Clone, Debug)]
enum Source {
    Local(BlobData),
    /// A blob of the base image, in `base`'s repository.
    Base(Reference),
}

#[derive(Clone, Debug)]
struct Blob {
    digest: Digest,
    size: u64,
    source: Source,
}

fn json_err(what: String) -> impl FnOnce(serde_json::Error) -> Error {
    move |source| Error::Json { what, source }
}

/// Resolves the base image for every platform, failing before anything is pushed.
async fn resolve_base(
    client: &RegistryClient,
    reference: &Reference,
    platforms: &[Platform],
) -> Result<Vec<ResolvedBase>> {
    let top = client
        .require_manifest(reference, |reference| Error::BaseNotFound { reference })
        .await?;
    let is_index = matches!(
        top.media_type.as_str(),
        media::OCI_INDEX | media::DOCKER_LIST
    );
    let mut out = Vec::new();
    for platform in platforms {
        let manifest_bytes = if is_index {
            let index: ImageIndex = serde_json::from_slice(&top.bytes)
                .map_err(json_err(format!("the index of `{reference}`")))?;
            let available = index_platforms(&index);
            let Some((_, desc)) = available.iter().find(|(p, _)| platform.matches(p)) else {
                let list: Vec<String> = available.iter().map(|(p, _)| p.to_string()).collect();
                return Err(Error::PlatformNotFound {
                    reference: reference.to_string(),
                    wanted: platform.to_string(),
                    available: list.join(", "),
                });
            };
            let pinned = reference.with_digest(Digest::try_from(desc.digest())?);
            client
                .fetch_manifest(&pinned)
                .await?
                .ok_or_else(|| Error::BaseNotFound {
                    reference: pinned.to_string(),
                })?
                .bytes
        } else if matches!(
            top.media_type.as_str(),
            media::OCI_MANIFEST | media::DOCKER_MANIFEST
        ) {
            top.bytes.clone()
        } else {
            return Err(Error::Manifest {
                reference: reference.to_string(),
                reason: format!(
                    "media type `{}` is not an image manifest or index",
                    top.media_type
                ),
            });
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(json_err(format!("the manifest of `{reference}`")))?;
        let config_digest = Digest::try_from(manifest.config().digest())?;
        let config_bytes = client.get_blob(reference, &config_digest).await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(json_err(format!("the config of `{reference}`")))?;
        let actual = config_platform(&config);
        if !platform.matches(&actual) {
            return Err(Error::PlatformNotFound {
                reference: reference.to_string(),
                wanted: platform.to_string(),
                available: actual.to_string(),
            });
        }
        out.push(ResolvedBase {
            config,
            layers: manifest.layers().clone(),
        });
    }
    Ok(out)
}

/// Builds every layer (through the layer cache when the spec has one), a task each; a cache
/// miss is reported on `misses` as soon as it is known.
async fn build_layers(
    spec: &ImageSpec,
    compression: Compression,
    blob_dir: &Path,
    misses: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Vec<Layer>> {
    let mtime = spec.source_date_epoch.max(0) as u64;
    let cache = spec.layer_cache.as_ref().map(LayerCache::new);
    let mut tasks = Vec::new();
    for layer in &spec.layers {
        let (layer, dir, cache) = (layer.clone(), blob_dir.to_owned(), cache.clone());
        let misses = misses.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            build_layer_noting_misses(&layer, compression, mtime, &dir, cache.as_ref(), || {
                let _ = misses.send(());
            })
        }));
    }
    drop(misses);
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| Error::Task(e.to_string()))??);
    }
    if cache.is_some() {
        let hits = out.iter().filter(|l| l.cache_hit).count();
        tracing::debug!(
            hits,
            layers = out.len(),
            "layers taken from the layer cache"
        );
    }
    Ok(out)
}

/// Builds the image described by `spec` and publishes it to `target`.
///
/// Nothing is pushed until every layer is built and the base is resolved for every platform,
/// so bad input leaves the registry untouched (a rebuild may open upload sessions meanwhile,
/// see `publish/early.rs`; they are cancelled when the build fails); the manifest is pushed only after
/// all blobs are confirmed present.
pub async fn build_and_push(
    spec: &ImageSpec,
    target: &Target,
    client: &RegistryClient,
) -> Result<PushResult> {
    let platforms = spec.effective_platforms();
    let compression = spec.compression.unwrap_or(match target {
        Target::Registry(r) => Compression::default_for_registry(r.api_host()),
        Target::Layout(_) => Compression::None,
    });
    let temp_cache;
    let cache_dir = if let Some(dir) = &spec.cache_dir {
        dir.clone()
    } else {
        temp_cache = tempfile::tempdir().map_err(|e| Error::io("create a temp blob cache", e))?;
        temp_cache.path().to_owned()
    };
    let blob_dir = cache_dir.join("blobs").join("sha256");
    let base_ref = match &spec.base {
        BaseImage::Scratch => None,
        BaseImage::Reference(r) => Some(r.parse::<Reference>()?),
    };
    // Upload sessions for the blobs a rebuild is about to make (see `early`): only into a
    // repository this machine pushed to recently, and only with a layer cache to say which
    // layers changed.
    // The blobs recent pushes left in the target repository, read once for the whole push.
    let remembered: HashSet<Digest> = match target {
        Target::Registry(r) => client
            .remembered_blobs(&Repo::push(r, base_ref.as_ref()))
            .into_iter()
            .collect(),
        Target::Layout(_) => HashSet::new(),
    };
    let early_repo = match target {
        Target::Registry(r) if spec.layer_cache.is_some() && !remembered.is_empty() => {
            Some(Repo::push(r, base_ref.as_ref()))
        }
        _ => None,
    };
    let (miss_tx, miss_rx) = tokio::sync::mpsc::unbounded_channel();
    // The base is resolved (reads only) while the layers are built; a layer error is reported
    // first, as when the two ran one after the other.
    let (layers, bases, early_urls) = tokio::join!(
        build_layers(spec, compression, &blob_dir, miss_tx),
        async {
            match &base_ref {
                Some(r) => once_more_after_a_forgotten_scheme(|| {
                    Box::pin(resolve_base(client, r, &platforms))
                })
                .await
                .map(Some),
                None => Ok(None),
            }
        },
        async {
            match &early_repo {
                Some(repo) => early::open_while_building(client, repo, miss_rx).await,
                None => Vec::new(),
            }
        }
    );
    let mut early = EarlySessions::new(early_urls);
    // Sessions no blob took are cancelled whatever happens next.
    let published: Result<PushResult> = async {
        let (layers, bases) = (layers?, bases?);
        early.fresh_are(
            layers
                .iter()
                .filter(|l| !l.cache_hit)
                .map(|l| l.digest.clone()),
        );
        let images: Vec<Assembled> = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| assemble(spec, p, bases.as_ref().map(|b| &b[i]), &layers))
            .collect::<Result<_>>()?;

        let blobs = blobs_of(&images, &layers, base_ref.as_ref())?;
        early.fresh_are(images.iter().map(|i| i.config_digest.clone()));

        let (top_bytes, top_type, config_digest, descriptor) = top_of(spec, &images)?;
        let digest = Digest::of(&top_bytes);

        let (reference, tag, stats) = match target {
            Target::Registry(r) => {
                let tag = r.tag.clone().unwrap_or_else(|| default_tag(&digest));
                // Boxed: the push's state machine is large, and the caller's future need not be.
                let stats = once_more_after_a_forgotten_scheme(|| {
                    Box::pin(push_to_registry(
                        client,
                        r,
                        base_ref.as_ref(),
                        (&blob_dir, &blobs, &early),
                        &remembered,
                        &images,
                        (&top_bytes, top_type, &tag),
                    ))
                })
                .await?;
                (r.with_digest(digest.clone()).to_string(), tag, stats)
            }
            Target::Layout(dir) => {
                let tag = default_tag(&digest);
                let stats =
                    write_layout(client, dir, &blobs, &images, &descriptor, &top_bytes, &tag)
                        .await?;
                (format!("oci:{}@{digest}", dir.display()), tag, stats)
            }
        };
        tracing::info!(%digest, reference, ?stats, "image published");
        Ok(PushResult {
            size: top_bytes.len() as u64,
            digest,
            media_type: top_type.to_owned(),
            config_digest,
            descriptor,
            reference,
            tag,
            stats,
        })
    }
    .await;
    if let Some(repo) = &early_repo {
        early::cancel(client, repo, early.leftovers()).await;
    }
    published
}

/// Every blob of `images` once, in a stable order (by digest), with where its bytes come from.
fn blobs_of(
    images: &[Assembled],
    layers: &[Layer],
    base_ref: Option<&Reference>,
) -> Result<Vec<Blob>> {
    let mut blobs: BTreeMap<Digest, Blob> = BTreeMap::new();
    let local_layers: BTreeMap<&Digest, &Layer> = layers.iter().map(|l| (&l.digest, l)).collect();
    for image in images {
        for d in &image.layers {
            let digest = Digest::try_from(d.digest())?;
            let source =
                match local_layers.get(&digest) {
                    Some(l) => Source::Local(BlobData::File(l.path.clone())),
                    None => Source::Base(base_ref.cloned().ok_or_else(|| {
                        Error::Task("a base layer without a base image".to_owned())
                    })?),
                };
            blobs.entry(digest.clone()).or_insert(Blob {
                digest,
                size: d.size(),
                source,
            });
        }
        blobs.entry(image.config_digest.clone()).or_insert(Blob {
            digest: image.config_digest.clone(),
            size: image.config.len() as u64,
            source: Source::Local(BlobData::Bytes(image.config.clone())),
        });
    }
    Ok(blobs.into_values().collect())
}

/// The top-level manifest (one platform) or index (several): its bytes, media type, config
/// digest (one platform) and descriptor.
fn top_of(
    spec: &ImageSpec,
    images: &[Assembled],
) -> Result<(bytes::Bytes, &'static str, Option<Digest>, Descriptor)> {
    let (top_bytes, top_type, config_digest, platform) = if let [i] = images {
        (
            i.manifest.clone(),
            spec.media_types.manifest(),
            Some(i.config_digest.clone()),
            Some(i.platform.clone()),
        )
    } else {
        (
            assemble_index(spec.media_types, images)?,
            spec.media_types.index(),
            None,
            None,
        )
    };
    let mut descriptor = Descriptor::new(
        MediaType::from(top_type),
        top_bytes.len() as u64,
        Digest::of(&top_bytes).to_oci(),
    );
    if let Some(p) = &platform {
        let mut op = oci_spec::image::Platform::default();
        op.set_os(p.os.as_str().into());
        op.set_architecture(p.architecture.as_str().into());
        op.set_variant(p.variant.clone());
        descriptor.set_platform(Some(op));
    }
    Ok((top_bytes, top_type, config_digest, descriptor))
}

/// Runs `step` (requests to registries); when it fails because a registry no longer answers on
/// the scheme remembered for it (that memory is then forgotten), runs it once more, probing.
async fn once_more_after_a_forgotten_scheme<T, F, Fut>(step: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    match step().await {
        Err(e @ Error::RememberedSchemeFailed { .. }) => {
            tracing::debug!(error = %e, "probing the registry again");
            step().await
        }
        done => done,
    }
}

/// Pushes the blobs the registry may lack, then the manifest(s), and remembers the blobs as
/// present in the repository (see [`RegistryClient`]'s memory).
///
/// A blob remembered as pushed to this repository by a recent build is not checked: the
/// manifest `PUT` is the check. When the registry refuses the manifest for a blob it lacks
/// (it lost a remembered one), the memory is forgotten and every blob goes the usual way —
/// `HEAD`, then mount or upload — before the manifest is pushed again.
async fn push_to_registry(
    client: &RegistryClient,
    target: &Reference,
    base: Option<&Reference>,
    (blob_dir, blobs, early): (&Path, &[Blob], &EarlySessions),
    remembered: &HashSet<Digest>,
    images: &[Assembled],
    top: (&bytes::Bytes, &str, &str),
) -> Result<PushStats> {
    let repo = Repo::push(target, base);
    let to_push = (blob_dir, blobs, early);
    let mut outcomes = push_blobs(client, &repo, target, to_push, remembered).await?;
    // Sessions opened early that no blob took go while the manifest does.
    let (pushed, ()) = tokio::join!(
        push_manifests(client, &repo, images, top),
        early::cancel(client, &repo, early.leftovers())
    );
    match pushed {
        Err(e) if e.is_blob_unknown() && !remembered.is_empty() => {
            tracing::debug!(error = %e, "the registry lacks a blob remembered in it; checking every blob");
            client.forget_blobs(&repo);
            outcomes = push_blobs(client, &repo, target, to_push, &HashSet::new()).await?;
            push_manifests(client, &repo, images, top).await?;
        }
        done => done?,
    }
    client.remember_blobs(&repo, blobs.iter().map(|b| &b.digest));
    Ok(PushStats::from_outcomes(outcomes))
}

/// Every blob not in `remembered` checked and sent if missing, at most
/// `max_concurrent_uploads` at once; the ones in `remembered` are taken as present.
async fn push_blobs(
    client: &RegistryClient,
    repo: &Repo,
    target: &Reference,
    (blob_dir, blobs, early): (&Path, &[Blob], &EarlySessions),
    remembered: &HashSet<Digest>,
) -> Result<Vec<BlobOutcome>> {
    let parallel = client.options().max_concurrent_uploads.max(1);
    let known = blobs
        .iter()
        .filter(|b| remembered.contains(&b.digest))
        .count();
    if known > 0 {
        tracing::debug!(
            known,
            blobs = blobs.len(),
            "blobs remembered in the repository, not checked"
        );
    }
    // Boxed with an explicit `Send` bound: a closure returning `async move` blocks that borrow
    // would otherwise make the whole publish future `!Send` (rustc's higher-ranked lifetime
    // limitation), and callers could not `tokio::spawn` a build.
    let uploads: Vec<futures::future::BoxFuture<'_, Result<BlobOutcome>>> = blobs
        .iter()
        .filter(|blob| !remembered.contains(&blob.digest))
        .map(|blob| {
            let fut: futures::future::BoxFuture<'_, Result<BlobOutcome>> = match &blob.source {
                Source::Local(data) => match early.take_for(&blob.digest) {
                    // Freshly built: not asked for, sent into a session opened meanwhile.
                    Some(session) => Box::pin(async move {
                        client
                            .upload_blob(repo, &blob.digest, blob.size, data, Some(session))
                            .await
                            .map(BlobOutcome::Uploaded)
                    }),
                    None => Box::pin(client.push_blob(repo, &blob.digest, blob.size, data, None)),
                },
                Source::Base(base) => {
                    Box::pin(push_base_blob(client, repo, target, base, blob, blob_dir))
                }
            };
            fut
        })
        .collect();
    let mut outcomes: Vec<BlobOutcome> = futures::stream::iter(uploads)
        .buffer_unordered(parallel)
        .try_collect()
        .await?;
    outcomes.extend(std::iter::repeat_n(BlobOutcome::Skipped, known));
    Ok(outcomes)
}

/// The manifest of each platform of an index (by digest), then the top one under its tag.
async fn push_manifests(
    client: &RegistryClient,
    repo: &Repo,
    images: &[Assembled],
    (top_bytes, top_type, tag): (&bytes::Bytes, &str, &str),
) -> Result<()> {
    if images.len() > 1 {
        for image in images {
            client
                .put_manifest(
                    repo,
                    &image.manifest_digest.to_string(),
                    media_type_of(&image.manifest)?.as_str(),
                    &image.manifest,
                )
                .await?;
        }
    }
    client.put_manifest(repo, tag, top_type, top_bytes).await
}

fn media_type_of(bytes: &[u8]) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(json_err("an assembled manifest".to_owned()))?;
    Ok(v["mediaType"]
        .as_str()
        .unwrap_or(media::OCI_MANIFEST)
        .to_owned())
}

/// A base-image blob: present → skip; same registry → mount; else download once and upload.
async fn push_base_blob(
    client: &RegistryClient,
    repo: &Repo,
    target: &Reference,
    base: &Reference,
    blob: &Blob,
    blob_dir: &Path,
) -> Result<BlobOutcome> {
    let same_registry = base.api_host() == target.api_host();
    if client.blob_exists(repo, &blob.digest).await? {
        return Ok(BlobOutcome::Skipped);
    }
    let mut started = None;
    if same_registry && base.repository != target.repository {
        match client
            .mount_blob(repo, &blob.digest, &base.repository)
            .await?
        {
            None => return Ok(BlobOutcome::Mounted),
            Some(location) => started = Some(location),
        }
    }
    let path = blob_dir.join(blob.digest.hex());
    if !path.exists() {
        client
            .download_blob(base, &blob.digest, blob.size, &path)
            .await?;
    }
    let n = client
        .upload_blob(
            repo,
            &blob.digest,
            blob.size,
            &BlobData::File(path),
            started,
        )
        .await?;
    Ok(BlobOutcome::Uploaded(n))
}

/// Fetches the manifest (or index) `reference` points at; for tests and `doctor`.
pub async fn get_manifest(
    client: &RegistryClient,
    reference: &Reference,
) -> Result<crate::client::FetchedManifest> {
    client.get_manifest(reference).await
}

#[cfg(test)]
mod send_tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Callers spawn builds on a multi-threaded runtime: the publish future must be `Send`.
    #[test]
    fn build_and_push_future_is_send() {
        let spec = ImageSpec::default();
        let target = Target::Layout(PathBuf::from("/nonexistent"));
        let client = RegistryClient::new(crate::RegistryOptions::default()).unwrap();
        let fut = build_and_push(&spec, &target, &client);
        assert_send(&fut);
    }
}
