//! The format's decisions: what each request becomes, and what the host's outcomes mean.

use binaryrepo_plugin_sdk::contract::{
    Failure, FailureKind, FetchFile, FetchedFile, Host, HostError, LivePage, Mount, Plan,
    PluginInfo, ReceiveUpload, RepoType, Repository, Request, Response, ServeBlob, UploadOutcome,
    UpstreamRequest,
};
use binaryrepo_plugin_sdk::live::{self, Step};
use binaryrepo_plugin_sdk::{Format, http};

use crate::BUILD;
use crate::digest::Digest;
use crate::path::{FilePath, ROOT};

/// A remote file larger than this is refused (and nothing stored).
pub const MAX_REMOTE_BYTES: u64 = 4 << 30;

/// The `generic` format.
pub struct Generic;

/// Why a request gets no file, and whose fault that is; answered as plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// the client's: a path or header that names nothing (400)
    BadRequest(String),
    NotFound(String),
    /// a method this repository does not take (405)
    Method(String),
    /// the host could not do what was asked: a limit (429) or a failure of its own (500)
    Host(HostError),
}

impl From<HostError> for Refusal {
    fn from(e: HostError) -> Refusal {
        Refusal::Host(e)
    }
}

impl Refusal {
    fn response(&self) -> Response {
        match self {
            Refusal::BadRequest(m) => text(400, m),
            Refusal::NotFound(m) => text(404, m),
            Refusal::Method(m) => text(405, m),
            Refusal::Host(HostError::Limit(m)) => text(429, &format!("try again later: {m}")),
            Refusal::Host(e) => text(500, &e.to_string()),
        }
    }
}

/// A plain-text answer naming this build.
fn text(status: u16, message: &str) -> Response {
    http::text(status, message).with_header("X-Plugin-Build", BUILD)
}

/// The headers a served file carries.
fn file_headers() -> Vec<(String, String)> {
    http::headers(&[
        ("Content-Type", "application/octet-stream"),
        ("X-Plugin-Build", BUILD),
    ])
}

/// The file a request names.
fn file_of(req: &Request) -> Result<FilePath, Refusal> {
    let root_mounted = matches!(req.mount, Mount::Path | Mount::Root);
    FilePath::parse(&req.path, root_mounted).map_err(Refusal::BadRequest)
}

/// The digest recorded for `file`, if the repository has it.
fn stored(host: &impl Host, file: &FilePath) -> Result<Option<Digest>, Refusal> {
    Ok(host
        .meta_get(&file.key())?
        .and_then(|v| Digest::from_meta(&v)))
}

fn dispatch(host: &impl Host, req: &Request) -> Result<Plan, Refusal> {
    let Some(repo) = req.repository.as_ref() else {
        return Err(Refusal::NotFound(format!(
            "no repository: use /repo/<name>/<path> or {ROOT}<name>/<path>"
        )));
    };
    let file = file_of(req)?;
    let not_found = || Refusal::NotFound(format!("{} not found", file.as_str()));
    match req.method.as_str() {
        "GET" | "HEAD" => {
            if let Some(digest) = stored(host, &file)? {
                let headers = file_headers();
                return Ok(Plan::ServeBlob(ServeBlob {
                    digest: digest.as_str().to_owned(),
                    headers,
                }));
            }
            match (repo.repo_type, &repo.remote_url) {
                // Not cached yet: the host streams it from the remote to the client and into the
                // store, then calls `file_fetched` with the key to record.
                (RepoType::Remote, Some(base)) => Ok(Plan::FetchFile(FetchFile {
                    key: file.as_str().to_owned(),
                    request: UpstreamRequest {
                        method: "GET".into(),
                        url: file.remote_url(base),
                        headers: vec![],
                        with_credentials: true,
                    },
                    headers: file_headers(),
                    max_bytes: MAX_REMOTE_BYTES,
                })),
                _ => Err(not_found()),
            }
        }
        "PUT" if repo.repo_type == RepoType::Local => {
            let commit = Digest::expected(req).map_err(Refusal::BadRequest)?;
            Ok(Plan::ReceiveUpload(ReceiveUpload {
                id: host.upload_start()?,
                expect_offset: None,
                commit: commit.map(|d| d.as_str().to_owned()),
            }))
        }
        "DELETE" if repo.delete_enabled => {
            if stored(host, &file)?.is_none() {
                return Err(not_found());
            }
            // The content stays in the store until garbage collection finds nothing naming it.
            host.meta_delete(&file.key())?;
            Ok(Plan::Respond(
                http::respond(204, "text/plain", "").with_header("X-Plugin-Build", BUILD),
            ))
        }
        "DELETE" => Err(Refusal::Method(
            "this repository does not allow deletes".into(),
        )),
        "PUT" => Err(Refusal::Method(
            "only local repositories take uploads".into(),
        )),
        other => Err(Refusal::Method(format!(
            "{other} is not supported: GET, HEAD, PUT, DELETE"
        ))),
    }
}

