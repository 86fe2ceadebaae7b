//! Whole push / discovery / management flows of the OCI distribution spec against local
//! repositories, through `handler` and the in-memory host (which carries out plans the way the
//! real host does: read-body, receive-upload, serve-blob).

use crate::contract::*;
use crate::fake_host::{
    FakeHost, OWN, Registry, UPSTREAM, UpstreamAuth, fake_host, sha256, sha512,
};
use crate::handler::{handle, handle_body, live_blobs, render_failure, upload_complete};
use crate::push;
use serde_json::{Value, json};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const BASE: &str = "http://br.local:8081";

fn repository(name: &str, repo_type: RepoType, delete_enabled: bool) -> Repository {
    Repository {
        name: name.into(),
        repo_type,
        remote_url: (repo_type == RepoType::Remote).then(|| UPSTREAM.to_owned()),
        has_credentials: false,
        tag_check_seconds: 300,
        members: vec![],
        delete_enabled,
        default_local: None,
        settings: vec![],
    }
}

fn host() -> FakeHost {
    let h = fake_host(Registry::new(UPSTREAM, UpstreamAuth::Open));
    h.repos
        .borrow_mut()
        .push(repository(OWN, RepoType::Local, true));
    h
}

/// A request builder: `Client` holds what stays the same across a flow.
struct Client<'h> {
    h: &'h FakeHost,
    repo: Repository,
    base_url: String,
    path_repo: Option<String>,
    mount: Mount,
}

fn client(h: &FakeHost) -> Client<'_> {
    Client {
        h,
        repo: repository(OWN, RepoType::Local, true),
        base_url: BASE.into(),
        path_repo: None,
        mount: Mount::Port,
    }
}

impl Client<'_> {
    fn request(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (target, None),
        };
        Request {
            method: method.into(),
            path: path.into(),
            query,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            base_url: self.base_url.clone(),
            path_repo: self.path_repo.clone(),
            repository: Some(self.repo.clone()),
            mount: self.mount,
            now: 1000,
            caller: Default::default(),
        }
    }

    fn send(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let req = self.request(method, target, headers);
        let plan = handle(self.h, &req);
        self.carry_out(&req, plan, body)
    }

    fn get(&self, target: &str) -> Response {
        self.send("GET", target, &[], &[])
    }

    /// What the host does with a plan.
    fn carry_out(&self, req: &Request, plan: Plan, body: &[u8]) -> Response {
        match plan {
            Plan::Respond(r) => r,
            Plan::ServeBlob(s) => match self.h.blobs.borrow().get(&s.digest) {
                Some(bytes) => {
                    let mut headers = s.headers.clone();
                    headers.push(("Content-Length".into(), bytes.len().to_string()));
                    let body = if req.method == "HEAD" {
                        vec![]
                    } else {
                        bytes.clone()
                    };
                    Response {
                        status: 200,
                        headers,
                        body,
                    }
                }
                None => render_failure(req, &failure(FailureKind::BlobUnknown)),
            },
            Plan::ReadBody(max) => {
                if body.len() as u64 > max {
                    return render_failure(req, &failure(FailureKind::TooLarge));
                }
                let plan = handle_body(self.h, req, body);
                assert!(
                    !matches!(plan, Plan::ReadBody(_) | Plan::ReceiveUpload(_)),
                    "handle-body must not ask for the body again"
                );
                self.carry_out(req, plan, &[])
            }
            Plan::ReceiveUpload(u) => {
                let outcome = self.h.receive(&u, body);
                upload_complete(self.h, req, &u.id, &outcome)
            }
            Plan::FetchBlob(f) => panic!("a local repository fetched upstream: {f:?}"),
            Plan::FetchFile(f) => panic!("a local repository fetched upstream: {f:?}"),
        }
    }

    /// Monolithic upload; returns the digest.
    fn push_blob(&self, name: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self.send(
            "POST",
            &format!("/v2/{name}/blobs/uploads/?digest={d}"),
            &[],
            data,
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        d
    }

    fn put_manifest(&self, name: &str, reference: &str, media_type: &str, body: &str) -> Response {
        self.send(
            "PUT",
            &format!("/v2/{name}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            body.as_bytes(),
        )
    }
}

fn failure(kind: FailureKind) -> Failure {
    Failure {
        kind,
        status: None,
        message: "m".into(),
        access: None,
    }
}

fn h_(r: &Response, name: &str) -> Option<String> {
    header(&r.headers, name).map(str::to_owned)
}

fn code(r: &Response) -> String {
    let v: Value = serde_json::from_slice(&r.body).expect("json error body");
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn status_code(r: &Response) -> (u16, String) {
    (r.status, code(r))
}

fn json_body(r: &Response) -> Value {
    serde_json::from_slice(&r.body).expect("json body")
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// An image manifest over a config and layers already pushed (digest, size).
fn image_manifest(config: (&str, usize), layers: &[(&str, usize)], extra: Value) -> String {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config.0, config.1),
        "layers": layers.iter().map(|(d, s)| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d, *s)).collect::<Vec<_>>(),
    });
    if let (Some(obj), Value::Object(extra)) = (m.as_object_mut(), extra) {
        obj.extend(extra);
    }
    m.to_string()
}

/// Push config + one layer + manifest under `tag`; returns the manifest digest.
fn push_image(c: &Client<'_>, name: &str, tag: &str, layer: &[u8]) -> String {
    let config = c.push_blob(name, b"{\"architecture\":\"amd64\"}");
    let l = c.push_blob(name, layer);
    let m = image_manifest((&config, 24), &[(&l, layer.len())], json!({}));
    let r = c.put_manifest(name, tag, OCI, &m);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    sha256(m.as_bytes())
}

#[test]
fn monolithic_upload_then_pull() {
    let h = host();
    let c = client(&h);
    let data = b"layer-bytes";
    let d = sha256(data);
    let missing = c.get(&format!("/v2/app/blobs/{d}"));
    assert_eq!(status_code(&missing), (404, "BLOB_UNKNOWN".into()));

    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?digest={d}"),
        &[],
        data,
    );
    assert_eq!(r.status, 201);
    assert_eq!(h_(&r, "location"), Some(format!("{BASE}/v2/app/blobs/{d}")));
    assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    assert_eq!(h_(&r, "content-length").as_deref(), Some("0"));
    assert!(h_(&r, "docker-distribution-api-version").is_some());

    let r = c.get(&format!("/v2/app/blobs/{d}"));
    assert_eq!((r.status, r.body.as_slice()), (200, data.as_slice()));
    assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    let r = c.send("HEAD", &format!("/v2/app/blobs/{d}"), &[], &[]);
    assert_eq!(r.status, 200);
    assert_eq!(h_(&r, "content-length"), Some(data.len().to_string()));
    assert!(r.body.is_empty());
    // stored, but not linked to another image: unknown there
    let r = c.get(&format!("/v2/other/blobs/{d}"));
    assert_eq!(status_code(&r), (404, "BLOB_UNKNOWN".into()));
    assert!(h.uploads.borrow().is_empty(), "the session ended");
}

#[test]
fn monolithic_upload_with_the_wrong_digest_stores_nothing() {
    let h = host();
    let c = client(&h);
    let claimed = sha256(b"something else");
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?digest={claimed}"),
        &[],
        b"actual bytes",
    );
    assert_eq!(status_code(&r), (400, "DIGEST_INVALID".into()));
    assert!(h.blobs.borrow().is_empty());
    assert!(!h.meta.borrow().keys().any(|k| k.starts_with("blob/")));
    let r = c.send(
        "POST",
        "/v2/app/blobs/uploads/?digest=sha256:nothex",
        &[],
        b"x",
    );
    assert_eq!(status_code(&r), (400, "DIGEST_INVALID".into()));
}

#[test]
fn sha512_uploads_work() {
    let h = host();
    let c = client(&h);
    let data = b"sha512 content";
    let d = sha512(data);
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?digest={d}"),
        &[],
        data,
    );
    assert_eq!(r.status, 201);
    assert_eq!(c.get(&format!("/v2/app/blobs/{d}")).status, 200);
}

