//! Atomic file output: write to a temporary file beside the target, fsync, rename.
//!
//! Every file fastbuild produces (values, digest, metadata, Tilt ref) goes through here, so a
//! failed or interrupted run leaves the previous file intact, and an unchanged file is not
//! touched at all (file watchers such as Tilt's stay quiet).

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

/// What [`write_if_changed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file was created or replaced.
    Written,
    /// The file already held exactly these bytes; it was not touched.
    Unchanged,
}

/// Writes `contents` to `path` atomically, unless the file already holds exactly these bytes.
pub fn write_if_changed(path: &Path, contents: &[u8]) -> Result<WriteOutcome> {
    if let Ok(existing) = std::fs::read(path)
        && existing == contents
    {
        return Ok(WriteOutcome::Unchanged);
    }
    write(path, contents)?;
    Ok(WriteOutcome::Written)
}

/// Writes `contents` to `path` atomically (temp file in the same directory + rename).
pub fn write(path: &Path, contents: &[u8]) -> Result<()> {
    write_all(&[(path, contents)])
}

/// Writes several files all or nothing: each is staged (written and synced to a temp file
/// beside it) first, and only when every one of them is staged are they renamed into place.
/// A file that cannot be staged (unwritable directory, full disk) leaves all targets as they
/// were.
pub fn write_all(files: &[(&Path, &[u8])]) -> Result<()> {
    let staged = files
        .iter()
        .map(|(path, contents)| stage(path, contents))
        .collect::<Result<Vec<_>>>()?;
    for (tmp, (path, _)) in staged.into_iter().zip(files) {
        tmp.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("failed to replace `{}`", path.display()))?;
    }
    Ok(())
}

/// `contents` in a synced temp file in `path`'s directory, mode 0644; removed when dropped.
fn stage(path: &Path, contents: &[u8]) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs_err::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create directory `{}` for `{}`; check permissions or choose another path",
            dir.display(),
            path.display()
        )
    })?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".fastbuild-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| {
            format!(
                "cannot write in `{}`; check permissions or choose another path",
                dir.display()
            )
        })?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("failed to write `{}`", tmp.path().display()))?;
    // Keep the usual 0644 instead of the temp file's 0600: values files are read by helm/tilt.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_content_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/v.yaml");
        assert_eq!(write_if_changed(&p, b"a").unwrap(), WriteOutcome::Written);
        let m1 = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(write_if_changed(&p, b"a").unwrap(), WriteOutcome::Unchanged);
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), m1);
        assert_eq!(write_if_changed(&p, b"b").unwrap(), WriteOutcome::Written);
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
        // no temp files left behind
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
    }
}
