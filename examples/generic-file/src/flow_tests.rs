//! Whole request flows against the SDK's fake host: what the server would do with each plan.

use binaryrepo_plugin_sdk::Format;
use binaryrepo_plugin_sdk::contract::*;
use binaryrepo_plugin_sdk::fake_host::{FakeHost, Files, NoUpstream, sha256};

use crate::{BUILD, Generic};

const UP: &str = "http://files.example/pub";

fn repo(repo_type: RepoType) -> Repository {
    Repository {
        name: "files".into(),
        repo_type,
        remote_url: (repo_type == RepoType::Remote).then(|| UP.to_owned()),
        has_credentials: false,
        tag_check_seconds: 0,
        members: vec![],
        delete_enabled: true,
        default_local: None,
        settings: vec![],
    }
}

fn req(repo_type: RepoType, method: &str, path: &str) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        query: None,
        headers: vec![],
        base_url: "http://br".into(),
        path_repo: None,
        repository: Some(repo(repo_type)),
        mount: Mount::Prefix,
        now: 0,
        caller: Caller::default(),
    }
}

fn status(plan: &Plan) -> u16 {
    match plan {
        Plan::Respond(r) => r.status,
        other => panic!("not a response: {other:?}"),
    }
}

/// The bytes a plan serves from the store.
fn served<U: binaryrepo_plugin_sdk::fake_host::FakeUpstream>(
    host: &FakeHost<U>,
    plan: &Plan,
) -> Vec<u8> {
    let Plan::ServeBlob(s) = plan else {
        panic!("not served from the store: {plan:?}")
    };
    assert_eq!(header(&s.headers, "x-plugin-build"), Some(BUILD));
    host.blobs.borrow()[&s.digest].clone()
}

/// PUT `body` as a client would, the host carrying out the upload plan; the response.
fn put(host: &FakeHost, request: &Request, body: &[u8]) -> Response {
    let Plan::ReceiveUpload(upload) = Generic::handle(host, request) else {
        panic!("PUT was not taken")
    };
    let outcome = host.receive(&upload, body);
    Generic::upload_complete(host, request, &upload.id, &outcome)
}

#[test]
fn local_put_get_delete() {
    let host = FakeHost::new("files", NoUpstream);
    let url = req(RepoType::Local, "PUT", "/tools/v1/tool.bin");
    let created = put(&host, &url, b"tool bytes");
    let digest = sha256(b"tool bytes");
    assert_eq!(
        (created.status, created.body.clone()),
        (201, format!("{digest}\n").into_bytes())
    );
    assert_eq!(
        header(&created.headers, "x-checksum-sha256"),
        Some(&digest[7..])
    );

    let get = Generic::handle(&host, &req(RepoType::Local, "GET", "/tools/v1/tool.bin"));
    assert_eq!(served(&host, &get), b"tool bytes");
    // the path method names the same file
    let mut by_root = req(RepoType::Local, "HEAD", "/generic/tools/v1/tool.bin");
    by_root.mount = Mount::Path;
    assert_eq!(
        served(&host, &Generic::handle(&host, &by_root)),
        b"tool bytes"
    );
    assert_eq!(
        Generic::live_blobs(&host, &repo(RepoType::Local)),
        Ok(vec![digest])
    );

    let delete = req(RepoType::Local, "DELETE", "/tools/v1/tool.bin");
    assert_eq!(status(&Generic::handle(&host, &delete)), 204);
    assert_eq!(
        status(&Generic::handle(
            &host,
            &req(RepoType::Local, "GET", "/tools/v1/tool.bin")
        )),
        404
    );
    assert_eq!(status(&Generic::handle(&host, &delete)), 404);
    assert_eq!(
        Generic::live_blobs(&host, &repo(RepoType::Local)),
        Ok(vec![])
    );
}