#[test]
fn chunked_upload_with_out_of_order_chunk_status_and_final_put() {
    let h = host();
    let c = client(&h);
    let data = b"0123456789abcdef";
    let d = sha256(data);

    let r = c.send(
        "POST",
        "/v2/app/blobs/uploads/",
        &[("Content-Length", "0")],
        &[],
    );
    assert_eq!(r.status, 202);
    let location = h_(&r, "location").unwrap();
    let id = h_(&r, "docker-upload-uuid").unwrap();
    assert_eq!(location, format!("{BASE}/v2/app/blobs/uploads/{id}"));
    assert_eq!(h_(&r, "range").as_deref(), Some("0-0"));
    assert_eq!(h_(&r, "content-length").as_deref(), Some("0"));
    let target = location.strip_prefix(BASE).unwrap().to_owned();

    // out of order: the second chunk first
    let r = c.send(
        "PATCH",
        &target,
        &[("Content-Range", "10-15"), ("Content-Length", "6")],
        &data[10..],
    );
    assert_eq!(status_code(&r), (416, "BLOB_UPLOAD_INVALID".into()));
    assert_eq!(h_(&r, "range").as_deref(), Some("0-0"));
    assert_eq!(h_(&r, "location"), Some(location.clone()));

    let r = c.send(
        "PATCH",
        &target,
        &[("Content-Range", "0-9"), ("Content-Length", "10")],
        &data[..10],
    );
    assert_eq!(r.status, 202);
    assert_eq!(h_(&r, "range").as_deref(), Some("0-9"));
    assert_eq!(h_(&r, "location"), Some(location.clone()));
    assert_eq!(h_(&r, "docker-upload-uuid"), Some(id.clone()));

    // the same chunk again is out of order now
    let r = c.send("PATCH", &target, &[("Content-Range", "0-9")], &data[..10]);
    assert_eq!(r.status, 416);
    assert_eq!(h_(&r, "range").as_deref(), Some("0-9"));
    // a malformed range is answered like an out-of-order one
    let r = c.send("PATCH", &target, &[("Content-Range", "ten-twenty")], b"x");
    assert_eq!((r.status, h_(&r, "range").as_deref()), (416, Some("0-9")));
    // a length that contradicts the range
    let r = c.send(
        "PATCH",
        &target,
        &[("Content-Range", "10-15"), ("Content-Length", "3")],
        b"abc",
    );
    assert_eq!(status_code(&r), (400, "SIZE_INVALID".into()));

    let r = c.get(&target);
    assert_eq!(r.status, 204);
    assert_eq!(h_(&r, "range").as_deref(), Some("0-9"));
    assert_eq!(h_(&r, "location"), Some(location.clone()));
    assert_eq!(h_(&r, "content-length"), None);

    let r = c.send(
        "PUT",
        &format!("{target}?digest={d}"),
        &[("Content-Range", "10-15"), ("Content-Length", "6")],
        &data[10..],
    );
    assert_eq!(r.status, 201);
    assert_eq!(h_(&r, "location"), Some(format!("{BASE}/v2/app/blobs/{d}")));
    assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    assert_eq!(
        h.blobs.borrow().get(&d).map(Vec::as_slice),
        Some(data.as_slice())
    );

    // the session is over
    let r = c.get(&target);
    assert_eq!(status_code(&r), (404, "BLOB_UPLOAD_UNKNOWN".into()));
    let r = c.send("PATCH", &target, &[], b"more");
    assert_eq!(status_code(&r), (404, "BLOB_UPLOAD_UNKNOWN".into()));
}

#[test]
fn streamed_upload_then_put_without_body() {
    let h = host();
    let c = client(&h);
    let data = b"streamed-layer";
    let d = sha256(data);
    let r = c.send("POST", "/v2/app/blobs/uploads/", &[], &[]);
    let target = h_(&r, "location").unwrap().replace(BASE, "");
    let r = c.send("PATCH", &target, &[], &data[..5]);
    assert_eq!((r.status, h_(&r, "range").as_deref()), (202, Some("0-4")));
    let r = c.send("PATCH", &target, &[], &data[5..]);
    assert_eq!(h_(&r, "range"), Some(format!("0-{}", data.len() - 1)));

    let r = c.send("PUT", &target, &[], &[]);
    assert_eq!(
        status_code(&r),
        (400, "DIGEST_INVALID".into()),
        "digest is required"
    );
    let wrong = sha256(b"nope");
    let r = c.send("PUT", &format!("{target}?digest={wrong}"), &[], &[]);
    assert_eq!(status_code(&r), (400, "DIGEST_INVALID".into()));
    assert!(h.blobs.borrow().is_empty(), "nothing stored on a mismatch");

    // the mismatch ended the session; a new one succeeds
    let r = c.send("POST", "/v2/app/blobs/uploads/", &[], &[]);
    let target = h_(&r, "location").unwrap().replace(BASE, "");
    c.send("PATCH", &target, &[], data);
    let r = c.send("PUT", &format!("{target}?digest={d}"), &[], &[]);
    assert_eq!(r.status, 201);
}

#[test]
fn cancelled_and_unknown_sessions() {
    let h = host();
    let c = client(&h);
    let r = c.send("POST", "/v2/app/blobs/uploads/", &[], &[]);
    let target = h_(&r, "location").unwrap().replace(BASE, "");
    let r = c.send("DELETE", &target, &[], &[]);
    assert_eq!(r.status, 204);
    assert!(h.uploads.borrow().is_empty());
    let r = c.send("DELETE", &target, &[], &[]);
    assert_eq!(status_code(&r), (404, "BLOB_UPLOAD_UNKNOWN".into()));
    let r = c.get("/v2/app/blobs/uploads/no..such");
    assert_eq!(status_code(&r), (404, "BLOB_UPLOAD_UNKNOWN".into()));
    let r = c.send("POST", "/v2/app/blobs/uploads/x", &[], &[]);
    assert_eq!(status_code(&r), (405, "UNSUPPORTED".into()));
    // an interrupted body and a host failure get their own answers
    let req = c.request("PATCH", "/v2/app/blobs/uploads/abc", &[]);
    let r = upload_complete(&h, &req, "abc", &UploadOutcome::BodyError("reset".into()));
    assert_eq!(status_code(&r), (400, "BLOB_UPLOAD_INVALID".into()));
    let r = upload_complete(&h, &req, "abc", &UploadOutcome::Internal("disk".into()));
    assert_eq!(status_code(&r), (500, "UNKNOWN".into()));
}

#[test]
fn locations_put_back_the_path_method_segment() {
    let h = host();
    let mut c = client(&h);
    c.path_repo = Some(OWN.into());
    c.mount = Mount::Path;
    let r = c.send("POST", "/v2/team/app/blobs/uploads/", &[], &[]);
    let id = h_(&r, "docker-upload-uuid").unwrap();
    assert_eq!(
        h_(&r, "location"),
        Some(format!("{BASE}/v2/{OWN}/team/app/blobs/uploads/{id}"))
    );
    c.path_repo = None;
    c.mount = Mount::Prefix;
    c.base_url = format!("https://proxy.example/repo/{OWN}");
    let d = sha256(b"x");
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?digest={d}"),
        &[],
        b"x",
    );
    assert_eq!(
        h_(&r, "location"),
        Some(format!("https://proxy.example/repo/{OWN}/v2/app/blobs/{d}"))
    );
}

#[test]
fn mount_from_an_image_of_this_repository() {
    let h = host();
    let c = client(&h);
    let d = c.push_blob("base", b"shared layer");
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={d}&from=base"),
        &[],
        &[],
    );
    assert_eq!(r.status, 201);
    assert_eq!(h_(&r, "location"), Some(format!("{BASE}/v2/app/blobs/{d}")));
    assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    assert_eq!(c.get(&format!("/v2/app/blobs/{d}")).status, 200);
    assert!(h.uploads.borrow().is_empty(), "no session for a mount");

    // the source does not have it: an upload session instead
    let other = sha256(b"never pushed");
    let r = c.send(
        "POST",
        &format!("/v2/app2/blobs/uploads/?mount={other}&from=base"),
        &[],
        &[],
    );
    assert_eq!(r.status, 202);
    assert!(
        h_(&r, "location")
            .unwrap()
            .contains("/v2/app2/blobs/uploads/")
    );
    // a bad digest or source also falls back
    for q in [
        "mount=sha256:zz&from=base",
        &format!("mount={d}&from=Bad//name"),
    ] {
        let r = c.send("POST", &format!("/v2/app3/blobs/uploads/?{q}"), &[], &[]);
        assert_eq!(r.status, 202, "{q}");
    }
}

#[test]
fn mount_from_another_repository_by_path_method_name() {
    let h = host();
    let c = client(&h);
    let d = h.blob_write(b"remote layer", None).unwrap();
    // a remote repository on Docker Hub caches `library/redis` for clients saying `redis`
    let mut hub = repository("docker-remote", RepoType::Remote, false);
    hub.remote_url = Some("https://registry-1.docker.io".into());
    h.repos.borrow_mut().push(hub);
    h.put_in("docker-remote", &format!("blob/{d}/library/redis"), b"{}");
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={d}&from=docker-remote/redis"),
        &[],
        &[],
    );
    assert_eq!(r.status, 201);
    assert!(h.meta.borrow().contains_key(&format!("blob/{d}/app")));

    // another local repository, through a virtual that has it as member
    let e = h.blob_write(b"other local layer", None).unwrap();
    h.repos
        .borrow_mut()
        .push(repository("team-local", RepoType::Local, true));
    let mut virt = repository("docker", RepoType::Virtual, false);
    virt.members = vec!["team-local".into()];
    h.repos.borrow_mut().push(virt);
    h.put_in("team-local", &format!("blob/{e}/tools/x"), b"{}");
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={e}&from=docker/tools/x"),
        &[],
        &[],
    );
    assert_eq!(r.status, 201);
    // a repository that does not exist: upload instead
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={e}&from=nowhere/tools/x"),
        &[],
        &[],
    );
    assert_eq!(r.status, 202);
}

