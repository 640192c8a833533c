//! Image references: parsing never panics, and a parsed reference survives its `Display` form
//! (`registry/repository[:tag][@digest]`, fully qualified) — the form the values files, CI
//! outputs and BuildKit image names carry — parsing back to the same value. An accepted
//! registry is a `host[:port]` of Docker's reference grammar (`distribution/reference`:
//! `domain-component(.domain-component)*` or `[ipv6]`, then an optional numeric port), and
//! `https://<registry>/` is a URL of that origin alone: nothing in the registry can add a
//! path, query, fragment or user part to the URLs requests (and credentials) go to.
#![no_main]

use fastbuild_oci::Reference;
use libfuzzer_sys::fuzz_target;

/// `distribution/reference`'s `domainAndPort`.
fn docker_domain_and_port(s: &str) -> bool {
    let component = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        if inside.is_empty() || !inside.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("[ipv6]", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    (host == "[ipv6]" || host.split('.').all(component))
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = text.parse::<Reference>() else {
        return;
    };
    let shown = reference.to_string();
    let again = shown
        .parse::<Reference>()
        .unwrap_or_else(|e| panic!("{text:?} parsed, its Display {shown:?} does not: {e}"));
    assert_eq!(reference, again, "{text:?} → {shown:?}");
    assert_eq!(shown, again.to_string());
    let _ = reference.manifest_reference();
    assert!(
        docker_domain_and_port(&reference.registry),
        "{text:?}: registry {:?} is not host[:port]",
        reference.registry
    );
    let host = reference.api_host();
    let url = url::Url::parse(&format!("https://{host}/"))
        .unwrap_or_else(|e| panic!("{text:?}: registry {host:?} does not make a URL: {e}"));
    assert!(
        url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none(),
        "{text:?}: registry {host:?} makes the URL {url}"
    );
});
