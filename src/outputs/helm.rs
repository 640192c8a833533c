//! The Helm invocation: `helm upgrade --install` with base, environment and generated values,
//! `--wait --atomic --timeout`, exactly the flags of the design note's `helm_resource`.
//!
//! Stage: output. `--print` renders it shell-quoted; `--run` executes it and records a stamp of
//! its inputs (argv, every values file, the chart's files) so an unchanged deploy is skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::settings::{HelmPlan, ServicePlan, is_chart_reference};

/// The argv (without the helm binary) for `plan`, with paths relative to `base` when they lie
/// under it (for printing), absolute otherwise.
pub fn argv_relative(plan: &ServicePlan, base: &Path, helm_bin: &str) -> Result<Vec<String>> {
    let mut rel = plan.clone();
    let strip = |p: &Path| {
        p.strip_prefix(base)
            .map_or_else(|_| p.to_path_buf(), Path::to_path_buf)
    };
    if let Some(h) = rel.helm.as_mut() {
        h.values = h.values.iter().map(|v| strip(v)).collect();
        if Path::new(&h.chart).is_absolute() {
            h.chart = strip(Path::new(&h.chart)).display().to_string();
        }
    }
    rel.values_file = strip(&plan.values_file);
    argv(&rel, helm_bin)
}

/// The argv (without the helm binary) for `plan`.
pub fn argv(plan: &ServicePlan, helm_bin: &str) -> Result<Vec<String>> {
    let Some(helm) = &plan.helm else {
        bail!(crate::settings::UsageError(format!(
            "service `{}` has no `helm:` section; add `helm: {{chart: …}}` to fastbuild.yaml or pass `--chart`",
            plan.name
        )));
    };
    let rollback = helm.rollback_on_failure.then(|| rollback_flag(helm_bin));
    Ok(argv_for(helm, &plan.values_file, rollback))
}

/// The argv for a Helm plan and the generated values file. The release and chart come last,
/// after `--`, so that neither can ever be read as a flag.
pub fn argv_for(helm: &HelmPlan, generated: &Path, rollback_flag: Option<&str>) -> Vec<String> {
    let mut a = vec!["upgrade".to_owned(), "--install".to_owned()];
    if let Some(ns) = &helm.namespace {
        a.push("--namespace".into());
        a.push(ns.clone());
    }
    for v in helm
        .values
        .iter()
        .chain(std::iter::once(&generated.to_path_buf()))
    {
        a.push("--values".into());
        a.push(v.display().to_string());
    }
    a.push("--wait".into());
    a.extend(rollback_flag.map(str::to_owned));
    a.push("--timeout".into());
    a.push(helm.timeout.clone());
    a.extend(helm.flags.iter().cloned());
    a.push("--".into());
    a.push(helm.release.clone());
    a.push(helm.chart.clone());
    a
}

/// The major version of `helm_bin` (`helm version --short` → `v4.1.4+g…`), cached per binary.
pub fn helm_major(helm_bin: &str) -> Option<u32> {
    static CACHE: std::sync::Mutex<Vec<(String, Option<u32>)>> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, v)) = cache.iter().find(|(b, _)| b == helm_bin) {
        return *v;
    }
    let major = std::process::Command::new(helm_bin)
        .args(["version", "--short"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.trim()
                .strip_prefix('v')?
                .split('.')
                .next()?
                .parse()
                .ok()
        });
    cache.push((helm_bin.to_owned(), major));
    major
}

/// `--atomic` as the design note writes it (Helm 3); Helm 4 renamed it `--rollback-on-failure`
/// and prints a deprecation warning for the old name, so the flag follows the installed helm.
pub fn rollback_flag(helm_bin: &str) -> &'static str {
    match helm_major(helm_bin) {
        Some(m) if m >= 4 => "--rollback-on-failure",
        _ => "--atomic",
    }
}

