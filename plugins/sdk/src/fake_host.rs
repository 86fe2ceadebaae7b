//! A host in memory, for native tests of whole request flows: metadata, blobs, upload
//! sessions and scratch as maps, and an upstream the test supplies (`FakeUpstream`).

use crate::contract::*;
use sha2::{Digest as _, Sha256, Sha512};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub fn sha256(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub fn sha512(data: &[u8]) -> String {
    let h = Sha512::digest(data);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha512:{hex}")
}

/// `data` hashed with the algorithm `like` names.
pub fn digest_like(like: &str, data: &[u8]) -> String {
    if like.starts_with("sha512:") {
        sha512(data)
    } else {
        sha256(data)
    }
}

/// The servers a test puts behind the fake host's upstream calls.
pub trait FakeUpstream {
    /// whether the host's egress rules let a request reach `url` without `allow_origin`
    fn reaches(&self, url: &str) -> bool;
    fn respond(&self, request: &UpstreamRequest) -> UpstreamResponse;
}

/// No upstream at all (a local repository's tests).
pub struct NoUpstream;

impl FakeUpstream for NoUpstream {
    fn reaches(&self, _url: &str) -> bool {
        false
    }
    fn respond(&self, _request: &UpstreamRequest) -> UpstreamResponse {
        UpstreamResponse {
            status: 404,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// Static files by URL, answering `If-None-Match` with 304 when it matches their `ETag`.
#[derive(Default)]
pub struct Files {
    /// origins reachable without `allow_origin` (the remote's own)
    pub origins: BTreeSet<String>,
    pub files: BTreeMap<String, (Headers, Vec<u8>)>,
    /// GETs per URL
    pub hits: RefCell<BTreeMap<String, u32>>,
}

impl Files {
    pub fn new(origin: &str) -> Files {
        Files {
            origins: [origin.to_owned()].into(),
            ..Files::default()
        }
    }

    pub fn put(&mut self, url: &str, body: impl Into<Vec<u8>>) {
        self.files.insert(url.to_owned(), (Vec::new(), body.into()));
    }

    pub fn put_with(&mut self, url: &str, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) {
        self.files
            .insert(url.to_owned(), (crate::http::headers(headers), body.into()));
    }

    pub fn hits(&self, url: &str) -> u32 {
        self.hits.borrow().get(url).copied().unwrap_or(0)
    }
}

impl FakeUpstream for Files {
    fn reaches(&self, url: &str) -> bool {
        crate::http::origin(url).is_some_and(|o| self.origins.contains(o))
    }
    fn respond(&self, request: &UpstreamRequest) -> UpstreamResponse {
        *self
            .hits
            .borrow_mut()
            .entry(request.url.clone())
            .or_default() += 1;
        let Some((headers, body)) = self.files.get(&request.url) else {
            return UpstreamResponse {
                status: 404,
                headers: Vec::new(),
                body: b"not found".to_vec(),
            };
        };
        let etag = header(headers, "etag");
        if etag.is_some() && etag == header(&request.headers, "if-none-match") {
            return UpstreamResponse {
                status: 304,
                headers: headers.clone(),
                body: Vec::new(),
            };
        }
        UpstreamResponse {
            status: 200,
            headers: headers.clone(),
            body: if request.method == "HEAD" {
                Vec::new()
            } else {
                body.clone()
            },
        }
    }
}

pub struct FakeHost<U: FakeUpstream = NoUpstream> {
    /// the repository the host's own `meta-*` belong to
    pub own: String,
    /// metadata of the request's repository (`own`)
    pub meta: RefCell<BTreeMap<String, Vec<u8>>>,
    /// metadata of the other repositories, readable through `meta-*-in`
    pub others: RefCell<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
    /// what `repositories()` answers
    pub repos: RefCell<Vec<Repository>>,
    /// upload sessions of the request's repository
    pub uploads: RefCell<BTreeMap<String, Vec<u8>>>,
    pub upload_counter: Cell<u32>,
    pub scratch: RefCell<HashMap<String, (Vec<u8>, u64)>>,
    pub blobs: RefCell<HashMap<String, Vec<u8>>>,
    pub upstream: RefCell<U>,
    /// origins the plugin allowed with `allow_origin`
    pub allowed: RefCell<BTreeSet<String>>,
    /// every upstream call fails as unreachable
    pub down: Cell<bool>,
    pub sent: RefCell<Vec<UpstreamRequest>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    /// the last `reusable` offer: (seconds, vary)
    pub offer: RefCell<Option<(u64, Vec<String>)>>,
    /// the small-document limit of `read`-style calls
    pub small_limit: u64,
    /// keys every listing (`meta_list*`, whole or paged) has answered so far: what a walk cost
    pub keys_listed: Cell<usize>,
}

impl<U: FakeUpstream> FakeHost<U> {
    pub fn new(own: &str, upstream: U) -> FakeHost<U> {
        FakeHost {
            own: own.to_owned(),
            meta: RefCell::default(),
            others: RefCell::default(),
            repos: RefCell::default(),
            uploads: RefCell::default(),
            upload_counter: Cell::new(0),
            scratch: RefCell::default(),
            blobs: RefCell::default(),
            upstream: RefCell::new(upstream),
            allowed: RefCell::default(),
            down: Cell::new(false),
            sent: RefCell::default(),
            logs: RefCell::default(),
            offer: RefCell::default(),
            small_limit: 4 << 20,
            keys_listed: Cell::new(0),
        }
    }

    /// The seconds of the reuse offer made since the last call, if any.
    pub fn take_offer(&self) -> Option<u64> {
        self.offer.borrow_mut().take().map(|(s, _)| s)
    }

    /// "METHOD url" of every upstream request since the last call.
    pub fn take_sent(&self) -> Vec<String> {
        self.sent
            .borrow_mut()
            .drain(..)
            .map(|r| format!("{} {}", r.method, r.url))
            .collect()
    }

    /// What the host does for a `receive-upload` plan with `body` as the request body.
    pub fn receive(&self, plan: &ReceiveUpload, body: &[u8]) -> UploadOutcome {
        let mut uploads = self.uploads.borrow_mut();
        let Some(data) = uploads.get_mut(&plan.id) else {
            return UploadOutcome::UnknownSession;
        };
        if let Some(offset) = plan.expect_offset
            && offset != data.len() as u64
        {
            return UploadOutcome::OffsetMismatch(data.len() as u64);
        }
        data.extend_from_slice(body);
        let size = data.len() as u64;
        let Some(expected) = &plan.commit else {
            return UploadOutcome::Done(UploadDone {
                size,
                committed: None,
            });
        };
        let content = uploads.remove(&plan.id).unwrap_or_default();
        let actual = digest_like(expected, &content);
        if &actual != expected {
            return UploadOutcome::DigestMismatch(actual);
        }
        self.blobs.borrow_mut().insert(actual.clone(), content);
        UploadOutcome::Done(UploadDone {
            size,
            committed: Some(actual),
        })
    }

    /// What the host does for a `fetch-file` plan: fetch, store, and the stored file.
    pub fn fetch_file(&self, plan: &FetchFile) -> Result<FetchedFile, Failure> {
        let fail = |kind, status, message: String| Failure {
            kind,
            status,
            message,
            access: None,
        };
        let r = self
            .upstream(&plan.request)
            .map_err(|e| fail(FailureKind::UpstreamUnreachable, None, e.to_string()))?;
        if r.status != 200 {
            return Err(fail(
                FailureKind::UpstreamStatus,
                Some(r.status),
                format!("upstream answered {}", r.status),
            ));
        }
        if r.body.len() as u64 > plan.max_bytes {
            return Err(fail(FailureKind::TooLarge, None, "too large".into()));
        }
        Ok(self.store(r.body))
    }

    /// Put bytes in the blob store as the host would; the stored file.
    pub fn store(&self, data: Vec<u8>) -> FetchedFile {
        let digest = sha256(&data);
        let size = data.len() as u64;
        self.blobs.borrow_mut().insert(digest.clone(), data);
        FetchedFile { digest, size }
    }

    /// Another repository's metadata, for mounts and catalogs.
    pub fn put_in(&self, repository: &str, key: &str, value: &[u8]) {
        self.others
            .borrow_mut()
            .entry(repository.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_vec());
    }

    fn listed(&self, keys: Vec<String>) -> Vec<String> {
        self.keys_listed.set(self.keys_listed.get() + keys.len());
        keys
    }

    fn with_meta_of<T>(
        &self,
        repository: &str,
        f: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> T,
    ) -> Result<T, HostError> {
        if repository == self.own {
            return Ok(f(&self.meta.borrow()));
        }
        match self.others.borrow().get(repository) {
            Some(m) => Ok(f(m)),
            None if self.repos.borrow().iter().any(|r| r.name == repository) => {
                Ok(f(&BTreeMap::new()))
            }
            None => Err(HostError::NotAllowed(format!("no repository {repository}"))),
        }
    }

    pub fn logged(&self, level: Level, needle: &str) -> bool {
        self.logs
            .borrow()
            .iter()
            .any(|(l, m)| *l == level && m.contains(needle))
    }

    fn reachable(&self, url: &str) -> bool {
        self.upstream.borrow().reaches(url)
            || crate::http::origin(url).is_some_and(|o| self.allowed.borrow().contains(o))
    }
}

/// A page as the host answers it: a range of the ordered keys, capped like the host's.
fn page_of(
    meta: &std::collections::BTreeMap<String, Vec<u8>>,
    prefix: &str,
    start_after: Option<&str>,
    limit: u32,
) -> Vec<String> {
    use std::ops::Bound;
    let lower = match start_after.filter(|a| *a >= prefix) {
        Some(a) => Bound::Excluded(a.to_owned()),
        None => Bound::Included(prefix.to_owned()),
    };
    meta.range((lower, Bound::Unbounded))
        .map(|(k, _)| k)
        .take_while(|k| k.starts_with(prefix))
        .take(limit.min(crate::meta::HOST_PAGE_MAX) as usize)
        .cloned()
        .collect()
}

fn range(data: &[u8], offset: u64, length: u64, limit: u64) -> Vec<u8> {
    let start = (offset as usize).min(data.len());
    let end = start
        .saturating_add(length.min(limit) as usize)
        .min(data.len());
    data[start..end].to_vec()
}

impl<U: FakeUpstream> Host for FakeHost<U> {
    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_owned()));
    }
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.meta.borrow().get(key).cloned())
    }
    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
        self.meta
            .borrow_mut()
            .insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    fn meta_delete(&self, key: &str) -> Result<(), HostError> {
        self.meta.borrow_mut().remove(key);
        Ok(())
    }
    fn meta_list(&self, prefix: &str) -> Result<Vec<String>, HostError> {
        let keys = self
            .meta
            .borrow()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        Ok(self.listed(keys))
    }
    fn meta_list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError> {
        Ok(self.listed(page_of(&self.meta.borrow(), prefix, start_after, limit)))
    }
    fn scratch_get(&self, key: &str) -> Option<Vec<u8>> {
        self.scratch.borrow().get(key).map(|(v, _)| v.clone())
    }
    fn scratch_put(&self, key: &str, value: &[u8], ttl_seconds: u64) {
        self.scratch
            .borrow_mut()
            .insert(key.to_owned(), (value.to_vec(), ttl_seconds));
    }
    fn meta_get_in(&self, repository: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.with_meta_of(repository, |m| m.get(key).cloned())
    }
    fn meta_list_in(&self, repository: &str, prefix: &str) -> Result<Vec<String>, HostError> {
        self.with_meta_of(repository, |m| {
            m.keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect()
        })
        .map(|keys| self.listed(keys))
    }
    fn meta_list_in_page(
        &self,
        repository: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError> {
        self.with_meta_of(repository, |m| page_of(m, prefix, start_after, limit))
            .map(|keys| self.listed(keys))
    }
    fn repositories(&self) -> Vec<Repository> {
        self.repos.borrow().clone()
    }
    fn upload_start(&self) -> Result<String, HostError> {
        let n = self.upload_counter.get() + 1;
        self.upload_counter.set(n);
        let id = format!("{n:032x}");
        self.uploads.borrow_mut().insert(id.clone(), Vec::new());
        Ok(id)
    }
    fn upload_size(&self, id: &str) -> Result<Option<u64>, HostError> {
        Ok(self.uploads.borrow().get(id).map(|d| d.len() as u64))
    }
    fn upload_cancel(&self, id: &str) -> Result<(), HostError> {
        self.uploads.borrow_mut().remove(id);
        Ok(())
    }
    fn upload_read(&self, id: &str, offset: u64, length: u64) -> Result<Vec<u8>, HostError> {
        let uploads = self.uploads.borrow();
        let data = uploads
            .get(id)
            .ok_or_else(|| HostError::Internal(format!("no upload session {id}")))?;
        Ok(range(data, offset, length, self.small_limit))
    }
    fn upload_append(&self, id: &str, data: &[u8]) -> Result<u64, HostError> {
        let mut uploads = self.uploads.borrow_mut();
        let session = uploads
            .get_mut(id)
            .ok_or_else(|| HostError::Internal(format!("no upload session {id}")))?;
        session.extend_from_slice(data);
        Ok(session.len() as u64)
    }
    fn upload_commit(&self, id: &str, expected: Option<&str>) -> Result<FetchedFile, HostError> {
        let data = self
            .uploads
            .borrow_mut()
            .remove(id)
            .ok_or_else(|| HostError::Internal(format!("no upload session {id}")))?;
        if let Some(e) = expected {
            let actual = digest_like(e, &data);
            if actual != e {
                return Err(HostError::DigestMismatch(actual));
            }
        }
        Ok(self.store(data))
    }
    fn blob_stat(&self, digest: &str) -> Result<Option<BlobInfo>, HostError> {
        Ok(self.blobs.borrow().get(digest).map(|b| BlobInfo {
            size: b.len() as u64,
        }))
    }
    fn blob_read(&self, digest: &str) -> Result<Vec<u8>, HostError> {
        let blobs = self.blobs.borrow();
        let b = blobs
            .get(digest)
            .ok_or_else(|| HostError::Internal("no such blob".into()))?;
        if b.len() as u64 > self.small_limit {
            return Err(HostError::TooLarge(b.len() as u64));
        }
        Ok(b.clone())
    }
    fn blob_read_range(
        &self,
        digest: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, HostError> {
        let blobs = self.blobs.borrow();
        let b = blobs
            .get(digest)
            .ok_or_else(|| HostError::Internal("no such blob".into()))?;
        Ok(range(b, offset, length, self.small_limit))
    }
    fn blob_write(&self, data: &[u8], expected: Option<&str>) -> Result<String, HostError> {
        let actual = expected.map_or_else(|| sha256(data), |e| digest_like(e, data));
        if let Some(e) = expected.filter(|e| *e != actual) {
            return Err(HostError::DigestMismatch(format!(
                "expected {e}, got {actual}"
            )));
        }
        self.blobs
            .borrow_mut()
            .insert(actual.clone(), data.to_vec());
        Ok(actual)
    }
    fn reusable(&self, seconds: u64, vary: &[&str]) {
        *self.offer.borrow_mut() = Some((seconds, vary.iter().map(|v| (*v).to_owned()).collect()));
    }
    fn upstream(&self, request: &UpstreamRequest) -> Result<UpstreamResponse, HostError> {
        self.sent.borrow_mut().push(request.clone());
        if self.down.get() {
            return Err(HostError::UpstreamUnreachable("connection refused".into()));
        }
        if !self.reachable(&request.url) {
            return Err(HostError::NotAllowed(format!(
                "{} is outside the remote",
                request.url
            )));
        }
        Ok(self.upstream.borrow().respond(request))
    }
    fn upstream_fetch(
        &self,
        _key: &str,
        request: &UpstreamRequest,
        max_bytes: u64,
    ) -> Result<FetchedDocument, HostError> {
        let r = self.upstream(request)?;
        if !(200..300).contains(&r.status) {
            return Ok(FetchedDocument {
                status: r.status,
                headers: r.headers,
                file: None,
            });
        }
        if r.body.len() as u64 > max_bytes {
            return Err(HostError::TooLarge(r.body.len() as u64));
        }
        Ok(FetchedDocument {
            status: r.status,
            headers: r.headers,
            file: Some(self.store(r.body)),
        })
    }
    fn allow_origin(&self, origin: &str) -> Result<(), HostError> {
        self.allowed.borrow_mut().insert(origin.to_owned());
        Ok(())
    }
}

/// A repository as flow tests configure one: the upstream URL for a remote only, a check
/// window of 60 seconds, deletes enabled, no members and no settings (set fields on the
/// result for anything else).
pub fn repository(name: &str, repo_type: RepoType, upstream: &str) -> Repository {
    Repository {
        name: name.to_owned(),
        repo_type,
        remote_url: (repo_type == RepoType::Remote).then(|| upstream.to_owned()),
        has_credentials: false,
        tag_check_seconds: 60,
        members: Vec::new(),
        delete_enabled: true,
        default_local: None,
        settings: Vec::new(),
    }
}

/// A request as a flow test sends it: through the `/repo/<name>/` prefix of `http://br`, no
/// query or headers, from an anonymous caller.
pub fn request(repository: Repository, method: &str, path: &str, now: u64) -> Request {
    Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: None,
        headers: Vec::new(),
        base_url: "http://br".to_owned(),
        path_repo: None,
        repository: Some(repository),
        mount: Mount::Prefix,
        now,
        caller: Caller::default(),
    }
}