#[test]
fn checksum_is_verified_and_a_mismatch_keeps_the_old_file() {
    let host = FakeHost::new("files", NoUpstream);
    let path = "/f.txt";
    let local_get = || {
        served(
            &host,
            &Generic::handle(&host, &req(RepoType::Local, "GET", path)),
        )
    };
    let with_checksum = |value: &str| {
        let mut r = req(RepoType::Local, "PUT", path);
        r.headers.push(("X-Checksum-Sha256".into(), value.into()));
        r
    };
    assert_eq!(
        put(&host, &req(RepoType::Local, "PUT", path), b"old").status,
        201
    );

    assert_eq!(
        put(&host, &with_checksum(&sha256(b"other")[7..]), b"new").status,
        400
    );
    assert_eq!(local_get(), b"old");
    // clients send the hex in either case
    let upper = sha256(b"new")[7..].to_uppercase();
    assert_eq!(put(&host, &with_checksum(&upper), b"new").status, 201);
    assert_eq!(local_get(), b"new");

    let garbage = Generic::handle(&host, &with_checksum("nope"));
    assert_eq!(status(&garbage), 400);
    assert!(
        host.uploads.borrow().is_empty(),
        "a refused PUT opens no upload session"
    );
}

#[test]
fn remote_fetches_once_then_serves_the_store() {
    let mut files = Files::new("http://files.example");
    files.put(&format!("{UP}/dist/app.tgz"), b"app".to_vec());
    let host = FakeHost::new("files", files);
    let get = req(RepoType::Remote, "GET", "/dist/app.tgz");

    let Plan::FetchFile(fetch) = Generic::handle(&host, &get) else {
        panic!("not fetched")
    };
    assert_eq!(
        (fetch.request.url.as_str(), fetch.key.as_str()),
        ("http://files.example/pub/dist/app.tgz", "dist/app.tgz")
    );
    let file = host.fetch_file(&fetch).unwrap();
    Generic::file_fetched(&host, &get, &fetch.key, &file).unwrap();

    assert_eq!(served(&host, &Generic::handle(&host, &get)), b"app");
    assert_eq!(host.upstream.borrow().hits(&fetch.request.url), 1);

    // what the remote does not have is the remote's 404, in this format's shape
    let Plan::FetchFile(missing) = Generic::handle(&host, &req(RepoType::Remote, "GET", "/nope"))
    else {
        panic!()
    };
    let failure = host.fetch_file(&missing).unwrap_err();
    assert_eq!(Generic::render_failure(&get, &failure).status, 404);
    assert_eq!(
        status(&Generic::handle(
            &host,
            &req(RepoType::Remote, "PUT", "/dist/app.tgz")
        )),
        405
    );
    // a key `handle` never planned is not recorded
    assert!(Generic::file_fetched(&host, &get, "../x", &file).is_err());
}

#[test]
fn refusals_say_why_in_plain_text() {
    let host = FakeHost::new("files", NoUpstream);
    for path in ["/", "/a/../../etc/passwd", "/a//b"] {
        assert_eq!(
            status(&Generic::handle(&host, &req(RepoType::Local, "GET", path))),
            400,
            "{path}"
        );
    }
    let mut no_repo = req(RepoType::Local, "GET", "/f");
    no_repo.repository = None;
    assert_eq!(status(&Generic::handle(&host, &no_repo)), 404);
    assert_eq!(
        status(&Generic::handle(&host, &req(RepoType::Local, "POST", "/f"))),
        405
    );
    let mut keep = req(RepoType::Local, "DELETE", "/f");
    if let Some(r) = keep.repository.as_mut() {
        r.delete_enabled = false;
    }
    assert_eq!(status(&Generic::handle(&host, &keep)), 405);

    // HEAD gets the headers of the refusal, not its body
    let Plan::Respond(head) = Generic::handle(&host, &req(RepoType::Local, "HEAD", "/missing"))
    else {
        panic!()
    };
    assert_eq!((head.status, head.body.len()), (404, 0));

    let failure = Failure {
        kind: FailureKind::Unauthenticated,
        status: None,
        message: "sign in".into(),
        access: Some(Access::Write),
    };
    let r = Generic::render_failure(&req(RepoType::Local, "PUT", "/f"), &failure);
    assert_eq!(
        (r.status, header(&r.headers, "www-authenticate")),
        (401, Some("Basic realm=\"binaryrepo\""))
    );
}
