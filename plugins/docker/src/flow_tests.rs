//! Whole requests through `handler` against the in-memory host and upstream.

use crate::contract::*;
use crate::fake_host::{FakeHost, REALM, Registry, UPSTREAM, UpstreamAuth, fake_host, sha256};
use crate::handler::{handle, render_failure};
use serde_json::Value;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
const MANIFEST_2: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"x":1},"layers":[]}"#;
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn repo(repo_type: RepoType, url: Option<&str>, has_credentials: bool) -> Repository {
    Repository {
        name: "docker-remote".into(),
        repo_type,
        remote_url: url.map(Into::into),
        has_credentials,
        tag_check_seconds: 300,
        members: vec![],
        delete_enabled: false,
        default_local: None,
        settings: vec![],
    }
}

fn req(method: &str, path: &str, repository: Option<Repository>, now: u64) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        query: None,
        headers: vec![],
        base_url: "http://br.local:8081".into(),
        path_repo: None,
        repository,
        mount: Mount::Port,
        now,
        // a signed-in caller: the API version check challenges anonymous ones (access.rs)
        caller: crate::contract::Caller {
            user: Some("tester".into()),
            ..Default::default()
        },
    }
}

fn remote() -> Option<Repository> {
    Some(repo(RepoType::Remote, Some(UPSTREAM), false))
}

fn setup(auth: UpstreamAuth) -> (FakeHost, String) {
    let mut reg = Registry::new(UPSTREAM, auth);
    let d = reg.push("library/redis", "7", MANIFEST);
    (fake_host(reg), d)
}

fn respond(plan: Plan) -> Response {
    match plan {
        Plan::Respond(r) => r,
        other => panic!("expected respond, got {other:?}"),
    }
}

fn error_code(r: &Response) -> String {
    let v: Value = serde_json::from_slice(&r.body).expect("json error body");
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn served(plan: &Plan) -> (&str, &Headers) {
    match plan {
        Plan::ServeBlob(s) => (s.digest.as_str(), &s.headers),
        other => panic!("expected serve-blob, got {other:?}"),
    }
}

fn api_version(headers: &Headers) -> bool {
    header(headers, "docker-distribution-api-version") == Some("registry/2.0")
}

#[test]
fn api_base_answers_without_a_repository() {
    let (h, _) = setup(UpstreamAuth::Open);
    let r = respond(handle(&h, &req("GET", "/v2/", None, 0)));
    assert_eq!((r.status, r.body.as_slice()), (200, b"{}".as_slice()));
    assert!(api_version(&r.headers));
    let r = respond(handle(&h, &req("HEAD", "/v2/", None, 0)));
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(header(&r.headers, "content-length"), Some("2"));
    let r = respond(handle(&h, &req("GET", "/v2/", remote(), 0)));
    assert_eq!(r.status, 200);
    assert!(h.take_sent().is_empty());
}

#[test]
fn no_repository_is_name_unknown() {
    let (h, _) = setup(UpstreamAuth::Open);
    let r = respond(handle(&h, &req("GET", "/v2/redis/manifests/7", None, 0)));
    assert_eq!((r.status, error_code(&r).as_str()), (404, "NAME_UNKNOWN"));
    assert!(api_version(&r.headers));
    assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
}

#[test]
fn bad_input_gets_spec_errors() {
    let (h, _) = setup(UpstreamAuth::Open);
    let cases = [
        ("GET", "/v2/Redis/manifests/7", 400, "NAME_INVALID"),
        // neither a tag nor a digest: names no manifest, asked of no upstream
        ("GET", "/v2/redis/manifests/-7", 404, "MANIFEST_UNKNOWN"),
        (
            "GET",
            "/v2/redis/manifests/sha256:abc",
            400,
            "DIGEST_INVALID",
        ),
        ("GET", "/v2/redis/blobs/latest", 400, "DIGEST_INVALID"),
        ("PUT", "/v2/redis/manifests/7", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/redis/blobs/sha256:abc", 405, "UNSUPPORTED"),
        ("POST", "/v2/redis/blobs/uploads/", 405, "UNSUPPORTED"),
        ("GET", "/v2/redis/nothing", 404, "NAME_UNKNOWN"),
        ("DELETE", "/v2/_catalog", 405, "UNSUPPORTED"),
        (
            "GET",
            "/v2/redis/referrers/sha256:abc",
            400,
            "DIGEST_INVALID",
        ),
    ];
    for (method, path, status, code) in cases {
        let r = respond(handle(&h, &req(method, path, remote(), 0)));
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (status, code),
            "{method} {path}"
        );
    }
    let r = respond(handle(
        &h,
        &req("HEAD", "/v2/redis/manifests/.INVALID", remote(), 0),
    ));
    assert_eq!((r.status, r.body.len()), (404, 0));
    let mut q = req("GET", "/v2/redis/tags/list", remote(), 0);
    q.query = Some("n=abc".into());
    let r = respond(handle(&h, &q));
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "PAGINATION_NUMBER_INVALID")
    );
    assert!(
        h.take_sent().is_empty(),
        "bad input must not reach the upstream"
    );
}

