//! What a project file may touch on the machine: paths inside its own root, unless the user
//! allows more on the command line (`--allow fs.read=PATH`, `--allow fs.write=PATH`,
//! `--allow fs=PATH` for both, `PATH` may be `*`), as `docker buildx bake --allow` does; and
//! SSH forwarding (`ssh:`) only with `--allow ssh` (bake's `ssh` entitlement): a Dockerfile
//! with `RUN --mount=type=ssh` can use a forwarded agent to log in anywhere your keys open.
//!
//! Stage: settings input. A checked-out repository is untrusted: its `fastbuild.yaml` must not
//! be able to send `/home/me/.ssh` to a BuildKit daemon as a build context, read a secret file
//! outside the checkout, or write a values file anywhere else. Paths given as flags are the
//! user's own words and are not checked. Symlinks are resolved, so a link inside the project
//! that points outside counts as outside.

use std::path::{Component, Path, PathBuf};

use crate::config::ProjectFile;
use crate::settings::UsageError;

/// Paths the user allowed beyond the project root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    read_all: bool,
    write_all: bool,
    ssh: bool,
}

impl Allow {
    /// Parses `--allow` entries (`fs.read=PATH`, `fs.write=PATH`, `fs=PATH`; `PATH` may be `*`);
    /// relative paths are taken from `cwd`.
    pub fn parse(specs: &[String], cwd: &Path) -> Result<Self, UsageError> {
        let mut allow = Self::default();
        for spec in specs
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.is_empty())
        {
            if spec.trim() == "ssh" {
                allow.ssh = true;
                continue;
            }
            let Some((kind, path)) = spec.split_once('=') else {
                return Err(bad_spec(spec));
            };
            let (read, write) = match kind.trim() {
                "fs.read" => (true, false),
                "fs.write" => (false, true),
                "fs" => (true, true),
                _ => return Err(bad_spec(spec)),
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(bad_spec(spec));
            }
            if path == "*" {
                allow.read_all |= read;
                allow.write_all |= write;
                continue;
            }
            let resolved = resolve(&crate::settings::absolutize(cwd, Path::new(path)));
            if read {
                allow.read.push(resolved.clone());
            }
            if write {
                allow.write.push(resolved);
            }
        }
        Ok(allow)
    }

    fn permits(&self, path: &Path, write: bool) -> bool {
        let (all, list) = if write {
            (self.write_all, &self.write)
        } else {
            (self.read_all, &self.read)
        };
        all || list.iter().any(|a| path.starts_with(a))
    }
}

fn bad_spec(spec: &str) -> UsageError {
    UsageError(format!(
        "invalid `--allow {spec}`: use `fs.read=PATH`, `fs.write=PATH`, `fs=PATH` (PATH may be `*`) or `ssh`"
    ))
}

