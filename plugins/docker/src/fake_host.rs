//! An upstream registry in memory behind the SDK's fake host, for native tests of whole
//! request flows.

use crate::contract::*;
pub use binaryrepo_plugin_sdk::fake_host::{FakeUpstream, sha256, sha512};
use std::cell::Cell;
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

    fn answer(&self, req: &UpstreamRequest) -> UpstreamResponse {
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

/// The fake host with this registry as its upstream, its own metadata `OWN`'s.
pub type FakeHost = binaryrepo_plugin_sdk::fake_host::FakeHost<Registry>;

pub fn fake_host(registry: Registry) -> FakeHost {
    FakeHost::new(OWN, registry)
}

impl FakeUpstream for Registry {
    fn reaches(&self, url: &str) -> bool {
        url.starts_with(&self.base) || url.starts_with(REALM)
    }
    fn respond(&self, request: &UpstreamRequest) -> UpstreamResponse {
        self.answer(request)
    }
}
