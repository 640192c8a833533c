//! The values file of a service: where it is written and under which keys, the keys checked
//! here — before any build — rather than when the file is rendered after the push.

use std::path::PathBuf;

use super::merge::{Sources, first};
use crate::config::ValuesConfig;
use crate::error::UsageError;

/// Default directory for generated values files, relative to the project root.
pub const DEFAULT_VALUES_DIR: &str = "tilt-values";

/// Resolves the values file (absolute) and keys of service `name`; the keys are checked.
pub(super) fn resolve(src: Sources<'_>, name: &str) -> Result<(PathBuf, ValuesConfig), UsageError> {
    let Sources {
        flags,
        svc,
        file: cfg,
        ..
    } = src;
    let values_dir = first([flags.values_dir.as_ref(), cfg.values_dir.as_ref()])
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VALUES_DIR));
    let values_file = src.abs(
        &first([flags.values_file.as_ref(), svc.values.file.as_ref()])
            .unwrap_or_else(|| values_dir.join(format!("{name}.values.yaml"))),
    );
    let mut keys = svc.values.clone();
    key_flag(flags.repository_key.as_ref(), &mut keys.repository_key);
    key_flag(flags.digest_key.as_ref(), &mut keys.digest_key);
    key_flag(flags.registry_key.as_ref(), &mut keys.registry_key);
    key_flag(flags.tag_key.as_ref(), &mut keys.tag_key);
    check_keys(name, &keys)?;
    Ok((values_file, keys))
}

/// A values-key flag: absent (`None`), or set, where an empty string means "omit this key".
fn key_flag(flag: Option<&String>, slot: &mut Option<String>) {
    if let Some(v) = flag {
        *slot = if v.is_empty() { None } else { Some(v.clone()) };
    }
}

/// The keys of a values file make one YAML tree: no empty segment (`image..digest`), no key set
/// twice, none under another's leaf (`image` and `image.digest`), and at least one key. The
/// messages are those the renderer (`outputs::values::render`) gives, which still checks what
/// only the built image tells (a tag key alone, and no tag).
pub fn check_keys(service: &str, keys: &ValuesConfig) -> Result<(), UsageError> {
    // In the renderer's order: repository, digest, registry, tag.
    let given = [
        &keys.repository_key,
        &keys.digest_key,
        &keys.registry_key,
        &keys.tag_key,
    ];
    let mut seen: Vec<Vec<&str>> = Vec::new();
    for key in given.into_iter().flatten() {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(UsageError(format!(
                "values key `{key}` has an empty segment"
            )));
        }
        for earlier in &seen {
            // The same key, or a key whose leaf an earlier one is under.
            if earlier.starts_with(&parts) {
                return Err(UsageError(format!("values key `{key}` is set twice")));
            }
            if parts.starts_with(earlier) {
                return Err(UsageError(format!(
                    "values key `{key}` conflicts with another key"
                )));
            }
        }
        seen.push(parts);
    }
    if seen.is_empty() {
        return Err(UsageError(format!(
            "service `{service}`: values keys are all empty; set at least `digest_key` or `tag_key`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks agree with the renderer's on every shape of key set.
    #[test]
    fn values_keys_are_checked_as_the_renderer_checks_them() {
        let keys =
            |r: Option<&str>, d: Option<&str>, g: Option<&str>, t: Option<&str>| ValuesConfig {
                repository_key: r.map(str::to_owned),
                digest_key: d.map(str::to_owned),
                registry_key: g.map(str::to_owned),
                tag_key: t.map(str::to_owned),
                ..ValuesConfig::default()
            };
        let image = crate::outputs::values::ImageValues {
            pull_registry: "registry:5000".into(),
            repository: "registry:5000/app".into(),
            digest: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            tag: Some("v1".into()),
        };
        for k in [
            keys(Some("image.repository"), Some("image.digest"), None, None),
            keys(Some("image"), Some("image.digest"), None, None),
            keys(Some("image.digest"), Some("image"), None, None),
            keys(Some("image.x"), Some("image.x"), None, None),
            keys(Some("a..b"), None, None, None),
            keys(None, None, None, None),
            keys(None, None, None, Some("tag")),
            keys(Some("r"), Some("d"), Some("g"), Some("d.t")),
        ] {
            let rendered = crate::outputs::values::render("app", &image, &k).map(|_| ());
            let checked = check_keys("app", &k).map_err(|e| e.0);
            assert_eq!(checked, rendered, "{k:?}");
        }
    }
}
