//! The one-way pipeline behind `build` and `push`: settings → build → publish → outputs.
//!
//! Services build in parallel (bounded). Each successful service gets its values file; CI
//! outputs (`--digest-out`, `--metadata-file`, `--image-refs`, `--image-ref-out`) are written
//! only when every selected service succeeded, staged and renamed together. Nothing is written
//! for a failed service.

use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::atomic;
use crate::builder::{self, ImageResult};
use crate::cli::{BuildArgs, MetadataFormat};
use crate::outputs::{metadata, values};
use crate::printer::{Event, Message, Outcome, Printer, ServiceState};
use crate::settings::{self, Destination, Project, ServicePlan, UsageError};

/// `build` writes values files by default; `push` (CI) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `fastbuild build`.
    Build,
    /// `fastbuild push`.
    Push,
}

/// One service's outcome.
#[derive(Debug)]
pub struct ServiceOutcome {
    /// Service.
    pub name: String,
    /// The image, or why not.
    pub result: Result<ImageResult>,
}

/// The plans for `args` (resolved, and changed for `--no-push` / `--output`, by settings) and
/// the checks that the CI outputs asked for fit them.
pub fn plans(project: &Project, args: &BuildArgs, flavor: Flavor) -> Result<Vec<ServicePlan>> {
    let names = project.select(&args.services, &args.service)?;
    let delivery = settings::Delivery {
        output: args.output.clone(),
        no_push: args.no_push,
        reproducible_by_default: flavor == Flavor::Push,
        // Reuse without a solve: the inner loop's default, CI's opt-in; recorded, never
        // used, with --force (and with --no-cache: see crate::reuse).
        reuse: match (flavor, args.force) {
            (Flavor::Push, _) if !args.skip_unchanged => settings::Reuse::Off,
            (_, true) => settings::Reuse::Record,
            _ => settings::Reuse::Use,
        },
    };
    let plans = project.plans_for(&names, &args.service, &delivery)?;
    if plans.len() > 1
        && (args.digest_out.is_some() || args.image_ref_out.is_some() || args.values_out.is_some())
    {
        bail!(UsageError(
            "`--digest-out`, `--values-out` and `--image-ref-out` take exactly one service; name it, or use \
             `--image-refs FILE` (one `repo@digest` per service) or `--metadata-file FILE` \
             (keyed by service)"
                .into()
        ));
    }
    if plans.len() > 1
        && args.metadata_file.is_some()
        && metadata_format(project, args) == MetadataFormat::Buildx
    {
        bail!(UsageError(
            "`--metadata-format buildx` writes one service's flat metadata; name the service, \
             or use `--metadata-format bake` (keyed by service)"
                .into()
        ));
    }
    if (args.image_refs.is_some() || args.values_out.is_some())
        && plans
            .iter()
            .any(|p| !matches!(p.registry.destination, Destination::Registry { .. }))
    {
        bail!(UsageError(
            "`--image-refs` and `--values-out` describe pushed images; they cannot be used with \
             `--no-push` or `--output`"
                .into()
        ));
    }
    if plans.len() > 1 && args.output.is_some() {
        bail!(UsageError(
            "`--output oci:DIR` takes exactly one service; name it".into()
        ));
    }
    Ok(plans)
}

/// The shape of `--metadata-file`: `--metadata-format`, else bake's (keyed by service) when a
/// project file names the services, buildx's flat one for an ad-hoc `--context` build. Never
/// chosen by how many services there are: adding one must not change a CI script's input.
pub fn metadata_format(project: &Project, args: &BuildArgs) -> MetadataFormat {
    args.metadata_format.unwrap_or(if project.file.is_some() {
        MetadataFormat::Bake
    } else {
        MetadataFormat::Buildx
    })
}

/// Builds every plan (bounded parallelism), forwarding progress to the printer.
pub async fn build_all(
    plans: &[ServicePlan],
    parallel: usize,
    printer: &Printer,
    cancel: &CancellationToken,
) -> Vec<ServiceOutcome> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let p = printer.clone();
    let forward = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            p.event(&ev);
        }
    });
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::new();
    for plan in plans {
        let plan = plan.clone();
        let tx = tx.clone();
        let sem = Arc::clone(&sem);
        let cancel = cancel.child_token();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let _ = tx.send(Event::State {
                service: plan.name.clone(),
                state: ServiceState::Building {
                    step: "starting".into(),
                    done: 0,
                },
            });
            let res = tokio::select! {
                r = builder::build(&plan, tx.clone(), cancel.clone()) => r,
                () = cancel.cancelled() => Err(anyhow!("build of `{}` cancelled", plan.name)),
            };
            let state = match &res {
                Ok(img) => ServiceState::Pushed {
                    reference: img.pinned(),
                },
                Err(e) => ServiceState::Failed {
                    error: format!("{e:#}"),
                },
            };
            let _ = tx.send(Event::State {
                service: plan.name.clone(),
                state,
            });
            ServiceOutcome {
                name: plan.name.clone(),
                result: res,
            }
        }));
    }
    drop(tx);
    let mut out = Vec::new();
    for t in tasks {
        match t.await {
            Ok(o) => out.push(o),
            Err(e) => out.push(ServiceOutcome {
                name: "?".into(),
                result: Err(anyhow!("build task panicked: {e}")),
            }),
        }
    }
    let _ = forward.await;
    out
}

