//! Image references (`[registry/]repository[:tag][@digest]`) with the Docker defaults.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::Error;

/// The registry that unqualified references (`busybox`) point at.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves the Docker Hub registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port when given (`docker.io` when absent).
    pub registry: String,
    /// Repository path (`library/busybox` for Docker Hub official images).
    pub repository: String,
    /// Tag, when given.
    pub tag: Option<String>,
    /// Digest, when given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// A reference to `repository` on `registry` with neither tag nor digest.
    pub fn new(registry: impl Into<String>, repository: impl Into<String>) -> Self {
        Self {
            registry: registry.into(),
            repository: repository.into(),
            tag: None,
            digest: None,
        }
    }

    /// The host the registry API is served on (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB || self.registry == "index.docker.io" {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

/// The host the API of registry `host` is served on (`registry-1.docker.io` for Docker Hub's
/// names, `host` itself otherwise).
pub fn api_host(host: &str) -> String {
    if host == DOCKER_HUB || host == "index.docker.io" {
        DOCKER_HUB_API.to_owned()
    } else {
        host.to_owned()
    }
}

impl Reference {
    /// The same repository with `tag` and no digest.
    #[must_use]
    pub fn with_tag(&self, tag: impl Into<String>) -> Self {
        Self {
            tag: Some(tag.into()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    #[must_use]
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to put in `/v2/<name>/manifests/<here>`: the digest if any, else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// A tag as Docker's reference grammar has it: 1-128 characters of `[A-Za-z0-9_.-]`, not
/// starting with `.` or `-`.
pub fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_path_component(c: &str) -> bool {
    // lowercase alphanumerics separated by `.`, `_`, `__` or runs of `-`.
    let bytes = c.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// `host[:port]` as Docker's reference grammar (`distribution/reference`) has it: dot-separated
/// components of ASCII letters, digits and inner `-`, or a bracketed IPv6 address; then an
/// optional port, here at most 65535. The registry becomes the origin of `https://<registry>/`,
/// where requests and credentials go: nothing in it may add a path, query, fragment or user.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if registry.starts_with('[') {
        match registry.find(']') {
            Some(end) => registry.split_at(end + 1),
            None => return false,
        }
    } else {
        registry.split_at(registry.find(':').unwrap_or(registry.len()))
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        });
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ip) => {
            ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
                && ip.parse::<std::net::Ipv6Addr>().is_ok()
        }
        None => host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }),
    };
    // A name whose last component is numeric is an IPv4 address to URL parsers
    // (`inde127.0.0.1` is then no host at all): the URL must parse, or no request could be made.
    host_ok && port_ok && url::Url::parse(&format!("https://{registry}/")).is_ok()
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidReference {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if value.is_empty() {
            return Err(invalid("it is empty"));
        }
        let (rest, digest) = match value.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>()?)),
            None => (value, None),
        };
        // A tag is after the last `:` that comes after the last `/`.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_owned()),
            ),
            None => (rest, None),
        };
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(invalid(
                "a tag is 1-128 characters of [A-Za-z0-9_.-] not starting with `.` or `-`",
            ));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_registry(first) {
                    return Err(invalid(
                        "the registry is `host[:port]`: dot-separated names of letters, digits \
                         and inner `-` (or `[ipv6]`), and a port from 0 to 65535",
                    ));
                }
                (first.to_owned(), remainder.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_path_component) {
            return Err(invalid(
                "repository path components are lowercase letters, digits and `._-` separators",
            ));
        }
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn unqualified_names_default_to_docker_hub_library() {
        let r = parse("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag, None);
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.manifest_reference(), "latest");
        assert_eq!(parse("user/app:1").repository, "user/app");
        assert_eq!(parse("index.docker.io/busybox").registry, "docker.io");
    }

    #[test]
    fn registry_host_with_port_tag_and_digest() {
        let r = parse(&format!("127.0.0.1:5000/team/app:v1.2@{D}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/team/app:v1.2@{D}"));
        let r = parse("localhost/app");
        assert_eq!(r.registry, "localhost");
        let r = parse("localhost:5000/app");
        assert_eq!((r.registry.as_str(), r.tag), ("localhost:5000", None));
        let r = parse("registry.example.com/a/b/c:latest");
        assert_eq!(r.repository, "a/b/c");
    }

    #[test]
    fn malformed_references_are_rejected_with_the_reason() {
        for bad in [
            "",
            "Upper/case",
            "host:5000/app:",
            "app:bad/tag",
            "app@sha256:00",
            "-app",
            "a//b",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} should fail");
        }
        let err = "reg.io/App".parse::<Reference>().unwrap_err().to_string();
        assert!(err.contains("`reg.io/App`"), "{err}");
    }

    #[test]
    fn the_registry_is_a_host_and_port_of_the_docker_grammar() {
        // Found by `fuzz/` (target `reference`): any first component with a `.` or `:` was a
        // registry, so control characters, spaces, `?`, `#` or `\` reached the request URLs.
        for bad in [
            "\u{1a}\0deZ.docker.io/user/app:1",
            "a.b c/app",
            "evil.io?x=/app",
            "evil.io#/app",
            "evil.io\\x.io/app",
            "host.io:/app",
            "host.io:99999/app",
            "host.io:5000:1/app",
            "-host.io/app",
            "host-.io/app",
            "host..io/app",
            "[::1/app",
            "[::1]x/app",
            "[::g]/app",
            "[1.2.3.4]/app",
            "inde127.0.0.1:5000/x",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} should fail");
        }
        for good in [
            "Reg-1.Example.com/app",
            "localhost:5000/app",
            "127.0.0.1:65535/app",
            "[::1]/app",
            "[fe80::1]:5000/app",
            "a.b/app",
        ] {
            let r = parse(good);
            assert_eq!(r.to_string().parse::<Reference>().unwrap(), r, "{good}");
        }
    }
}
