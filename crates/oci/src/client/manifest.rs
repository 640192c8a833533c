//! Manifests and tags: push (verified against the digest of the bytes sent), fetch (bounded,
//! checked against a pinned digest), tag, list (`Link` pagination on the registry's own origin)
//! and delete.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Method;

use super::request::{check_digest_header, shown};
use super::{
    FetchedManifest, MAX_MANIFEST_BYTES, MAX_TAG_PAGES, RegistryClient, Repo, accept_manifests,
};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;

/// The target of a `Link: <…>; rel="next"` header (tag list pagination), as written.
pub(super) fn link_next(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            params
                .split(';')
                .any(|p| {
                    p.trim()
                        .strip_prefix("rel=")
                        .is_some_and(|r| r.trim_matches('"').split(' ').any(|r| r == "next"))
                })
                .then(|| target.to_owned())
        })
}

impl RegistryClient {
    /// `PUT`s a manifest under `reference` (tag or digest) with `Content-Type: media_type`.
    pub(crate) async fn put_manifest(
        &self,
        repo: &Repo,
        reference: &str,
        media_type: &str,
        bytes: &bytes::Bytes,
    ) -> Result<()> {
        let url = self.url(repo, &format!("manifests/{reference}")).await?;
        let digest = &Digest::of(bytes);
        let body = |rb: reqwest::RequestBuilder| {
            Ok(rb
                .header(CONTENT_TYPE, media_type)
                .header(CONTENT_LENGTH, bytes.len())
                .body(bytes.clone()))
        };
        let put = (repo, &Method::PUT, &url);
        self.call("push a manifest", put, body, |req, resp| async move {
            if resp.status().as_u16() != 201 {
                return Err(self.status_error(req.method, req.url, resp).await);
            }
            let what = format!("manifest `{}:{reference}`", repo.name);
            check_digest_header(&resp, digest, &what)
        })
        .await
    }

    /// The repository and `/v2/<name>/manifests/<tag or digest>` URL of `reference`, for pulls.
    pub(super) async fn manifest_url(&self, reference: &Reference) -> Result<(Repo, url::Url)> {
        let repo = Repo::pull(reference);
        let url = self
            .url(
                &repo,
                &format!("manifests/{}", reference.manifest_reference()),
            )
            .await?;
        Ok((repo, url))
    }

    /// [`Self::fetch_manifest`], with `absent(reference)` as the error on 404.
    pub(crate) async fn require_manifest(
        &self,
        reference: &Reference,
        absent: fn(String) -> Error,
    ) -> Result<FetchedManifest> {
        self.fetch_manifest(reference)
            .await?
            .ok_or_else(|| absent(reference.to_string()))
    }