/// `fastbuild build` / `fastbuild push`.
/// One warning per BuildKit address reached over plain TCP off this machine.
pub fn warn_plaintext_remote(plans: &[ServicePlan], printer: &Printer) {
    let warnings: std::collections::BTreeSet<String> = plans
        .iter()
        .filter_map(|p| match &p.builder {
            crate::settings::BuilderPlan::Buildkit(b) => {
                crate::builder::buildkit::plaintext_remote_warning(b)
            }
            crate::settings::BuilderPlan::Native(_) => None,
        })
        .collect();
    for w in warnings {
        printer.warn(&w);
    }
}

pub async fn run(
    project: &Project,
    args: &BuildArgs,
    flavor: Flavor,
    printer: &Printer,
    cancel: &CancellationToken,
) -> Result<()> {
    let plans = plans(project, args, flavor)?;
    warn_plaintext_remote(&plans, printer);
    let write_values_files = match flavor {
        Flavor::Build => !args.no_values,
        Flavor::Push => args.values,
    };
    let git = crate::history::GitStates::prefetch(
        plans
            .iter()
            .filter(|p| matches!(p.registry.destination, Destination::Registry { .. }))
            .map(|p| p.root.as_path()),
    );
    let outcomes = build_all(&plans, project.parallel, printer, cancel).await;
    if cancel.is_cancelled() {
        return Err(anyhow!(crate::Interrupted));
    }
    let mut failures = Vec::new();
    // Values files first (their notes), then the results: on a terminal the notes stay above
    // the final states of the live view, the results below them.
    let mut built: Vec<(&ServicePlan, ImageResult)> = Vec::new();
    for (plan, outcome) in plans.iter().zip(outcomes) {
        match outcome.result {
            Ok(image) => {
                let pushed = matches!(plan.registry.destination, Destination::Registry { .. });
                if pushed && write_values_files {
                    match values::write_for(plan, &image) {
                        Ok(outcome) => printer.note(
                            Some(&plan.name),
                            Message::ValuesFile {
                                path: plan.values_file.clone(),
                                outcome,
                            },
                        ),
                        Err(e) => {
                            failures.push((plan.name.clone(), e));
                            continue;
                        }
                    }
                }
                // A reused build pins what the journal already holds: nothing to add (and no
                // `git` to run for it).
                if !image.reused {
                    crate::history::record_build(
                        plan,
                        &image,
                        pushed && write_values_files,
                        git.get(&plan.root),
                        printer,
                    );
                }
                built.push((plan, image));
            }
            Err(e) => failures.push((plan.name.clone(), e)),
        }
    }
    printer.finish_live();
    let width = plans.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for (plan, image) in &built {
        let pushed = matches!(plan.registry.destination, Destination::Registry { .. });
        let shown = match &plan.registry.destination {
            Destination::Layout(dir) => format!("oci:{}@{}", dir.display(), image.digest),
            Destination::None => image.digest.to_string(),
            Destination::Registry { .. } => image.pinned(),
        };
        printer.result(Outcome::Image {
            service: &plan.name,
            width,
            reference: &shown,
        });
        if printer.is_json() {
            printer.json(&serde_json::json!({
                "event": "result", "service": plan.name, "reference": shown,
                "digest": image.digest, "values_file": (pushed && write_values_files).then(|| plan.values_file.display().to_string()),
                "reused": image.reused,
            }));
        }
    }
    match failures.len() {
        0 => write_ci_outputs(args, metadata_format(project, args), &built),
        1 => {
            let (name, e) = failures.pop().expect("one failure");
            Err(e.context(format!("service `{name}` failed")))
        }
        n => {
            for (name, e) in &failures {
                printer.error(&anyhow!("service `{name}` failed: {e:#}"));
            }
            Err(anyhow!("{n} services failed"))
        }
    }
}

