//! `fastbuild.yaml` loading: any text either parses or fails with an error, without panics
//! and within the time and memory limits `scripts/fuzz` sets (YAML alias bombs, deep nesting
//! and `${VAR}` expansion included).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// A fixed environment, so that runs are reproducible.
fn lookup(name: &str) -> Option<String> {
    match name {
        "SET" => Some("value".to_owned()),
        "EMPTY" => Some(String::new()),
        "NESTED" => Some("${SET}".to_owned()),
        "NUM" => Some("4".to_owned()),
        "BOOL" => Some("true".to_owned()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fastbuild.yaml");
    match fastbuild::config::parse_with(path, text, &lookup) {
        Ok(project) => drop(format!("{project:?}")),
        Err(e) => drop(e.to_string()),
    }
    // The process-environment variant (the typed scalars always read the process environment).
    if let Err(e) = fastbuild::config::parse(path, text) {
        drop(e.to_string());
    }
    let _ = fastbuild::config::expand_value(text, &lookup);
});