/// `path` with `.`/`..` removed and symlinks resolved as far as the path exists (the rest is
/// appended lexically), so that a link inside the project pointing outside is seen as outside.
fn resolve(path: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

/// Checks every path of `config` against `root` and `allow`; the error names the key, the
/// path, the root and the flag that allows it.
pub fn check_project_paths(
    config: &ProjectFile,
    file: &Path,
    root: &Path,
    allow: &Allow,
) -> Result<(), UsageError> {
    let root_real = resolve(root);
    let check = |key: &str, value: &Path, write: bool| -> Result<(), UsageError> {
        let path = resolve(&crate::settings::absolutize(root, value));
        if path.starts_with(&root_real) || allow.permits(&path, write) {
            return Ok(());
        }
        let (what, flag) = if write {
            ("write", "fs.write")
        } else {
            ("read", "fs.read")
        };
        Err(UsageError(format!(
            "{}: `{key}` is `{}`, outside the project root `{}`: a project file may only {what} \
             inside its own directory; if you trust it, allow it with `--allow {flag}={}`",
            file.display(),
            value.display(),
            root.display(),
            path.display()
        )))
    };
    if let Some(dir) = &config.values_dir {
        check("values_dir", dir, true)?;
    }
    for (i, ca) in config.registry_ca.iter().enumerate() {
        check(&format!("registry_ca[{i}]"), ca, false)?;
    }
    for (name, s) in &config.services {
        let at = |k: &str| format!("services.{name}.{k}");
        if !s.ssh.is_empty() && !allow.ssh {
            return Err(UsageError(format!(
                "{}: `{}` forwards your SSH agent or keys into the build (`{}`): a project file \
                 may do that only with `--allow ssh` (then `RUN --mount=type=ssh` steps can use \
                 them); if you trust it, pass `--allow ssh`, or give `--ssh` yourself",
                file.display(),
                at("ssh"),
                s.ssh.join("`, `")
            )));
        }
        if let Some(c) = &s.context {
            check(&at("context"), c, false)?;
        }
        if let Some(d) = &s.dockerfile {
            check(&at("dockerfile"), d, false)?;
        }
        for (name, value) in &s.contexts {
            if !value.contains("://") {
                check(&at(&format!("contexts.{name}")), Path::new(value), false)?;
            }
        }
        for (i, spec) in s.secrets.iter().enumerate() {
            let src = spec.split(',').find_map(|part| {
                part.split_once('=')
                    .filter(|(k, _)| matches!(k.trim(), "src" | "source"))
                    .map(|(_, v)| v)
            });
            if let Some(src) = src {
                check(&at(&format!("secrets[{i}]")), Path::new(src), false)?;
            }
        }
        for (i, layer) in s.layers.iter().enumerate() {
            check(&at(&format!("layers[{i}].src")), &layer.src, false)?;
        }
        if let Some(f) = &s.values.file {
            check(&at("values.file"), f, true)?;
        }
        if let Some(h) = &s.helm {
            if !crate::settings::is_chart_reference(root, &h.chart) {
                check(&at("helm.chart"), Path::new(&h.chart), false)?;
            }
            for (i, v) in h.values.iter().enumerate() {
                check(&at(&format!("helm.values[{i}]")), v, false)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(yaml: &str) -> ProjectFile {
        crate::config::parse(Path::new("fastbuild.yaml"), yaml).unwrap()
    }

    #[test]
    fn paths_outside_the_root_need_an_allow() {
        let outside = tempfile::tempdir().unwrap();
        let root = outside.path().join("project");
        fs_err::create_dir_all(root.join("src")).unwrap();
        fs_err::create_dir_all(outside.path().join("secrets")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secrets"), root.join("link")).unwrap();
        let file = root.join("fastbuild.yaml");
        let none = Allow::default();
        let ok = project(
            "values_dir: out\nservices:\n  a:\n    context: src\n    secrets: [\"id=x,src=src/.npmrc\"]\n",
        );
        check_project_paths(&ok, &file, &root, &none).unwrap();

        for (yaml, key) in [
            ("services:\n  a:\n    context: /etc\n", "services.a.context"),
            (
                "services:\n  a:\n    context: ../secrets\n",
                "services.a.context",
            ),
            ("services:\n  a:\n    context: link\n", "services.a.context"),
            (
                "services:\n  a:\n    secrets: [\"id=x,src=/root/.aws/credentials\"]\n",
                "services.a.secrets[0]",
            ),
            (
                "services:\n  a:\n    builder: native\n    layers: [{src: ../secrets, dest: /s}]\n",
                "services.a.layers[0].src",
            ),
            ("values_dir: ../../elsewhere\n", "values_dir"),
            (
                "services:\n  a:\n    values: {file: /tmp/x.yaml}\n",
                "services.a.values.file",
            ),
            (
                "services:\n  a:\n    helm: {chart: ../charts/app, values: [/etc/passwd]}\n",
                "services.a.helm.chart",
            ),
        ] {
            let err = check_project_paths(&project(yaml), &file, &root, &none).unwrap_err();
            assert!(
                err.0.contains(&format!("`{key}`")) && err.0.contains("--allow fs."),
                "{yaml}: {}",
                err.0
            );
        }

        let cwd = outside.path();
        let read = Allow::parse(&["fs.read=secrets".to_owned()], cwd).unwrap();
        let cfg = project("services:\n  a:\n    context: ../secrets\n");
        check_project_paths(&cfg, &file, &root, &read).unwrap();
        // A read allowance does not allow writing there.
        let cfg = project("values_dir: ../secrets\n");
        assert!(check_project_paths(&cfg, &file, &root, &read).is_err());
        let both = Allow::parse(&["fs=*".to_owned()], cwd).unwrap();
        check_project_paths(&cfg, &file, &root, &both).unwrap();
        assert!(Allow::parse(&["net=host".to_owned()], cwd).is_err());
    }

    /// A project file's `ssh:` would hand the developer's agent to the build's `RUN` steps:
    /// only with `--allow ssh` (bake's entitlement).
    #[test]
    fn ssh_forwarding_from_a_project_file_needs_allow_ssh() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("fastbuild.yaml");
        let cfg = project("services:\n  a:\n    ssh: [default]\n");
        let err = check_project_paths(&cfg, &file, root.path(), &Allow::default()).unwrap_err();
        assert!(
            err.0.contains("`services.a.ssh`") && err.0.contains("--allow ssh"),
            "{}",
            err.0
        );
        let allow = Allow::parse(&["ssh".to_owned()], root.path()).unwrap();
        check_project_paths(&cfg, &file, root.path(), &allow).unwrap();
    }
}
