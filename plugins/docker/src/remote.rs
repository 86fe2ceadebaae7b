//! Remote repositories: a pull-through cache of an upstream registry.
//!
//! Digests are immutable, so anything this repository fetched by digest is served without
//! asking upstream again. Tags move, so a tag link is trusted for `tag-check-seconds` and then
//! revalidated with a HEAD (Docker Hub counts GETs against the pull limit, not HEADs). When the
//! upstream is down or throttling, a stale tag is better than no answer.
//!
//! The blob store is shared by every repository, but a remote serves a blob or manifest under
//! a name only when the name holds it (`meta::blob_link`): fetched through that name, or
//! confirmed by the upstream for that name. A copy stored for anything else (another name,
//! another repository, a push) is served only after the upstream says yes to a HEAD under
//! this name, so the upstream's own access control is not bypassed; when it says anything
//! else the client gets what a cold miss would have got, which tells it nothing about what
//! is stored.

use crate::contract::{
    Headers, Host, Level, Plan, RepoType, Request, Response, UpstreamRequest, UpstreamResponse,
    header,
};
use crate::error::{self, ErrorCode, RegistryError};
use crate::freshness::{self, HeadVerdict, TagDecision};
use crate::handler;
use crate::media_type;
use crate::meta::{self, BlobLink, TagLink};
use crate::paging::{self, Paging};
use crate::plan::{self, DIGEST_HEADER, FILTERS_APPLIED_HEADER};
use crate::reference::{Digest, Name, Reference, Tag};
use crate::referrers;
use crate::store;
use crate::tags::{self, TagList};
use crate::upstream::Upstream;
use crate::url;

pub struct Remote<'a, H: Host> {
    host: &'a H,
    req: &'a Request,
    /// the name as the client gave it
    name: &'a Name,
    tag_check_seconds: u64,
    up: Upstream<'a, H>,
}

/// A tag link whose manifest is in the store, ready to serve.
struct Cached {
    link: TagLink,
    digest: Digest,
}

