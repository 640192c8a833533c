//! `fastbuild doctor`: preflight checks, each with a verdict and what to do about it.
//!
//! BuildKit reachable (version, workers, platforms); each registry reachable from the host,
//! HTTP vs HTTPS detected; credentials found (never printed); helm and kubectl present; each
//! chart renders digest-first; the values directory is git-ignored.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow};
use std::fmt::Write as _;

use serde::Serialize;

use crate::builder;
use crate::cli::DoctorArgs;
use crate::printer::Printer;
use crate::settings::{BuilderPlan, Destination, Project, ServicePlan};

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Broken: fastbuild will fail.
    Fail,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Verdict.
    pub status: Status,
    /// What was found, and what to do.
    pub detail: String,
}

fn check(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
    }
}

/// The digest used to probe charts.
pub const PROBE_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// The digest-first template snippet of the design note.
pub const DIGEST_FIRST_SNIPPET: &str = r#"{{- $repo := .Values.image.graph -}}
{{- if .Values.image.digest }}
image: "{{ $repo }}@{{ .Values.image.digest }}"
{{- else if .Values.image.tag }}
image: "{{ $repo }}:{{ .Values.image.tag }}"
{{- else }}
image: "{{ $repo }}"
{{- end }}"#;

/// Runs every check; prints a table (or JSON); fails when any check fails.
pub async fn run(project: &Project, args: &DoctorArgs, printer: &Printer) -> Result<()> {
    let checks = collect(project, args).await?;
    if args.json {
        printer.json(&serde_json::json!({ "checks": checks, "ok": checks.iter().all(|c| c.status != Status::Fail) }));
    } else {
        printer.raw(&render(&checks));
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        return Err(anyhow!("{failed} check(s) failed"));
    }
    Ok(())
}

/// The text table.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        let mut lines = c.detail.lines();
        let _ = writeln!(
            out,
            "{tag}  {:width$}  {}",
            c.name,
            lines.next().unwrap_or_default()
        );
        for l in lines {
            let _ = writeln!(out, "{:pad$}{l}", "", pad = width + 8);
        }
    }
    out
}

/// Runs the checks.
pub async fn collect(project: &Project, args: &DoctorArgs) -> Result<Vec<Check>> {
    let flags = &args.service_flags;
    let names = project.select_lenient(&[], flags)?;
    let plans: Vec<ServicePlan> = names
        .iter()
        .map(|n| project.plan(n, flags))
        .collect::<Result<_>>()?;
    let mut checks = Vec::new();

    match &project.file {
        Some(f) => checks.push(check(
            "project file",
            Status::Ok,
            format!(
                "{} ({} services)",
                f.display(),
                project.config.services.len()
            ),
        )),
        None => checks.push(check(
            "project file",
            Status::Warn,
            "no fastbuild.yaml found here or in a parent; using flags only",
        )),
    }

    // BuildKit, once per address.
    let mut seen = BTreeSet::new();
    for plan in &plans {
        if let BuilderPlan::Buildkit(b) = &plan.builder {
            if !seen.insert(b.address.clone()) {
                continue;
            }
            let name = format!("buildkit {}", b.address);
            let why = format!("chosen by {}", b.address_source);
            match tokio::time::timeout(Duration::from_secs(10), builder::buildkit::probe(b)).await {
                Ok(Ok(report)) => checks.push(check(name, Status::Ok, format!("{report}; {why}"))),
                Ok(Err(e)) => checks.push(check(name, Status::Fail, format!("{e:#}; {why}"))),
                Err(_) => checks.push(check(
                    name,
                    Status::Fail,
                    format!(
                        "no answer within 10 s; is the daemon running? set BUILDKIT_HOST or \
                         --buildkit; {why}"
                    ),
                )),
            }
        }
    }

    // Registries, once per host.
    let mut hosts = BTreeSet::new();
    for plan in &plans {
        if let Destination::Registry { host, insecure, .. } = &plan.registry.destination
            && hosts.insert(host.clone())
        {
            checks.push(registry_check(plan, host, *insecure).await);
            checks.push(credentials_check(host).await);
            if let BuilderPlan::Buildkit(b) = &plan.builder
                && !args.no_push_probe
                && let Some(c) = push_probe_check(plan, b, host, *insecure).await
            {
                checks.push(c);
            }
        }
    }

    checks.push(tool_check("helm", &args.helm.program, &["version", "--short"]).await);
    checks.push(tool_check("kubectl", &args.kubectl, &["version", "--client"]).await);

    for plan in &plans {
        if plan.helm.is_some() {
            checks.push(chart_check(plan, &args.helm.program).await);
        }
    }

    let mut dirs = BTreeSet::new();
    for plan in &plans {
        if dirs.insert(plan.values_file.clone()) {
            checks.push(gitignore_check(plan));
        }
    }
    for plan in &plans {
        if let Some(c) = generated_in_context_check(plan) {
            checks.push(c);
        }
    }
    Ok(checks)
}

