//! Whole request flows against the SDK's fake host.

use crate::contract::*;
use crate::handler::Go;
use binaryrepo_plugin_sdk::Format;
use binaryrepo_plugin_sdk::fake_host::{self, FakeHost, Files, NoUpstream};

const UP: &str = "http://up.example/proxy";

fn repo(t: RepoType) -> Repository {
    fake_host::repository("go", t, UP)
}

fn req(t: RepoType, method: &str, path: &str, now: u64) -> Request {
    fake_host::request(repo(t), method, path, now)
}

/// A stored (uncompressed) zip of `names`, enough for the central-directory checks.
pub fn zip(names: &[&str]) -> Vec<u8> {
    let (mut out, mut cd) = (Vec::new(), Vec::new());
    for n in names {
        let offset = out.len() as u32;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[
            20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0,
        ]);
        out.extend_from_slice(&(n.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(n.as_bytes());
        out.push(b'x');
        cd.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        cd.extend_from_slice(&[
            20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0,
        ]);
        cd.extend_from_slice(&(n.len() as u16).to_le_bytes());
        cd.extend_from_slice(&[0; 12]);
        cd.extend_from_slice(&offset.to_le_bytes());
        cd.extend_from_slice(n.as_bytes());
    }
    let (cd_offset, cd_len, count) = (out.len() as u32, cd.len() as u32, names.len() as u16);
    out.extend_from_slice(&cd);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

fn remote_host() -> FakeHost<Files> {
    let mut f = Files::new("http://up.example");
    f.put(
        &format!("{UP}/example.com/!foo/@v/list"),
        "v1.0.0\nv1.1.0\n",
    );
    f.put(
        &format!("{UP}/example.com/!foo/@v/v1.0.0.zip"),
        zip(&["example.com/Foo@v1.0.0/go.mod"]),
    );
    FakeHost::new("go", f)
}

fn status(p: &Plan) -> u16 {
    match p {
        Plan::Respond(r) => r.status,
        Plan::ServeBlob(_) => 200,
        other => panic!("not an answer: {other:?}"),
    }
}

#[test]
fn remote_files_are_fetched_once_and_kept() {
    let h = remote_host();
    let r = req(
        RepoType::Remote,
        "GET",
        "/example.com/!foo/@v/v1.0.0.zip",
        1000,
    );
    let Plan::FetchFile(f) = Go::handle(&h, &r) else {
        panic!("not fetched")
    };
    assert_eq!(
        f.request.url,
        format!("{UP}/example.com/!foo/@v/v1.0.0.zip")
    );
    let file = h.fetch_file(&f).unwrap();
    Go::file_fetched(&h, &r, &f.key, &file).unwrap();
    h.down.set(true);
    let Plan::ServeBlob(s) = Go::handle(&h, &r) else {
        panic!("not served from the store")
    };
    assert_eq!(s.digest, file.digest);
    assert_eq!(h.take_offer(), Some(86_400));
    assert_eq!(
        Go::live_blobs(&h, &repo(RepoType::Remote)).unwrap(),
        vec![file.digest]
    );
}

#[test]
fn an_upstream_page_for_a_zip_is_not_kept() {
    let h = remote_host();
    let path = "/example.com/!foo/@v/v1.1.0.zip";
    h.upstream
        .borrow_mut()
        .put(&format!("{UP}{path}"), "<html>Please log in</html>");
    let r = req(RepoType::Remote, "GET", path, 1000);
    let Plan::FetchFile(f) = Go::handle(&h, &r) else {
        panic!("not fetched")
    };
    let file = h.fetch_file(&f).unwrap();
    Go::file_fetched(&h, &r, &f.key, &file).unwrap();
    assert!(
        matches!(Go::handle(&h, &r), Plan::FetchFile(_)),
        "asked of the upstream again, not served from the store"
    );
}

#[test]
fn remote_list_is_cached_for_the_window_and_served_stale() {
    let h = remote_host();
    let url = format!("{UP}/example.com/!foo/@v/list");
    let get = |now| {
        Go::handle(
            &h,
            &req(RepoType::Remote, "GET", "/example.com/!foo/@v/list", now),
        )
    };
    assert_eq!(status(&get(1000)), 200);
    assert_eq!(status(&get(1030)), 200);
    assert_eq!(h.upstream.borrow().hits(&url), 1);
    assert_eq!(status(&get(1100)), 200);
    assert_eq!(h.upstream.borrow().hits(&url), 2);
    h.down.set(true);
    assert_eq!(status(&get(1200)), 200);
    assert!(h.logged(Level::Warn, "serving the cached"));
    // not found upstream: passed on, and remembered for the window (quick probes)
    h.down.set(false);
    let probe = |now| {
        Go::handle(
            &h,
            &req(RepoType::Remote, "GET", "/example.com/@v/list", now),
        )
    };
    assert_eq!(status(&probe(1000)), 404);
    assert_eq!(status(&probe(1010)), 404);
    assert_eq!(
        h.upstream
            .borrow()
            .hits(&format!("{UP}/example.com/@v/list")),
        1
    );
    // remembered in the host's bounded scratch space only: probes grow no metadata
    assert!(
        h.meta
            .borrow()
            .keys()
            .all(|k| !k.contains("example.com/@v/list"))
    );
}

#[test]
fn upstream_404_and_410_pass_through() {
    let r = req(RepoType::Remote, "GET", "/x.com/y/@v/v1.0.0.zip", 0);
    for s in [404, 410] {
        let f = Failure {
            kind: FailureKind::UpstreamStatus,
            status: Some(s),
            message: String::new(),
            access: None,
        };
        assert_eq!(Go::render_failure(&r, &f).status, s);
    }
}

#[test]
fn bad_paths_are_400_and_reach_nothing() {
    let h = remote_host();
    for p in [
        "/example.com/../x/@v/list",
        "/example.com%2Fx/@v/list",
        "/example.com/Foo/@v/list",
        "/example.com/foo/@v/v1.0.0!.zip",
    ] {
        assert_eq!(
            status(&Go::handle(&h, &req(RepoType::Remote, "GET", p, 0))),
            400,
            "{p}"
        );
    }
    assert!(h.take_sent().is_empty());
}

fn publish(h: &FakeHost<NoUpstream>, path: &str, body: &[u8]) -> u16 {
    let r = req(RepoType::Local, "PUT", path, 500);
    match Go::handle(h, &r) {
        Plan::ReceiveUpload(u) => {
            let outcome = h.receive(&u, body);
            Go::upload_complete(h, &r, &u.id, &outcome).status
        }
        Plan::ReadBody(_) => match Go::handle_body(h, &r, body) {
            Plan::Respond(resp) => resp.status,
            other => panic!("{other:?}"),
        },
        Plan::Respond(resp) => resp.status,
        other => panic!("{other:?}"),
    }
}

#[test]
fn local_publish_is_immutable_and_listed() {
    let h = FakeHost::new("go", NoUpstream);
    let z = zip(&["example.com/m@v1.0.0/go.mod", "example.com/m@v1.0.0/m.go"]);
    assert_eq!(
        publish(
            &h,
            "/example.com/m/@v/v1.0.0.mod",
            b"module example.com/m\n"
        ),
        201
    );
    assert_eq!(publish(&h, "/example.com/m/@v/v1.0.0.zip", &z), 201);
    assert_eq!(publish(&h, "/example.com/m/@v/v1.0.0.zip", &z), 200);
    assert_eq!(
        publish(
            &h,
            "/example.com/m/@v/v1.0.0.zip",
            &zip(&["example.com/m@v1.0.0/other.go"])
        ),
        409
    );
    assert_eq!(
        publish(
            &h,
            "/example.com/m/@v/v1.1.0.zip",
            &zip(&["example.com/m@v1.0.0/go.mod"])
        ),
        400
    );
    assert_eq!(
        publish(
            &h,
            "/example.com/m/@v/v1.1.0.zip",
            &zip(&["example.com/m@v1.1.0/../../x"])
        ),
        400
    );
    assert_eq!(
        publish(&h, "/example.com/m/@v/v1.1.0.zip", b"not a zip"),
        400
    );
    assert_eq!(
        publish(
            &h,
            "/example.com/m/@v/v1.1.0.mod",
            b"module example.com/other\n"
        ),
        400
    );
    assert_eq!(publish(&h, "/example.com/m/@v/master.zip", &z), 400);
    assert!(h.uploads.borrow().is_empty(), "no session left behind");
    let Plan::Respond(list) = Go::handle(
        &h,
        &req(RepoType::Local, "GET", "/example.com/m/@v/list", 600),
    ) else {
        panic!()
    };
    assert_eq!(list.body, b"v1.0.0\n");
    let Plan::Respond(info) = Go::handle(
        &h,
        &req(RepoType::Local, "GET", "/example.com/m/@v/v1.0.0.info", 600),
    ) else {
        panic!()
    };
    assert_eq!(
        String::from_utf8(info.body).unwrap(),
        r#"{"Time":"1970-01-01T00:08:20Z","Version":"v1.0.0"}"#
    );
    assert_eq!(Go::live_blobs(&h, &repo(RepoType::Local)).unwrap().len(), 2);
}

/// A member's answer to a merged read, its body inline.
fn a(repo: &str, status: u16, body: &str) -> MemberAnswer {
    MemberAnswer {
        repository: repo.into(),
        status,
        headers: vec![],
        body: MemberBody::Inline(body.as_bytes().to_vec()),
    }
}

#[test]
fn virtual_lists_merge() {
    let h = FakeHost::new("go", NoUpstream);
    let r = req(RepoType::Virtual, "GET", "/x.com/m/@v/list", 0);
    let Plan::Respond(p) = Go::merge(
        &h,
        &r,
        &[
            a("l", 200, "v1.10.0\nv1.2.0\n"),
            a("r", 200, "v1.2.0\nv1.3.0\n"),
            a("x", 404, ""),
        ],
    ) else {
        panic!()
    };
    assert_eq!(p.body, b"v1.2.0\nv1.3.0\nv1.10.0\n");
    let Plan::Respond(p) = Go::merge(&h, &r, &[a("x", 404, "")]) else {
        panic!()
    };
    assert_eq!(p.status, 404);
}

#[test]
fn virtual_latest_is_the_highest_version_any_member_names() {
    let h = FakeHost::new("go", NoUpstream);
    let info = |v: &str| format!(r#"{{"Version":"{v}","Time":"2021-01-01T00:00:00Z"}}"#);
    let older = info("v0.0.0-20200101000000-aaaaaaaaaaaa");
    let newer = info("v0.0.0-20210101000000-bbbbbbbbbbbb");
    let r = req(RepoType::Virtual, "GET", "/x.com/m/@latest", 0);
    let latest = |answers: &[MemberAnswer]| match Go::merge(&h, &r, answers) {
        Plan::Respond(p) => (p.status, String::from_utf8(p.body).unwrap()),
        _ => panic!(),
    };
    // pseudo-versions order by the time in them, whichever member comes first
    assert_eq!(
        latest(&[a("l", 200, &older), a("x", 404, ""), a("r", 200, &newer)]),
        (200, newer.clone())
    );
    assert_eq!(
        latest(&[a("r", 200, &newer), a("l", 200, &older)]),
        (200, newer.clone())
    );
    // a tag beats a pseudo-version before it; an answer naming no version loses to one that does
    assert_eq!(
        latest(&[a("l", 200, &newer), a("r", 200, &info("v1.0.0"))]),
        (200, info("v1.0.0"))
    );
    assert_eq!(
        latest(&[a("l", 200, "not json"), a("r", 200, &older)]),
        (200, older.clone())
    );
    assert_eq!(latest(&[a("l", 404, ""), a("r", 410, "")]).0, 404);
    // no member has it and one could not be asked: not "no such module" to GOPROXY=a,b
    assert_eq!(latest(&[a("d", 502, ""), a("r", 404, "")]).0, 502);
    let list = req(RepoType::Virtual, "GET", "/x.com/m/@v/list", 0);
    let Plan::Respond(p) = Go::merge(&h, &list, &[a("r", 404, ""), a("d", 504, "")]) else {
        panic!()
    };
    assert_eq!(p.status, 502);
    assert!(Go::INFO.merged.contains(&"/@latest"));
}

#[test]
fn only_configured_checksum_databases_are_proxied() {
    let mut f = Files::new("http://up.example");
    for db in ["sum.golang.org", "sum.example.com", "other.example.com"] {
        f.put(&format!("{UP}/sumdb/{db}/supported"), "");
    }
    let h = FakeHost::new("go", f);
    let ask = |settings: &[(&str, &str)], db: &str| {
        let mut r = repo(RepoType::Remote);
        r.settings = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let path = format!("/sumdb/{db}/supported");
        status(&Go::handle(&h, &fake_host::request(r, "GET", &path, 1000)))
    };
    // unset: sum.golang.org only
    assert_eq!(ask(&[], "sum.golang.org"), 200);
    assert_eq!(ask(&[], "sum.example.com"), 404);
    let two = [("checksum_databases", "sum.golang.org, sum.example.com")];
    assert_eq!(ask(&two, "sum.example.com"), 200);
    assert_eq!(ask(&two, "other.example.com"), 404);
    assert_eq!(ask(&[("checksum_databases", "")], "sum.golang.org"), 404);
    // refused without asking the upstream
    let other = format!("{UP}/sumdb/other.example.com/supported");
    assert_eq!(h.upstream.borrow().hits(&other), 0);
}
