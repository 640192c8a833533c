//! Upload sessions opened while the layers are still being built.
//!
//! A blob goes up in three requests: `HEAD` (is it there?), `POST` (open a session), `PUT` (the
//! bytes, with the digest). On a rebuild into a repository this machine pushed to recently (the
//! client's memory holds blobs for it), a layer the layer cache misses was built from sources
//! that changed: its blob is new to the registry, and so is the image config. For those the
//! publisher does not ask: one session per missed layer, and one for the config, are opened as
//! soon as the miss is known — while the layer is tarred and compressed — and the blob is `PUT`
//! into it when it is ready. Two round trips leave the critical path.
//!
//! When a guess is wrong the cost is bytes, never correctness: a blob the registry already had
//! is sent again and stored under the same digest; a session no blob needed is cancelled. A
//! first push, a push without memory (CI) and a build without a layer cache go the usual way,
//! checking every blob first.

use std::collections::HashSet;
use std::sync::Mutex;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc::UnboundedReceiver;
use url::Url;

use crate::client::{RegistryClient, Repo};
use crate::digest::Digest;

/// Sessions opened early, and the blobs allowed to use one.
#[derive(Debug, Default)]
pub(super) struct EarlySessions {
    urls: Mutex<Vec<Url>>,
    fresh: HashSet<Digest>,
}

impl EarlySessions {
    pub(super) fn new(urls: Vec<Url>) -> Self {
        Self {
            urls: Mutex::new(urls),
            fresh: HashSet::new(),
        }
    }

    /// Marks `digests` as built this time from changed inputs: each may take a session.
    pub(super) fn fresh_are(&mut self, digests: impl IntoIterator<Item = Digest>) {
        self.fresh.extend(digests);
    }

    /// A session for `digest` when it is a freshly built blob and one is left.
    pub(super) fn take_for(&self, digest: &Digest) -> Option<Url> {
        if !self.fresh.contains(digest) {
            return None;
        }
        self.urls.lock().expect("not poisoned").pop()
    }

    /// The sessions no blob took, for cancelling.
    pub(super) fn leftovers(&self) -> Vec<Url> {
        std::mem::take(&mut *self.urls.lock().expect("not poisoned"))
    }
}

/// Opens a session for every layer-cache miss reported on `misses`, and one more for the image
/// config at the first; returns the sessions opened once the builds are over (the channel is
/// closed) and every `POST` has answered. A session that failed to open is left out: its blob
/// goes the usual way.
pub(super) async fn open_while_building(
    client: &RegistryClient,
    repo: &Repo,
    mut misses: UnboundedReceiver<()>,
) -> Vec<Url> {
    let mut opening = FuturesUnordered::new();
    let mut opened = Vec::new();
    let mut listening = true;
    let mut first = true;
    loop {
        tokio::select! {
            miss = misses.recv(), if listening => match miss {
                Some(()) => {
                    for _ in 0..if first { 2 } else { 1 } {
                        opening.push(client.start_upload(repo));
                    }
                    first = false;
                }
                None => listening = false,
            },
            Some(started) = opening.next(), if !opening.is_empty() => match started {
                Ok(url) => opened.push(url),
                Err(error) => tracing::debug!(%error, "an early upload session did not open"),
            },
            else => break,
        }
    }
    if !opened.is_empty() {
        tracing::debug!(
            sessions = opened.len(),
            "upload sessions opened while the layers were built"
        );
    }
    opened
}

/// Cancels the sessions no blob needed (a missed layer whose bytes the repository already had).
pub(super) async fn cancel(client: &RegistryClient, repo: &Repo, urls: Vec<Url>) {
    futures::future::join_all(urls.iter().map(|u| client.cancel_upload(repo, u))).await;
}