#[test]
fn mount_without_from_looks_only_in_this_repository() {
    let h = host();
    let c = client(&h);
    let mine = c.push_blob("base", b"mine");
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={mine}"),
        &[],
        &[],
    );
    assert_eq!(r.status, 201);

    // guards mount::mountable's `None` arm: held by another repository is not a source
    // without `from` (any pusher could otherwise read any blob whose digest it knows)
    let theirs = h.blob_write(b"theirs", None).unwrap();
    h.repos
        .borrow_mut()
        .push(repository("team-local", RepoType::Local, true));
    h.put_in("team-local", &format!("blob/{theirs}/x"), b"{}");
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={theirs}"),
        &[],
        &[],
    );
    assert_eq!(r.status, 202);
    assert_eq!(c.get(&format!("/v2/app/blobs/{theirs}")).status, 404);

    // linked here but not stored (collected): no mount
    let gone = sha256(b"gone");
    h.meta_put(&format!("blob/{gone}/x"), b"{}").unwrap();
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={gone}"),
        &[],
        &[],
    );
    assert_eq!(r.status, 202);
}

#[test]
fn mount_from_a_remote_needs_a_held_link_not_a_pending_fetch() {
    // guards mount::linked_in's BlobLink::Held check: a remote's pending link may be a fetch
    // that failed, and the stored copy someone else's
    let h = host();
    let c = client(&h);
    let d = h.blob_write(b"pushed elsewhere", None).unwrap();
    h.repos
        .borrow_mut()
        .push(repository("docker-remote", RepoType::Remote, false));
    h.put_in(
        "docker-remote",
        &format!("blob/{d}/evil"),
        br#"{"pending":true}"#,
    );
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={d}&from=docker-remote/evil"),
        &[],
        &[],
    );
    assert_eq!(r.status, 202);
    h.put_in("docker-remote", &format!("blob/{d}/evil"), b"{}");
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?mount={d}&from=docker-remote/evil"),
        &[],
        &[],
    );
    assert_eq!(r.status, 201);
}

#[test]
fn manifest_with_a_wrong_layer_size_is_refused() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{\"architecture\":\"amd64\"}");
    let layer = c.push_blob("app", b"sixteen bytes!!!");
    let m = image_manifest((&config, 24), &[(&layer, 17)], json!({}));
    let r = c.put_manifest("app", "v1", OCI, &m);
    assert_eq!(status_code(&r), (400, "MANIFEST_INVALID".into()));
    assert!(h.meta.borrow().keys().all(|k| !k.starts_with("tag/")));
    let m = image_manifest((&config, 24), &[(&layer, 16)], json!({}));
    assert_eq!(c.put_manifest("app", "v1", OCI, &m).status, 201);
}

#[test]
fn manifest_push_by_tag_needs_its_blobs_in_the_image() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{\"architecture\":\"amd64\"}");
    let layer = sha256(b"layer not pushed");
    let m = image_manifest((&config, 24), &[(&layer, 16)], json!({}));
    let r = c.put_manifest("app", "v1", OCI, &m);
    assert_eq!(status_code(&r), (400, "MANIFEST_BLOB_UNKNOWN".into()));
    assert_eq!(json_body(&r)["errors"][0]["detail"]["digest"], layer);
    assert!(h.meta.borrow().keys().all(|k| !k.starts_with("tag/")));

    // stored and linked to another image is not enough either
    let pushed_elsewhere = c.push_blob("other", b"layer not pushed");
    assert_eq!(pushed_elsewhere, layer);
    let r = c.put_manifest("app", "v1", OCI, &m);
    assert_eq!(code(&r), "MANIFEST_BLOB_UNKNOWN");

    c.push_blob("app", b"layer not pushed");
    let r = c.put_manifest("app", "v1", OCI, &m);
    let d = sha256(m.as_bytes());
    assert_eq!(r.status, 201);
    assert_eq!(
        h_(&r, "location"),
        Some(format!("{BASE}/v2/app/manifests/{d}"))
    );
    assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    assert_eq!(h_(&r, "oci-subject"), None);

    for reference in ["v1", d.as_str()] {
        let r = c.get(&format!("/v2/app/manifests/{reference}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, m.as_bytes(), "byte for byte");
        assert_eq!(h_(&r, "content-type").as_deref(), Some(OCI));
        assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
        let r = c.send("HEAD", &format!("/v2/app/manifests/{reference}"), &[], &[]);
        assert_eq!((r.status, r.body.len()), (200, 0));
        assert_eq!(h_(&r, "content-length"), Some(m.len().to_string()));
    }
    // the manifest belongs to this image only
    let r = c.get(&format!("/v2/other/manifests/{d}"));
    assert_eq!(status_code(&r), (404, "MANIFEST_UNKNOWN".into()));
}

#[test]
fn manifest_push_by_digest_must_hash_to_it() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{}");
    let m = image_manifest((&config, 2), &[], json!({}));
    let d = sha256(m.as_bytes());
    let wrong = sha256(b"other");
    let r = c.put_manifest("app", &wrong, OCI, &m);
    assert_eq!(status_code(&r), (400, "DIGEST_INVALID".into()));
    assert!(!h.blobs.borrow().contains_key(&d));
    let r = c.put_manifest("app", &d, OCI, &m);
    assert_eq!(r.status, 201);
    assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    assert_eq!(c.get(&format!("/v2/app/manifests/{d}")).status, 200);
    // by digest only: no tag
    let r = c.get("/v2/app/tags/list");
    assert_eq!(json_body(&r), json!({"name": "app", "tags": []}));
}

#[test]
fn bad_manifests_and_references_are_client_errors() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{}");
    let good = image_manifest((&config, 2), &[], json!({}));
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("-bad", OCI, good.clone(), 400, "TAG_INVALID"),
        (
            "sha256:totallywrong",
            OCI,
            good.clone(),
            400,
            "DIGEST_INVALID",
        ),
        ("v1", OCI, "not json".into(), 400, "MANIFEST_INVALID"),
        ("v1", OCI_INDEX, good.clone(), 400, "MANIFEST_INVALID"),
        (
            "v1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            r#"{"schemaVersion":1}"#.into(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "v1",
            OCI,
            "x".repeat(4 * 1024 * 1024 + 1),
            413,
            "MANIFEST_INVALID",
        ),
    ];
    for (reference, ct, body, status, code_) in cases {
        let r = c.put_manifest("app", reference, ct, &body);
        assert_eq!(status_code(&r), (status, code_.into()), "{reference} {ct}");
    }
    let r = c.put_manifest("Bad", "v1", OCI, &good);
    assert_eq!(status_code(&r), (400, "NAME_INVALID".into()));
    // a blob upload past the host's limit (if it ever set one) is SIZE_INVALID
    let req = c.request("PUT", "/v2/app/blobs/uploads/abc", &[]);
    let r = render_failure(&req, &failure(FailureKind::TooLarge));
    assert_eq!(status_code(&r), (413, "SIZE_INVALID".into()));
}

#[test]
fn reads_of_a_reference_that_is_neither_tag_nor_digest_are_manifest_unknown() {
    let h = host();
    let c = client(&h);
    push_image(&c, "app", "v1", b"layer");
    let too_long = "a".repeat(129);
    for reference in [".INVALID_MANIFEST_NAME", "-bad", too_long.as_str()] {
        let path = format!("/v2/app/manifests/{reference}");
        let r = c.get(&path);
        assert_eq!(
            status_code(&r),
            (404, "MANIFEST_UNKNOWN".into()),
            "{reference}"
        );
        let r = c.send("HEAD", &path, &[], &[]);
        assert_eq!((r.status, r.body.len()), (404, 0), "{reference}");
    }
    // a malformed digest is still the client's mistake
    let r = c.get("/v2/app/manifests/sha256:totallywrong");
    assert_eq!(status_code(&r), (400, "DIGEST_INVALID".into()));
    // writes still say what is wrong with the tag (PUT: bad_manifests_and_references_...)
    let r = c.send(
        "DELETE",
        "/v2/app/manifests/.INVALID_MANIFEST_NAME",
        &[],
        &[],
    );
    assert_eq!(status_code(&r), (400, "TAG_INVALID".into()));
}

fn oci_tags(r: &Response) -> Vec<String> {
    header_values(&r.headers, "oci-tag")
        .map(str::to_owned)
        .collect()
}

fn tags_of(c: &Client<'_>, name: &str) -> Value {
    json_body(&c.get(&format!("/v2/{name}/tags/list")))["tags"].clone()
}

