//! Whole request flows against the SDK's fake host.

use crate::chart::tests::{chart, tgz};
use crate::contract::*;
use crate::handler::Helm;
use binaryrepo_plugin_sdk::Format;
use binaryrepo_plugin_sdk::fake_host::{self, FakeHost, Files, sha256};

const UP: &str = "http://up.example/repo";
const OTHER: &str = "http://cdn.example";

fn repo(t: RepoType) -> Repository {
    fake_host::repository("helm", t, UP)
}

fn req(t: RepoType, method: &str, path: &str, now: u64) -> Request {
    fake_host::request(repo(t), method, path, now)
}

fn blob_bytes(h: &FakeHost<Files>, p: &Plan) -> Vec<u8> {
    let Plan::ServeBlob(s) = p else {
        panic!("not served from the store: {p:?}")
    };
    h.blobs.borrow()[&s.digest].clone()
}

fn blob(h: &FakeHost<Files>, p: &Plan) -> String {
    String::from_utf8(blob_bytes(h, p)).unwrap()
}

fn remote_host() -> (FakeHost<Files>, Vec<u8>, Vec<u8>) {
    let mut f = Files::new("http://up.example");
    let a = chart("a", "1.0.0");
    let b = chart("b", "2.0.0");
    let index = format!(
        "apiVersion: v1\nentries:\n  a:\n  - digest: {}\n    name: a\n    urls:\n    - charts/a-1.0.0.tgz\n    version: 1.0.0\n  b:\n  - name: b\n    urls:\n    - {OTHER}/b/b-2.0.0.tgz\n    version: 2.0.0\ngenerated: x\n",
        &sha256(&a)[7..]
    );
    f.put_with(&format!("{UP}/index.yaml"), &[("ETag", "\"v1\"")], index);
    f.put(&format!("{UP}/charts/a-1.0.0.tgz"), a.clone());
    f.put(&format!("{OTHER}/b/b-2.0.0.tgz"), b.clone());
    (FakeHost::new("helm", f), a, b)
}

#[test]
fn remote_index_is_rewritten_cached_and_revalidated() {
    let (h, a, _) = remote_host();
    let p = Helm::handle(&h, &req(RepoType::Remote, "GET", "/index.yaml", 1000));
    let text = blob(&h, &p);
    assert!(text.contains("    - charts/a-1.0.0.tgz\n"), "{text}");
    assert!(
        text.contains("    - abs/http/cdn.example/b/b-2.0.0.tgz\n"),
        "{text}"
    );
    assert!(text.contains(&format!("digest: {}", &sha256(&a)[7..])));
    let index_url = format!("{UP}/index.yaml");
    assert_eq!(h.upstream.borrow().hits(&index_url), 1);
    // within the window: no upstream request, reusable for the rest of it
    let p2 = Helm::handle(&h, &req(RepoType::Remote, "GET", "/index.yaml", 1030));
    assert_eq!(p2, p);
    assert_eq!(h.take_offer(), Some(30));
    assert_eq!(h.upstream.borrow().hits(&index_url), 1);
    // after it: a conditional request, 304, same document
    h.take_sent();
    let p3 = Helm::handle(&h, &req(RepoType::Remote, "GET", "/index.yaml", 1100));
    assert_eq!(p3, p);
    let sent = h.sent.borrow();
    assert_eq!(
        crate::contract::header(&sent[0].headers, "if-none-match"),
        Some("\"v1\"")
    );
    drop(sent);
    // upstream down: the cached index still served
    h.down.set(true);
    let p4 = Helm::handle(&h, &req(RepoType::Remote, "GET", "/index.yaml", 1300));
    assert_eq!(p4, p);
}

#[test]
fn remote_charts_are_verified_by_digest_or_fetched_as_files() {
    let (h, a, b) = remote_host();
    let p = Helm::handle(
        &h,
        &req(RepoType::Remote, "GET", "/charts/a-1.0.0.tgz", 1000),
    );
    let Plan::FetchBlob(f) = p else {
        panic!("{p:?}")
    };
    assert_eq!(f.digest, sha256(&a));
    assert_eq!(f.request.url, format!("{UP}/charts/a-1.0.0.tgz"));
    assert!(f.request.with_credentials);
    // another origin: allowed (named by the index), no credentials, digest unknown
    let p = Helm::handle(
        &h,
        &req(
            RepoType::Remote,
            "GET",
            "/abs/http/cdn.example/b/b-2.0.0.tgz",
            1000,
        ),
    );
    let Plan::FetchFile(f) = p else {
        panic!("{p:?}")
    };
    assert_eq!(f.request.url, format!("{OTHER}/b/b-2.0.0.tgz"));
    assert!(!f.request.with_credentials);
    assert!(h.allowed.borrow().contains(OTHER));
    let file = h.fetch_file(&f).unwrap();
    assert_eq!(file.digest, sha256(&b));
    Helm::file_fetched(&h, &req(RepoType::Remote, "GET", "/x", 1000), &f.key, &file).unwrap();
    // cached forever: served from the store, upstream down or not
    h.down.set(true);
    let p = Helm::handle(
        &h,
        &req(
            RepoType::Remote,
            "GET",
            "/abs/http/cdn.example/b/b-2.0.0.tgz",
            9_000_000,
        ),
    );
    assert_eq!(blob_bytes(&h, &p), b);
    // a provenance file next to a chart of the index
    let p = Helm::handle(
        &h,
        &req(RepoType::Remote, "GET", "/charts/a-1.0.0.tgz.prov", 1000),
    );
    let Plan::FetchFile(f) = p else {
        panic!("{p:?}")
    };
    assert_eq!(f.request.url, format!("{UP}/charts/a-1.0.0.tgz.prov"));
    // not in the index: 404, plain text
    let p = Helm::handle(
        &h,
        &req(
            RepoType::Remote,
            "GET",
            "/abs/http/evil.example/x.tgz",
            1000,
        ),
    );
    let Plan::Respond(r) = p else { panic!() };
    assert_eq!(r.status, 404);
    let live = Helm::live_blobs(&h, &repo(RepoType::Remote)).unwrap();
    assert!(live.contains(&sha256(&b)));
}

