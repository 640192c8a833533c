//! `fastbuild promote`: pin a service's digest in another environment's values file, after
//! copying the image by digest to that environment's registry when it has its own.
//!
//! Stage: output (a values file), with a registry-to-registry copy before it
//! ([`fastbuild_oci::RegistryClient::copy_image`]: only what the target lacks, mounted inside one
//! registry, streamed between two, verified to have the same digest there). The digest comes
//! from `--digest` or from the service's own values file — never from a tag lookup — so CI can
//! promote exactly what it pushed.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use fastbuild_oci::{Digest, Reference, RegistryClient};
use tokio_util::sync::CancellationToken;

use crate::atomic;
use crate::builder::registry::registry_options;
use crate::cli::PromoteArgs;
use crate::outputs::values::{self, ImageValues};
use crate::printer::{Message, Outcome, Printer};
use crate::settings::{Destination, Project, ServicePlan, UsageError};

/// The repository's path under its registry (`api`, or `team/api`): what is kept when the image
/// moves to another registry.
pub fn repository_path(plan: &ServicePlan) -> String {
    let registry = plan.registry.pull_registry.trim_end_matches('/');
    plan.registry
        .pull_repository
        .strip_prefix(registry)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|_| !registry.is_empty())
        .unwrap_or(&plan.registry.pull_repository)
        .to_owned()
}

/// `host[:port][/prefix]/path`.
fn join(registry: &str, path: &str) -> String {
    format!("{}/{path}", registry.trim_end_matches('/'))
}

fn parse_reference(r: &str) -> Result<Reference> {
    r.parse::<Reference>()
        .map_err(|e| anyhow!(UsageError(format!("{e}; check the registry given"))))
}

/// The digest the service's values file pins (with its configured digest key).
pub fn pinned_digest(plan: &ServicePlan) -> Result<Digest> {
    let path = &plan.values_file;
    let Some(key) = &plan.values_keys.digest_key else {
        bail!(UsageError(format!(
            "service `{}` writes no digest into its values file (its digest key is empty); pass \
             the digest to promote: `--digest sha256:…`",
            plan.name
        )));
    };
    let text = match fs_err::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(UsageError(format!(
            "service `{}` has no values file `{}` to take the digest from: build it first \
             (`fastbuild build {}`, or `fastbuild push {} --values`), or pass `--digest sha256:…`",
            plan.name,
            path.display(),
            plan.name,
            plan.name
        ))),
        Err(e) => return Err(e).context("cannot read the service's values file"),
    };
    let parsed = values::parse(&text).map_err(|e| {
        anyhow!(
            "values file `{}` of service `{}` is not valid YAML: {e}; rebuild the service to \
             rewrite it, or pass `--digest sha256:…`",
            path.display(),
            plan.name
        )
    })?;
    let value = values::lookup(&parsed, key).ok_or_else(|| {
        anyhow!(UsageError(format!(
            "values file `{}` of service `{}` has no `{key}`; rebuild the service, or pass \
             `--digest sha256:…`",
            path.display(),
            plan.name
        )))
    })?;
    value.parse::<Digest>().map_err(|e| {
        anyhow!(UsageError(format!(
            "`{key}` in `{}`: {e}; rebuild the service, or pass `--digest sha256:…`",
            path.display()
        )))
    })
}

