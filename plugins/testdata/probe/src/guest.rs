//! The component boundary: wit-bindgen bindings for the current contract and the probes.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "plugin",
});

use binaryrepo::plugin::types as wit;
use binaryrepo::plugin::{blobs, meta, uploads, upstream};
use exports::binaryrepo::plugin::format::{Guest, MemberAnswer, PluginInfo};

use crate::{FNV_START, fnv, query};

const PIECE: u64 = 4 * 1024 * 1024;

struct Component;

fn text(status: u16, body: impl Into<Vec<u8>>) -> wit::Plan {
    wit::Plan::Respond(wit::Response {
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: body.into(),
    })
}

fn remote(request: &wit::Request) -> String {
    request
        .repository
        .as_ref()
        .and_then(|r| r.remote_url.clone())
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned()
}

fn get(url: String, headers: Vec<(String, String)>) -> wit::UpstreamRequest {
    wit::UpstreamRequest {
        method: "GET".into(),
        url,
        headers,
        with_credentials: false,
    }
}

/// Reads a stored blob whole with read-range: its size in pieces and checksum.
fn read_back(digest: &str, size: u64) -> Result<(u64, u64, Vec<u8>), wit::HostError> {
    let (mut at, mut h, mut head) = (0u64, FNV_START, Vec::new());
    loop {
        let piece = blobs::read_range(digest, at, PIECE)?;
        if piece.is_empty() {
            break;
        }
        if head.len() < 4096 {
            head.extend_from_slice(&piece[..piece.len().min(4096 - head.len())]);
        }
        h = fnv(h, &piece);
        at += piece.len() as u64;
        if at > size {
            break;
        }
    }
    Ok((at, h, head))
}

fn upload() -> Result<String, wit::HostError> {
    let mut out = String::new();
    let id = uploads::start()?;
    uploads::append(&id, b"hello ")?;
    let size = uploads::append(&id, b"world")?;
    let read = uploads::read(&id, 3, 5)?;
    let too_large = uploads::append(&id, &vec![0u8; PIECE as usize + 1]);
    let file = uploads::commit(&id, None)?;
    out += &format!("appended={size}\nread={}\n", String::from_utf8_lossy(&read));
    out += &format!(
        "too-large={}\n",
        matches!(too_large, Err(wit::HostError::TooLarge(_)))
    );
    out += &format!("digest={}\nsize={}\n", file.digest, file.size);
    out += &format!("after-commit={}\n", uploads::size(&id)?.is_none());
    let id = uploads::start()?;
    uploads::append(&id, b"x")?;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let mismatch = uploads::commit(&id, Some(&wrong));
    out += &format!(
        "mismatch={}\n",
        matches!(mismatch, Err(wit::HostError::DigestMismatch(_)))
    );
    out += &format!("gone={}\n", uploads::size(&id)?.is_none());
    Ok(out)
}

fn fetch(request: &wit::Request, name: &str) -> String {
    let max = query(request.query.as_deref(), "max")
        .and_then(|m| m.parse().ok())
        .unwrap_or(u64::MAX);
    let conditional = request
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-if-none-match"))
        .map(|(_, v)| ("If-None-Match".to_owned(), v.clone()))
        .collect();
    let doc = match upstream::fetch(
        name,
        &get(format!("{}/{name}", remote(request)), conditional),
        max,
    ) {
        Ok(d) => d,
        Err(e) => return format!("error={e:?}\n"),
    };
    let mut out = format!("status={}\n", doc.status);
    if let Some(file) = doc.file {
        out += &format!("digest={}\nsize={}\n", file.digest, file.size);
        match read_back(&file.digest, file.size) {
            Ok((read, h, _)) => out += &format!("read={read}\nfnv={h:016x}\n"),
            Err(e) => out += &format!("read-error={e:?}\n"),
        }
    } else {
        out += "file=none\n";
    }
    out
}

fn origin(request: &wit::Request, name: &str) -> String {
    let origin = query(request.query.as_deref(), "origin").unwrap_or("");
    let doc = match upstream::fetch(
        name,
        &get(format!("{}/{name}", remote(request)), vec![]),
        u64::MAX,
    ) {
        Ok(d) => d,
        Err(e) => return format!("error={e:?}\n"),
    };
    let before = upstream::allow_origin(origin).is_ok();
    if let Some(file) = &doc.file {
        let _ = read_back(&file.digest, file.size);
    }
    let after = upstream::allow_origin(origin).is_ok();
    format!("before={before}\nafter={after}\n")
}

