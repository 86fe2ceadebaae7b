//! A host and an upstream registry in memory, for native tests of whole request flows.

use crate::contract::*;
use sha2::{Digest as _, Sha256, Sha512};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

/// The repository the fake host's own `meta-*` belong to.
pub const OWN: &str = "docker-local";

pub const UPSTREAM: &str = "http://up.example";
pub const REALM: &str = "http://auth.example/token";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UpstreamAuth {
    Open,
    Bearer,
    Basic,
}

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
fn digest_like(like: &str, data: &[u8]) -> String {
    if like.starts_with("sha512:") {
        sha512(data)
    } else {
        sha256(data)
    }
}

/// One upstream registry: manifests by digest, tags, blob sizes.
pub struct Registry {
    pub base: String,
    pub auth: UpstreamAuth,
    pub manifests: HashMap<String, (String, Vec<u8>)>,
    pub tags: BTreeMap<(String, String), String>,
    pub blobs: HashMap<String, u64>,
    /// answer HEAD on manifests without Docker-Content-Digest
    pub head_without_digest: bool,
    /// serve these bytes instead of the real manifest (a tampering upstream)
    pub tamper: Option<Vec<u8>>,
    pub status_override: Option<u16>,
    /// answer blob requests with a redirect to storage.example (which the host refuses)
    pub redirect_blobs: bool,
    pub token_counter: Cell<u32>,
}

impl Registry {
    pub fn new(base: &str, auth: UpstreamAuth) -> Registry {
        Registry {
            base: base.to_owned(),
            auth,
            manifests: HashMap::new(),
            tags: BTreeMap::new(),
            blobs: HashMap::new(),
            head_without_digest: false,
            tamper: None,
            status_override: None,
            redirect_blobs: false,
            token_counter: Cell::new(0),
        }
    }

    /// Publish a manifest under a tag; returns its digest.
    pub fn push(&mut self, name: &str, tag: &str, body: &str) -> String {
        let digest = sha256(body.as_bytes());
        self.manifests.insert(
            digest.clone(),
            (
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
                body.as_bytes().to_vec(),
            ),
        );
        self.tags
            .insert((name.to_owned(), tag.to_owned()), digest.clone());
        digest
    }