/// Writes the CI outputs of `built` (every selected service, in service order).
fn write_ci_outputs(
    args: &BuildArgs,
    format: MetadataFormat,
    built: &[(&ServicePlan, ImageResult)],
) -> Result<()> {
    // Everything is rendered before anything is written, so an output that cannot be produced
    // (`--image-ref-out` without a pushed tag) leaves none of the others behind.
    let mut files: Vec<(&std::path::Path, Vec<u8>)> = Vec::new();
    // `plans` made sure the single-image outputs have exactly one service.
    let single = || {
        built
            .first()
            .map(|(_, image)| image)
            .ok_or_else(|| anyhow!("no service was built"))
    };
    if let Some(p) = &args.metadata_file {
        let value = match format {
            MetadataFormat::Buildx => metadata::metadata_json(single()?),
            MetadataFormat::Bake => {
                let named: Vec<(&str, &ImageResult)> =
                    built.iter().map(|(p, i)| (p.name.as_str(), i)).collect();
                metadata::bake_metadata_json(&named)
            }
        };
        let text = serde_json::to_string_pretty(&value)? + "\n";
        files.push((p, text.into_bytes()));
    }
    if let Some(p) = &args.image_refs {
        let mut text = String::new();
        for (_, image) in built {
            text.push_str(&image.pinned());
            text.push('\n');
        }
        files.push((p, text.into_bytes()));
    }
    if let Some(p) = &args.image_ref_out {
        let line = metadata::image_ref_line(single()?)
            .ok_or_else(|| anyhow!("`--image-ref-out` needs a pushed tag"))?;
        files.push((p, line.into_bytes()));
    }
    if let Some(p) = &args.digest_out {
        let line = metadata::digest_line(single()?, args.digest_format);
        files.push((p, line.into_bytes()));
    }
    if let Some(p) = &args.values_out {
        let (plan, image) = built
            .first()
            .ok_or_else(|| anyhow!("no service was built"))?;
        files.push((
            p,
            values::text_for(plan, &image.digest, image.tag.clone())?.into_bytes(),
        ));
    }
    if files.is_empty() {
        return Ok(());
    }
    // Staged, then renamed together: one output that cannot be written leaves the others
    // (and every previous file) as they were.
    let files: Vec<(&std::path::Path, &[u8])> =
        files.iter().map(|(p, c)| (*p, c.as_slice())).collect();
    atomic::write_all(&files).context("failed to write the CI outputs; none was written")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan of a one-service project in a temp dir (kept alive by the returned guard).
    fn plan() -> (tempfile::TempDir, ServicePlan) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fastbuild.yaml");
        fs_err::write(
            &file,
            "registry: 127.0.0.1:5000\nservices:\n  app:\n    context: .\n",
        )
        .unwrap();
        fs_err::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        let project = Project::load(Some(&file), &[]).unwrap();
        let plan = project
            .plan("app", &crate::cli::ServiceFlags::default())
            .unwrap();
        (dir, plan)
    }

    fn image(tag: Option<&str>) -> ImageResult {
        ImageResult {
            digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 2,
            config_digest: None,
            descriptor: serde_json::json!({}),
            repository: "127.0.0.1:5000/app".into(),
            tag: tag.map(str::to_owned),
            bytes_uploaded: None,
            reused: false,
        }
    }

    #[test]
    fn ci_outputs_are_all_or_nothing() {
        let (_project, app) = plan();
        let dir = tempfile::tempdir().unwrap();
        let args = BuildArgs {
            metadata_file: Some(dir.path().join("meta.json")),
            image_ref_out: Some(dir.path().join("ref.txt")),
            digest_out: Some(dir.path().join("digest.txt")),
            ..BuildArgs::default()
        };
        // No tag (not pushed): `--image-ref-out` cannot be written, so nothing is.
        let err =
            write_ci_outputs(&args, MetadataFormat::Buildx, &[(&app, image(None))]).unwrap_err();
        assert!(err.to_string().contains("--image-ref-out"), "{err:#}");
        assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 0);

        write_ci_outputs(
            &args,
            MetadataFormat::Buildx,
            &[(&app, image(Some("fb-aaaaaaaaaaaa")))],
        )
        .unwrap();
        assert_eq!(
            fs_err::read_to_string(dir.path().join("ref.txt")).unwrap(),
            "127.0.0.1:5000/app:fb-aaaaaaaaaaaa\n"
        );
        assert!(dir.path().join("meta.json").is_file());
        assert!(dir.path().join("digest.txt").is_file());
    }

    /// Hardening L5: `--metadata-file` was written, then `--digest-out` into an unwritable
    /// directory failed.
    #[test]
    fn an_unwritable_ci_output_leaves_every_previous_output_intact() {
        let (_project, app) = plan();
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("meta.json"), "previous\n").unwrap();
        fs_err::write(dir.path().join("not-a-dir"), "a file\n").unwrap();
        let args = BuildArgs {
            metadata_file: Some(dir.path().join("meta.json")),
            digest_out: Some(dir.path().join("not-a-dir/digest.txt")),
            ..BuildArgs::default()
        };
        let err = write_ci_outputs(
            &args,
            MetadataFormat::Bake,
            &[(&app, image(Some("fb-aaaaaaaaaaaa")))],
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("none was written") && msg.contains("not-a-dir"),
            "{msg}"
        );
        assert_eq!(
            fs_err::read_to_string(dir.path().join("meta.json")).unwrap(),
            "previous\n"
        );
        let mut names: Vec<String> = fs_err::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["meta.json", "not-a-dir"],
            "no temp file left behind"
        );
    }
}