fn send(
    h: &FakeHost<Files>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut r = req(RepoType::Local, method, path, 1_700_000_000);
    if let Some((p, q)) = path.split_once('?') {
        r.path = p.into();
        r.query = Some(q.into());
    }
    r.headers = binaryrepo_plugin_sdk::http::headers(headers);
    match Helm::handle(h, &r) {
        Plan::Respond(resp) => resp,
        Plan::ReceiveUpload(u) => {
            let outcome = h.receive(&u, body);
            Helm::upload_complete(h, &r, &u.id, &outcome)
        }
        Plan::ServeBlob(s) => Response {
            status: 200,
            headers: s.headers,
            body: h.blobs.borrow()[&s.digest].clone(),
        },
        p => panic!("{p:?}"),
    }
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn local_uploads_by_api_and_put() {
    let h = FakeHost::new("helm", Files::default());
    let c = chart("demo", "1.0.0");
    let r = send(&h, "POST", "/api/charts", &[], &c);
    assert_eq!((r.status, text(&r)), (201, r#"{"saved":true}"#.to_owned()));
    let r = send(&h, "POST", "/api/charts", &[], &c);
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(text(&r).contains("\"error\""));
    let r = send(&h, "POST", "/api/charts?force", &[], &c);
    assert_eq!(r.status, 201);
    // multipart with provenance
    let c2 = chart("demo", "1.1.0");
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"chart\"; filename=\"demo-1.1.0.tgz\"\r\nContent-Type: application/gzip\r\n\r\n".to_vec();
    body.extend_from_slice(&c2);
    body.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"prov\"; filename=\"demo-1.1.0.tgz.prov\"\r\n\r\nSIGNED\r\n--XyZ--\r\n");
    let r = send(
        &h,
        "POST",
        "/api/charts",
        &[("Content-Type", "multipart/form-data; boundary=XyZ")],
        &body,
    );
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(send(&h, "GET", "/charts/demo-1.1.0.tgz", &[], b"").body, c2);
    assert_eq!(
        text(&send(&h, "GET", "/charts/demo-1.1.0.tgz.prov", &[], b"")),
        "SIGNED"
    );
    // PUT, name must match
    let c3 = chart("other-chart", "0.1.0-rc.1");
    assert_eq!(send(&h, "PUT", "/wrong-0.1.0.tgz", &[], &c3).status, 400);
    assert_eq!(
        send(&h, "PUT", "/other-chart-0.1.0-rc.1.tgz", &[], &c3).status,
        201
    );
    assert_eq!(
        send(&h, "GET", "/other-chart-0.1.0-rc.1.tgz", &[], b"").body,
        c3
    );
    // index and API
    let idx = text(&send(&h, "GET", "/index.yaml", &[], b""));
    let v: serde_json::Value = serde_norway::from_str(&idx).unwrap();
    assert_eq!(v["entries"]["demo"][0]["version"], "1.1.0");
    assert_eq!(v["entries"]["demo"][0]["urls"][0], "charts/demo-1.1.0.tgz");
    assert_eq!(v["entries"]["demo"][0]["digest"], &sha256(&c2)[7..]);
    assert_eq!(v["entries"]["demo"][1]["created"], "2023-11-14T22:13:20Z");
    let all: serde_json::Value =
        serde_json::from_slice(&send(&h, "GET", "/api/charts", &[], b"").body).unwrap();
    assert_eq!(all["demo"].as_array().unwrap().len(), 2);
    assert_eq!(
        send(&h, "GET", "/api/charts/demo/1.0.0", &[], b"").status,
        200
    );
    assert_eq!(
        send(&h, "DELETE", "/api/charts/demo/1.0.0", &[], b"").status,
        200
    );
    assert_eq!(
        send(&h, "GET", "/api/charts/demo/1.0.0", &[], b"").status,
        404
    );
    assert_eq!(
        send(&h, "DELETE", "/api/charts/demo/1.0.0", &[], b"").status,
        404
    );
    assert!(h.uploads.borrow().is_empty(), "no session left behind");
}

#[test]
fn bad_uploads_store_nothing() {
    let h = FakeHost::new("helm", Files::default());
    let evil = tgz(&[
        ("x/Chart.yaml", "name: x\nversion: 1.0.0\n"),
        ("x/../../etc", "x"),
    ]);
    let no_chart = tgz(&[("x/values.yaml", "")]);
    let cases: Vec<(&[u8], u16)> = vec![(b"plain text", 400), (&evil, 400), (&no_chart, 400)];
    for (body, status) in cases {
        let r = send(&h, "POST", "/api/charts", &[], body);
        assert_eq!(r.status, status, "{}", text(&r));
        assert!(text(&r).starts_with("{\"error\":"), "{}", text(&r));
    }
    let r = send(
        &h,
        "POST",
        "/api/charts",
        &[("Content-Length", "999999999")],
        b"",
    );
    assert_eq!(r.status, 413);
    assert!(h.blobs.borrow().is_empty());
    assert!(h.meta.borrow().is_empty());
    assert!(h.uploads.borrow().is_empty());
}

#[test]
fn virtual_index_merges_first_member_first() {
    let h = FakeHost::new("helm", Files::default());
    let one = "apiVersion: v1\nentries:\n  a:\n  - name: a\n    version: 1.0.0\n    urls: [charts/a-1.0.0.tgz]\n    description: first\n";
    let two = "apiVersion: v1\nentries:\n  a:\n  - name: a\n    version: 1.0.0\n    description: second\n  - name: a\n    version: 0.9.0\n  b:\n  - name: b\n    version: 1.0.0\n";
    let stored = h.store(two.as_bytes().to_vec());
    let answers = vec![
        MemberAnswer {
            repository: "one".into(),
            status: 200,
            headers: vec![],
            body: MemberBody::Inline(one.into()),
        },
        MemberAnswer {
            repository: "down".into(),
            status: 502,
            headers: vec![],
            body: MemberBody::None,
        },
        MemberAnswer {
            repository: "two".into(),
            status: 200,
            headers: vec![],
            body: MemberBody::Blob(stored),
        },
    ];
    let Plan::Respond(r) = Helm::merge(
        &h,
        &req(RepoType::Virtual, "GET", "/index.yaml", 0),
        &answers,
    ) else {
        panic!()
    };
    let v: serde_json::Value = serde_norway::from_slice(&r.body).unwrap();
    assert_eq!(v["entries"]["a"].as_array().unwrap().len(), 2);
    assert_eq!(v["entries"]["a"][0]["description"], "first");
    assert_eq!(v["entries"]["b"][0]["version"], "1.0.0");
}

#[test]
fn unauthenticated_gets_a_basic_challenge() {
    let f = Failure {
        kind: FailureKind::Unauthenticated,
        status: None,
        message: String::new(),
        access: Some(Access::Read),
    };
    let r = Helm::render_failure(&req(RepoType::Local, "GET", "/index.yaml", 0), &f);
    assert_eq!(r.status, 401);
    assert_eq!(
        header(&r.headers, "www-authenticate"),
        Some(r#"Basic realm="binaryrepo""#)
    );
}

#[test]
#[ignore]
fn big_index_timing() {
    let mut s = String::from("apiVersion: v1\nentries:\n");
    let mut i = 0;
    while s.len() < 25 << 20 {
        s.push_str(&format!("  chart{i}:\n"));
        for v in 0..40 {
            s.push_str(&format!("  - apiVersion: v2\n    appVersion: \"1.{v}.0\"\n    created: \"2024-01-01T00:00:00Z\"\n    description: e2e chart\n    digest: {}\n    name: chart{i}\n    type: application\n    urls:\n    - charts/chart{i}-1.{v}.0.tgz\n    version: 1.{v}.0\n", &sha256(format!("{i}{v}").as_bytes())[7..]));
        }
        i += 1;
    }
    let t = std::time::Instant::now();
    let mut r = crate::rewrite::Rewriter::new(UP);
    let (mut out, mut side) = (String::new(), String::new());
    for l in s.lines() {
        r.line(l, &mut out, &mut side);
    }
    eprintln!("rewriter alone took {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let _ = sha256(s.as_bytes());
    eprintln!("one sha256 took {:?}", t.elapsed());
    let mut f = Files::new("http://up.example");
    f.put(&format!("{UP}/index.yaml"), s);
    let h = FakeHost::new("helm", f);
    let t = std::time::Instant::now();
    let p = Helm::handle(&h, &req(RepoType::Remote, "GET", "/index.yaml", 1000));
    eprintln!("rewrite took {:?}", t.elapsed());
    assert!(matches!(p, Plan::ServeBlob(_)));
}
