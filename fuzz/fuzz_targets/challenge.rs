//! `WWW-Authenticate` parsing: any header text gives a challenge or `None`, never a panic;
//! scheme and parameter names come out lowercased.
#![no_main]

use fastbuild_oci::Challenge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Header values reach the parser through `HeaderValue::to_str`: visible ASCII, but the
    // parser takes any `&str`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(challenge) = Challenge::parse(text) else {
        return;
    };
    assert!(!challenge.scheme.is_empty());
    assert_eq!(challenge.scheme, challenge.scheme.to_ascii_lowercase());
    for key in challenge.params.keys() {
        assert_eq!(*key, key.to_ascii_lowercase());
    }
});
