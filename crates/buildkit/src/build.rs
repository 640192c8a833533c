//! Dockerfile builds: `Control.Solve` with the `dockerfile.v0` frontend and the `image`
//! exporter, the session that serves the local dirs, and `Control.Status` turned into progress.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use fastbuild_oci::Digest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::DockerAuth;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::filesend::{LayoutError, LayoutTarget};
use crate::filesync::SyncStats;
use crate::progress::{ProgressEvent, StatusTracker};
use crate::proto::moby::buildkit::v1 as control;
use crate::session::{Session, SessionConfig, new_id};

mod classify;
mod options;
mod request;

use classify::classify;
pub use options::{
    BuildOptions, BuildResult, CacheSpec, Compression, ImageDescriptor, NamedContext, exporter_keys,
};
pub use request::{SolveRequest, solve_request, validate};
use request::{prepare, shared_key};

/// How long to keep reading `Status` after `Solve` returned (the Go client waits 3 s).
const STATUS_GRACE: Duration = Duration::from_secs(3);

impl Client {
    /// Builds a Dockerfile with the daemon's Dockerfile frontend and exports it with the
    /// `image` exporter (pushing when [`BuildOptions::push`]), or with the `oci` exporter into
    /// [`BuildOptions::oci_layout`].
    ///
    /// Progress is sent on `progress` (a closed receiver is fine). Cancelling `cancel`, or
    /// dropping the returned future, cancels the Solve call (the daemon aborts the job) and
    /// closes the session.
    pub async fn build(
        &self,
        opts: BuildOptions,
        progress: mpsc::Sender<ProgressEvent>,
        cancel: CancellationToken,
    ) -> Result<BuildResult> {
        let prepared = prepare(&opts)?;
        let stats: SyncStats = Arc::default();
        // The only exporter is number 0 of the request: the id the daemon sends back with its
        // file output.
        let layout = opts.oci_layout.clone().map(|dir| LayoutTarget::new(dir, 0));
        // Private agents (key files) live until the build returns.
        let ssh_agents = crate::ssh::SshAgents::start(&opts.ssh).await?;
        let session = Session::start(
            self,
            SessionConfig {
                name: "fastbuild".to_owned(),
                shared_key: shared_key(&prepared.dirs["context"]),
                dirs: prepared.dirs.clone(),
                withheld: opts
                    .withheld
                    .iter()
                    .map(|p| fs_err::canonicalize(p).unwrap_or_else(|_| p.clone()))
                    .collect(),
                secrets: opts.secrets.clone(),
                auth: DockerAuth {
                    config_dir: opts.docker_config_dir.clone(),
                    registry: opts.token_registry.clone(),
                    no_client_tokens: opts.no_client_tokens,
                },
                stats: stats.clone(),
                layout: layout.clone(),
                ssh: (!ssh_agents.is_empty()).then(|| ssh_agents.service()),
            },
        )?;
        let build_ref = new_id();
        let exporter = control::Exporter {
            r#type: if layout.is_some() { "oci" } else { "image" }.to_owned(),
            attrs: prepared.exporter_attrs.clone().into_iter().collect(),
        };
        let request = control::SolveRequest {
            r#ref: build_ref.clone(),
            exporter_deprecated: exporter.r#type.clone(),
            exporter_attrs_deprecated: exporter.attrs.clone(),
            session: session.id.clone(),
            frontend: "dockerfile.v0".to_owned(),
            frontend_attrs: prepared.frontend_attrs.clone().into_iter().collect(),
            cache: Some(prepared.cache.clone()),
            exporters: vec![exporter],
            ..control::SolveRequest::default()
        };
        tracing::debug!(build_ref = %build_ref, session = %session.id, frontend_attrs = ?prepared.frontend_attrs, exporter_attrs = ?prepared.exporter_attrs, "solve");

        let tracker: Arc<Mutex<StatusTracker>> = Arc::default();
        let mut status_task = AbortOnDrop(tokio::spawn(follow_status(
            self.control(),
            build_ref.clone(),
            progress,
            tracker.clone(),
        )));

        let mut control = self.control();
        let solved = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            result = control.solve(request) => Some(result),
        };
        // The Solve call (if cancelled) is dropped here, which resets its HTTP/2 stream.
        if solved.is_some() {
            let _ = tokio::time::timeout(STATUS_GRACE, &mut status_task.0).await;
        }
        drop(status_task);
        let session_error = session.error();
        session.close().await;
        let sync_stats = stats.lock().expect("stats lock").clone();
        let layout_outcome = layout.map(|l| (l.dir().to_owned(), l.take_outcome()));