#[test]
fn push_by_digest_creates_the_tags_of_its_tag_parameters() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{}");
    let m = image_manifest((&config, 2), &[], json!({}));
    let d = sha256(m.as_bytes());
    let r = c.send(
        "PUT",
        &format!("/v2/app/manifests/{d}?tag=1.2.3&tag=latest&tag=1.2.3"),
        &[("Content-Type", OCI)],
        m.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        oci_tags(&r),
        vec!["1.2.3", "latest"],
        "one header per tag, no repeats"
    );
    assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    assert_eq!(tags_of(&c, "app"), json!(["1.2.3", "latest"]));
    for tag in ["1.2.3", "latest"] {
        let r = c.get(&format!("/v2/app/manifests/{tag}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, m.as_bytes());
        assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    }
    // without tag parameters: no tag and no OCI-Tag, as before
    let m2 = image_manifest((&config, 2), &[], json!({"annotations": {"k": "v"}}));
    let r = c.put_manifest("app", &sha256(m2.as_bytes()), OCI, &m2);
    assert_eq!((r.status, oci_tags(&r).len()), (201, 0));
    assert_eq!(tags_of(&c, "app"), json!(["1.2.3", "latest"]));
}

#[test]
fn tag_parameters_are_checked_before_the_body_is_read() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{}");
    let m = image_manifest((&config, 2), &[], json!({}));
    let d = sha256(m.as_bytes());
    let many: Vec<String> = (0..=push::MAX_TAG_PARAMS)
        .map(|i| format!("tag=t{i}"))
        .collect();
    let cases = [
        ("tag=ok&tag=-bad".to_owned(), 400),
        ("tag=ok&tag=".to_owned(), 400),
        (format!("tag={}", "a".repeat(129)), 400),
        (many.join("&"), 414),
    ];
    for (query, status) in cases {
        let req = c.request(
            "PUT",
            &format!("/v2/app/manifests/{d}?{query}"),
            &[("Content-Type", OCI)],
        );
        let Plan::Respond(r) = handle(&h, &req) else {
            panic!("{query}: the body was asked for");
        };
        assert_eq!(status_code(&r), (status, "TAG_INVALID".into()), "{query}");
    }
    assert!(!h.blobs.borrow().contains_key(&d), "nothing stored");
    assert!(h.meta.borrow().keys().all(|k| !k.starts_with("tag/")));
    // exactly the limit is fine
    let most: Vec<String> = (0..push::MAX_TAG_PARAMS)
        .map(|i| format!("tag=t{i}"))
        .collect();
    let r = c.send(
        "PUT",
        &format!("/v2/app/manifests/{d}?{}", most.join("&")),
        &[("Content-Type", OCI)],
        m.as_bytes(),
    );
    assert_eq!((r.status, oci_tags(&r).len()), (201, push::MAX_TAG_PARAMS));
}

#[test]
fn tag_parameters_of_a_push_by_tag_are_ignored() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{}");
    let m = image_manifest((&config, 2), &[], json!({}));
    let r = c.send(
        "PUT",
        "/v2/app/manifests/v1?tag=other&tag=-bad",
        &[("Content-Type", OCI)],
        m.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        oci_tags(&r).is_empty(),
        "the client learns they were not applied"
    );
    assert_eq!(tags_of(&c, "app"), json!(["v1"]));
}

/// A manifest named by sha512 gets its tags through tag parameters (a push by tag has no
/// digest to go by, so the bytes are named with sha256); everything then answers in sha512.
#[test]
fn sha512_manifest_tagged_through_tag_parameters() {
    let h = host();
    let c = client(&h);
    let config_bytes = b"{\"architecture\":\"arm64\"}";
    let config = sha512(config_bytes);
    let r = c.send(
        "POST",
        &format!("/v2/app/blobs/uploads/?digest={config}"),
        &[],
        config_bytes,
    );
    assert_eq!(r.status, 201);
    let m = image_manifest((&config, config_bytes.len()), &[], json!({}));
    let d = sha512(m.as_bytes());
    let r = c.send(
        "PUT",
        &format!("/v2/app/manifests/{d}?tag=tag-param-sha512&tag=tag-param-sha512-0"),
        &[("Content-Type", OCI)],
        m.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(oci_tags(&r), vec!["tag-param-sha512", "tag-param-sha512-0"]);
    assert_eq!(h_(&r, "docker-content-digest"), Some(d.clone()));
    assert_eq!(
        h_(&r, "location"),
        Some(format!("{BASE}/v2/app/manifests/{d}"))
    );
    for reference in ["tag-param-sha512", "tag-param-sha512-0", d.as_str()] {
        let r = c.send("HEAD", &format!("/v2/app/manifests/{reference}"), &[], &[]);
        assert_eq!(r.status, 200, "{reference}");
        assert_eq!(
            h_(&r, "docker-content-digest"),
            Some(d.clone()),
            "{reference}"
        );
    }
    // the same bytes pushed by tag are named with sha256: the spec gives no other way
    let r = c.put_manifest("app", "by-tag", OCI, &m);
    assert_eq!(h_(&r, "docker-content-digest"), Some(sha256(m.as_bytes())));
}

#[test]
fn docker_schema2_and_helm_artifacts_are_accepted() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("charts/app", b"{\"name\":\"app\",\"version\":\"1.0.0\"}");
    let chart = c.push_blob("charts/app", b"\x1f\x8bchart");
    let m = json!({
        "schemaVersion": 2,
        "config": descriptor("application/vnd.cncf.helm.config.v1+json", &config, 32),
        "layers": [descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", &chart, 7)],
    })
    .to_string();
    let r = c.put_manifest("charts/app", "1.0.0", OCI, &m);
    assert_eq!(r.status, 201);

    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let m = json!({
        "schemaVersion": 2,
        "mediaType": docker,
        "config": descriptor("application/vnd.docker.container.image.v1+json", &config, 32),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &chart, 7)],
    })
    .to_string();
    let r = c.put_manifest("charts/app", "docker", docker, &m);
    assert_eq!(r.status, 201);
    let r = c.get("/v2/charts/app/manifests/docker");
    assert_eq!(h_(&r, "content-type").as_deref(), Some(docker));
}

#[test]
fn index_needs_its_child_manifests_in_the_image() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{}");
    let child = image_manifest((&config, 2), &[], json!({}));
    let child_digest = sha256(child.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [json!({"mediaType": OCI, "digest": child_digest, "size": child.len(), "platform": {"os": "linux", "architecture": "amd64"}})],
    })
    .to_string();
    let r = c.put_manifest("app", "multi", OCI_INDEX, &index);
    assert_eq!(status_code(&r), (400, "MANIFEST_BLOB_UNKNOWN".into()));
    assert_eq!(json_body(&r)["errors"][0]["detail"]["digest"], child_digest);

    assert_eq!(
        c.put_manifest("app", &child_digest, OCI, &child).status,
        201
    );
    let r = c.put_manifest("app", "multi", OCI_INDEX, &index);
    assert_eq!(r.status, 201);
    let r = c.get("/v2/app/manifests/multi");
    assert_eq!(h_(&r, "content-type").as_deref(), Some(OCI_INDEX));
    assert_eq!(r.body, index.as_bytes());
}