#[test]
fn head_errors_have_no_body() {
    let (h, _) = setup(UpstreamAuth::Open);
    let r = respond(handle(
        &h,
        &req("HEAD", "/v2/Redis/manifests/7", remote(), 0),
    ));
    assert_eq!(r.status, 400);
    assert!(r.body.is_empty());
    assert!(header(&r.headers, "content-length").is_some_and(|l| l != "0"));
}

#[test]
fn tag_is_fetched_then_served_from_the_window_then_revalidated() {
    let (h, d) = setup(UpstreamAuth::Open);
    let p = handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    let (digest, headers) = served(&p);
    assert_eq!(digest, d);
    assert_eq!(header(headers, "content-type"), Some(OCI));
    assert_eq!(header(headers, "docker-content-digest"), Some(d.as_str()));
    assert!(api_version(headers));
    assert_eq!(
        h.take_sent(),
        vec![
            format!("HEAD {UPSTREAM}/v2/library/redis/manifests/7"),
            format!("GET {UPSTREAM}/v2/library/redis/manifests/{d}"),
        ]
    );
    assert_eq!(
        h.blobs.borrow().get(&d).map(|b| b.as_slice()),
        Some(MANIFEST.as_bytes())
    );
    let link: Value = serde_json::from_slice(&h.meta.borrow()["tag/library/redis:7"]).unwrap();
    assert_eq!(
        link,
        serde_json::json!({"digest": d, "media_type": OCI, "checked": 1000})
    );
    assert!(h.meta.borrow().contains_key(&format!("manifest/{d}")));

    // within tag-check-seconds: no upstream at all
    let p = handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1299),
    );
    assert_eq!(served(&p).0, d);
    assert!(h.take_sent().is_empty());
    assert!(h.logged(Level::Debug, "tag window"));

    // past it, unchanged upstream: one HEAD, no GET, checked moves on
    let p = handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1300),
    );
    assert_eq!(served(&p).0, d);
    assert_eq!(
        h.take_sent(),
        vec![format!("HEAD {UPSTREAM}/v2/library/redis/manifests/7")]
    );
    let link: Value = serde_json::from_slice(&h.meta.borrow()["tag/library/redis:7"]).unwrap();
    assert_eq!(link["checked"], 1300);
}

#[test]
fn moved_tag_is_refetched_by_digest() {
    let (h, d1) = setup(UpstreamAuth::Open);
    handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    h.take_sent();
    let d2 = h
        .upstream
        .borrow_mut()
        .push("library/redis", "7", MANIFEST_2);
    assert_ne!(d1, d2);
    let p = handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 2000),
    );
    assert_eq!(served(&p).0, d2);
    assert_eq!(
        h.take_sent(),
        vec![
            format!("HEAD {UPSTREAM}/v2/library/redis/manifests/7"),
            format!("GET {UPSTREAM}/v2/library/redis/manifests/{d2}"),
        ]
    );
}