/// Refuses to replace a file fastbuild did not write: `--values` names a file of its own.
fn check_replaceable(path: &Path) -> Result<()> {
    match fs_err::read_to_string(path) {
        Ok(text) if !text.starts_with(values::HEADER_PREFIX) => bail!(UsageError(format!(
            "`{}` exists and was not written by fastbuild; promote rewrites the whole file (the \
             image keys only), so give it a file of its own and list that after the \
             environment's other values files (Helmfile `values:`, `helm -f`)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// `fastbuild promote`.
pub async fn run(
    project: &Project,
    args: &PromoteArgs,
    printer: &Printer,
    cancel: &CancellationToken,
) -> Result<()> {
    let flags = &args.service_flags;
    let name = project
        .select(std::slice::from_ref(&args.service), flags)?
        .remove(0);
    let plan = project.plan(&name, flags)?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let values_path: PathBuf = crate::settings::absolutize(&cwd, &args.values);
    check_replaceable(&values_path)?;

    let digest = match &args.digest {
        Some(d) => d
            .parse::<Digest>()
            .map_err(|e| anyhow!(UsageError(format!("`--digest`: {e}"))))?,
        None => pinned_digest(&plan)?,
    };
    let path = repository_path(&plan);
    let source_repository = match (&args.from_registry, &plan.registry.destination) {
        (Some(registry), _) => join(registry, &path),
        (None, Destination::Registry { repository, .. }) => repository.clone(),
        (None, _) => bail!(UsageError(format!(
            "service `{name}` has no registry to promote from; set `registry:` in fastbuild.yaml \
             or pass `--from-registry HOST`"
        ))),
    };
    let source = parse_reference(&source_repository)?.with_digest(digest.clone());

    // `--insecure-registry` and the project's `insecure_registries` cover both registries.
    let options = registry_options(&plan);
    let client = RegistryClient::new(options).context("cannot set up the registry client")?;

    let tag = flags
        .tags
        .first()
        .cloned()
        .unwrap_or_else(|| fastbuild_oci::default_tag(&digest));
    let (pull_registry, repository) = if let Some(to) = &args.to_registry {
        let target = parse_reference(&join(to, &path))?.with_tag(tag.clone());
        let copy = client.copy_image(&source, &target);
        let copied = tokio::select! {
            r = copy => r.with_context(|| format!(
                "failed to copy `{source}` to `{}`; run the same command again to resume (blobs \
                 already copied are skipped)",
                target.repository_name()
            ))?,
            () = cancel.cancelled() => return Err(anyhow!(crate::Interrupted)),
        };
        printer.note(
            Some(&name),
            Message::Copied {
                reference: copied.reference,
                manifests: copied.manifests,
                stats: copied.stats,
            },
        );
        if copied.foreign_layers > 0 {
            printer.warn(&format!(
                "{} non-distributable (foreign) layer(s) were not copied; the runtime fetches \
                 them from their own URLs",
                copied.foreign_layers
            ));
        }
        (to.trim_end_matches('/').to_owned(), join(to, &path))
    } else {
        // Nothing to copy: the image must be where the values file will say it is.
        let check = client.get_manifest(&source);
        tokio::select! {
            r = check => { r.with_context(|| format!("cannot promote `{source}`: the registry does not serve it"))?; }
            () = cancel.cancelled() => return Err(anyhow!(crate::Interrupted)),
        }
        match &args.from_registry {
            Some(from) => (from.trim_end_matches('/').to_owned(), join(from, &path)),
            None => (
                plan.registry.pull_registry.clone(),
                plan.registry.pull_repository.clone(),
            ),
        }
    };

    let image = ImageValues {
        pull_registry,
        repository: repository.clone(),
        digest: digest.clone(),
        tag: Some(tag),
    };
    let text = values::render(&plan.name, &image, &plan.values_keys)
        .map_err(|e| anyhow!(UsageError(e)))?
        // The same file a build writes, but this one changes when a digest is promoted.
        .replacen(
            "it is rewritten on each build.",
            "it is rewritten on each `fastbuild promote`.",
            1,
        );
    let outcome = atomic::write_if_changed(&values_path, text.as_bytes())
        .with_context(|| format!("failed to write the promoted values file of `{name}`"))?;
    printer.note(
        Some(&name),
        Message::ValuesFile {
            path: values_path.clone(),
            outcome,
        },
    );
    let reference = format!("{repository}@{digest}");
    printer.result(Outcome::Image {
        service: &name,
        width: 0,
        reference: &reference,
    });
    if printer.is_json() {
        printer.json(&serde_json::json!({
            "event": "result", "service": name, "reference": reference,
            "digest": digest.to_string(), "values_file": values_path.display().to_string(),
            "copied": args.to_registry.is_some(),
        }));
    }
    Ok(())
}
