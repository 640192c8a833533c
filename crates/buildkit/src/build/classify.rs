//! A failed Solve turned into the most specific error: a lost connection, a Dockerfile error
//! with its line, a registry that refused the push, an exporter the daemon lacks, or the step
//! that failed with the tail of its log.

use super::BuildOptions;
use crate::error::Error;

/// Turns a failed Solve into the most specific error.
pub(super) fn classify(
    address: &str,
    dockerfile: &str,
    opts: &BuildOptions,
    status: &tonic::Status,
    failure: Option<(String, String, Vec<String>)>,
) -> Error {
    let message = status.message().trim().to_owned();
    let message = message
        .strip_prefix("failed to solve: ")
        .unwrap_or(&message)
        .to_owned();
    // The client connected before the Solve started: a broken transport now is a lost
    // connection, not an unreachable daemon.
    if matches!(status.code(), tonic::Code::Unavailable)
        || (status.code() == tonic::Code::Unknown && status.message().contains("transport"))
    {
        return Error::ConnectionLost {
            address: address.to_owned(),
            source: Box::new(status.clone()),
        };
    }

    // Dockerfile syntax: "dockerfile parse error on line 3: unknown instruction: FOO".
    if let Some(idx) = message.find("parse error on line ") {
        let rest = &message[idx + "parse error on line ".len()..];
        let line: u32 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let text = rest.split_once(": ").map_or(rest, |(_, m)| m);
        return Error::DockerfileSyntax {
            file: dockerfile.to_owned(),
            line,
            message: text.to_owned(),
        };
    }
    if message.contains("failed to parse dockerfile") || message.contains("dockerfile parse error")
    {
        return Error::DockerfileSyntax {
            file: dockerfile.to_owned(),
            line: 0,
            message,
        };
    }

    // Missing base image.
    if let Some(idx) = message.find("failed to resolve source metadata for ") {
        let rest = &message[idx + "failed to resolve source metadata for ".len()..];
        let image = rest.split(": ").next().unwrap_or(rest).to_owned();
        let lower = message.to_lowercase();
        if lower.contains("401") || lower.contains("unauthorized") || lower.contains("denied") {
            return Error::AuthRefused {
                registry: registry_of(&image),
                message,
            };
        }
        return Error::MissingBaseImage { image, message };
    }

    // Failed RUN: `process "/bin/sh -c …" did not complete successfully: exit code: 3`.
    if let Some(idx) = message.find("exit code: ") {
        let code = message[idx + "exit code: ".len()..]
            .split(|c: char| !c.is_ascii_digit() && c != '-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1);
        let (step, log_tail) = match failure {
            Some((name, _, log)) => (name, log),
            None => (message.clone(), Vec::new()),
        };
        return Error::RunFailed {
            step,
            exit_code: code,
            log_tail,
        };
    }

    // Push and registry authentication.
    let lower = message.to_lowercase();
    let push_ref = message.find("failed to push ").map(|idx| {
        message[idx + "failed to push ".len()..]
            .split(": ")
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let auth_failure = lower.contains("401 unauthorized")
        || lower.contains("403 forbidden")
        || lower.contains("failed to authorize")
        || lower.contains("no basic auth credentials")
        || lower.contains("authentication required")
        || lower.contains("insufficient_scope");
    if auth_failure {
        let registry = push_ref
            .as_deref()
            .map(registry_of)
            .or_else(|| opts.image_names.first().map(|n| registry_of(n)))
            .unwrap_or_default();
        return Error::AuthRefused { registry, message };
    }
    if let Some(reference) = push_ref {
        return Error::PushFailed {
            plain_http_hint: lower.contains("http response to https client")
                && !opts.registry_insecure,
            reference,
            message,
        };
    }
    if lower.contains("http response to https client") {
        return Error::PushFailed {
            reference: opts.image_names.first().cloned().unwrap_or_default(),
            plain_http_hint: !opts.registry_insecure,
            message,
        };
    }

    if lower.contains("could not be found") && lower.contains("exporter")
        || lower.contains("not supported")
        || lower.contains("unsupported")
        || status.code() == tonic::Code::Unimplemented
    {
        return Error::Unsupported {
            address: address.to_owned(),
            message,
        };
    }

    let (step, log_tail) = match failure {
        Some((name, _, log)) => (Some(name), log),
        None => (None, Vec::new()),
    };
    Error::BuildFailed {
        message,
        step,
        log_tail,
    }
}

/// The registry host of an image reference (`docker.io` when it has none).
fn registry_of(reference: &str) -> String {
    let reference = reference.trim_start_matches("docker-image://");
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_msg(message: &str, opts: &BuildOptions) -> Error {
        classify(
            "docker-unix:///d.sock",
            "ctx/Dockerfile",
            opts,
            &tonic::Status::unknown(message),
            Some((
                "[2/2] RUN make".into(),
                "exit".into(),
                vec!["compiling".into()],
            )),
        )
    }

    #[test]
    fn classifies_buildkit_messages() {
        let opts = BuildOptions {
            image_names: vec!["10.0.0.5:5000/app:dev".into()],
            ..BuildOptions::default()
        };
        let err = classify_msg(
            "failed to solve: dockerfile parse error on line 3: unknown instruction: RUNN",
            &opts,
        );
        assert!(
            matches!(&err, Error::DockerfileSyntax { file, line: 3, message } if file == "ctx/Dockerfile" && message == "unknown instruction: RUNN"),
            "{err:?}"
        );
        let err = classify_msg(
            "failed to solve: process \"/bin/sh -c make\" did not complete successfully: exit code: 2",
            &opts,
        );
        assert!(
            matches!(&err, Error::RunFailed { step, exit_code: 2, log_tail } if step == "[2/2] RUN make" && log_tail == &["compiling"]),
            "{err:?}"
        );
        let err = classify_msg(
            "failed to solve: failed to push 10.0.0.5:5000/app:dev: failed to do request: Head \"https://10.0.0.5:5000/v2/app/blobs/sha256:ab\": http: server gave HTTP response to HTTPS client",
            &opts,
        );
        assert!(
            matches!(&err, Error::PushFailed { reference, plain_http_hint: true, .. } if reference == "10.0.0.5:5000/app:dev"),
            "{err:?}"
        );
        assert!(err.to_string().contains("registry_insecure"), "{err}");
        let err = classify_msg(
            "failed to solve: failed to push 10.0.0.5:5000/app:dev: unexpected status from HEAD request: 401 Unauthorized",
            &opts,
        );
        assert!(
            matches!(&err, Error::AuthRefused { registry, .. } if registry == "10.0.0.5:5000"),
            "{err:?}"
        );
        let err = classify_msg(
            "failed to solve: exporter \"image\" could not be found",
            &opts,
        );
        assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(registry_of("127.0.0.1:5000/a/b:c"), "127.0.0.1:5000");
        assert_eq!(registry_of("busybox:latest"), "docker.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("ghcr.io/x/y"), "ghcr.io");
    }
}
