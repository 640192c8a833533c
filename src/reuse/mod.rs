//! Nothing changed, nothing solved: a BuildKit service whose inputs are the same as at one of
//! its recent successful builds to the same registry reuses that build's digest — when the
//! registry still serves it under every name the build would push.
//!
//! The inputs are everything the Solve request carries or reads, fingerprinted in one SHA-256:
//! the frontend options and exporter attributes exactly as [`fastbuild_buildkit::solve_request`]
//! builds them (build args, target, platforms, labels, names, compression, cache specs, …);
//! the Dockerfile and its ignore file; every entry of the context and of each named context
//! directory that FileSync would send (the same walk and `.dockerignore` filter: path, mode,
//! size, link target, device, xattrs and, for files, a content hash — modification times are
//! left out, as BuildKit's own cache keys leave them out); the identity of each secret (its id
//! and a keyed hash of its value) and ssh id; and the digest each image the Dockerfile names
//! from outside (`FROM`, `COPY --from`, `RUN --mount=from=`, named-context images) resolves to
//! *now* (`HEAD`). A Dockerfile this module cannot fully read (`# syntax=`, `ADD <url>`, a
//! `FROM` it cannot resolve), attestations, `--no-cache` and `--force` always mean a solve.
//!
//! Content hashes are kept per file with its stat (size, mtime, device, inode, ctime) in
//! `.fastbuild/reuse/<service>.json`, as git's index does: a file whose stat is unchanged is
//! not read again, and a stat taken within two seconds of its last change is never trusted
//! (the file may change again within the clock's granularity). The last eight fingerprints are
//! kept, so switching back to a branch built a moment ago reuses its digest too.

mod dockerfile;
mod state;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use fastbuild_oci::{Digest, Reference};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::builder::ImageResult;
use crate::printer::{Event, Message};
use crate::settings::{BuilderPlan, BuildkitPlan, Destination, Reuse, SecretSpec, ServicePlan};

pub use state::State;

/// What to do for a service.
#[derive(Debug)]
pub enum Decision {
    /// Its inputs match a recorded build the registry still serves: this is that build.
    Reuse(ImageResult),
    /// Solve; record the fingerprint with the result when there is one.
    Build(Option<Pending>),
}

/// A fingerprint taken before a build, recorded with its result after it succeeded.
#[derive(Debug)]
pub struct Pending {
    fingerprint: String,
    stamps: state::Stamps,
    /// The state as loaded (its recent builds), recorded into after the build.
    state: State,
}

/// Framed SHA-256: every field is tagged and length-prefixed, so no two different input sets
/// feed the hash the same bytes.
struct Hasher(Sha256);