    /// Fetches the manifest (or index) `reference` points at; `Ok(None)` on 404.
    pub(crate) async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<Option<FetchedManifest>> {
        let (repo, url) = self.manifest_url(reference).await?;
        let get = (&repo, &Method::GET, &url);
        let fetched = self
            .call(
                "fetch a manifest",
                get,
                accept_manifests,
                |req, resp| async move {
                    let Some(resp) = self.present(req, resp).await? else {
                        return Ok(None);
                    };
                    let header_type = resp
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
                    let advice = "Real manifests are a few KiB: check that the reference names an \
                              image and that the registry is the one meant.";
                    let bytes = self
                        .read_capped(req, resp, MAX_MANIFEST_BYTES, "a manifest or index", advice)
                        .await?;
                    Ok(Some((header_type, bytes)))
                },
            )
            .await?;
        let Some((header_type, bytes)) = fetched else {
            return Ok(None);
        };
        let digest = Digest::of(&bytes);
        digest.check(reference.digest.as_ref(), || {
            format!("manifest of `{reference}`")
        })?;
        let media_type = match header_type {
            Some(t) if t != "application/json" && t != "text/plain" && !t.is_empty() => t,
            _ => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_default(),
        };
        Ok(Some(FetchedManifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// Fetches the manifest or index `reference` points at (by tag or digest).
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest> {
        self.fetch_manifest(reference)
            .await?
            .ok_or_else(|| Error::Status {
                method: "GET".to_owned(),
                url: format!(
                    "{}/v2/{}/manifests/{}",
                    reference.api_host(),
                    reference.repository,
                    reference.manifest_reference()
                ),
                status: 404,
                body: "manifest unknown".to_owned(),
            })
    }

    /// Tags an existing manifest: fetches `source` (tag or digest; verified when a digest) and
    /// `PUT`s the same bytes under `target`'s tag (or digest). The digest does not change.
    /// `target` must be in the same repository, or one that already holds the blobs.
    pub async fn tag_manifest(&self, source: &Reference, target: &Reference) -> Result<Digest> {
        let fetched = self.get_manifest(source).await?;
        let repo = Repo::push(target, Some(source));
        let bytes = bytes::Bytes::from(fetched.bytes);
        self.put_manifest(
            &repo,
            &target.manifest_reference(),
            &fetched.media_type,
            &bytes,
        )
        .await?;
        Ok(fetched.digest)
    }

    /// Lists the tags of `repository` (`GET /v2/<name>/tags/list`), following `Link: <…>;
    /// rel="next"` pagination (on the registry's own origin only) with `page_size` tags asked
    /// per page (`n`; `None`: the registry's default). A repository the registry does not know
    /// has no tags. Each page is read up to 4 MiB.
    pub async fn list_tags(
        &self,
        repository: &Reference,
        page_size: Option<u32>,
    ) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let repo = Repo::pull(repository);
        let mut url = self.url(&repo, "tags/list").await?;
        if let Some(n) = page_size {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        let origin = url.origin();
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let get = (&repo, &Method::GET, &url);
            let page = self
                .call("list tags", get, Ok, |req, resp| async move {
                    let Some(resp) = self.present(req, resp).await? else {
                        return Ok(None);
                    };
                    let next = link_next(resp.headers());
                    let advice =
                        "Ask for smaller pages, or check that the registry is the one meant.";
                    let body = self
                        .read_capped(
                            req,
                            resp,
                            MAX_MANIFEST_BYTES,
                            "a page of a tag list",
                            advice,
                        )
                        .await?;
                    Ok(Some((body, next)))
                })
                .await?;
            let Some((body, next)) = page else {
                return Ok(tags);
            };
            let page: Page = serde_json::from_slice(&body).map_err(|e| Error::Json {
                what: format!("the tag list of `{}`", repository.repository_name()),
                source: e,
            })?;
            tags.extend(page.tags.unwrap_or_default());
            let Some(next) = next else {
                return Ok(tags);
            };
            let next_url = url.join(&next).map_err(|_| Error::Status {
                method: "GET".to_owned(),
                url: shown(&url),
                status: 200,
                body: format!("unusable Link header `{next}`"),
            })?;
            if next_url.origin() != origin {
                return Err(Error::LocationRefused {
                    registry: repo.host.clone(),
                    kind: "a next-page Link to".to_owned(),
                    location: shown(&next_url),
                    reason: "it is on another origin; tag list pages are only fetched from the \
                             registry itself"
                        .to_owned(),
                });
            }
            if next_url == url {
                return Ok(tags);
            }
            url = next_url;
        }
        Err(Error::Status {
            method: "GET".to_owned(),
            url: shown(&url),
            status: 200,
            body: format!("the tag list goes on past {MAX_TAG_PAGES} pages; stopped"),
        })
    }

    /// Deletes the manifest `reference` names by its digest (`DELETE
    /// /v2/<name>/manifests/<digest>`; registries remove the tags pointing at it too). `Ok(false)`
    /// when the registry does not have it. A registry with deletion disabled (405, distribution's
    /// `UNSUPPORTED`) is an [`Error::DeleteDisabled`].
    pub async fn delete_manifest(&self, reference: &Reference) -> Result<bool> {
        let Some(digest) = &reference.digest else {
            return Err(Error::InvalidReference {
                value: reference.to_string(),
                reason: "manifests are deleted by digest; give `@sha256:…`".to_owned(),
            });
        };
        let repo = Repo {
            host: reference.api_host().to_owned(),
            name: reference.repository.clone(),
            scopes: vec![format!("repository:{}:delete", reference.repository)],
        };
        let url = self.url(&repo, &format!("manifests/{digest}")).await?;
        let delete = (&repo, &Method::DELETE, &url);
        self.call(
            "delete a manifest",
            delete,
            Ok,
            async |req, resp| match resp.status().as_u16() {
                200 | 202 | 204 => Ok(true),
                404 => Ok(false),
                405 => {
                    let Error::Status { body, .. } =
                        self.status_error(req.method, req.url, resp).await
                    else {
                        unreachable!("status_error makes a Status")
                    };
                    Err(Error::DeleteDisabled {
                        registry: req.registry.to_owned(),
                        request: req.shown(),
                        body,
                    })
                }
                _ => Err(self.status_error(req.method, req.url, resp).await),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_links_are_found_among_others() {
        let links = |value: &str| {
            let mut h = http::HeaderMap::new();
            h.append(http::header::LINK, value.parse().unwrap());
            link_next(&h)
        };
        assert_eq!(link_next(&http::HeaderMap::new()), None);
        assert_eq!(
            links("</v2/a/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(
            links("<https://x/prev>; rel=\"prev\", <https://x/next?last=c>; rel=next").as_deref(),
            Some("https://x/next?last=c")
        );
    }
}