/// A BuildKit context that holds what every build rewrites (the values files) sends a changed
/// context each time: the next build's digest moves even when nothing else did. Warns unless
/// `.dockerignore` excludes them. (`.fastbuild/`, fastbuild's own state, is never sent.)
fn generated_in_context_check(plan: &ServicePlan) -> Option<Check> {
    use std::os::unix::ffi::OsStrExt as _;
    let BuilderPlan::Buildkit(b) = &plan.builder else {
        return None;
    };
    let excluder = crate::inputs::excluder(b);
    let generated = [plan.values_file.clone()];
    let sent: Vec<String> = generated
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&b.context).ok()?;
            let ignored = excluder
                .as_ref()
                .is_some_and(|m| m.matches(rel.as_os_str().as_bytes()));
            (!ignored).then(|| rel.display().to_string())
        })
        .collect();
    if sent.is_empty() {
        return None;
    }
    Some(check(
        format!("context {}", plan.name),
        Status::Warn,
        format!(
            "the build context `{}` includes {}, which every build rewrites: the next build's \
             context then differs and its digest moves; add {} to `.dockerignore`",
            b.context.display(),
            sent.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(" and "),
            sent.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// What only the BuildKit daemon knows about a registry (plain HTTP, its CA, a mirror) decides
/// whether its pushes work, and fastbuild cannot pass all of it with a build: for local and
/// insecure registries, push a probe image (one small file) through the daemon and, when that
/// fails, say which daemon setting to change. `None`: not probed (hosted registries).
async fn push_probe_check(
    plan: &ServicePlan,
    b: &crate::settings::BuildkitPlan,
    host: &str,
    insecure: bool,
) -> Option<Check> {
    let name = format!("push via buildkit to {host}");
    if fastbuild_oci::auth::is_docker_hub(host) && insecure {
        return Some(check(
            name,
            Status::Warn,
            "docker.io is marked insecure (a local proxy standing in for Docker Hub?): fastbuild \
             speaks to it over plain HTTP, but the daemon reaches registry-1.docker.io unless it \
             is told otherwise — dockerd: `registry-mirrors` in daemon.json (pulls only); \
             buildkitd: `[registry.\"docker.io\"] mirrors = [\"HOST:PORT\"]` in buildkitd.toml; \
             or push to the proxy's own name instead of docker.io",
        ));
    }
    if !insecure {
        return None;
    }
    let Destination::Registry { .. } = &plan.registry.destination else {
        return None;
    };
    let ctx = tempfile::tempdir().ok()?;
    fs_err::write(ctx.path().join("probe"), "fastbuild doctor\n").ok()?;
    fs_err::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY probe /probe\n",
    )
    .ok()?;
    let registry = host;
    let opts = fastbuild_buildkit::BuildOptions {
        context: ctx.path().to_owned(),
        image_names: vec![format!("{registry}/fastbuild-doctor-probe:probe")],
        push: true,
        registry_insecure: true,
        docker_config_dir: plan.registry.docker_config.clone(),
        ..fastbuild_buildkit::BuildOptions::default()
    };
    let tls = b.tls.as_ref().map(|t| fastbuild_buildkit::TlsOptions {
        ca_cert: t.ca.clone(),
        cert: t.cert.clone(),
        key: t.key.clone(),
        server_name: t.server_name.clone(),
    });
    let run = async {
        let client = fastbuild_buildkit::Client::connect(&b.address, tls).await?;
        let (tx, _rx) = tokio::sync::mpsc::channel(64);
        client
            .build(opts, tx, tokio_util::sync::CancellationToken::new())
            .await
    };
    let Ok(result) = tokio::time::timeout(Duration::from_secs(60), run).await else {
        return Some(check(
            name,
            Status::Warn,
            "the probe push took more than 60 s; is the daemon busy?",
        ));
    };
    Some(match result {
        Ok(r) => check(
            name,
            Status::Ok,
            format!(
                "the daemon pushed the probe image ({}/fastbuild-doctor-probe@{})",
                registry, r.digest
            ),
        ),
        Err(fastbuild_buildkit::Error::Unreachable { .. }) => return None,
        Err(e) => {
            let text = format!("{e:#}");
            let fix = if text.contains("HTTP response to HTTPS client") {
                format!(
                    "the daemon speaks HTTPS to {host}, which speaks plain HTTP: dockerd: add it to \
                     `insecure-registries` in daemon.json; buildkitd: `[registry.\"{host}\"] \
                     http = true` in buildkitd.toml"
                )
            } else if text.contains("x509") || text.contains("certificate") {
                format!(
                    "the daemon does not trust {host}'s certificate: dockerd: \
                     /etc/docker/certs.d/{host}/ca.crt; buildkitd: `[registry.\"{host}\"] \
                     ca = [\"/path/ca.pem\"]` in buildkitd.toml"
                )
            } else if text.contains("connection refused") || text.contains("no such host") {
                format!(
                    "the daemon cannot reach {host}: an address that works here may not from the \
                     daemon (a loopback address inside a container or another machine is its own)"
                )
            } else {
                "see the error above".to_owned()
            };
            check(name, Status::Fail, format!("{text}\n{fix}"))
        }
    })
}

/// Probes the endpoint the builders use: Docker Hub's API host for `docker.io`, with the
/// project's extra CA files.
async fn registry_check(plan: &ServicePlan, host: &str, insecure: bool) -> Check {
    let name = format!("registry {host}");
    let api = fastbuild_oci::reference_api_host(host);
    let mut shown_api = if api == host {
        String::new()
    } else {
        format!(" (its API at {api})")
    };
    if let Some(source) = &plan.registry.registry_source {
        shown_api.push_str("; from ");
        shown_api.push_str(source);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    match fastbuild_oci::ca_certificates(&plan.registry.registry_ca_files) {
        Ok(certs) => {
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        Err(e) => return check(name, Status::Fail, e.to_string()),
    }
    let host = api.as_str();
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            return check(
                name,
                Status::Fail,
                format!("cannot create an HTTP client: {e}"),
            );
        }
    };
    let https = client.get(format!("https://{host}/v2/")).send().await;
    match https {
        Ok(r) => {
            let s = r.status();
            let auth = if s == reqwest::StatusCode::UNAUTHORIZED {
                ", login required"
            } else {
                ""
            };
            check(
                name,
                Status::Ok,
                format!("HTTPS, /v2/ answered {}{auth}{shown_api}", s.as_u16()),
            )
        }
        Err(https_err) => {
            let http = client.get(format!("http://{host}/v2/")).send().await;
            match http {
                Ok(r) if insecure => check(
                    name,
                    Status::Ok,
                    format!(
                        "plain HTTP (allowed: loopback or marked insecure), /v2/ answered {}{shown_api}",
                        r.status().as_u16()
                    ),
                ),
                Ok(_) => check(
                    name,
                    Status::Fail,
                    format!(
                        "speaks plain HTTP, not HTTPS; fastbuild and BuildKit will refuse it.\n\
                         Mark it insecure: `insecure_registries: [{host}]` in fastbuild.yaml or `--insecure-registry {host}`"
                    ),
                ),
                Err(_) => check(
                    name,
                    Status::Fail,
                    format!(
                        "unreachable over HTTPS and HTTP ({}); is the registry running and the address right?",
                        fastbuild_oci::error_chain(&https_err)
                    ),
                ),
            }
        }
    }
}

async fn credentials_check(host: &str) -> Check {
    let name = format!("credentials {host}");
    let cfg = match fastbuild_oci::DockerConfig::load(None) {
        Ok(cfg) => cfg,
        Err(e) => {
            return check(
                name,
                Status::Warn,
                format!("cannot read the Docker config: {e:#}"),
            );
        }
    };
    match cfg.credential_for(host).await {
        Ok(Some(_)) => check(name, Status::Ok, "found in the Docker config (not shown)"),
        Ok(None) => check(
            name,
            Status::Ok,
            "none configured (anonymous); fine for a local registry",
        ),
        Err(e) => check(name, Status::Fail, format!("{e:#}")),
    }
}

async fn tool_check(name: &str, bin: &str, args: &[&str]) -> Check {
    match tokio::process::Command::new(bin).args(args).output().await {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            check(
                name,
                Status::Ok,
                format!("{bin}: {}", v.lines().next().unwrap_or_default().trim()),
            )
        }
        Ok(o) => check(
            name,
            Status::Warn,
            format!(
                "`{bin}` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(_) => check(
            name,
            Status::Warn,
            format!(
                "`{bin}` not found; install it or set the path (--{name} / ${})",
                name.to_uppercase()
            ),
        ),
    }
}

/// Renders the chart with a probe digest and checks the container image is pinned by digest.
pub async fn chart_check(plan: &ServicePlan, helm_bin: &str) -> Check {
    let name = format!("chart {}", plan.name);
    let Some(helm) = &plan.helm else {
        return check(name, Status::Ok, "no helm section");
    };
    if !crate::settings::is_chart_reference(&plan.root, &helm.chart)
        && !Path::new(&helm.chart).join("Chart.yaml").is_file()
    {
        return check(
            name,
            Status::Fail,
            format!("chart `{}` not found (no Chart.yaml)", helm.chart),
        );
    }
    let Some(digest_key) = &plan.values_keys.digest_key else {
        return check(
            name,
            Status::Warn,
            "values write no digest (tag-only interim); make the chart digest-first and set `digest_key`",
        );
    };
    let mut argv: Vec<String> = vec!["template".into(), helm.release.clone(), helm.chart.clone()];
    for v in &helm.values {
        argv.push(format!("--values={}", v.display()));
    }
    if let Some(k) = &plan.values_keys.repository_key {
        argv.push(format!(
            "--set-string={k}={}",
            plan.registry.pull_repository
        ));
    }
    argv.push(format!("--set-string={digest_key}={PROBE_DIGEST}"));
    let Ok(out) = tokio::process::Command::new(helm_bin)
        .args(&argv)
        .output()
        .await
    else {
        return check(
            name,
            Status::Warn,
            format!("cannot run `{helm_bin}` to render the chart"),
        );
    };
    if !out.status.success() {
        return check(
            name,
            Status::Fail,
            format!(
                "`helm template` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
    }
    let rendered = String::from_utf8_lossy(&out.stdout);
    let pinned = format!("{}@{PROBE_DIGEST}", plan.registry.pull_repository);
    if rendered.contains(&pinned) {
        check(
            name,
            Status::Ok,
            format!(
                "renders digest-first ({}@sha256:…)",
                plan.registry.pull_repository
            ),
        )
    } else {
        check(
            name,
            Status::Fail,
            format!(
                "does not render `{}@<digest>` from `{digest_key}`: the chart is tag-only or uses other keys.\n\
                 Make the Deployment digest-first:\n{DIGEST_FIRST_SNIPPET}",
                plan.registry.pull_repository
            ),
        )
    }
}

fn gitignore_check(plan: &ServicePlan) -> Check {
    let name = format!("values file {}", plan.name);
    let rel = plan
        .values_file
        .strip_prefix(&plan.root)
        .unwrap_or(&plan.values_file);
    let inside = std::process::Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(&plan.root)
        .output();
    if !inside.is_ok_and(|o| o.status.success()) {
        return check(
            name,
            Status::Ok,
            format!("{} (not a git repository)", rel.display()),
        );
    }
    let ignored = std::process::Command::new("git")
        .args(["check-ignore", "-q", "--no-index"])
        .arg(&plan.values_file)
        .current_dir(&plan.root)
        .status();
    match ignored {
        Ok(s) if s.success() => check(
            name,
            Status::Ok,
            format!("{} is git-ignored", rel.display()),
        ),
        _ => check(
            name,
            Status::Warn,
            format!(
                "{} is not git-ignored; add `{}/` to .gitignore so generated digests are not committed",
                rel.display(),
                rel.parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        ),
    }
}