fn index(request: &wit::Request) -> wit::Plan {
    let Some(repo) = &request.repository else {
        return text(404, "no repository");
    };
    match repo.repo_type {
        wit::RepoType::Remote => wit::Plan::FetchFile(wit::FetchFile {
            key: "index".into(),
            request: get(format!("{}/index.txt", remote(request)), vec![]),
            headers: vec![("content-type".into(), "text/plain".into())],
            max_bytes: 1 << 20,
        }),
        _ if repo.name.contains("empty") => text(404, "no index here"),
        _ => text(200, format!("local {}", repo.name)),
    }
}

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo {
            format: crate::FORMAT.to_owned(),
            contract: crate::CONTRACT.to_owned(),
            roots: crate::ROOTS.iter().map(|r| (*r).to_owned()).collect(),
            merged: crate::MERGED.iter().map(|r| (*r).to_owned()).collect(),
            settings: Vec::new(),
        }
    }

    fn handle(request: wit::Request) -> wit::Plan {
        let path = request
            .path
            .strip_prefix("/probe/")
            .unwrap_or("")
            .to_owned();
        let (action, rest) = path.split_once('/').unwrap_or((&path, ""));
        match action {
            "upload" => match upload() {
                Ok(report) => text(200, report),
                Err(e) => text(500, format!("error={e:?}\n")),
            },
            "blob" => wit::Plan::ServeBlob(wit::ServeBlob {
                digest: rest.to_owned(),
                headers: vec![],
            }),
            "fetch" => text(200, fetch(&request, rest)),
            "origin" => text(200, origin(&request, rest)),
            "file" => {
                let max = query(request.query.as_deref(), "max")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(1 << 40);
                wit::Plan::FetchFile(wit::FetchFile {
                    key: format!("file/{rest}"),
                    request: get(format!("{}/{rest}", remote(&request)), vec![]),
                    headers: vec![("content-type".into(), "application/octet-stream".into())],
                    max_bytes: max,
                })
            }
            "recorded" => match meta::get(&format!("file/{rest}")) {
                Ok(Some(d)) => text(200, d),
                Ok(None) => text(404, "not recorded"),
                Err(e) => text(500, format!("error={e:?}")),
            },
            "index.txt" => index(&request),
            _ => text(404, "no such probe"),
        }
    }

    fn handle_body(_request: wit::Request, _body: Vec<u8>) -> wit::Plan {
        text(400, "no bodies here")
    }

    fn upload_complete(
        _request: wit::Request,
        _id: String,
        _outcome: wit::UploadOutcome,
    ) -> wit::Response {
        wit::Response {
            status: 400,
            headers: vec![],
            body: b"no uploads here".to_vec(),
        }
    }

    fn merge(_request: wit::Request, answers: Vec<MemberAnswer>) -> wit::Plan {
        let mut out = String::new();
        for a in answers {
            let (kind, body) = match &a.body {
                wit::MemberBody::None => ("none", String::new()),
                wit::MemberBody::Inline(b) => ("inline", String::from_utf8_lossy(b).into_owned()),
                wit::MemberBody::Blob(f) => match read_back(&f.digest, f.size) {
                    Ok((_, _, head)) => ("blob", String::from_utf8_lossy(&head).into_owned()),
                    Err(e) => ("blob", format!("unreadable {e:?}")),
                },
            };
            out += &format!("{} {} {kind} {}\n", a.repository, a.status, body.trim_end());
        }
        text(200, out)
    }

    fn file_fetched(
        _request: wit::Request,
        key: String,
        file: wit::FetchedFile,
    ) -> Result<(), wit::HostError> {
        meta::put(&key, file.digest.as_bytes())
    }

    fn render_failure(_request: wit::Request, failure: wit::Failure) -> wit::Response {
        let status = match failure.kind {
            wit::FailureKind::TooLarge => 413,
            wit::FailureKind::UpstreamStatus => failure.status.unwrap_or(502),
            wit::FailureKind::BlobUnknown => 404,
            wit::FailureKind::TooManyRequests => 429,
            wit::FailureKind::Unauthenticated => 401,
            wit::FailureKind::Denied => 403,
            wit::FailureKind::UpstreamUnreachable | wit::FailureKind::DigestMismatch => 502,
            _ => 500,
        };
        let body = format!("failure {:?}: {}", failure.kind, failure.message);
        wit::Response {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into_bytes(),
        }
    }

    fn cleanup(
        _repository: wit::Repository,
        _rules: wit::CleanupRules,
        _now: u64,
    ) -> Result<wit::CleanupReport, String> {
        Err("the probe format has no tags to clean up".into())
    }

    fn live_blobs_page(
        repository: wit::Repository,
        cursor: Option<String>,
    ) -> Result<wit::LivePage, wit::HostError> {
        // walks that never end, for the host's guard on them
        if repository.name.contains("cycle") {
            let next = match cursor.as_deref() {
                Some("a") => "b",
                _ => "a",
            };
            return Ok(wit::LivePage {
                digests: Vec::new(),
                next: Some(next.into()),
            });
        }
        if repository.name.contains("endless") {
            let n: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok(wit::LivePage {
                digests: Vec::new(),
                next: Some((n + 1).to_string()),
            });
        }
        // the probe's files are few: one page
        let mut live = Vec::new();
        for key in meta::keys("file/")? {
            if let Some(d) = meta::get(&key)? {
                live.push(String::from_utf8_lossy(&d).into_owned());
            }
        }
        Ok(wit::LivePage {
            digests: live,
            next: None,
        })
    }
}

export!(Component);
