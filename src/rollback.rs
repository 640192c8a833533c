//! `fastbuild history` and `fastbuild rollback`: the design note's "rollback by promoting
//! previous digests", from the project's own digest history ([`crate::history`]).
//!
//! Stage: settings → a registry check → outputs. A rollback never rebuilds: it pins an
//! earlier digest in the service's values file, after the registry confirms it still serves
//! that manifest, records itself in the history, and with `--deploy` runs the Helm invocation.

use std::fmt::Write as _;

use anyhow::{Context as _, Result, anyhow, bail};
use fastbuild_oci::Digest;

use crate::cli::{HistoryArgs, RollbackArgs, ServiceFlags};
use crate::history::{self, Journal, Kind, Record};
use crate::printer::{Outcome, Printer};
use crate::settings::{Destination, Project, ServicePlan, UsageError};

/// `fastbuild history`.
pub fn list(project: &Project, args: &HistoryArgs, printer: &Printer) -> Result<()> {
    let names = if args.services.is_empty() {
        Vec::new()
    } else {
        project.select(&args.services, &ServiceFlags::default())?
    };
    let (records, warnings) = Journal::new(&project.root).read()?;
    for w in warnings {
        printer.warn(&w);
    }
    let mut shown: Vec<&Record> = records
        .iter()
        .rev()
        .filter(|r| names.is_empty() || names.contains(&r.service))
        .collect();
    if let Some(limit) = args.limit {
        let mut per_service = std::collections::BTreeMap::<&str, usize>::new();
        shown.retain(|r| {
            let n = per_service.entry(r.service.as_str()).or_default();
            *n += 1;
            *n <= limit
        });
    }
    if args.json {
        for r in shown {
            printer.json(r);
        }
        return Ok(());
    }
    if shown.is_empty() {
        printer.note(
            None,
            format!(
                "no history yet in {} (it grows with every successful build or push)",
                Journal::new(&project.root).path().display()
            ),
        );
        return Ok(());
    }
    let width = shown
        .iter()
        .map(|r| r.service.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut out = format!(
        "{:19}  {:width$}  {:8}  {:19}  {}\n",
        "TIME (UTC)", "SERVICE", "KIND", "DIGEST", "GIT"
    );
    for r in shown {
        let git = r.git.as_ref().map_or_else(
            || "-".to_owned(),
            |g| {
                let short: String = g.commit.chars().take(10).collect();
                match g.dirty {
                    Some(true) => format!("{short}+"),
                    _ => short,
                }
            },
        );
        let kind = match r.kind {
            Kind::Build if r.builder.is_empty() => "build".to_owned(),
            Kind::Build => r.builder.clone(),
            Kind::Rollback => "rollback".to_owned(),
        };
        let digest: String = r.digest.to_string().chars().take(19).collect();
        // Fits 80 columns; the repository and the full digest are in `--json`.
        let _ = writeln!(
            out,
            "{}  {:width$}  {kind:8}  {digest:19}  {git}",
            r.time_shown(),
            r.service,
        );
    }
    printer.raw(&out);
    Ok(())
}

/// The digest the values file of `plan` pins now, read with the YAML parser at its digest key.
fn pinned_digest(plan: &ServicePlan) -> Option<String> {
    let key = plan.values_keys.digest_key.as_deref()?;
    let text = fs_err::read_to_string(&plan.values_file).ok()?;
    let mut value: serde_json::Value = serde_saphyr::from_str(&text).ok()?;
    for part in key.split('.') {
        value = value.get(part)?.clone();
    }
    value.as_str().map(str::to_owned)
}

/// `fastbuild rollback`.
pub async fn rollback(project: &Project, args: &RollbackArgs, printer: &Printer) -> Result<()> {
    let name = project.select(std::slice::from_ref(&args.service), &args.service_flags)?[0].clone();
    let plan = project.plan(&name, &args.service_flags)?;
    let Destination::Registry { repository, .. } = &plan.registry.destination else {
        bail!(UsageError(format!(
            "service `{name}` has no registry to roll back in; set `registry` in fastbuild.yaml or \
             pass `--registry`"
        )));
    };
    let journal = Journal::new(&project.root);
    let (records, warnings) = journal.read()?;
    for w in warnings {
        printer.warn(&w);
    }
    let known = history::digests_newest_first(&records, &name);
    // What the values file says, as written there (it may not be a digest at all).
    let current = pinned_digest(&plan).or_else(|| known.first().map(ToString::to_string));
    let target = if let Some(d) = &args.to {
        d.parse::<Digest>().map_err(|_| {
            anyhow!(UsageError(format!(
                "`--to {d}` is not a digest; give `sha256:` and 64 hex digits (see `fastbuild \
                 history {name}`)"
            )))
        })?
    } else {
        let steps = args.steps.unwrap_or(1);
        if steps == 0 {
            bail!(UsageError("`--steps` must be at least 1".into()));
        }
        let at = current
            .as_ref()
            .and_then(|c| known.iter().position(|k| k.to_string() == *c))
            .unwrap_or(0);
        known.get(at + steps).cloned().ok_or_else(|| {
            anyhow!(UsageError(format!(
                "`{name}` has {} earlier digest(s) in {} before the one pinned now; \
                 `--steps {steps}` goes too far (see `fastbuild history {name}`, or give \
                 `--to DIGEST`)",
                known.len().saturating_sub(at + 1),
                journal.path().display()
            )))
        })?
    };
    if current == Some(target.to_string()) {
        printer.note(Some(&name), format!("already pins {target}; nothing to do"));
        return Ok(());
    }

    // The registry must still serve it (a garbage-collected digest would break the deploy).
    let client =
        fastbuild_oci::RegistryClient::new(crate::builder::registry::registry_options(&plan))
            .context("cannot set up the registry client")?;
    let reference: fastbuild_oci::Reference = format!("{repository}@{target}")
        .parse()
        .with_context(|| format!("bad image reference `{repository}@{target}`"))?;
    match client.get_manifest(&reference).await {
        Ok(_) => {}
        Err(fastbuild_oci::Error::Status { status: 404, .. }) => bail!(
            "the registry no longer has `{repository}@{target}` (deleted or garbage-collected); \
             nothing was changed — pick another digest from `fastbuild history {name}`"
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot confirm that the registry still has `{repository}@{target}`; nothing was \
                 changed"
            )));
        }
    }

    let tag = plan
        .values_keys
        .tag_key
        .is_some()
        .then(|| fastbuild_oci::default_tag(&target));
    let text = crate::outputs::values::text_for(&plan, &target, tag)?;
    crate::atomic::write(&plan.values_file, text.as_bytes())
        .with_context(|| format!("failed to write the values file of `{name}`"))?;
    let record = Record {
        service: name.clone(),
        repository: plan.registry.pull_repository.clone(),
        digest: target.clone(),
        time: history::now(),
        kind: Kind::Rollback,
        builder: String::new(),
        git: history::git_state(&plan.root),
        values_file: Some(
            plan.values_file
                .strip_prefix(&plan.root)
                .unwrap_or(&plan.values_file)
                .display()
                .to_string(),
        ),
    };
    if let Err(e) = journal.append(&record) {
        printer.warn(&format!(
            "could not record the rollback in the history ({e:#})"
        ));
    }
    printer.note(
        Some(&name),
        format!(
            "wrote {} (was {})",
            plan.values_file.display(),
            current.as_deref().unwrap_or("unpinned")
        ),
    );
    printer.result(Outcome::Image {
        service: &name,
        width: 0,
        reference: &format_args!("{}@{target}", plan.registry.pull_repository),
    });
    if args.deploy {
        crate::outputs::helm::run(&plan, &args.helm.program, true).await?;
        printer.note(Some(&name), "helm upgrade succeeded");
    }
    Ok(())
}