        let response = match solved {
            None => return Err(Error::Cancelled),
            Some(Ok(response)) => response.into_inner(),
            Some(Err(solve_error)) => {
                // A layout that could not be written explains the failure best.
                if let Some((dir, Some(Err(e)))) = layout_outcome {
                    return Err(layout_error(dir, e));
                }
                if let Some(msg) = &session_error {
                    tracing::debug!("session error during failed build: {msg}");
                }
                let failure = tracker.lock().expect("tracker lock").failure();
                return Err(classify(
                    &self.address,
                    &prepared.dockerfile_display,
                    &opts,
                    &solve_error,
                    failure,
                ));
            }
        };
        let exporter_response: BTreeMap<String, String> =
            response.exporter_response.into_iter().collect();
        let Some(digest) = checked_digest(&exporter_response, exporter_keys::DIGEST)? else {
            return Err(Error::MissingDigest {
                keys: exporter_response
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let config_digest = checked_digest(&exporter_response, exporter_keys::CONFIG_DIGEST)?;
        if let Some((dir, outcome)) = layout_outcome {
            match outcome {
                Some(Ok(written)) if written.digests.contains(&digest.to_string()) => {
                    tracing::debug!(dir = %dir.display(), ?written, "OCI layout written");
                }
                Some(Ok(written)) => {
                    return Err(Error::OciLayout {
                        dir,
                        reason: format!(
                            "the exporter reported `{digest}`, but the layout it sent lists {}",
                            written.digests.join(", ")
                        ),
                        source: None,
                    });
                }
                Some(Err(e)) => return Err(layout_error(dir, e)),
                None => {
                    return Err(Error::OciLayout {
                        dir,
                        reason: "BuildKit finished without sending the image back over the session"
                            .to_owned(),
                        source: None,
                    });
                }
            }
        }
        let descriptor = exporter_response
            .get(exporter_keys::DESCRIPTOR)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|json| serde_json::from_slice(&json).ok());
        Ok(BuildResult {
            digest,
            config_digest,
            descriptor,
            image_name: exporter_response.get("image.name").cloned(),
            exporter_response,
            sync_stats,
        })
    }
}

fn layout_error(dir: PathBuf, e: LayoutError) -> Error {
    Error::OciLayout {
        dir,
        reason: e.reason,
        source: e.source,
    }
}

/// Aborts the task when dropped (also when the build future itself is dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `Control.Status` for `build_ref` until it ends, feeding the tracker and the caller.
async fn follow_status(
    mut control: crate::proto::moby::buildkit::v1::control_client::ControlClient<
        tonic::transport::Channel,
    >,
    build_ref: String,
    progress: mpsc::Sender<ProgressEvent>,
    tracker: Arc<Mutex<StatusTracker>>,
) {
    let request = control::StatusRequest { r#ref: build_ref };
    let mut stream = match control.status(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            tracing::debug!(%status, "status stream failed to open");
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                let events = tracker.lock().expect("tracker lock").apply(update);
                for event in events {
                    if progress.send(event).await.is_err() {
                        // Nobody listens; keep tracking for error reports.
                        break;
                    }
                }
            }
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%status, "status stream ended with an error");
                return;
            }
        }
    }
}

/// The digest under `key` of the exporter response, parsed at the boundary: a daemon's answer
/// is untrusted input, and the digest goes into file names, tags and values files.
fn checked_digest(response: &BTreeMap<String, String>, key: &str) -> Result<Option<Digest>, Error> {
    let Some(value) = response.get(key) else {
        return Ok(None);
    };
    if let Ok(d) = value.parse::<Digest>() {
        return Ok(Some(d));
    }
    let mut shown: String = value.escape_debug().take(80).collect();
    if value.len() > 80 {
        shown.push('…');
    }
    Err(Error::BadDigest {
        key: key.to_owned(),
        value: shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening L6: `containerimage.digest` was never validated (`sha256:aé…` later panicked
    /// when sliced for the content tag).
    #[test]
    fn exporter_digests_are_parsed_at_the_boundary() {
        let good = format!("sha256:{}", "a".repeat(64));
        let response = BTreeMap::from([
            ("containerimage.digest".to_owned(), good.clone()),
            (
                "containerimage.config.digest".to_owned(),
                format!("sha256:a\u{e9}{}", "b".repeat(60)),
            ),
            ("bad.short".to_owned(), "sha256:abc".to_owned()),
            (
                "bad.path".to_owned(),
                format!("sha256:../../{}", "a".repeat(58)),
            ),
        ]);
        assert_eq!(
            checked_digest(&response, "containerimage.digest").unwrap(),
            Some(good.parse().unwrap())
        );
        assert_eq!(checked_digest(&response, "absent").unwrap(), None);
        for key in ["containerimage.config.digest", "bad.short", "bad.path"] {
            let err = checked_digest(&response, key).unwrap_err();
            assert!(matches!(err, Error::BadDigest { .. }), "{key}: {err:?}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