/// The command line, shell-quoted and copy-pasteable.
pub fn shell_line(helm_bin: &str, argv: &[String]) -> String {
    std::iter::once(helm_bin.to_owned())
        .chain(argv.iter().cloned())
        .map(|a| shell_words::quote(&a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that every file the command needs exists.
pub fn check_inputs(plan: &ServicePlan) -> Result<()> {
    let Some(helm) = &plan.helm else {
        return Ok(());
    };
    if !is_chart_reference(&plan.root, &helm.chart)
        && !Path::new(&helm.chart).join("Chart.yaml").is_file()
    {
        bail!(crate::settings::UsageError(format!(
            "service `{}`: chart `{}` not found (no Chart.yaml there); fix `helm.chart` in fastbuild.yaml",
            plan.name, helm.chart
        )));
    }
    for v in &helm.values {
        if !v.is_file() {
            bail!(crate::settings::UsageError(format!(
                "service `{}`: values file `{}` does not exist; create it or remove it from `helm.values`",
                plan.name,
                v.display()
            )));
        }
    }
    if !plan.values_file.is_file() {
        bail!(crate::settings::UsageError(format!(
            "service `{}`: generated values file `{}` does not exist yet; run `fastbuild build {}` first",
            plan.name,
            plan.values_file.display(),
            plan.name
        )));
    }
    Ok(())
}

/// Where the stamp of the last successful run is kept.
pub fn stamp_path(plan: &ServicePlan) -> PathBuf {
    let helm = plan.helm.as_ref();
    let release = helm.map_or(plan.name.as_str(), |h| h.release.as_str());
    let ns = helm
        .and_then(|h| h.namespace.as_deref())
        .unwrap_or("default");
    plan.root
        .join(".fastbuild")
        .join("helm")
        .join(format!("{ns}.{release}.sha256"))
}

/// A hash of everything the deploy depends on: the argv, each values file, the chart's files.
pub fn fingerprint(plan: &ServicePlan, helm_bin: &str, argv: &[String]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(helm_bin.as_bytes());
    for a in argv {
        h.update(a.as_bytes());
        h.update([0]);
    }
    if let Some(helm) = &plan.helm {
        for v in helm.values.iter().chain(std::iter::once(&plan.values_file)) {
            let bytes = fs_err::read(v)
                .with_context(|| format!("cannot read values file `{}`", v.display()))?;
            h.update(v.display().to_string().as_bytes());
            h.update(Sha256::digest(&bytes));
        }
        let chart = Path::new(&helm.chart);
        if chart.is_dir() {
            hash_dir(chart, chart, &mut h)?;
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_dir(root: &Path, dir: &Path, h: &mut Sha256) -> Result<()> {
    let mut entries: Vec<_> = fs_err::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(fs_err::DirEntry::file_name);
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap_or(&p);
        h.update(rel.display().to_string().as_bytes());
        let ft = e.file_type()?;
        if ft.is_dir() {
            hash_dir(root, &p, h)?;
        } else if ft.is_file() {
            h.update(Sha256::digest(fs_err::read(&p)?));
        }
    }
    Ok(())
}

/// What [`run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// helm ran and succeeded.
    Deployed,
    /// Nothing changed since the last successful run.
    Skipped,
}

/// Runs helm, streaming its output; records the stamp on success. Skips when unchanged unless
/// `force`.
pub async fn run(plan: &ServicePlan, helm_bin: &str, force: bool) -> Result<RunOutcome> {
    check_inputs(plan)?;
    let argv = argv(plan, helm_bin)?;
    let fp = fingerprint(plan, helm_bin, &argv)?;
    let stamp = stamp_path(plan);
    if !force && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == fp) {
        return Ok(RunOutcome::Skipped);
    }
    let status = tokio::process::Command::new(helm_bin)
        .args(&argv)
        .current_dir(&plan.root)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| {
            format!("cannot run `{helm_bin}`; install helm or set HELM=/path/to/helm")
        })?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}) for service `{}`",
            shell_line(helm_bin, &argv[..4.min(argv.len())]),
            plan.name
        );
    }
    crate::atomic::write(&stamp, format!("{fp}\n").as_bytes())?;
    Ok(RunOutcome::Deployed)
}
