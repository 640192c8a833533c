//! Opening a file *beneath* a root without ever following a symlink on the way, portably
//! (Linux and macOS): one `openat(O_NOFOLLOW)` per path component, from a descriptor of the
//! root. Both builders walk their source trees first and read the files later; a parent
//! directory swapped for a symlink in between (a local attacker racing the build) would make a
//! plain `open(root/rel)` read a file outside the root. `O_NOFOLLOW` on the whole path guards
//! only its last component; `openat2(RESOLVE_BENEATH)` is Linux-only.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Component, Path};

use rustix::fs::{CWD, Mode, OFlags, openat};

/// Opens the regular file `rel` (relative, no `..`) beneath `root` for reading. A symlink in
/// any component of `rel`, or a final component that is not a regular file (a fifo swapped in
/// would block a read forever), is an error; the root itself may be a symlink.
pub fn open_beneath(root: &Path, rel: &Path) -> io::Result<File> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "`{}` is not a plain relative path below `{}`",
                rel.display(),
                root.display()
            ),
        )
    };
    let parts = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(invalid()),
        })
        .collect::<io::Result<Vec<&OsStr>>>()?;
    let (last, parents) = parts.split_last().ok_or_else(invalid)?;
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = openat(CWD, root, dir_flags, Mode::empty())?;
    for name in parents {
        dir = openat(&dir, *name, dir_flags | OFlags::NOFOLLOW, Mode::empty())?;
    }
    // NONBLOCK: opening a fifo swapped in for the file must not hang; regular files ignore it.
    let fd = openat(
        &dir,
        *last,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "`{}` below `{}` is no longer a regular file",
            rel.display(),
            root.display()
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn opens_regular_files_and_refuses_symlinks_on_the_way() {
        let outside = tempfile::tempdir().unwrap();
        fs_err::write(outside.path().join("secret"), "outside").unwrap();
        let root = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(root.path().join("a/b")).unwrap();
        fs_err::write(root.path().join("a/b/file"), "inside").unwrap();
        let mut text = String::new();
        open_beneath(root.path(), Path::new("a/b/file"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "inside");
        // A parent directory swapped for a symlink to the outside.
        fs_err::rename(root.path().join("a/b"), root.path().join("a/b.old")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/b")).unwrap();
        fs_err::rename(outside.path().join("secret"), outside.path().join("file")).unwrap();
        assert!(
            std::fs::read(root.path().join("a/b/file")).is_ok(),
            "a plain open follows it"
        );
        assert!(open_beneath(root.path(), Path::new("a/b/file")).is_err());
        // The last component a symlink; `..`; absolute; empty.
        std::os::unix::fs::symlink(outside.path().join("file"), root.path().join("link")).unwrap();
        for bad in ["link", "a/../a/b.old/file", "/etc/passwd", ""] {
            assert!(open_beneath(root.path(), Path::new(bad)).is_err(), "{bad}");
        }
        // A fifo swapped in for a file: an error, not a hang.
        let fifo = root.path().join("a/b.old/fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(open_beneath(root.path(), Path::new("a/b.old/fifo")).is_err());
    }
}