#[test]
fn tag_moving_to_a_stored_manifest_needs_no_get() {
    let (h, d) = setup(UpstreamAuth::Open);
    handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    h.upstream
        .borrow_mut()
        .tags
        .insert(("library/redis".into(), "latest".into()), d.clone());
    h.take_sent();
    let p = handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/latest", remote(), 1000),
    );
    assert_eq!(served(&p).0, d);
    assert_eq!(
        h.take_sent(),
        vec![format!("HEAD {UPSTREAM}/v2/library/redis/manifests/latest")]
    );
}

#[test]
fn head_without_digest_falls_back_to_get_by_tag() {
    let (h, d) = setup(UpstreamAuth::Open);
    h.upstream.borrow_mut().head_without_digest = true;
    let p = handle(
        &h,
        &req("HEAD", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    assert_eq!(served(&p).0, d);
    assert_eq!(
        h.take_sent(),
        vec![
            format!("HEAD {UPSTREAM}/v2/library/redis/manifests/7"),
            format!("GET {UPSTREAM}/v2/library/redis/manifests/7"),
        ]
    );
}

#[test]
fn stale_tag_is_served_when_the_upstream_is_down() {
    let (h, d) = setup(UpstreamAuth::Open);
    handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    h.down.set(true);
    let p = handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 5000),
    );
    assert_eq!(served(&p).0, d);
    assert!(h.logged(Level::Warn, "stale"));
    // throttling counts as unavailable too
    h.down.set(false);
    h.upstream.borrow_mut().status_override = Some(429);
    let p = handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 6000),
    );
    assert_eq!(served(&p).0, d);
    // nothing cached: the client learns why
    let r = respond(handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/8", remote(), 6000),
    ));
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (429, "TOOMANYREQUESTS")
    );
    h.down.set(true);
    let r = respond(handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/8", remote(), 6000),
    ));
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (502, "UPSTREAM_UNAVAILABLE")
    );
}

#[test]
fn unknown_tag_is_manifest_unknown_and_unlinked() {
    let (h, _) = setup(UpstreamAuth::Open);
    handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    h.upstream.borrow_mut().tags.clear();
    let r = respond(handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 9000),
    ));
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    assert!(!h.meta.borrow().contains_key("tag/library/redis:7"));
}

#[test]
fn digests_never_go_upstream_once_stored() {
    let (h, d) = setup(UpstreamAuth::Open);
    let path = format!("/v2/library/redis/manifests/{d}");
    let p = handle(&h, &req("GET", &path, remote(), 0));
    assert_eq!(served(&p).0, d);
    assert_eq!(
        h.take_sent(),
        vec![format!("GET {UPSTREAM}/v2/library/redis/manifests/{d}")]
    );
    h.down.set(true);
    let p = handle(&h, &req("GET", &path, remote(), 99999));
    assert_eq!(served(&p).0, d);
    assert!(h.take_sent().is_empty());
}

#[test]
fn tampered_manifest_is_refused() {
    let (h, d) = setup(UpstreamAuth::Open);
    h.upstream.borrow_mut().tamper = Some(b"{\"schemaVersion\":2}".to_vec());
    let r = respond(handle(
        &h,
        &req(
            "GET",
            &format!("/v2/library/redis/manifests/{d}"),
            remote(),
            0,
        ),
    ));
    assert_eq!((r.status, error_code(&r).as_str()), (502, "DIGEST_INVALID"));
    assert!(h.blobs.borrow().is_empty());
}

#[test]
fn docker_hub_names_get_library() {
    let hub = "https://registry-1.docker.io";
    let mut reg = Registry::new(hub, UpstreamAuth::Open);
    let d = reg.push("library/redis", "7", MANIFEST);
    let h = fake_host(reg);
    let repo = Some(repo(RepoType::Remote, Some(hub), false));
    let p = handle(&h, &req("GET", "/v2/redis/manifests/7", repo, 0));
    assert_eq!(served(&p).0, d);
    assert_eq!(
        h.take_sent()[0],
        format!("HEAD {hub}/v2/library/redis/manifests/7")
    );
}

