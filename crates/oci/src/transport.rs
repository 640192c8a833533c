//! Which registries may be spoken to in plain HTTP, and which count as development registries.

use std::net::IpAddr;

/// `host[:port]` or `[v6]:port` → the host part.
pub fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether `host` (`host[:port]`) is `localhost`, 127.0.0.0/8 or `::1`.
pub fn is_loopback(host: &str) -> bool {
    let h = host_only(host);
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` looks like a development registry: loopback, `*.localhost`, `*.local`,
/// k3d (`k3d-*`, `*.k3d.internal`) or kind-style `*-registry` names.
pub fn is_dev_registry(host: &str) -> bool {
    let h = host_only(host).to_ascii_lowercase();
    let suffix = |s: &str| h.rsplit_once('.').is_some_and(|(_, last)| last == s);
    is_loopback(host)
        || suffix("localhost")
        || suffix("local")
        || h.starts_with("k3d-")
        || h.ends_with(".k3d.internal")
        || h == "kind-registry"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost",
            "LOCALHOST:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "10.0.0.1:5000",
            "example.com",
            "localhost.example.com",
            "[::2]:1",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
        assert_eq!(host_only("reg:5000"), "reg");
        assert_eq!(host_only("[::1]:5000"), "::1");
    }
}
