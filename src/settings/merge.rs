//! Flags over the service's entry over the project file, applied once.
//!
//! Every setting has up to three layers, highest first: a command-line flag, the service's entry
//! in `fastbuild.yaml`, the project file's top level. The resolvers of this module's siblings
//! read them through [`Sources`] and its three rules — the first layer that sets a scalar wins; a
//! list flag replaces the file's list; lists that add up take the file's entries, then the
//! flag's — instead of spelling `flag.or(service).or(file)` at each setting.

use std::path::{Path, PathBuf};

use crate::cli::ServiceFlags;
use crate::config::{ProjectFile, ServiceConfig};

/// The layers one service's settings come from, and the root relative paths resolve from.
#[derive(Clone, Copy)]
pub(super) struct Sources<'a> {
    /// The command line.
    pub flags: &'a ServiceFlags,
    /// The service's entry in the project file (default when it has none).
    pub svc: &'a ServiceConfig,
    /// The project file (default when there is none).
    pub file: &'a ProjectFile,
    /// Project root.
    pub root: &'a Path,
}

impl Sources<'_> {
    /// A path of the project (relative to its root) made absolute.
    pub fn abs(&self, p: &Path) -> PathBuf {
        super::absolutize(self.root, p)
    }
}

/// The first layer that sets a value, highest first: `first([flag, service, file])`.
pub(super) fn first<'a, T: Clone + 'a>(
    layers: impl IntoIterator<Item = Option<&'a T>>,
) -> Option<T> {
    layers.into_iter().flatten().next().cloned()
}

/// A list flag replaces the file's list when it is given (buildx merges none of these either).
pub(super) fn replaced<'a, T>(flag: &'a [T], file: &'a [T]) -> &'a [T] {
    if flag.is_empty() { file } else { flag }
}

/// Lists that add up: the file's entries, then the flag's.
pub(super) fn added<'a, T: Clone + 'a>(lists: impl IntoIterator<Item = &'a [T]>) -> Vec<T> {
    lists.into_iter().flatten().cloned().collect()
}