#[test]
fn bearer_challenge_is_answered_and_the_token_reused() {
    let (h, d) = setup(UpstreamAuth::Bearer);
    let p = handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    assert_eq!(served(&p).0, d);
    let sent = h.take_sent();
    assert_eq!(
        sent[0],
        format!("HEAD {UPSTREAM}/v2/library/redis/manifests/7")
    );
    assert_eq!(
        sent[1],
        format!("GET {REALM}?service=up.example&scope=repository%3Alibrary%2Fredis%3Apull")
    );
    assert_eq!(
        sent[2],
        format!("HEAD {UPSTREAM}/v2/library/redis/manifests/7")
    );
    assert_eq!(
        sent[3],
        format!("GET {UPSTREAM}/v2/library/redis/manifests/{d}")
    );
    assert_eq!(sent.len(), 4);
    let (token, ttl) = h.scratch.borrow()["token/repository:library/redis:pull"].clone();
    assert_eq!((token.as_slice(), ttl), (b"tok-1".as_slice(), 290));
    assert!(h.scratch.borrow().contains_key("challenge"));

    // a blob miss becomes a fetch plan carrying the cached token
    let blob = sha256(b"layer");
    let p = handle(
        &h,
        &req(
            "GET",
            &format!("/v2/library/redis/blobs/{blob}"),
            remote(),
            1000,
        ),
    );
    let Plan::FetchBlob(f) = p else {
        panic!("expected fetch-blob")
    };
    assert_eq!(
        f.request.url,
        format!("{UPSTREAM}/v2/library/redis/blobs/{blob}")
    );
    assert_eq!(
        header(&f.request.headers, "authorization"),
        Some("Bearer tok-1")
    );
    assert!(api_version(&f.headers));
    assert_eq!(
        header(&f.headers, "docker-content-digest"),
        Some(blob.as_str())
    );
    assert!(h.take_sent().is_empty());
}

#[test]
fn known_bearer_challenge_fetches_a_token_up_front() {
    let (h, _) = setup(UpstreamAuth::Bearer);
    handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    h.scratch.borrow_mut().retain(|k, _| k == "challenge");
    h.take_sent();
    handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 5000),
    );
    let sent = h.take_sent();
    assert!(sent[0].starts_with(&format!("GET {REALM}?")), "{sent:?}");
    assert_eq!(sent.len(), 2, "{sent:?}");
}

#[test]
fn fetch_plan_discovers_the_challenge_first() {
    let (h, _) = setup(UpstreamAuth::Bearer);
    let blob = sha256(b"layer");
    let p = handle(
        &h,
        &req(
            "GET",
            &format!("/v2/library/redis/blobs/{blob}"),
            remote(),
            0,
        ),
    );
    let Plan::FetchBlob(f) = p else {
        panic!("expected fetch-blob")
    };
    assert_eq!(
        header(&f.request.headers, "authorization"),
        Some("Bearer tok-1")
    );
    let sent = h.take_sent();
    assert_eq!(sent[0], format!("GET {UPSTREAM}/v2/"));
    assert!(sent[1].starts_with(&format!("GET {REALM}?service=up.example&scope=")));
}

#[test]
fn basic_challenge_needs_configured_credentials() {
    let (h, d) = setup(UpstreamAuth::Basic);
    let r = respond(handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 0),
    ));
    assert_eq!((r.status, error_code(&r).as_str()), (401, "UNAUTHORIZED"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("credentials")
    );

    let with_creds = Some(repo(RepoType::Remote, Some(UPSTREAM), true));
    let p = handle(
        &h,
        &req(
            "GET",
            "/v2/library/redis/manifests/7",
            with_creds.clone(),
            0,
        ),
    );
    assert_eq!(served(&p).0, d);
    assert!(h.sent.borrow().iter().skip(1).all(|r| r.with_credentials));
    let blob = sha256(b"layer");
    let p = handle(
        &h,
        &req(
            "GET",
            &format!("/v2/library/redis/blobs/{blob}"),
            with_creds,
            0,
        ),
    );
    let Plan::FetchBlob(f) = p else {
        panic!("expected fetch-blob")
    };
    assert!(f.request.with_credentials);
    assert!(f.request.headers.is_empty());
}

