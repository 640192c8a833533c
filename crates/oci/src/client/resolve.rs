//! What a reference points at now, without fetching it: `HEAD` on the manifest, the digest from
//! `Docker-Content-Digest` (a `GET` when the registry sends none). For "has this tag moved?"
//! checks, which must stay cheap (one round trip; a `HEAD` does not count against Docker
//! Hub's pull limit).

use http::header::ACCEPT;
use reqwest::Method;

use super::{MANIFEST_ACCEPT, RegistryClient, Req};
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
        let req = Req {
            registry: &repo.host,
            method: &Method::HEAD,
            url: &url,
        };
        let header = self
            .with_retry("check a manifest", |_| {
                self.within_deadline(req, async {
                    let resp = self
                        .send(&repo, Method::HEAD, &url, |rb| {
                            Ok(rb.header(ACCEPT, MANIFEST_ACCEPT))
                        })
                        .await?;
                    match resp.status().as_u16() {
                        200 => Ok(Some(
                            resp.headers()
                                .get("docker-content-digest")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                        )),
                        404 => Ok(None),
                        _ => Err(self.status_error(&Method::HEAD, &url, resp).await),
                    }
                })
            })
            .await?;
        match header {
            None => Ok(None),
            Some(Some(text)) => {
                let digest: Digest = text.parse()?;
                // A registry answering for a digest with another one is not to be believed.
                if let Some(asked) = &reference.digest
                    && *asked != digest
                {
                    return Err(crate::error::Error::DigestMismatch {
                        what: format!("manifest of `{reference}`"),
                        expected: asked.to_string(),
                        actual: digest.to_string(),
                    });
                }
                Ok(Some(digest))
            }
            // No header (allowed by the spec): the bytes tell.
            Some(None) => Ok(self.fetch_manifest(reference).await?.map(|m| m.digest)),
        }
    }
}