impl Hasher {
    fn field(&mut self, tag: &str, value: &[u8]) {
        self.0.update((tag.len() as u64).to_le_bytes());
        self.0.update(tag.as_bytes());
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Decides whether `plan` needs a solve; says so on `events` when it does not.
pub async fn check(plan: &ServicePlan, events: &mpsc::UnboundedSender<Event>) -> Decision {
    if plan.reuse == Reuse::Off {
        return Decision::Build(None);
    }
    let (BuilderPlan::Buildkit(b), Destination::Registry { .. }) =
        (&plan.builder, &plan.registry.destination)
    else {
        return Decision::Build(None);
    };
    let started = std::time::Instant::now();
    let mut state = State::load(&plan.root, &plan.name);
    // Moved, not copied: with tens of thousands of files the stamps are most of the memory.
    let previous = state.take_stamps();
    let (fingerprint, stamps) = match fingerprint(plan, b, previous).await {
        Ok(Some(v)) => v,
        Ok(None) => return Decision::Build(None),
        Err(e) => {
            tracing::debug!(service = %plan.name, "no reuse: {e:#}");
            return Decision::Build(None);
        }
    };
    // `--force` and `--no-cache` solve, and what they produce is the truth recorded for these
    // inputs from now on (a solve without the cache can give another digest than the cached
    // one: new layers carry the files' current times).
    let recorded = (plan.reuse == Reuse::Use && !b.no_cache)
        .then(|| state.find(&fingerprint).cloned())
        .flatten();
    let pending = Pending {
        fingerprint,
        stamps,
        state,
    };
    let Some(recorded) = recorded else {
        tracing::debug!(service = %plan.name, fingerprint = %pending.fingerprint, elapsed_ms = started.elapsed().as_millis() as u64, "inputs changed: solving");
        return Decision::Build(Some(pending));
    };
    match still_served(plan, b, &recorded.image).await {
        Ok(()) => {
            let mut image = recorded.image.clone();
            image.reused = true;
            tracing::debug!(service = %plan.name, fingerprint = %pending.fingerprint, elapsed_ms = started.elapsed().as_millis() as u64, "inputs unchanged: reusing");
            if let Err(e) = pending
                .state
                .with_stamps(pending.stamps)
                .save(&plan.root, &plan.name)
            {
                tracing::warn!(service = %plan.name, "cannot update the reuse state: {e:#}");
            }
            let _ = events.send(Event::Note {
                service: Some(plan.name.clone()),
                message: Message::Reused {
                    built_at: recorded.built_at,
                    digest: image.digest.clone(),
                },
            });
            Decision::Reuse(image)
        }
        Err(e) => {
            tracing::debug!(service = %plan.name, "inputs unchanged but not reusable: {e:#}");
            Decision::Build(Some(pending))
        }
    }
}

/// Records a successful build's fingerprint (best effort: a failure only costs a solve later).
pub fn record(plan: &ServicePlan, pending: Pending, image: &ImageResult) {
    let state = pending
        .state
        .with_stamps(pending.stamps)
        .recording(pending.fingerprint, image);
    if let Err(e) = state.save(&plan.root, &plan.name) {
        tracing::warn!(service = %plan.name, "cannot record the build's inputs: {e:#}");
    }
}

/// The fingerprint of everything `plan` would send or read; `None` when its result cannot be
/// known without a solve (the reason is logged).
async fn fingerprint(
    plan: &ServicePlan,
    b: &BuildkitPlan,
    previous: state::Stamps,
) -> Result<Option<(String, state::Stamps)>> {
    let why_not = |why: String| {
        tracing::debug!(service = %plan.name, "no reuse: {why}");
        Ok(None)
    };
    if b.sbom.is_some() || b.provenance.is_some() {
        return why_not("attestations describe the build itself".into());
    }
    let opts = crate::builder::buildkit::options(plan, b)?;
    let request = fastbuild_buildkit::solve_request(&opts)?;
    let dockerfile_bytes = read_bounded(&b.dockerfile)?;
    let named: BTreeSet<String> = b.named_contexts.keys().cloned().collect();
    let images = match dockerfile::scan(
        &String::from_utf8_lossy(&dockerfile_bytes),
        &b.build_args,
        &named,
    ) {
        dockerfile::Scan::Images(images) => images,
        dockerfile::Scan::Solve(why) => return why_not(why),
    };
    let mut images: Vec<String> = images.into_iter().collect();
    images.extend(b.named_contexts.values().filter_map(|c| match c {
        fastbuild_buildkit::NamedContext::Image(r) => Some(r.clone()),
        fastbuild_buildkit::NamedContext::Dir(_) => None,
    }));

    let mut h = Hasher(Sha256::new());
    h.field("fastbuild", env!("CARGO_PKG_VERSION").as_bytes());
    // `no-cache` is how to build, not what: its result is recorded for the same inputs.
    for (k, v) in request
        .frontend_attrs
        .iter()
        .filter(|(k, _)| *k != "no-cache")
    {
        h.field("frontend", format!("{k}={v}").as_bytes());
    }
    for (k, v) in &request.exporter_attrs {
        h.field("exporter", format!("{k}={v}").as_bytes());
    }
    h.field(
        "cache-imports",
        &serde_json::to_vec(&request.cache_imports)?,
    );
    h.field(
        "cache-exports",
        &serde_json::to_vec(&request.cache_exports)?,
    );
    h.field("dockerfile", &dockerfile_bytes);
    for secret in &b.secrets {
        let (id, value) = match secret {
            SecretSpec::File { id, path } => (id, read_bounded(path)?),
            SecretSpec::Env { id, var } => (
                id,
                std::env::var_os(var)
                    .ok_or_else(|| anyhow!("secret `{id}`: `{var}` is not set"))?
                    .into_encoded_bytes(),
            ),
        };
        let Some(keyed) = state::keyed_hash(&value) else {
            return why_not("no private key to fingerprint secrets with".into());
        };
        h.field("secret", format!("{id}={keyed}").as_bytes());
    }
    for id in b.ssh.keys() {
        h.field("ssh", id.as_bytes());
    }

    // The trees, off the async runtime; the images meanwhile.
    let mut trees: Vec<(String, PathBuf, Vec<Vec<u8>>)> = Vec::new();
    for (name, dir) in &request.dirs {
        let ignore = match name.as_str() {
            "dockerfile" => continue,
            "context" => crate::inputs::ignore_file_for(&b.context, &b.dockerfile),
            _ => Some(dir.join(".dockerignore")).filter(|p| p.is_file()),
        };
        let patterns = match &ignore {
            Some(path) => {
                let bytes = read_bounded(path)?;
                h.field("ignore-file", path.as_os_str().as_encoded_bytes());
                h.field("ignore", &bytes);
                fastbuild_buildkit::patterns::parse_dockerignore_bytes(&bytes)
            }
            None => Vec::new(),
        };
        trees.push((name.clone(), dir.clone(), patterns));
    }
    let withheld = opts.withheld.clone();
    let walk = tokio::task::spawn_blocking(move || {
        let mut stamps = state::Stamps::default();
        let mut digests = Vec::new();
        for (name, root, patterns) in trees {
            let d = state::hash_tree(&root, &patterns, &withheld, &previous, &mut stamps)
                .with_context(|| format!("cannot read the build context `{}`", root.display()))?;
            digests.push((name, d));
        }
        anyhow::Ok((digests, stamps))
    });
    let resolved = resolve_all(plan, &images);
    let (walked, resolved) = tokio::join!(walk, resolved);
    let (digests, stamps) = walked.context("the context walk panicked")??;
    for (name, digest) in digests {
        h.field("tree", format!("{name}={digest}").as_bytes());
    }
    match resolved {
        Ok(pairs) => {
            for (image, digest) in pairs {
                h.field("image", format!("{image}@{digest}").as_bytes());
            }
        }
        Err(e) => return why_not(format!("{e:#}")),
    }
    Ok(Some((h.finish(), stamps)))
}

/// The digest each image resolves to now (concurrently; a pinned digest as written).
async fn resolve_all(plan: &ServicePlan, images: &[String]) -> Result<Vec<(String, Digest)>> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let client = crate::builder::registry::client(plan)?;
    let client = &client;
    let lookups = images.iter().map(|image| async move {
        let digest = current_digest(client, image)
            .await?
            .ok_or_else(|| anyhow!("`{image}` does not exist (any more)"))?;
        Ok((image.clone(), digest))
    });
    futures::future::try_join_all(lookups).await
}

/// The digest `name` points at now (a reference pinned by digest: that digest,
/// without asking); `None` when the registry does not have it.
async fn current_digest(
    client: &fastbuild_oci::RegistryClient,
    name: &str,
) -> Result<Option<Digest>> {
    let reference: Reference = name
        .parse()
        .with_context(|| format!("`{name}` is not an image reference"))?;
    if let Some(d) = &reference.digest {
        return Ok(Some(d.clone()));
    }
    client
        .manifest_digest(&reference)
        .await
        .with_context(|| format!("cannot resolve `{name}`"))
}

/// Whether the registry still serves `image` under every name a build would push.
async fn still_served(plan: &ServicePlan, b: &BuildkitPlan, image: &ImageResult) -> Result<()> {
    let opts = crate::builder::buildkit::options(plan, b)?;
    let mut names: Vec<String> = opts.image_names.clone();
    if opts.push_by_digest {
        names = opts
            .image_names
            .iter()
            .map(|repo| format!("{repo}:{}", fastbuild_oci::default_tag(&image.digest)))
            .collect();
    }
    if names.is_empty() {
        bail!("nothing to check the registry for");
    }
    let client = crate::builder::registry::client(plan)?;
    let client = &client;
    let checks = names.iter().map(|name| async move {
        match current_digest(client, name).await? {
            Some(d) if d == image.digest => Ok(()),
            Some(d) => bail!("`{name}` now points at {d}, not {}", image.digest),
            None => bail!("`{name}` is gone from the registry"),
        }
    });
    futures::future::try_join_all(checks).await.map(|_| ())
}

/// Reads a build input, refusing anything larger than an input of this kind should be.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    const MAX: u64 = 16 << 20;
    let meta = fs_err::metadata(path)?;
    if meta.len() > MAX {
        bail!(
            "`{}` is {} bytes: more than a Dockerfile, ignore file or secret should be",
            path.display(),
            meta.len()
        );
    }
    Ok(fs_err::read(path)?)
}

/// The state file of a service (for tests and `doctor`).
pub fn state_file(root: &Path, service: &str) -> PathBuf {
    state::path(root, service)
}