#[test]
fn blobs_served_fetched_or_headed() {
    let (h, _) = setup(UpstreamAuth::Open);
    let stored = h.blob_write(b"layer-bytes", None).unwrap();
    h.meta_put(&format!("blob/{stored}/library/redis"), b"{}")
        .unwrap();
    let p = handle(
        &h,
        &req(
            "GET",
            &format!("/v2/library/redis/blobs/{stored}"),
            remote(),
            0,
        ),
    );
    let (digest, headers) = served(&p);
    assert_eq!(digest, stored);
    assert_eq!(
        header(headers, "content-type"),
        Some("application/octet-stream")
    );
    assert!(h.take_sent().is_empty());

    let missing = sha256(b"upstream-layer");
    h.upstream.borrow_mut().blobs.insert(missing.clone(), 1234);
    let r = respond(handle(
        &h,
        &req(
            "HEAD",
            &format!("/v2/library/redis/blobs/{missing}"),
            remote(),
            0,
        ),
    ));
    assert_eq!(r.status, 200);
    assert_eq!(header(&r.headers, "content-length"), Some("1234"));
    assert_eq!(
        header(&r.headers, "docker-content-digest"),
        Some(missing.as_str())
    );
    assert!(r.body.is_empty());

    h.upstream.borrow_mut().redirect_blobs = true;
    let r = respond(handle(
        &h,
        &req(
            "HEAD",
            &format!("/v2/library/redis/blobs/{missing}"),
            remote(),
            0,
        ),
    ));
    assert_eq!(r.status, 200);
    assert_eq!(
        header(&r.headers, "content-length"),
        None,
        "no length rather than a wrong one"
    );
    h.upstream.borrow_mut().redirect_blobs = false;

    let unknown = sha256(b"nothing");
    let r = respond(handle(
        &h,
        &req(
            "HEAD",
            &format!("/v2/library/redis/blobs/{unknown}"),
            remote(),
            0,
        ),
    ));
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
}

#[test]
fn tag_list_is_proxied_with_the_client_name_and_falls_back() {
    let (h, _) = setup(UpstreamAuth::Open);
    handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 0),
    );
    h.upstream
        .borrow_mut()
        .push("library/redis", "8", MANIFEST_2);
    let mut q = req("GET", "/v2/library/redis/tags/list", remote(), 0);
    q.path_repo = Some("docker-remote".into());
    let r = respond(handle(&h, &q));
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name": "docker-remote/library/redis", "tags": ["7", "8"]})
    );

    h.down.set(true);
    let r = respond(handle(&h, &q));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["7"]));
    let r = respond(handle(&h, &req("GET", "/v2/other/tags/list", remote(), 0)));
    assert_eq!(r.status, 502);
}

