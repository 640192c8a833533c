//! `${VAR}` and `${VAR:-default}` in the project file's string values: one value expanded,
//! and every string field of a parsed project walked (a key path names each in errors).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Addresses, ConfigError, ProjectFile};

/// Expands `${VAR}` and `${VAR:-default}` in one value (`$$` is a literal `$`, a `$` before
/// anything else stays as it is); an unset variable without a default is an error.
pub fn expand_value(
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
            continue;
        }
        let Some(body_and_rest) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body_and_rest.find('}') else {
            return Err(
                "unclosed `${`; write `${VAR}`, `${VAR:-default}` or `$$` for a literal `$`".into(),
            );
        };
        let body = &body_and_rest[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        match lookup(name)
            .filter(|v| !v.is_empty())
            .or_else(|| default.map(str::to_owned))
        {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "environment variable `{name}` is not set; set it or write `${{{name}:-default}}`"
                ));
            }
        }
        rest = &body_and_rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) type Expand<'a> = dyn FnMut(&str, &mut String) -> Result<(), ConfigError> + 'a;

/// An optional value that expands to nothing (`${PULL_REGISTRY:-}`) is unset.
fn expand_opt(key: &str, value: &mut Option<String>, ex: &mut Expand) -> Result<(), ConfigError> {
    if let Some(v) = value.as_mut() {
        ex(key, v)?;
        if v.is_empty() {
            *value = None;
        }
    }
    Ok(())
}

fn expand_path(key: &str, value: &mut PathBuf, ex: &mut Expand) -> Result<(), ConfigError> {
    if let Some(text) = value.to_str() {
        let mut text = text.to_owned();
        ex(key, &mut text)?;
        *value = PathBuf::from(text);
    }
    Ok(())
}

fn expand_opt_path(
    key: &str,
    value: &mut Option<PathBuf>,
    ex: &mut Expand,
) -> Result<(), ConfigError> {
    if let Some(v) = value.as_mut() {
        expand_path(key, v, ex)?;
        if v.as_os_str().is_empty() {
            *value = None;
        }
    }
    Ok(())
}

fn expand_list(key: &str, values: &mut [String], ex: &mut Expand) -> Result<(), ConfigError> {
    for (i, v) in values.iter_mut().enumerate() {
        ex(&format!("{key}[{i}]"), v)?;
    }
    Ok(())
}

fn expand_paths(key: &str, values: &mut [PathBuf], ex: &mut Expand) -> Result<(), ConfigError> {
    for (i, v) in values.iter_mut().enumerate() {
        expand_path(&format!("{key}[{i}]"), v, ex)?;
    }
    Ok(())
}

fn expand_map(
    key: &str,
    values: &mut BTreeMap<String, String>,
    ex: &mut Expand,
) -> Result<(), ConfigError> {
    for (k, v) in values.iter_mut() {
        ex(&format!("{key}.{k}"), v)?;
    }
    Ok(())
}

/// Every string value of the project file (keys are never expanded).
pub(super) fn expand_project(p: &mut ProjectFile, ex: &mut Expand) -> Result<(), ConfigError> {
    expand_opt("registry", &mut p.registry, ex)?;
    expand_opt("pull_registry", &mut p.pull_registry, ex)?;
    match &mut p.buildkit {
        Some(Addresses::One(a)) => ex("buildkit", a)?,
        Some(Addresses::Pool(list)) => expand_list("buildkit", list, ex)?,
        None => {}
    }
    expand_opt_path("values_dir", &mut p.values_dir, ex)?;
    expand_list("insecure_registries", &mut p.insecure_registries, ex)?;
    expand_paths("registry_ca", &mut p.registry_ca, ex)?;
    expand_opt_path("docker_config", &mut p.docker_config, ex)?;
    expand_opt("compression", &mut p.compression, ex)?;
    for (name, s) in &mut p.services {
        let at = |k: &str| format!("services.{name}.{k}");
        expand_opt_path(&at("context"), &mut s.context, ex)?;
        expand_opt_path(&at("dockerfile"), &mut s.dockerfile, ex)?;
        expand_opt(&at("target"), &mut s.target, ex)?;
        expand_map(&at("build_args"), &mut s.build_args, ex)?;
        expand_map(&at("labels"), &mut s.labels, ex)?;
        expand_list(&at("platforms"), &mut s.platforms, ex)?;
        expand_list(&at("ssh"), &mut s.ssh, ex)?;
        expand_map(&at("contexts"), &mut s.contexts, ex)?;
        expand_opt(&at("sbom"), &mut s.sbom, ex)?;
        expand_opt(&at("provenance"), &mut s.provenance, ex)?;
        expand_list(&at("secrets"), &mut s.secrets, ex)?;
        expand_paths(&at("watch"), &mut s.watch, ex)?;
        expand_opt(&at("repository"), &mut s.repository, ex)?;
        expand_opt(&at("registry"), &mut s.registry, ex)?;
        expand_opt(&at("pull_registry"), &mut s.pull_registry, ex)?;
        expand_opt(&at("tag"), &mut s.tag, ex)?;
        expand_list(&at("tags"), &mut s.tags, ex)?;
        expand_opt(&at("compression"), &mut s.compression, ex)?;
        expand_list(&at("cache_from"), &mut s.cache_from, ex)?;
        expand_list(&at("cache_to"), &mut s.cache_to, ex)?;
        let v = &mut s.values;
        expand_opt_path(&at("values.file"), &mut v.file, ex)?;
        expand_opt(&at("values.repository_key"), &mut v.repository_key, ex)?;
        expand_opt(&at("values.digest_key"), &mut v.digest_key, ex)?;
        expand_opt(&at("values.registry_key"), &mut v.registry_key, ex)?;
        expand_opt(&at("values.tag_key"), &mut v.tag_key, ex)?;
        if let Some(h) = &mut s.helm {
            expand_opt(&at("helm.release"), &mut h.release, ex)?;
            ex(&at("helm.chart"), &mut h.chart)?;
            expand_opt(&at("helm.namespace"), &mut h.namespace, ex)?;
            expand_paths(&at("helm.values"), &mut h.values, ex)?;
            expand_list(&at("helm.flags"), &mut h.flags, ex)?;
            expand_opt(&at("helm.timeout"), &mut h.timeout, ex)?;
        }
        expand_opt(&at("base"), &mut s.base, ex)?;
        for (i, layer) in s.layers.iter_mut().enumerate() {
            expand_path(&at(&format!("layers[{i}].src")), &mut layer.src, ex)?;
            ex(&at(&format!("layers[{i}].dest")), &mut layer.dest)?;
        }
        if let Some(e) = &mut s.entrypoint {
            expand_list(&at("entrypoint"), e, ex)?;
        }
        if let Some(c) = &mut s.cmd {
            expand_list(&at("cmd"), c, ex)?;
        }
        expand_map(&at("env"), &mut s.env, ex)?;
        expand_opt(&at("workdir"), &mut s.workdir, ex)?;
        expand_opt(&at("user"), &mut s.user, ex)?;
        expand_list(&at("ports"), &mut s.ports, ex)?;
    }
    Ok(())
}
