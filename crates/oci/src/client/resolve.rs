//! What a reference points at now, without fetching it: `HEAD` on the manifest, the digest from
//! `Docker-Content-Digest` (a `GET` when the registry sends none). For "has this tag moved?"
//! checks, which must stay cheap (one round trip; a `HEAD` does not count against Docker
//! Hub's pull limit).

use reqwest::Method;

use super::{RegistryClient, accept_manifests};
use crate::digest::Digest;
use crate::error::Result;
use crate::reference::Reference;

impl RegistryClient {
    /// The digest of the manifest or index `reference` names (a tag, or a digest to check for),
    /// or `None` when the registry does not have it.
    ///
    /// # Errors
    /// The registry cannot be reached, refuses the credentials, or answers something other
    /// than 200/404; a digest header that does not parse.
    pub async fn manifest_digest(&self, reference: &Reference) -> Result<Option<Digest>> {
        let (repo, url) = self.manifest_url(reference).await?;
        let head = (&repo, &Method::HEAD, &url);
        let header = self
            .call(
                "check a manifest",
                head,
                accept_manifests,
                |req, resp| async move {
                    Ok(self.present(req, resp).await?.as_ref().map(digest_header))
                },
            )
            .await?;
        match header {
            None => Ok(None),
            Some(Some(text)) => {
                let digest: Digest = text.parse()?;
                // A registry answering for a digest with another one is not to be believed.
                digest.check(reference.digest.as_ref(), || {
                    format!("manifest of `{reference}`")
                })?;
                Ok(Some(digest))
            }
            // No header (allowed by the spec): the bytes tell.
            Some(None) => Ok(self.fetch_manifest(reference).await?.map(|m| m.digest)),
        }
    }
}

/// The `Docker-Content-Digest` a registry answered with, if any (not yet parsed).
fn digest_header(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
