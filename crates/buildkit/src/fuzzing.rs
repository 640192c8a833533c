//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off by default).
//! Not an API: it exposes just enough of the FileSync request handling to drive it without a
//! session.

use std::collections::BTreeMap;
use std::path::Path;

use crate::filesync::{Filter, SyncRequest, walk};

/// Go's `url.QueryUnescape`, as applied to `-encoded` metadata values (`None`: invalid).
pub fn query_unescape(s: &[u8]) -> Option<Vec<u8>> {
    crate::filesync::query_unescape(s)
}

/// What `DiffCopy` does with the daemon's request metadata before any data moves: read
/// `dir-name`, `include-patterns`, `exclude-patterns`, `followpaths` (and their `-encoded`
/// markers) from `metadata`, pick the directory from `dirs` by name, build the filter, and walk.
/// Returns the `(path, Go mode)` of each entry the walk would send, in order, or the error the
/// handler would answer with. Metadata keys or values gRPC cannot carry are dropped, as the
/// transport would.
pub fn filesync_request(
    dirs: &BTreeMap<String, &Path>,
    metadata: &[(&str, &[u8])],
) -> Result<Vec<(String, u32)>, String> {
    let mut md = tonic::metadata::MetadataMap::new();
    for (key, value) in metadata {
        let Ok(key) = tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()) else {
            continue;
        };
        let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(*value) else {
            continue;
        };
        md.append(key, value);
    }
    let sync = SyncRequest::from_metadata(&md);
    let Some(root) = dirs.get(&sync.dir_name) else {
        return Err(format!("no access allowed to dir {:?}", sync.dir_name));
    };
    let filter = Filter::new(root, &sync).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    walk(root, &filter, &mut |stat, _| {
        out.push((String::from_utf8_lossy(&stat.path).into_owned(), stat.mode));
        true
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}