fn accept_manifests() -> Headers {
    vec![("Accept".to_owned(), media_type::manifest_accept())]
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// An upstream's "yes, this name may have it" to a HEAD: a success, or a redirect to the
/// storage that has it (registries redirect blobs).
fn confirms(status: u16) -> bool {
    is_success(status) || (300..400).contains(&status)
}

impl<'a, H: Host> Remote<'a, H> {
    pub fn new(
        host: &'a H,
        req: &'a Request,
        remote_url: &str,
        has_credentials: bool,
        tag_check_seconds: u64,
        name: &'a Name,
    ) -> Self {
        let up = Upstream::new(host, remote_url, name, has_credentials);
        Remote {
            host,
            req,
            name,
            tag_check_seconds,
            up,
        }
    }

    fn debug(&self, message: String) {
        self.host.log(Level::Debug, &message);
    }

    pub fn manifest(&self, reference: &Reference) -> Result<Plan, RegistryError> {
        match reference {
            Reference::Tag(tag) => self.manifest_by_tag(tag),
            Reference::Digest(digest) => self.manifest_by_digest(digest),
        }
    }

    fn manifest_by_digest(&self, digest: &Digest) -> Result<Plan, RegistryError> {
        if meta::blob_linked(self.host, self.up.name(), digest)? {
            if let Some(media_type) = store::stored_manifest(self.host, digest)? {
                self.debug(format!(
                    "manifest {}@{digest}: served from store",
                    self.name
                ));
                self.host.reusable(plan::HELD_SECONDS, &[]);
                return Ok(plan::serve_manifest(digest, &media_type));
            }
        } else if store::blob_present(self.host, digest)?
            && self
                .ask_upstream(&format!("manifests/{digest}"), &accept_manifests())
                .is_ok_and(|r| confirms(r.status))
            && let Some(media_type) = store::stored_manifest(self.host, digest)?
        {
            self.link_blob(digest);
            return Ok(plan::serve_manifest(digest, &media_type));
        }
        let media_type = self.fetch_manifest(digest.as_str(), Some(digest))?.1;
        Ok(plan::serve_manifest(digest, &media_type))
    }

    fn manifest_by_tag(&self, tag: &Tag) -> Result<Plan, RegistryError> {
        let cached = self.cached_tag(tag)?;
        let decision = freshness::decide(
            cached.as_ref().map(|c| &c.link),
            self.req.now,
            self.tag_check_seconds,
        );
        if let (TagDecision::Fresh, Some(c)) = (decision, &cached) {
            self.debug(format!(
                "manifest {}:{tag}: served from tag window ({}s old)",
                self.name,
                self.req.now.saturating_sub(c.link.checked)
            ));
            // `now` is whole seconds: the window may have up to one second less left than this says
            let left = (c.link.checked.saturating_add(self.tag_check_seconds))
                .saturating_sub(self.req.now.saturating_add(1));
            if left > 0 {
                let left = left.min(self.tag_check_seconds).min(plan::HELD_SECONDS);
                self.host.reusable(left, &[]);
            }
            return Ok(plan::serve_manifest(&c.digest, &c.link.media_type));
        }
        match self.resolve_tag(tag, cached.as_ref()) {
            Err(e) if e.is_transient() => match cached {
                Some(c) => {
                    self.host.log(
                        Level::Warn,
                        &format!(
                            "manifest {}:{tag}: upstream unavailable ({}); serving cached {} (stale)",
                            self.name, e.message, c.digest
                        ),
                    );
                    Ok(plan::serve_manifest(&c.digest, &c.link.media_type))
                }
                None => Err(e),
            },
            other => other,
        }
    }

    /// The tag link, if its manifest is still in the store.
    fn cached_tag(&self, tag: &Tag) -> Result<Option<Cached>, RegistryError> {
        let Some(link) = meta::get_tag(self.host, self.up.name(), tag)? else {
            return Ok(None);
        };
        let Ok(digest) = Digest::parse(&link.digest) else {
            return Ok(None);
        };
        if !store::blob_present(self.host, &digest)? {
            return Ok(None);
        }
        Ok(Some(Cached { link, digest }))
    }

    /// Ask the upstream what the tag points to now (HEAD), and fetch only what we lack.
    fn resolve_tag(&self, tag: &Tag, cached: Option<&Cached>) -> Result<Plan, RegistryError> {
        let url = self.up.url(&format!("manifests/{tag}"));
        let head = self.up.send("HEAD", &url, &accept_manifests())?;
        if !is_success(head.status) {
            if head.status == 404 {
                self.forget_tag(tag);
            }
            return Err(error::from_upstream_status(
                head.status,
                &head.body,
                ErrorCode::ManifestUnknown,
            ));
        }
        let upstream_digest =
            header(&head.headers, DIGEST_HEADER).and_then(|d| Digest::parse(d.trim()).ok());
        let verdict = freshness::after_head(
            cached.map(|c| &c.link),
            upstream_digest.as_ref().map(Digest::as_str),
        );
        match (verdict, cached, upstream_digest) {
            (HeadVerdict::Unchanged, Some(c), _) => {
                self.link_tag(tag, &c.digest, &c.link.media_type);
                self.debug(format!(
                    "manifest {}:{tag}: revalidated upstream, unchanged {}",
                    self.name, c.digest
                ));
                Ok(plan::serve_manifest(&c.digest, &c.link.media_type))
            }
            (HeadVerdict::Moved(_), _, Some(digest)) => {
                let media_type = match store::stored_manifest(self.host, &digest)? {
                    Some(mt) => {
                        self.debug(format!(
                            "manifest {}:{tag}: now {digest}, already stored",
                            self.name
                        ));
                        mt
                    }
                    None => self.fetch_manifest(digest.as_str(), Some(&digest))?.1,
                };
                self.link_tag(tag, &digest, &media_type);
                Ok(plan::serve_manifest(&digest, &media_type))
            }
            _ => {
                let (digest, media_type) = self.fetch_manifest(tag.as_str(), None)?;
                self.link_tag(tag, &digest, &media_type);
                Ok(plan::serve_manifest(&digest, &media_type))
            }
        }
    }

    /// GET a manifest and store it byte for byte; the host verifies it against `expected`
    /// (or the upstream's Docker-Content-Digest when fetching by tag).
    fn fetch_manifest(
        &self,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<(Digest, String), RegistryError> {
        let url = self.up.url(&format!("manifests/{reference}"));
        let resp = self.up.send("GET", &url, &accept_manifests())?;
        if !is_success(resp.status) {
            return Err(error::from_upstream_status(
                resp.status,
                &resp.body,
                ErrorCode::ManifestUnknown,
            ));
        }
        let expected = expected.cloned().or_else(|| {
            header(&resp.headers, DIGEST_HEADER).and_then(|d| Digest::parse(d.trim()).ok())
        });
        let media_type = media_type::detect(header(&resp.headers, "content-type"), &resp.body);
        let written = self
            .host
            .blob_write(&resp.body, expected.as_ref().map(Digest::as_str))?;
        let digest = Digest::parse(&written).map_err(|_| {
            RegistryError::new(
                ErrorCode::Unknown,
                format!("the store returned a malformed digest {written:?}"),
            )
        })?;
        if let Err(e) = meta::put_manifest(self.host, &digest, &media_type) {
            self.host.log(
                Level::Error,
                &format!("could not record manifest {digest}: {e}"),
            );
        }
        self.link_blob(&digest);
        self.debug(format!(
            "manifest {}:{reference}: fetched upstream as {digest} ({media_type})",
            self.name
        ));
        Ok((digest, media_type))
    }

    /// A failed link write costs an upstream round trip next time, not this response. The
    /// upstream has just said the tag of this name is `digest`, so the name holds it.
    fn link_tag(&self, tag: &Tag, digest: &Digest, media_type: &str) {
        self.link_blob(digest);
        let link = TagLink {
            digest: digest.to_string(),
            media_type: media_type.to_owned(),
            checked: self.req.now,
        };
        if let Err(e) = meta::put_tag(self.host, self.up.name(), tag, &link) {
            self.host.log(
                Level::Error,
                &format!("could not link tag {}:{tag}: {e}", self.name),
            );
        }
    }

    /// The upstream says the tag is gone: a later outage must not resurrect it.
    /// Only a link that exists is deleted: a storm of misses must not write metadata each time.
    fn forget_tag(&self, tag: &Tag) {
        let key = meta::tag_key(self.up.name(), tag);
        if matches!(self.host.meta_get(&key), Ok(None)) {
            return;
        }
        if let Err(e) = self.host.meta_delete(&key) {
            self.host.log(
                Level::Error,
                &format!("could not unlink tag {}:{tag}: {e}", self.name),
            );
        }
    }

    pub fn blob(&self, digest: &Digest) -> Result<Plan, RegistryError> {
        if store::blob_present(self.host, digest)? {
            return self.stored_blob(digest);
        }
        let url = self.up.url(&format!("blobs/{digest}"));
        if self.req.method == "HEAD" {
            return self.blob_head(digest, &url).map(Plan::Respond);
        }
        let (auth, with_credentials) = self.up.plan_auth()?;
        self.debug(format!("blob {}@{digest}: fetching upstream", self.name));
        // the host does not call back after a fetch: the link that keeps the blob from garbage
        // collection is written now, pending until the stored blob is first served (`stored_blob`)
        if let Err(e) = meta::link_pending(self.host, self.up.name(), digest) {
            self.host.log(
                Level::Error,
                &format!("could not link blob {}@{digest}: {e}", self.name),
            );
        }
        Ok(plan::fetch_blob(digest, url, auth, with_credentials))
    }

    /// A stored blob: served when this name holds it; otherwise the upstream decides.
    fn stored_blob(&self, digest: &Digest) -> Result<Plan, RegistryError> {
        let held = match meta::blob_link(self.host, self.up.name(), digest)? {
            Some(BlobLink::Held) => {
                self.host.reusable(plan::HELD_SECONDS, &[]);
                return Ok(plan::serve_blob(digest));
            }
            // the fetch through this name stored it, unless someone else holds it too
            Some(BlobLink::Pending) => !self.held_elsewhere(digest),
            None => false,
        };
        if held {
            self.link_blob(digest);
            return Ok(plan::serve_blob(digest));
        }
        let tail = format!("blobs/{digest}");
        let asked = self.ask_upstream(&tail, &[]);
        if asked.as_ref().is_ok_and(|r| confirms(r.status)) {
            self.link_blob(digest);
            return Ok(plan::serve_blob(digest));
        }
        // Refused: what a cold miss answers (`blob_head`'s error; for a GET the failed fetch's),
        // so the client learns nothing of the stored copy. Never a fetch plan: the host serves
        // one from the store when the blob is there.
        match asked {
            Ok(resp) if self.req.method == "HEAD" => Err(error::from_upstream_status(
                resp.status,
                &resp.body,
                ErrorCode::BlobUnknown,
            )),
            Ok(resp) => Err(handler::blob_fetch_refused(resp.status)),
            Err(e) => Err(e),
        }
    }

    /// Whether anything but this name's pending link knows the blob: another image of this
    /// repository, or any other repository of the format. Only then can the stored copy have
    /// come from elsewhere than the fetch through this name. Unreadable counts as known.
    fn held_elsewhere(&self, digest: &Digest) -> bool {
        let own_key = meta::blob_key(digest, self.up.name());
        let prefix = meta::blob_prefix(digest);
        match self.host.meta_list(&prefix) {
            Ok(keys) if keys.iter().all(|k| *k == own_key) => {}
            _ => return true,
        }
        let own = self.req.repository.as_ref().map(|r| r.name.as_str());
        self.host
            .repositories()
            .iter()
            .filter(|r| Some(r.name.as_str()) != own && r.repo_type != RepoType::Virtual)
            .any(|r| {
                self.host
                    .meta_list_in(&r.name, &prefix)
                    .map_or(true, |keys| !keys.is_empty())
            })
    }

    /// A HEAD of `tail` (`blobs/<d>`, `manifests/<d>`) under this name: whether the
    /// upstream lets this name see something stored for another.
    fn ask_upstream(
        &self,
        tail: &str,
        headers: &[(String, String)],
    ) -> Result<UpstreamResponse, RegistryError> {
        let resp = self.up.send("HEAD", &self.up.url(tail), headers);
        let outcome = match &resp {
            Ok(r) => format!("the upstream answered {}", r.status),
            Err(e) => format!("not answered upstream ({})", e.message),
        };
        self.debug(format!(
            "{}/{tail}: stored for another name; {outcome}",
            self.name
        ));
        resp
    }

    /// The link is what lets this name see the stored blob, what keeps it from garbage
    /// collection, and what a mount from this repository looks for. A failed write costs an
    /// upstream round trip next time, not this answer.
    fn link_blob(&self, digest: &Digest) {
        if let Err(e) = meta::link_blob(self.host, self.up.name(), digest) {
            self.host.log(
                Level::Error,
                &format!("could not link blob {}@{digest}: {e}", self.name),
            );
        }
    }

    /// `GET /v2/<name>/referrers/<digest>`, passed through to the upstream. An upstream
    /// without the referrers API answers 404: to the client that is an empty list, which is
    /// what the API says for a subject without referrers.
    pub fn referrers(&self, subject: &Digest) -> Result<Plan, RegistryError> {
        let filter = referrers::artifact_type_filter(self.req);
        let params: Vec<(&str, &str)> = filter
            .as_deref()
            .map(|f| vec![("artifactType", f)])
            .unwrap_or_default();
        let url = url::with_query(&self.up.url(&format!("referrers/{subject}")), &params);
        let accept = vec![("Accept".to_owned(), media_type::OCI_INDEX.to_owned())];
        let resp = self.up.send("GET", &url, &accept)?;
        match resp.status {
            200..=299 => {
                let mut headers =
                    vec![("Content-Type".to_owned(), media_type::OCI_INDEX.to_owned())];
                if let Some(applied) = header(&resp.headers, FILTERS_APPLIED_HEADER) {
                    headers.push((FILTERS_APPLIED_HEADER.to_owned(), applied.to_owned()));
                }
                Ok(Plan::Respond(Response {
                    status: 200,
                    headers,
                    body: resp.body,
                }))
            }
            404 => Ok(Plan::Respond(referrers::index(&[], false))),
            s => Err(error::from_upstream_status(
                s,
                &resp.body,
                ErrorCode::NameUnknown,
            )),
        }
    }

    /// HEAD of a blob we do not hold: ask the upstream rather than fetch gigabytes to answer.
    fn blob_head(&self, digest: &Digest, url: &str) -> Result<Response, RegistryError> {
        let resp = self.up.send("HEAD", url, &[])?;
        match resp.status {
            200..=299 => {
                let mut headers = plan::blob_headers(digest);
                if let Some(len) = header(&resp.headers, "content-length") {
                    headers.push(("Content-Length".to_owned(), len.trim().to_owned()));
                }
                Ok(Response {
                    status: 200,
                    headers,
                    body: Vec::new(),
                })
            }
            // Registries redirect blobs to storage: the blob exists, and only the storage
            // knows its size. The host may refuse a storage host it was not told about; then
            // the answer goes without a length rather than with a wrong one.
            301 | 302 | 303 | 307 | 308 => {
                let mut headers = plan::blob_headers(digest);
                if let Some(len) =
                    header(&resp.headers, "location").and_then(|l| self.redirected_length(l))
                {
                    headers.push(("Content-Length".to_owned(), len));
                }
                Ok(Response {
                    status: 200,
                    headers,
                    body: Vec::new(),
                })
            }
            s => Err(error::from_upstream_status(
                s,
                &resp.body,
                ErrorCode::BlobUnknown,
            )),
        }
    }

    /// The Content-Length a redirect target reports for HEAD; presigned storage URLs carry
    /// their own authorisation, so no registry credentials go along.
    fn redirected_length(&self, location: &str) -> Option<String> {
        if !location.starts_with("http://") && !location.starts_with("https://") {
            return None;
        }
        let request = UpstreamRequest {
            method: "HEAD".to_owned(),
            url: location.to_owned(),
            headers: Vec::new(),
            with_credentials: false,
        };
        match self.host.upstream(&request) {
            Ok(r) if is_success(r.status) => {
                header(&r.headers, "content-length").map(|l| l.trim().to_owned())
            }
            Ok(r) => {
                self.debug(format!("blob redirect target answered {}", r.status));
                None
            }
            Err(e) => {
                self.debug(format!("blob redirect target not consulted: {e}"));
                None
            }
        }
    }

    pub fn tag_list(&self, paging: &Paging) -> Result<Plan, RegistryError> {
        let client_name = tags::client_name(self.req, self.name.as_str());
        let params = paging.params();
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = url::with_query(&self.up.url("tags/list"), &params);
        let accept = vec![("Accept".to_owned(), "application/json".to_owned())];
        let fetched = self.up.send("GET", &url, &accept).and_then(|resp| {
            if !is_success(resp.status) {
                return Err(error::from_upstream_status(
                    resp.status,
                    &resp.body,
                    ErrorCode::NameUnknown,
                ));
            }
            let list: TagList = serde_json::from_slice(&resp.body).map_err(|e| {
                RegistryError::new(
                    ErrorCode::UpstreamUnavailable,
                    format!("the upstream sent an unreadable tag list: {e}"),
                )
            })?;
            let next = header(&resp.headers, "link").and_then(tags::paging_from_link);
            Ok((list.tags.unwrap_or_default(), next))
        });
        match fetched {
            Ok((tags, next)) => Ok(Plan::Respond(tags::response(
                self.req,
                &client_name,
                tags,
                next.as_ref(),
            ))),
            Err(e) if e.is_transient() => {
                let known =
                    meta::tags_after(self.host, self.up.name(), paging.last.as_deref(), paging.n);
                let (page, next) = paging::page_from(known, paging)?;
                if page.is_empty() && !meta::has_tags(self.host, self.up.name())? {
                    return Err(e);
                }
                self.host.log(
                    Level::Warn,
                    &format!(
                        "tags of {}: upstream unavailable ({}); listing cached tags",
                        self.name, e.message
                    ),
                );
                Ok(Plan::Respond(tags::response(
                    self.req,
                    &client_name,
                    page,
                    next.as_ref(),
                )))
            }
            Err(e) => Err(e),
        }
    }
}