    fn respond(&self, req: &UpstreamRequest) -> UpstreamResponse {
        let resp = |status: u16, headers: Vec<(&str, String)>, body: Vec<u8>| UpstreamResponse {
            status,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            body: if req.method == "HEAD" {
                Vec::new()
            } else {
                body
            },
        };
        if let Some(q) = req.url.strip_prefix(REALM) {
            if self.auth == UpstreamAuth::Basic && !req.with_credentials {
                return resp(401, vec![], vec![]);
            }
            assert!(
                q.starts_with('?'),
                "token request without query: {}",
                req.url
            );
            let n = self.token_counter.get() + 1;
            self.token_counter.set(n);
            return resp(
                200,
                vec![],
                format!(r#"{{"token":"tok-{n}","expires_in":300}}"#).into_bytes(),
            );
        }
        let Some(path) = req.url.strip_prefix(&self.base) else {
            return resp(599, vec![], vec![]);
        };
        let (path, _query) = path.split_once('?').unwrap_or((path, ""));
        let name_for_scope = path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplitn(3, '/').nth(2))
            .unwrap_or("")
            .to_owned();
        match self.auth {
            UpstreamAuth::Bearer => {
                let ok = header(&req.headers, "authorization")
                    .is_some_and(|a| a.starts_with("Bearer tok-"));
                if !ok {
                    let mut c = format!(r#"Bearer realm="{REALM}",service="up.example""#);
                    if !name_for_scope.is_empty() {
                        c.push_str(&format!(r#",scope="repository:{name_for_scope}:pull""#));
                    }
                    return resp(401, vec![("WWW-Authenticate", c)], br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec());
                }
            }
            UpstreamAuth::Basic if !req.with_credentials => {
                return resp(
                    401,
                    vec![(
                        "WWW-Authenticate",
                        r#"Basic realm="Registry Realm""#.to_owned(),
                    )],
                    vec![],
                );
            }
            _ => {}
        }
        if let Some(s) = self.status_override {
            return resp(
                s,
                vec![],
                br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
            );
        }
        if path == "/v2/" {
            return resp(200, vec![], b"{}".to_vec());
        }
        let rest = &path[4..];
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            let digest = if reference.contains(':') {
                Some(reference.to_owned())
            } else {
                self.tags
                    .get(&(name.to_owned(), reference.to_owned()))
                    .cloned()
            };
            let Some((mt, body)) = digest.as_ref().and_then(|d| self.manifests.get(d)) else {
                return resp(
                    404,
                    vec![],
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
                        .to_vec(),
                );
            };
            let mut headers = vec![
                ("Content-Type", mt.clone()),
                ("Content-Length", body.len().to_string()),
            ];
            if !(req.method == "HEAD" && self.head_without_digest) {
                headers.push(("Docker-Content-Digest", digest.clone().unwrap_or_default()));
            }
            let body = self.tamper.clone().unwrap_or_else(|| body.clone());
            return resp(200, headers, body);
        }
        if let Some((_name, digest)) = rest.rsplit_once("/blobs/") {
            if self.redirect_blobs {
                let location = format!("http://storage.example/{digest}");
                return resp(307, vec![("Location", location)], vec![]);
            }
            return match self.blobs.get(digest) {
                Some(size) => resp(200, vec![("Content-Length", size.to_string())], vec![]),
                None => resp(404, vec![], vec![]),
            };
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            let tags: Vec<&String> = self
                .tags
                .keys()
                .filter(|(n, _)| n == name)
                .map(|(_, t)| t)
                .collect();
            if tags.is_empty() {
                return resp(404, vec![], vec![]);
            }
            let body = serde_json::json!({ "name": name, "tags": tags })
                .to_string()
                .into_bytes();
            return resp(
                200,
                vec![("Content-Type", "application/json".to_owned())],
                body,
            );
        }
        resp(404, vec![], vec![])
    }
}

pub struct FakeHost {
    /// metadata of the request's repository (`OWN`)
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
    pub registry: RefCell<Registry>,
    pub down: Cell<bool>,
    pub sent: RefCell<Vec<UpstreamRequest>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    /// the last `reusable` offer: (seconds, vary)
    pub offer: RefCell<Option<(u64, Vec<String>)>>,
}

impl FakeHost {
    pub fn new(registry: Registry) -> FakeHost {
        FakeHost {
            meta: RefCell::default(),
            others: RefCell::default(),
            repos: RefCell::default(),
            uploads: RefCell::default(),
            upload_counter: Cell::new(0),
            scratch: RefCell::default(),
            blobs: RefCell::default(),
            registry: RefCell::new(registry),
            down: Cell::new(false),
            sent: RefCell::default(),
            logs: RefCell::default(),
            offer: RefCell::default(),
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

    /// Another repository's metadata, for mounts and catalogs.
    pub fn put_in(&self, repository: &str, key: &str, value: &[u8]) {
        self.others
            .borrow_mut()
            .entry(repository.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_vec());
    }

    fn with_meta_of<T>(
        &self,
        repository: &str,
        f: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> T,
    ) -> Result<T, HostError> {
        if repository == OWN {
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
}

impl Host for FakeHost {
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
        Ok(self
            .meta
            .borrow()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
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
    fn blob_stat(&self, digest: &str) -> Result<Option<BlobInfo>, HostError> {
        Ok(self.blobs.borrow().get(digest).map(|b| BlobInfo {
            size: b.len() as u64,
        }))
    }
    fn blob_read(&self, digest: &str) -> Result<Vec<u8>, HostError> {
        self.blobs
            .borrow()
            .get(digest)
            .cloned()
            .ok_or_else(|| HostError::Internal("no such blob".into()))
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
        let registry = self.registry.borrow();
        if !request.url.starts_with(&registry.base) && !request.url.starts_with(REALM) {
            return Err(HostError::NotAllowed(format!(
                "{} is outside the remote",
                request.url
            )));
        }
        drop(registry);
        Ok(self.registry.borrow().respond(request))
    }
}