#[test]
fn subjects_are_answered_and_listed_as_referrers() {
    let h = host();
    let c = client(&h);
    let subject = push_image(&c, "app", "v1", b"layer");
    let empty = c.push_blob("app", b"{}");
    let sig = c.push_blob("app", b"signature");
    let subject_desc = json!({"mediaType": OCI, "digest": subject, "size": 10});

    // artifactType from the field
    let a = image_manifest(
        (&empty, 2),
        &[(&sig, 9)],
        json!({"artifactType": "application/vnd.example.sig", "subject": subject_desc, "annotations": {"k": "a"}}),
    );
    let a = a.replace(
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.empty.v1+json",
    );
    let a_digest = sha256(a.as_bytes());
    let r = c.put_manifest("app", &a_digest, OCI, &a);
    assert_eq!(r.status, 201);
    assert_eq!(h_(&r, "oci-subject"), Some(subject.clone()));

    // artifactType from the config media type
    let b = image_manifest((&empty, 2), &[(&sig, 9)], json!({"subject": subject_desc})).replace(
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.example.sbom",
    );
    let b_digest = sha256(b.as_bytes());
    assert_eq!(c.put_manifest("app", &b_digest, OCI, &b).status, 201);

    // a referrer pushed before its subject exists
    let missing = sha256(b"no such subject");
    let orphan = image_manifest(
        (&empty, 2),
        &[],
        json!({"artifactType": "application/vnd.example.sig", "subject": {"mediaType": OCI, "digest": missing, "size": 1}}),
    );
    let r = c.put_manifest("app", &sha256(orphan.as_bytes()), OCI, &orphan);
    assert_eq!(
        (r.status, h_(&r, "oci-subject")),
        (201, Some(missing.clone()))
    );

    let r = c.get(&format!("/v2/app/referrers/{subject}"));
    assert_eq!(r.status, 200);
    assert_eq!(h_(&r, "content-type").as_deref(), Some(OCI_INDEX));
    assert_eq!(h_(&r, "oci-filters-applied"), None);
    let v = json_body(&r);
    assert_eq!(
        (v["schemaVersion"].clone(), v["mediaType"].clone()),
        (json!(2), json!(OCI_INDEX))
    );
    let mut got: Vec<Value> = v["manifests"].as_array().unwrap().clone();
    got.sort_by_key(|m| m["digest"].as_str().unwrap().to_owned());
    let mut want = vec![
        json!({"mediaType": OCI, "digest": a_digest, "size": a.len(), "artifactType": "application/vnd.example.sig", "annotations": {"k": "a"}}),
        json!({"mediaType": OCI, "digest": b_digest, "size": b.len(), "artifactType": "application/vnd.example.sbom"}),
    ];
    want.sort_by_key(|m| m["digest"].as_str().unwrap().to_owned());
    assert_eq!(got, want);

    let r = c.get(&format!(
        "/v2/app/referrers/{subject}?artifactType=application%2Fvnd.example.sig"
    ));
    assert_eq!(
        h_(&r, "oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let v = json_body(&r);
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], a_digest);

    let r = c.get(&format!("/v2/app/referrers/{missing}"));
    assert_eq!(json_body(&r)["manifests"].as_array().unwrap().len(), 1);
    let unknown = sha256(b"unknown");
    let r = c.get(&format!("/v2/app/referrers/{unknown}"));
    assert_eq!(r.status, 200);
    assert_eq!(json_body(&r)["manifests"], json!([]));
    let r = c.get("/v2/app/referrers/sha256:short");
    assert_eq!(status_code(&r), (400, "DIGEST_INVALID".into()));

    // deleting the referrer takes it out of the list
    let r = c.send("DELETE", &format!("/v2/app/manifests/{a_digest}"), &[], &[]);
    assert_eq!(r.status, 202);
    let r = c.get(&format!("/v2/app/referrers/{subject}"));
    assert_eq!(json_body(&r)["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn tag_list_paginates_with_link() {
    let h = host();
    let mut c = client(&h);
    c.path_repo = Some(OWN.into());
    c.mount = Mount::Path;
    let config = c.push_blob("app", b"{}");
    let m = image_manifest((&config, 2), &[], json!({}));
    for tag in ["b", "a", "d", "c", "e"] {
        assert_eq!(c.put_manifest("app", tag, OCI, &m).status, 201);
    }
    let r = c.get("/v2/app/tags/list?n=2");
    assert_eq!(
        json_body(&r),
        json!({"name": format!("{OWN}/app"), "tags": ["a", "b"]})
    );
    assert_eq!(
        h_(&r, "link"),
        Some(format!(
            "<{BASE}/v2/{OWN}/app/tags/list?n=2&last=b>; rel=\"next\""
        ))
    );
    let r = c.get("/v2/app/tags/list?n=2&last=d");
    assert_eq!(json_body(&r)["tags"], json!(["e"]));
    assert_eq!(h_(&r, "link"), None);
    let r = c.get("/v2/app/tags/list?n=0");
    assert_eq!(json_body(&r)["tags"], json!([]));
    let r = c.get("/v2/app/tags/list");
    assert_eq!(json_body(&r)["tags"], json!(["a", "b", "c", "d", "e"]));
    let r = c.get("/v2/nothing/tags/list");
    assert_eq!(status_code(&r), (404, "NAME_UNKNOWN".into()));
}

#[test]
fn catalog_by_mount() {
    let h = host();
    let c = client(&h);
    push_image(&c, "app", "1", b"l1");
    push_image(&c, "team/tool", "1", b"l2");
    c.push_blob("blobs-only", b"l3");
    h.repos
        .borrow_mut()
        .push(repository("docker-remote", RepoType::Remote, false));
    let link = json!({"digest": sha256(b"m"), "media_type": OCI, "checked": 0}).to_string();
    h.put_in("docker-remote", "tag/library/redis:7", link.as_bytes());
    h.put_in("docker-remote", "tag/library/redis:8", link.as_bytes());
    // a remote records its image's marker with the tag (and GC for tags recorded before)
    h.put_in("docker-remote", "image/library/redis", b"{}");
    let mut virt = repository("docker", RepoType::Virtual, false);
    virt.members = vec![OWN.into(), "docker-remote".into()];
    h.repos.borrow_mut().push(virt);

    // a mount naming the repository: its images, unprefixed
    let r = c.get("/v2/_catalog");
    assert_eq!(
        json_body(&r),
        json!({"repositories": ["app", "blobs-only", "team/tool"]})
    );
    let r = c.get("/v2/_catalog?n=2");
    assert_eq!(json_body(&r)["repositories"], json!(["app", "blobs-only"]));
    assert_eq!(
        h_(&r, "link"),
        Some(format!(
            "<{BASE}/v2/_catalog?n=2&last=blobs-only>; rel=\"next\""
        ))
    );
    let r = c.get("/v2/_catalog?n=2&last=blobs-only");
    assert_eq!(json_body(&r)["repositories"], json!(["team/tool"]));
    assert_eq!(h_(&r, "link"), None);

    // the root: every repository's images, as the path method names them
    let mut root = client(&h);
    root.mount = Mount::Root;
    let r = root.get("/v2/_catalog");
    assert_eq!(
        json_body(&r)["repositories"],
        json!([
            "docker-local/app",
            "docker-local/blobs-only",
            "docker-local/team/tool",
            "docker-remote/library/redis"
        ])
    );
    let r = root.get("/v2/_catalog?n=3");
    assert_eq!(
        h_(&r, "link"),
        Some(format!(
            "<{BASE}/v2/_catalog?n=3&last=docker-local%2Fteam%2Ftool>; rel=\"next\""
        ))
    );
    // the root without any repository (no default) is still a catalog
    let mut req = root.request("GET", "/v2/_catalog", &[]);
    req.repository = None;
    let Plan::Respond(r) = handle(&h, &req) else {
        panic!("catalog must respond")
    };
    assert_eq!(r.status, 200);
    assert_eq!(json_body(&r)["repositories"].as_array().unwrap().len(), 4);
}

/// A page of a large tag list reads about the keys it shows, not the whole list, and paging
/// with the Link header sees every tag exactly once, in order.
#[test]
fn tag_pages_cost_what_they_show() {
    let h = host();
    let c = client(&h);
    push_image(&c, "app", "seed", b"l1");
    let link = json!({"digest": sha256(b"m"), "media_type": OCI, "checked": 0}).to_string();
    let mut want: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
    want.push("seed".into());
    for t in &want {
        h.meta
            .borrow_mut()
            .insert(format!("tag/app:{t}"), link.as_bytes().to_vec());
    }
    want.sort();
    h.keys_listed.set(0);
    let r = c.get("/v2/app/tags/list?n=100&last=t5");
    let tags = json_body(&r)["tags"].clone();
    let first = want.iter().position(|t| t.as_str() > "t5").unwrap();
    assert_eq!(tags, json!(want[first..first + 100]));
    assert!(
        h.keys_listed.get() <= 101,
        "a page of 100 read {} keys",
        h.keys_listed.get()
    );
    // walk the whole list by its Link headers
    let (mut seen, mut target) = (Vec::new(), Some("/v2/app/tags/list?n=1000".to_owned()));
    while let Some(t) = target {
        let r = c.get(&t);
        seen.extend(
            json_body(&r)["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned()),
        );
        target = h_(&r, "link").map(|l| {
            let url = l.split_once('<').unwrap().1.split_once('>').unwrap().0;
            url.strip_prefix(BASE).unwrap().to_owned()
        });
    }
    assert_eq!(seen, want);
}

/// The root catalog orders `<repository>/<image>` as strings even where repository names
/// prefix each other ("a" and "a-b": "a-b/…" sorts before "a/…"), and pages through them.
#[test]
fn root_catalog_pages_across_repositories() {
    let h = host();
    for r in ["a", "a-b", "b"] {
        h.repos
            .borrow_mut()
            .push(repository(r, RepoType::Local, false));
        for img in ["x", "x-y", "x/z"] {
            h.put_in(r, &format!("image/{img}"), b"{}");
        }
    }
    let mut root = client(&h);
    root.mount = Mount::Root;
    let all = json_body(&root.get("/v2/_catalog"))["repositories"].clone();
    let mut want: Vec<String> = ["a", "a-b", "b"]
        .iter()
        .flat_map(|r| ["x", "x-y", "x/z"].map(|i| format!("{r}/{i}")))
        .collect();
    want.sort();
    assert_eq!(all, json!(want));
    for n in 1..=4 {
        let (mut seen, mut last): (Vec<String>, Option<String>) = (vec![], None);
        loop {
            let q = match &last {
                Some(l) => format!("/v2/_catalog?n={n}&last={}", l.replace('/', "%2F")),
                None => format!("/v2/_catalog?n={n}"),
            };
            let r = root.get(&q);
            let page: Vec<String> = json_body(&r)["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            assert!(page.len() <= n);
            seen.extend(page.iter().cloned());
            if h_(&r, "link").is_none() {
                break;
            }
            last = page.last().cloned();
        }
        assert_eq!(seen, want, "n={n}");
    }
}

#[test]
fn deletes_are_refused_when_disabled() {
    let h = host();
    let mut c = client(&h);
    let d = push_image(&c, "app", "v1", b"layer");
    let layer = sha256(b"layer");
    c.repo.delete_enabled = false;
    for target in [
        "/v2/app/manifests/v1".to_owned(),
        format!("/v2/app/manifests/{d}"),
        format!("/v2/app/blobs/{layer}"),
    ] {
        let r = c.send("DELETE", &target, &[], &[]);
        assert_eq!(status_code(&r), (405, "UNSUPPORTED".into()), "{target}");
    }
    assert_eq!(c.get("/v2/app/manifests/v1").status, 200);
}

#[test]
fn deletes_of_tags_manifests_and_blobs() {
    let h = host();
    let c = client(&h);
    let d = push_image(&c, "app", "v1", b"layer");
    let m = String::from_utf8(h.blobs.borrow()[&d].clone()).unwrap();
    assert_eq!(c.put_manifest("app", "v2", OCI, &m).status, 201);
    assert_eq!(c.put_manifest("app", "keep", OCI, &m).status, 201);

    // a tag: only the tag goes
    let r = c.send("DELETE", "/v2/app/manifests/keep", &[], &[]);
    assert_eq!(r.status, 202);
    assert_eq!(
        status_code(&c.get("/v2/app/manifests/keep")),
        (404, "MANIFEST_UNKNOWN".into())
    );
    assert_eq!(c.get(&format!("/v2/app/manifests/{d}")).status, 200);
    let r = c.send("DELETE", "/v2/app/manifests/keep", &[], &[]);
    assert_eq!(status_code(&r), (404, "MANIFEST_UNKNOWN".into()));

    // by digest: the manifest and every tag on it
    let r = c.send("DELETE", &format!("/v2/app/manifests/{d}"), &[], &[]);
    assert_eq!(r.status, 202);
    for reference in ["v1", "v2", d.as_str()] {
        let r = c.get(&format!("/v2/app/manifests/{reference}"));
        assert_eq!(
            status_code(&r),
            (404, "MANIFEST_UNKNOWN".into()),
            "{reference}"
        );
    }
    let r = c.send("DELETE", &format!("/v2/app/manifests/{d}"), &[], &[]);
    assert_eq!(status_code(&r), (404, "MANIFEST_UNKNOWN".into()));
    // the image still exists, with no tags
    assert_eq!(json_body(&c.get("/v2/app/tags/list"))["tags"], json!([]));

    let layer = sha256(b"layer");
    let r = c.send("DELETE", &format!("/v2/app/blobs/{layer}"), &[], &[]);
    assert_eq!(r.status, 202);
    assert_eq!(
        status_code(&c.get(&format!("/v2/app/blobs/{layer}"))),
        (404, "BLOB_UNKNOWN".into())
    );
    let r = c.send("DELETE", &format!("/v2/app/blobs/{layer}"), &[], &[]);
    assert_eq!(status_code(&r), (404, "BLOB_UNKNOWN".into()));
}

#[test]
fn live_blobs_of_a_local_repository() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{\"architecture\":\"amd64\"}");
    let layer = sha256(b"layer");
    let kept = push_image(&c, "app", "v1", b"layer");
    let child = String::from_utf8(h.blobs.borrow()[&kept].clone()).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI, "digest": kept, "size": child.len()}],
    })
    .to_string();
    assert_eq!(
        c.put_manifest("app", "multi", OCI_INDEX, &index).status,
        201
    );
    let index_digest = sha256(index.as_bytes());
    // a second image, then deleted by digest: neither it nor its only layer stay live
    let gone = push_image(&c, "other", "x", b"only here");
    let only = sha256(b"only here");
    assert_eq!(
        c.send("DELETE", &format!("/v2/other/manifests/{gone}"), &[], &[])
            .status,
        202
    );
    // uploaded, never referenced
    let loose = c.push_blob("app", b"loose");
    // a link to a blob the store no longer has is dropped
    let collected = sha256(b"collected earlier");
    h.meta_put(&format!("blob/{collected}/app"), b"{}").unwrap();

    let live = live_blobs(&h, &c.repo).unwrap();
    let mut want = vec![config.clone(), layer, kept, index_digest];
    want.sort();
    assert_eq!(live, want);
    assert!(!live.contains(&gone) && !live.contains(&only) && !live.contains(&loose));
    assert!(
        !h.meta
            .borrow()
            .contains_key(&format!("blob/{collected}/app"))
    );
}