#[test]
fn local_tags_written_before_pushes_existed_still_serve() {
    // 0.1.0 local repositories had tag links and blobs but no image-manifest records
    let (h, _) = setup(UpstreamAuth::Open);
    let local = Some(repo(RepoType::Local, None, false));
    let d = h.blob_write(MANIFEST.as_bytes(), None).unwrap();
    let link = serde_json::json!({"digest": d, "media_type": OCI, "checked": 0}).to_string();
    h.meta_put("tag/app:1", link.as_bytes()).unwrap();

    let p = handle(&h, &req("GET", "/v2/app/manifests/1", local.clone(), 0));
    assert_eq!(served(&p).0, d);
    assert_eq!(header(served(&p).1, "content-type"), Some(OCI));
    let r = respond(handle(
        &h,
        &req("GET", "/v2/app/manifests/2", local.clone(), 0),
    ));
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let mut q = req("GET", "/v2/app/tags/list", local.clone(), 0);
    q.query = Some("n=1".into());
    let r = respond(handle(&h, &q));
    assert_eq!(r.body, br#"{"name":"app","tags":["1"]}"#.to_vec());
    let r = respond(handle(&h, &req("GET", "/v2/none/tags/list", local, 0)));
    assert_eq!((r.status, error_code(&r).as_str()), (404, "NAME_UNKNOWN"));
    assert!(h.take_sent().is_empty());
}

#[test]
fn virtual_repositories_are_not_yet_offered() {
    let (h, _) = setup(UpstreamAuth::Open);
    let v = Some(repo(RepoType::Virtual, None, false));
    let r = respond(handle(
        &h,
        &req("GET", "/v2/redis/manifests/7", v.clone(), 0),
    ));
    assert_eq!((r.status, error_code(&r).as_str()), (405, "UNSUPPORTED"));
    assert_eq!(respond(handle(&h, &req("GET", "/v2/", v, 0))).status, 200);
}

#[test]
fn failures_render_in_registry_shape() {
    let blob = format!("/v2/redis/blobs/{}", sha256(b"x"));
    let manifest = format!("/v2/redis/manifests/{}", sha256(b"x"));
    let f = |kind, status: Option<u16>| Failure {
        kind,
        status,
        message: "m".into(),
        access: None,
    };
    let cases = [
        (
            &blob,
            f(FailureKind::BlobUnknown, None),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            &manifest,
            f(FailureKind::BlobUnknown, None),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            &blob,
            f(FailureKind::UpstreamStatus, Some(404)),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            &blob,
            f(FailureKind::UpstreamStatus, Some(401)),
            401,
            "UNAUTHORIZED",
        ),
        (
            &blob,
            f(FailureKind::UpstreamStatus, Some(403)),
            403,
            "DENIED",
        ),
        (
            &blob,
            f(FailureKind::UpstreamStatus, Some(503)),
            502,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            &blob,
            f(FailureKind::UpstreamUnreachable, None),
            502,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            &blob,
            f(FailureKind::DigestMismatch, None),
            502,
            "DIGEST_INVALID",
        ),
        (&blob, f(FailureKind::Internal, None), 500, "UNKNOWN"),
    ];
    for (path, failure, status, code) in cases {
        let r = render_failure(&req("GET", path, remote(), 0), &failure);
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (status, code),
            "{failure:?}"
        );
        assert!(api_version(&r.headers));
    }
    let r = render_failure(
        &req("HEAD", &blob, remote(), 0),
        &f(FailureKind::BlobUnknown, None),
    );
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
}

#[test]
fn a_tag_in_its_window_is_offered_for_reuse_only_for_what_is_left_of_it() {
    let (h, d) = setup(UpstreamAuth::Open);
    let path = "/v2/library/redis/manifests/7";
    // fetched from upstream: a plan that wrote metadata is not offered
    handle(&h, &req("GET", path, remote(), 1000));
    assert_eq!(h.take_offer(), None);
    // 100 s into a 300 s window: at most 199 s more (`now` is whole seconds)
    let p = handle(&h, &req("GET", path, remote(), 1100));
    assert_eq!(served(&p).0, d);
    assert_eq!(h.take_offer(), Some(199));
    // in the window's last second: nothing to offer
    handle(&h, &req("GET", path, remote(), 1299));
    assert_eq!(h.take_offer(), None);
    // revalidated upstream: not offered (the host would refuse it anyway)
    handle(&h, &req("GET", path, remote(), 1300));
    assert_eq!(h.take_offer(), None);
    // by digest, once stored: offered for as long as the store holds it
    let p = handle(
        &h,
        &req(
            "GET",
            &format!("/v2/library/redis/manifests/{d}"),
            remote(),
            1400,
        ),
    );
    assert_eq!(served(&p).0, d);
    assert_eq!(h.take_offer(), Some(crate::plan::HELD_SECONDS));
}