/// The digest an upload ended as, committing it first when the client sent no checksum.
fn uploaded(host: &impl Host, id: &str, outcome: &UploadOutcome) -> Result<Digest, Refusal> {
    let committed = match outcome {
        UploadOutcome::Done(done) => match &done.committed {
            // verified and committed by the host against X-Checksum-Sha256
            Some(digest) => digest.clone(),
            // no checksum sent: the host hashes and commits the session now
            None => host.upload_commit(id, None)?.digest,
        },
        UploadOutcome::DigestMismatch(actual) => {
            return Err(Refusal::BadRequest(format!(
                "the body hashes to {actual}, not X-Checksum-Sha256"
            )));
        }
        UploadOutcome::BodyError(e) => {
            return Err(Refusal::BadRequest(format!("upload interrupted: {e}")));
        }
        other => {
            // the session is of no further use; it would expire anyway
            let _ = host.upload_cancel(id);
            return Err(HostError::Internal(format!("upload failed: {other:?}")).into());
        }
    };
    Digest::parse(&committed).ok_or_else(|| HostError::InvalidDigest(committed).into())
}

impl Format for Generic {
    const INFO: PluginInfo = PluginInfo {
        format: "generic",
        roots: &[ROOT],
        // virtual repositories are resolved by the host, member by member
        merged: &[],
        settings: &[],
    };

    fn handle(host: &impl Host, req: &Request) -> Plan {
        dispatch(host, req)
            .unwrap_or_else(|refusal| Plan::Respond(refusal.response().for_method(&req.method)))
    }

    fn upload_complete(
        host: &impl Host,
        req: &Request,
        id: &str,
        outcome: &UploadOutcome,
    ) -> Response {
        let recorded = file_of(req).and_then(|file| {
            let digest = uploaded(host, id, outcome)?;
            host.meta_put(&file.key(), digest.as_str().as_bytes())?;
            Ok(digest)
        });
        match recorded {
            Ok(digest) => text(201, digest.as_str()).with_header("X-Checksum-Sha256", digest.hex()),
            Err(refusal) => refusal.response(),
        }
    }

    fn file_fetched(
        host: &impl Host,
        _req: &Request,
        key: &str,
        file: &FetchedFile,
    ) -> Result<(), HostError> {
        // `key` is the path `handle` put in the plan, so it parses; refuse anything else
        let path = FilePath::parse(key, false).map_err(HostError::NotAllowed)?;
        host.meta_put(&path.key(), file.digest.as_bytes())
    }

    fn render_failure(_req: &Request, failure: &Failure) -> Response {
        let status = match failure.kind {
            FailureKind::BlobUnknown => 404,
            FailureKind::UpstreamStatus if failure.status == Some(404) => 404,
            FailureKind::UpstreamStatus
            | FailureKind::UpstreamUnreachable
            | FailureKind::DigestMismatch => 502,
            FailureKind::TooLarge => 413,
            FailureKind::Unauthenticated => 401,
            FailureKind::Denied => 403,
            FailureKind::TooManyRequests => 429,
            FailureKind::BadRequest => 400,
            FailureKind::Unavailable => 503,
            FailureKind::Internal => 500,
        };
        let response = text(status, &failure.message);
        match failure.kind {
            FailureKind::Unauthenticated => {
                response.with_header("WWW-Authenticate", "Basic realm=\"binaryrepo\"")
            }
            _ => response,
        }
    }

    fn live_blobs_page(
        host: &impl Host,
        _repo: &Repository,
        cursor: Option<&str>,
    ) -> Result<LivePage, HostError> {
        // a page of keys at a time: a repository of many files is never listed whole
        live::page(
            host,
            cursor,
            &mut [Step::mark("file:", |key, live| {
                if let Some(d) = host.meta_get(key)?.and_then(|v| Digest::from_meta(&v)) {
                    live.push(d.as_str().to_owned());
                }
                Ok(())
            })],
        )
    }
}