#[test]
fn live_blobs_of_a_remote_repository_and_its_blob_links() {
    let mut reg = Registry::new(UPSTREAM, UpstreamAuth::Open);
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    let m = reg.push("library/redis", "7", manifest);
    let h = fake_host(reg);
    let remote = repository("docker-remote", RepoType::Remote, false);
    let mut c = client(&h);
    c.repo = remote.clone();
    assert_eq!(c.get("/v2/library/redis/manifests/7").status, 200);
    assert!(
        h.meta.borrow().contains_key("image/library/redis"),
        "a tag recorded through a remote marks its image for the catalog"
    );
    // a blob miss becomes a fetch plan, and the blob is linked (pending) for GC
    let layer = sha256(b"upstream layer");
    let req = c.request("GET", &format!("/v2/library/redis/blobs/{layer}"), &[]);
    assert!(matches!(handle(&h, &req), Plan::FetchBlob(_)));
    assert_eq!(
        h.meta
            .borrow()
            .get(&format!("blob/{layer}/library/redis"))
            .map(Vec::as_slice),
        Some(br#"{"pending":true}"#.as_slice())
    );
    // a blob cached before links existed gets one when served, once the upstream confirms
    // the name may see it
    let old = h.blob_write(b"cached by 0.1.0", None).unwrap();
    h.upstream.borrow_mut().blobs.insert(old.clone(), 15);
    h.take_sent();
    let req = c.request("GET", &format!("/v2/library/redis/blobs/{old}"), &[]);
    assert!(matches!(handle(&h, &req), Plan::ServeBlob(_)));
    assert_eq!(
        h.take_sent(),
        vec![format!("HEAD {UPSTREAM}/v2/library/redis/blobs/{old}")]
    );
    assert!(
        h.meta
            .borrow()
            .contains_key(&format!("blob/{old}/library/redis"))
    );

    let live = live_blobs(&h, &remote).unwrap();
    let mut want = vec![m, layer, old];
    want.sort();
    assert_eq!(live, want);

    let virt = repository("docker", RepoType::Virtual, false);
    assert!(live_blobs(&h, &virt).unwrap().is_empty());
}

/// Collection walks the metadata in pages, keeps every tag's
/// target across page boundaries, and gives tags recorded before remotes kept image markers
/// their marker, so the catalog lists those images.
#[test]
fn a_collection_walks_in_pages_and_marks_tagged_images() {
    let h = fake_host(Registry::new(UPSTREAM, UpstreamAuth::Open));
    let remote = repository("docker-remote", RepoType::Remote, false);
    let mut want = Vec::new();
    for i in 0..2500 {
        let d = sha256(format!("m{i}").as_bytes());
        let link = json!({"digest": d, "media_type": OCI, "checked": 0}).to_string();
        let name = if i % 2 == 0 {
            "library/redis"
        } else {
            "old/app"
        };
        h.meta_put(&format!("tag/{name}:{i}"), link.as_bytes())
            .unwrap();
        want.push(d);
    }
    want.sort();
    h.keys_listed.set(0);
    // one call answers one page, never the whole set
    let first = crate::gc::live_blobs_page(&h, &remote, None).unwrap();
    assert!(first.next.is_some(), "2,500 tags in one page");
    assert!(first.digests.len() <= binaryrepo_plugin_sdk::live::KEYS_PER_PAGE);
    assert_eq!(live_blobs(&h, &remote).unwrap(), want);
    for name in ["library/redis", "old/app"] {
        assert!(
            h.meta.borrow().contains_key(&format!("image/{name}")),
            "{name}"
        );
    }
    let mut c = client(&h);
    c.repo = remote;
    let r = c.get("/v2/_catalog");
    assert_eq!(
        json_body(&r)["repositories"],
        json!(["library/redis", "old/app"])
    );
}

#[test]
fn a_remote_collection_drops_held_links_to_nothing_and_pending_ones_at_the_second_miss() {
    // guards gc::drop_dangling_remote_link: an old version linked before its fetch, so a failed
    // fetch left a held link that would let the name see the digest once stored for another
    let h = fake_host(Registry::new(UPSTREAM, UpstreamAuth::Open));
    let remote = repository("docker-remote", RepoType::Remote, false);
    let failed = sha256(b"fetch failed before pending links");
    let in_flight = sha256(b"being fetched");
    let stored = h.blob_write(b"stored", None).unwrap();
    h.meta_put(&format!("blob/{failed}/evil"), b"{}").unwrap();
    h.meta_put(&format!("blob/{in_flight}/app"), br#"{"pending":true}"#)
        .unwrap();
    h.meta_put(&format!("blob/{stored}/app"), b"{}").unwrap();
    let live = live_blobs(&h, &remote).unwrap();
    assert!(live.contains(&in_flight) && live.contains(&stored));
    {
        let meta = h.meta.borrow();
        assert!(!meta.contains_key(&format!("blob/{failed}/evil")));
        assert!(meta.contains_key(&format!("blob/{in_flight}/app")));
        assert!(meta.contains_key(&format!("blob/{stored}/app")));
    }
    // still missing at the next collection: the fetch failed (a digest the upstream lacks),
    // and the link goes, so GETs of random digests leave nothing behind
    live_blobs(&h, &remote).unwrap();
    let meta = h.meta.borrow();
    assert!(!meta.contains_key(&format!("blob/{in_flight}/app")));
    assert!(meta.contains_key(&format!("blob/{stored}/app")));
}

#[test]
fn a_fetch_started_again_renews_a_pending_link_marked_missing() {
    let h = fake_host(Registry::new(UPSTREAM, UpstreamAuth::Open));
    let remote = repository("docker-remote", RepoType::Remote, false);
    let layer = sha256(b"slow layer");
    let key = format!("blob/{layer}/app");
    h.meta_put(&key, br#"{"pending":true}"#).unwrap();
    live_blobs(&h, &remote).unwrap();
    assert_eq!(
        h.meta.borrow().get(&key).map(Vec::as_slice),
        Some(br#"{"pending":true,"missing":true}"#.as_slice())
    );
    let mut c = client(&h);
    c.repo = remote.clone();
    let req = c.request("GET", &format!("/v2/app/blobs/{layer}"), &[]);
    assert!(matches!(handle(&h, &req), Plan::FetchBlob(_)));
    assert_eq!(
        h.meta.borrow().get(&key).map(Vec::as_slice),
        Some(br#"{"pending":true}"#.as_slice())
    );
}

#[test]
fn remote_repositories_refuse_pushes_and_pass_referrers_through() {
    let h = host();
    let mut c = client(&h);
    c.repo = repository("docker-remote", RepoType::Remote, false);
    let d = sha256(b"x");
    for (method, target) in [
        ("POST", "/v2/app/blobs/uploads/".to_owned()),
        ("PUT", "/v2/app/manifests/v1".to_owned()),
        ("DELETE", format!("/v2/app/blobs/{d}")),
        ("DELETE", "/v2/app/manifests/v1".to_owned()),
        ("GET", "/v2/app/blobs/uploads/abc".to_owned()),
    ] {
        let r = c.send(method, &target, &[], &[]);
        assert_eq!(
            status_code(&r),
            (405, "UNSUPPORTED".into()),
            "{method} {target}"
        );
        assert!(String::from_utf8_lossy(&r.body).contains("read-only caches"));
    }
    // the fake upstream has no referrers API (404): an empty list
    let r = c.get(&format!("/v2/app/referrers/{d}"));
    assert_eq!(r.status, 200);
    assert_eq!(json_body(&r)["manifests"], json!([]));
    assert_eq!(
        h.take_sent(),
        vec![format!("GET {UPSTREAM}/v2/app/referrers/{d}")]
    );
}

#[test]
fn virtual_without_default_local_says_so() {
    let h = host();
    let mut c = client(&h);
    c.repo = repository("docker", RepoType::Virtual, false);
    let r = c.send("POST", "/v2/app/blobs/uploads/", &[], &[]);
    assert_eq!(status_code(&r), (405, "UNSUPPORTED".into()));
    assert!(String::from_utf8_lossy(&r.body).contains("default-local"));
}

#[test]
fn pulls_of_what_the_repository_holds_are_offered_for_reuse_and_misses_are_not() {
    let h = host();
    let c = client(&h);
    let missing = c.get("/v2/app/manifests/1");
    assert_eq!(missing.status, 404);
    assert_eq!(
        h.take_offer(),
        None,
        "an answer that a push changes is not offered"
    );
    let d = push_image(&c, "app", "1", b"layer");
    h.take_offer();
    for target in [
        "/v2/app/manifests/1".to_owned(),
        format!("/v2/app/manifests/{d}"),
    ] {
        let r = c.get(&target);
        assert_eq!(r.status, 200);
        assert_eq!(h.take_offer(), Some(crate::plan::HELD_SECONDS), "{target}");
    }
    let layer = sha256(b"layer");
    assert_eq!(c.get(&format!("/v2/app/blobs/{layer}")).status, 200);
    assert_eq!(h.take_offer(), Some(crate::plan::HELD_SECONDS));
    assert_eq!(c.get(&format!("/v2/other/blobs/{layer}")).status, 404);
    assert_eq!(h.take_offer(), None);
}

#[test]
fn manifest_push_takes_blobs_a_sibling_member_of_a_pushing_virtual_holds() {
    // guards sibling::holds: the layers of a push through a virtual repository may be held by
    // its remote member only (the client's blob HEAD was answered from there)
    let h = host();
    let c = client(&h);
    let config = c.push_blob("team/app", b"{\"architecture\":\"amd64\"}");
    let layer = h.blob_write(b"cached base layer", None).unwrap();
    h.repos
        .borrow_mut()
        .push(repository("docker-remote", RepoType::Remote, false));
    let m = image_manifest((&config, 24), &[(&layer, 17)], json!({}));
    // a pending link (a fetch that may have failed) is not holding it
    h.put_in(
        "docker-remote",
        &format!("blob/{layer}/library/base"),
        br#"{"pending":true}"#,
    );
    let mut virt = repository("docker", RepoType::Virtual, false);
    virt.members = vec![OWN.into(), "docker-remote".into()];
    h.repos.borrow_mut().push(virt.clone());
    let r = c.put_manifest("team/app", "2", OCI, &m);
    assert_eq!(
        status_code(&r),
        (400, "MANIFEST_BLOB_UNKNOWN".into()),
        "a virtual that does not push here"
    );
    h.repos.borrow_mut().retain(|r| r.name != "docker");
    virt.default_local = Some(OWN.into());
    h.repos.borrow_mut().push(virt);
    let r = c.put_manifest("team/app", "2", OCI, &m);
    assert_eq!(
        status_code(&r),
        (400, "MANIFEST_BLOB_UNKNOWN".into()),
        "pending"
    );
    h.put_in(
        "docker-remote",
        &format!("blob/{layer}/library/base"),
        b"{}",
    );
    assert_eq!(c.put_manifest("team/app", "2", OCI, &m).status, 201);
    // linked into the image: served from this repository from now on
    assert_eq!(c.get(&format!("/v2/team/app/blobs/{layer}")).status, 200);
}

// ---- cleanup rules (tag retention) ----

fn rules(
    keep_last: Option<u32>,
    matching: Option<&str>,
    untagged_after: Option<u64>,
) -> CleanupRules {
    CleanupRules {
        keep_last,
        matching: matching.map(str::to_owned),
        untagged_after_seconds: untagged_after,
    }
}

/// Pretends the tag was last pushed at `at`.
fn tag_pushed_at(h: &FakeHost, name: &str, tag: &str, at: u64) {
    let (name, tag) = (
        crate::reference::Name::parse(name).unwrap(),
        crate::reference::Tag::parse(tag).unwrap(),
    );
    let mut link = crate::meta::get_tag(h, &name, &tag).unwrap().unwrap();
    link.checked = at;
    crate::meta::put_tag(h, &name, &tag, &link).unwrap();
}

/// Pretends the manifest was pushed at `at` (none: recorded before push times were kept).
fn manifest_pushed_at(h: &FakeHost, name: &str, digest: &str, at: Option<u64>) {
    let (name, digest) = (
        crate::reference::Name::parse(name).unwrap(),
        crate::reference::Digest::parse(digest).unwrap(),
    );
    let mut record = crate::meta::get_image_manifest(h, &name, &digest)
        .unwrap()
        .unwrap();
    record.pushed = at;
    crate::meta::put_image_manifest(h, &name, &digest, &record).unwrap();
}

fn tag_names(c: &Client<'_>, name: &str) -> Vec<String> {
    let r = c.get(&format!("/v2/{name}/tags/list"));
    assert_eq!(r.status, 200);
    json_body(&r)["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

fn manifest_status(c: &Client<'_>, name: &str, reference: &str) -> u16 {
    c.get(&format!("/v2/{name}/manifests/{reference}")).status
}

#[test]
fn keep_last_keeps_the_newest_matching_tags_and_never_touches_others() {
    let h = host();
    let c = client(&h);
    let v1 = push_image(&c, "app", "v1", b"layer one");
    let v2 = push_image(&c, "app", "v2", b"layer two");
    let v3 = push_image(&c, "app", "v3", b"layer three");
    let dev = push_image(&c, "app", "dev", b"layer dev");
    // v0 shares v3's manifest: removing the tag must not take the manifest v3 keeps
    let body = String::from_utf8(h.blobs.borrow()[&v3].clone()).unwrap();
    assert_eq!(c.put_manifest("app", "v0", OCI, &body).status, 201);
    let other = push_image(&c, "other", "v1", b"other layer");
    for (tag, at) in [
        ("v0", 10),
        ("v1", 100),
        ("v2", 300),
        ("v3", 200),
        ("dev", 5),
    ] {
        tag_pushed_at(&h, "app", tag, at);
    }

    let report =
        crate::cleanup::cleanup(&h, &c.repo, &rules(Some(2), Some("^v\\d+"), None), 1000).unwrap();
    assert_eq!(
        report,
        CleanupReport {
            tags_removed: 2,
            manifests_removed: 1
        }
    );
    assert_eq!(tag_names(&c, "app"), ["dev", "v2", "v3"]);
    assert_eq!(manifest_status(&c, "app", &v1), 404);
    for kept in [&v2, &v3, &dev] {
        assert_eq!(manifest_status(&c, "app", kept), 200);
    }
    // each image counts its own tags
    assert_eq!(tag_names(&c, "other"), ["v1"]);
    assert_eq!(manifest_status(&c, "other", &other), 200);
    // what only v1 used is no longer live
    let live = live_blobs(&h, &c.repo).unwrap();
    assert!(!live.contains(&v1) && !live.contains(&sha256(b"layer one")));
    assert!(live.contains(&v3) && live.contains(&sha256(b"layer two")));

    // a second run finds nothing more to do
    let again =
        crate::cleanup::cleanup(&h, &c.repo, &rules(Some(2), Some("^v\\d+"), None), 1000).unwrap();
    assert_eq!(again, CleanupReport::default());
}

/// Images are cleaned one at a time from two walks (tags, image manifests) merged by name:
/// names that sort next to each other under either separator (`a`, `a-b`, `a/b`, `a0`, `a_b`,
/// `ab`) each keep their own newest tag, and an image with manifests left but no tag is still
/// seen by the untagged rule.
#[test]
fn cleanup_takes_each_image_by_itself_whatever_its_neighbours_names() {
    let h = host();
    let c = client(&h);
    let names = ["a", "a-b", "a/b", "a0", "a_b", "ab"];
    let mut old = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let d1 = push_image(&c, name, "1", format!("{name} one").as_bytes());
        push_image(&c, name, "2", format!("{name} two").as_bytes());
        tag_pushed_at(&h, name, "1", 10 + i as u64);
        tag_pushed_at(&h, name, "2", 500 + i as u64);
        old.push(d1);
    }
    // an image whose only tag is gone: its manifest is untagged
    let orphan = push_image(&c, "a.x", "gone", b"orphan layer");
    let (n, t) = (
        crate::reference::Name::parse("a.x").unwrap(),
        crate::reference::Tag::parse("gone").unwrap(),
    );
    h.meta_delete(&crate::meta::tag_key(&n, &t)).unwrap();
    manifest_pushed_at(&h, "a.x", &orphan, Some(1));

    let report =
        crate::cleanup::cleanup(&h, &c.repo, &rules(Some(1), None, Some(100)), 1000).unwrap();
    assert_eq!(
        report,
        CleanupReport {
            tags_removed: names.len() as u64,
            manifests_removed: names.len() as u64 + 1
        }
    );
    for (name, d1) in names.iter().zip(&old) {
        assert_eq!(tag_names(&c, name), ["2"], "{name}");
        assert_eq!(manifest_status(&c, name, d1), 404, "{name}");
    }
    assert_eq!(manifest_status(&c, "a.x", &orphan), 404);
}

#[test]
fn untagged_manifests_go_after_the_delay_but_not_what_kept_ones_reference() {
    let h = host();
    let c = client(&h);
    let config = c.push_blob("app", b"{\"architecture\":\"amd64\"}");
    let manifest = |layer: &[u8]| {
        let l = c.push_blob("app", layer);
        image_manifest((&config, 24), &[(&l, layer.len())], json!({}))
    };
    let by_digest = |body: &str| {
        let d = sha256(body.as_bytes());
        assert_eq!(c.put_manifest("app", &d, OCI, body).status, 201);
        d
    };
    // an index tagged "multi" over an untagged child
    let child_body = manifest(b"child");
    let child = by_digest(&child_body);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI, "digest": child, "size": child_body.len()}],
    })
    .to_string();
    assert_eq!(
        c.put_manifest("app", "multi", OCI_INDEX, &index).status,
        201
    );
    let index_digest = sha256(index.as_bytes());
    let old = by_digest(&manifest(b"old"));
    let young = by_digest(&manifest(b"young"));
    let legacy = by_digest(&manifest(b"legacy"));
    // a signature of the tagged index: untagged, old, kept with its subject
    let sig_body = image_manifest(
        (&config, 24),
        &[],
        json!({"subject": {"mediaType": OCI_INDEX, "digest": index_digest, "size": index.len()}}),
    );
    let sig = by_digest(&sig_body);
    for d in [&child, &old, &index_digest, &sig] {
        manifest_pushed_at(&h, "app", d, Some(100));
    }
    manifest_pushed_at(&h, "app", &young, Some(900));
    manifest_pushed_at(&h, "app", &legacy, None);

    let r = rules(None, None, Some(500));
    let report = crate::cleanup::cleanup(&h, &c.repo, &r, 1000).unwrap();
    assert_eq!(
        report,
        CleanupReport {
            tags_removed: 0,
            manifests_removed: 1
        }
    );
    assert_eq!(manifest_status(&c, "app", &old), 404);
    for kept in [&child, &index_digest, &young, &legacy, &sig] {
        assert_eq!(manifest_status(&c, "app", kept), 200, "{kept}");
    }
    assert_eq!(tag_names(&c, "app"), ["multi"]);

    // the record without a push time got the first run's time: it goes one delay later
    let report = crate::cleanup::cleanup(&h, &c.repo, &r, 1400).unwrap();
    assert_eq!(
        report,
        CleanupReport {
            tags_removed: 0,
            manifests_removed: 1
        }
    );
    assert_eq!(manifest_status(&c, "app", &young), 404);
    assert_eq!(manifest_status(&c, "app", &legacy), 200);
    let report = crate::cleanup::cleanup(&h, &c.repo, &r, 1500).unwrap();
    assert_eq!(
        report,
        CleanupReport {
            tags_removed: 0,
            manifests_removed: 1
        }
    );
    assert_eq!(manifest_status(&c, "app", &legacy), 404);
    assert_eq!(manifest_status(&c, "app", &child), 200);
}

#[test]
fn a_removed_index_tag_takes_its_children_but_not_ones_a_kept_tag_needs() {
    let h = host();
    let c = client(&h);
    let shared = push_image(&c, "app", "v2", b"shared");
    let shared_body = String::from_utf8(h.blobs.borrow()[&shared].clone()).unwrap();
    let config = c.push_blob("app", b"{\"architecture\":\"amd64\"}");
    let l = c.push_blob("app", b"arm only");
    let arm_body = image_manifest((&config, 24), &[(&l, 8)], json!({}));
    let arm = sha256(arm_body.as_bytes());
    assert_eq!(c.put_manifest("app", &arm, OCI, &arm_body).status, 201);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI, "digest": shared, "size": shared_body.len()},
            {"mediaType": OCI, "digest": arm, "size": arm_body.len()},
        ],
    })
    .to_string();
    assert_eq!(c.put_manifest("app", "v1", OCI_INDEX, &index).status, 201);
    let index_digest = sha256(index.as_bytes());
    tag_pushed_at(&h, "app", "v1", 100);
    tag_pushed_at(&h, "app", "v2", 200);

    let report = crate::cleanup::cleanup(&h, &c.repo, &rules(Some(1), None, None), 1000).unwrap();
    assert_eq!(
        report,
        CleanupReport {
            tags_removed: 1,
            manifests_removed: 2
        }
    );
    assert_eq!(tag_names(&c, "app"), ["v2"]);
    assert_eq!(manifest_status(&c, "app", &index_digest), 404);
    assert_eq!(manifest_status(&c, "app", &arm), 404);
    assert_eq!(manifest_status(&c, "app", &shared), 200);
}