fn blob_link_value(h: &FakeHost, name: &str, digest: &str) -> Option<String> {
    h.meta
        .borrow()
        .get(&format!("blob/{digest}/{name}"))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn a_remote_serves_a_stored_blob_only_to_names_the_upstream_lets_see_it() {
    // guards remote::stored_blob: stored (pushed to a local repository, say) is not held
    let (h, _) = setup(UpstreamAuth::Open);
    let d = h.blob_write(b"pushed to a local repository", None).unwrap();
    let path = format!("/v2/library/redis/blobs/{d}");

    // the upstream does not have it: asked, then answered like a cold miss whose fetch got
    // a 404 (never a fetch plan: the host would serve the stored copy), and nothing linked
    let r = respond(handle(&h, &req("GET", &path, remote(), 0)));
    let cold = render_failure(
        &req("GET", &path, remote(), 0),
        &Failure {
            kind: FailureKind::UpstreamStatus,
            status: Some(404),
            message: "upstream answered 404".into(),
            access: None,
        },
    );
    assert_eq!(r, cold);
    assert_eq!(
        h.take_sent(),
        vec![format!("HEAD {UPSTREAM}/v2/library/redis/blobs/{d}")]
    );
    assert_eq!(blob_link_value(&h, "library/redis", &d), None);
    let r = respond(handle(&h, &req("HEAD", &path, remote(), 0)));
    assert_eq!(r.status, 404);
    assert_eq!(blob_link_value(&h, "library/redis", &d), None);
    // exactly what a HEAD of a blob nobody stored gets
    let unknown = sha256(b"stored nowhere");
    let cold = respond(handle(
        &h,
        &req(
            "HEAD",
            &format!("/v2/library/redis/blobs/{unknown}"),
            remote(),
            0,
        ),
    ));
    assert_eq!(
        (cold.status, cold.headers.len()),
        (r.status, r.headers.len())
    );
    h.take_sent();

    // the upstream has it for this name: one HEAD, then linked and served from the store
    h.upstream.borrow_mut().blobs.insert(d.clone(), 28);
    let p = handle(&h, &req("GET", &path, remote(), 0));
    assert_eq!(served(&p).0, d);
    assert_eq!(
        h.take_sent(),
        vec![format!("HEAD {UPSTREAM}/v2/library/redis/blobs/{d}")]
    );
    assert_eq!(
        blob_link_value(&h, "library/redis", &d).as_deref(),
        Some("{}")
    );
    // warm: no upstream, and offered for reuse
    h.take_offer();
    let p = handle(&h, &req("GET", &path, remote(), 0));
    assert_eq!(served(&p).0, d);
    assert!(h.take_sent().is_empty());
    assert_eq!(h.take_offer(), Some(crate::plan::HELD_SECONDS));

    // an unreachable upstream confirms nothing
    h.down.set(true);
    let other = format!("/v2/other/blobs/{d}");
    assert!(respond(handle(&h, &req("HEAD", &other, remote(), 0))).status >= 500);
    assert_eq!(blob_link_value(&h, "other", &d), None);
}

#[test]
fn a_fetch_through_a_name_is_held_once_stored_unless_someone_else_holds_the_blob() {
    // guards remote::held_elsewhere: a pending link is a fetch that may have failed
    let (h, _) = setup(UpstreamAuth::Open);
    let layer = b"fetched through library/redis".to_vec();
    let d = sha256(&layer);
    let path = format!("/v2/library/redis/blobs/{d}");
    assert!(matches!(
        handle(&h, &req("GET", &path, remote(), 0)),
        Plan::FetchBlob(_)
    ));
    assert_eq!(
        blob_link_value(&h, "library/redis", &d).as_deref(),
        Some(r#"{"pending":true}"#)
    );
    h.take_sent();
    // the fill stored it; nobody else knows the blob: held, no upstream request
    h.blob_write(&layer, Some(&d)).unwrap();
    let p = handle(&h, &req("GET", &path, remote(), 0));
    assert_eq!(served(&p).0, d);
    assert!(h.take_sent().is_empty());
    assert_eq!(
        blob_link_value(&h, "library/redis", &d).as_deref(),
        Some("{}")
    );

    // a fetch that failed, and the same digest pushed to a local repository later: the
    // stored copy is theirs, so the upstream is asked (and says no)
    let secret = b"pushed later to team-local".to_vec();
    let s = sha256(&secret);
    let path = format!("/v2/evil/blobs/{s}");
    assert!(matches!(
        handle(&h, &req("GET", &path, remote(), 0)),
        Plan::FetchBlob(_)
    ));
    h.repos.borrow_mut().push(Repository {
        name: "team-local".into(),
        ..repo(RepoType::Local, None, false)
    });
    h.put_in("team-local", &format!("blob/{s}/secret"), b"{}");
    h.blob_write(&secret, None).unwrap();
    h.take_sent();
    for method in ["GET", "HEAD"] {
        let p = handle(&h, &req(method, &path, remote(), 0));
        assert!(!matches!(p, Plan::ServeBlob(_)), "{method}: {p:?}");
    }
    assert_eq!(
        h.take_sent(),
        vec![
            format!("HEAD {UPSTREAM}/v2/evil/blobs/{s}"),
            format!("HEAD {UPSTREAM}/v2/evil/blobs/{s}")
        ]
    );
    assert_eq!(
        blob_link_value(&h, "evil", &s).as_deref(),
        Some(r#"{"pending":true}"#)
    );

    // another image of the same remote counts as someone else too
    let shared = b"shared".to_vec();
    let x = sha256(&shared);
    handle(&h, &req("GET", &format!("/v2/a/blobs/{x}"), remote(), 0));
    h.blob_write(&shared, None).unwrap();
    h.meta_put(&format!("blob/{x}/b"), b"{}").unwrap();
    h.take_sent();
    let r = respond(handle(
        &h,
        &req("GET", &format!("/v2/a/blobs/{x}"), remote(), 0),
    ));
    assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
    assert_eq!(h.take_sent().len(), 1);

    // a held link whose blob was collected is pending again once refetched
    h.blobs.borrow_mut().remove(&d);
    let p = handle(
        &h,
        &req("GET", &format!("/v2/library/redis/blobs/{d}"), remote(), 0),
    );
    assert!(matches!(p, Plan::FetchBlob(_)));
    assert_eq!(
        blob_link_value(&h, "library/redis", &d).as_deref(),
        Some(r#"{"pending":true}"#)
    );
}

#[test]
fn a_remote_serves_a_stored_manifest_by_digest_only_to_names_that_hold_it() {
    // guards remote::manifest_by_digest's link check
    let (h, d) = setup(UpstreamAuth::Open);
    // fetched by tag: the name holds the manifest, by digest too, without the upstream
    handle(
        &h,
        &req("GET", "/v2/library/redis/manifests/7", remote(), 1000),
    );
    assert_eq!(
        blob_link_value(&h, "library/redis", &d).as_deref(),
        Some("{}")
    );
    h.take_sent();
    let p = handle(
        &h,
        &req(
            "GET",
            &format!("/v2/library/redis/manifests/{d}"),
            remote(),
            1000,
        ),
    );
    assert_eq!(served(&p).0, d);
    assert!(h.take_sent().is_empty());

    // pushed to a local repository only: asked under the name, then refused like a cold miss
    let pushed = MANIFEST_2.as_bytes();
    let m = h.blob_write(pushed, None).unwrap();
    let path = format!("/v2/library/redis/manifests/{m}");
    let r = respond(handle(&h, &req("GET", &path, remote(), 1000)));
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    assert_eq!(
        h.take_sent(),
        vec![
            format!("HEAD {UPSTREAM}/v2/library/redis/manifests/{m}"),
            format!("GET {UPSTREAM}/v2/library/redis/manifests/{m}"),
        ]
    );
    assert_eq!(blob_link_value(&h, "library/redis", &m), None);

    // stored through another name; the upstream lets this one see it: one HEAD, no GET
    let p = handle(
        &h,
        &req(
            "GET",
            &format!("/v2/other/app/manifests/{d}"),
            remote(),
            1000,
        ),
    );
    assert_eq!(served(&p).0, d);
    assert_eq!(
        h.take_sent(),
        vec![format!("HEAD {UPSTREAM}/v2/other/app/manifests/{d}")]
    );
    assert_eq!(blob_link_value(&h, "other/app", &d).as_deref(), Some("{}"));
}
