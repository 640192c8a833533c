//! Helm: the release, chart, namespace, values files and flags of a service's deploy, with
//! the release and namespace checked as Helm and Kubernetes would check them.

use std::path::{Path, PathBuf};

use super::merge::{Sources, first, replaced};
use crate::config::HelmConfig;
use crate::error::UsageError;

/// Default Helm timeout: the design note's 600 s.
pub const DEFAULT_HELM_TIMEOUT: &str = "10m";

/// Helm settings resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmPlan {
    /// Release.
    pub release: String,
    /// Chart path or reference.
    pub chart: String,
    /// Namespace.
    pub namespace: Option<String>,
    /// Values files before the generated one.
    pub values: Vec<PathBuf>,
    /// Extra flags.
    pub flags: Vec<String>,
    /// Timeout.
    pub timeout: String,
    /// Roll back a failed upgrade (`--atomic` / `--rollback-on-failure`).
    pub rollback_on_failure: bool,
}

/// Resolves the Helm deploy of service `name`, if it has one (`helm:` in the project file, or
/// `--chart`).
pub(super) fn resolve(src: Sources<'_>, name: &str) -> Result<Option<HelmPlan>, UsageError> {
    let Sources { flags, svc, .. } = src;
    let helm_cfg: Option<HelmConfig> = match (&svc.helm, &flags.chart) {
        (_, Some(chart)) => Some(HelmConfig {
            chart: chart.clone(),
            ..svc.helm.clone().unwrap_or_default()
        }),
        (Some(h), None) => Some(h.clone()),
        (None, None) => None,
    };
    let Some(h) = helm_cfg else {
        return Ok(None);
    };
    let chart = if is_chart_reference(src.root, &h.chart) {
        h.chart.clone()
    } else {
        src.abs(Path::new(&h.chart)).display().to_string()
    };
    let plan = HelmPlan {
        release: first([flags.release.as_ref(), h.release.as_ref()])
            .unwrap_or_else(|| name.to_owned()),
        chart,
        namespace: first([flags.namespace.as_ref(), h.namespace.as_ref()]),
        values: replaced(&flags.helm_values, &h.values)
            .iter()
            .map(|p| src.abs(p))
            .collect(),
        flags: h.flags.iter().chain(&flags.helm_flags).cloned().collect(),
        timeout: first([flags.timeout.as_ref(), h.timeout.as_ref()])
            .unwrap_or_else(|| DEFAULT_HELM_TIMEOUT.into()),
        rollback_on_failure: !flags.no_rollback_on_failure && h.rollback_on_failure.unwrap_or(true),
    };
    check_release(name, &plan.release)?;
    if let Some(ns) = &plan.namespace {
        check_namespace(name, ns)?;
    }
    Ok(Some(plan))
}

/// A lowercase DNS label (RFC 1123): letters, digits and `-`, starting and ending with a
/// letter or digit; the length is the caller's to bound.
fn is_dns_label(l: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    l.starts_with(alnum) && l.ends_with(alnum) && l.chars().all(|c| alnum(c) || c == '-')
}

/// A Helm release name as Helm itself accepts it (lowercase DNS labels joined by dots, at most
/// 53 characters) — never something Helm would read as a flag.
fn check_release(service: &str, release: &str) -> Result<(), UsageError> {
    if release.len() <= 53 && release.split('.').all(is_dns_label) {
        return Ok(());
    }
    Err(UsageError(format!(
        "service `{service}`: invalid Helm release name `{}`: lowercase letters, digits, `-` and \
         `.` (each part starting and ending with a letter or digit), at most 53 characters; set \
         `helm.release` in fastbuild.yaml or pass `--release`",
        release.escape_debug()
    )))
}

/// A Kubernetes namespace: one lowercase DNS label of at most 63 characters.
fn check_namespace(service: &str, namespace: &str) -> Result<(), UsageError> {
    let ok = namespace.len() <= 63 && is_dns_label(namespace);
    if ok {
        return Ok(());
    }
    Err(UsageError(format!(
        "service `{service}`: invalid namespace `{}`: lowercase letters, digits and `-`, starting \
         and ending with a letter or digit, at most 63 characters; fix `helm.namespace` in \
         fastbuild.yaml or `--namespace`",
        namespace.escape_debug()
    )))
}

/// A chart given as `oci://…` or `repo/name` (resolved by helm) rather than a local path.
pub fn is_chart_reference(root: &Path, chart: &str) -> bool {
    if chart.starts_with("oci://") || chart.contains("://") {
        return true;
    }
    if chart.starts_with('.') || chart.starts_with('/') || root.join(chart).exists() {
        return false;
    }
    // `repo/name` is a Helm repository chart unless `repo` is a local directory (then it is a
    // local chart that is missing, and saying so beats helm's "repo not found").
    match chart.split_once('/') {
        Some((first, rest)) => !rest.contains('/') && !root.join(first).is_dir(),
        None => false,
    }
}