#[test]
fn keep_last_zero_removes_every_matching_tag() {
    let h = host();
    let c = client(&h);
    let pr = push_image(&c, "app", "pr-1", b"pr");
    push_image(&c, "app", "main", b"main");
    let report =
        crate::cleanup::cleanup(&h, &c.repo, &rules(Some(0), Some("^pr-"), None), 1000).unwrap();
    assert_eq!(
        report,
        CleanupReport {
            tags_removed: 1,
            manifests_removed: 1
        }
    );
    assert_eq!(tag_names(&c, "app"), ["main"]);
    assert_eq!(manifest_status(&c, "app", &pr), 404);
}

/// An image of 100,000 tags streams through `keep_last`: the plugin holds the N newest (a heap),
/// never the tag list, and the manifest graph it holds is the image's manifests, not its tags.
/// Ties on the push time go to the names that sort last, as with a sort of the whole list.
#[test]
fn keep_last_holds_the_tags_it_keeps_not_the_tags_it_walks() {
    let h = host();
    let c = client(&h);
    let stays = push_image(&c, "app", "stays", b"layer stays");
    let newest = push_image(&c, "app", "newest", b"layer newest");
    let goes = push_image(&c, "app", "goes", b"layer goes");
    for t in ["newest", "goes"] {
        h.meta_delete(&format!("tag/app:{t}")).unwrap();
    }
    // t000000 … t099999, ten at each push time: the 25 newest are t099975 … t099999
    let (total, keep) = (100_000usize, 25usize);
    for i in 0..total {
        let digest = if i >= total - keep { &newest } else { &goes };
        let link = json!({"digest": digest, "media_type": OCI, "checked": i / 10}).to_string();
        h.meta
            .borrow_mut()
            .insert(format!("tag/app:t{i:06}"), link.into_bytes());
    }

    let (report, held) = crate::cleanup::cleanup_weighed(
        &h,
        &c.repo,
        &rules(Some(keep as u32), Some("^t"), None),
        1_000_000,
    )
    .unwrap();
    assert_eq!(
        report,
        CleanupReport {
            tags_removed: (total - keep) as u64,
            manifests_removed: 1
        }
    );
    let mut want: Vec<String> = (total - keep..total).map(|i| format!("t{i:06}")).collect();
    want.insert(0, "stays".into());
    want.sort();
    assert_eq!(tag_names(&c, "app"), want);
    assert_eq!(manifest_status(&c, "app", &goes), 404);
    assert_eq!(manifest_status(&c, "app", &newest), 200);
    assert_eq!(manifest_status(&c, "app", &stays), 200);
    assert_eq!(
        held,
        crate::cleanup::Held {
            tags: keep,
            manifests: 3
        },
        "held at once"
    );
}

#[test]
fn cleanup_refuses_what_it_cannot_apply() {
    let h = host();
    let c = client(&h);
    push_image(&c, "app", "v1", b"one");
    let bad = crate::cleanup::cleanup(&h, &c.repo, &rules(Some(0), Some("v(("), None), 1000);
    assert!(bad.unwrap_err().contains("matching"));
    let remote = repository("hub", RepoType::Remote, true);
    assert!(crate::cleanup::cleanup(&h, &remote, &rules(Some(0), None, None), 1000).is_err());
    assert_eq!(tag_names(&c, "app"), ["v1"]);
}
