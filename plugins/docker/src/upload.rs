//! Blob uploads into a local repository: `POST /v2/<name>/blobs/uploads/` starts a session
//! (or mounts, or takes the whole blob at once), `PATCH` / `PUT` / `GET` / `DELETE` on
//! `…/uploads/<session>` append, finish, report and cancel.
//!
//! The host owns the session file and the bytes: a request body reaches the session through a
//! `receive-upload` plan, which checks the chunk's offset, appends, verifies the digest and
//! commits, and then hands the outcome back to `complete` for the client's answer.

use crate::contract::{
    Headers, Host, Plan, ReceiveUpload, Repository, Request, Response, UploadOutcome, header,
};
use crate::error::{ErrorCode, RegistryError};
use crate::meta;
use crate::mount;
use crate::plan::{self, DIGEST_HEADER, UPLOAD_UUID_HEADER};
use crate::reference::{Digest, Name};
use crate::url;
use serde_json::json;

/// Host session ids are 32 lowercase hex; anything that cannot be one is not looked up.
const SESSION_MAX: usize = 128;

/// A session id from the URL, checked before it reaches a host call.
pub struct Session<'a>(&'a str);

impl<'a> Session<'a> {
    pub fn parse(id: &'a str) -> Result<Session<'a>, RegistryError> {
        let ok = !id.is_empty()
            && id.len() <= SESSION_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Session(id))
        } else {
            Err(upload_unknown(id))
        }
    }
}

fn upload_unknown(id: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUploadUnknown,
        "blob upload unknown to registry",
    )
    .with_detail(json!({ "session": id }))
}

fn digest_param(req: &Request) -> Result<Digest, RegistryError> {
    let Some(raw) = url::query_param(req.query.as_deref(), "digest") else {
        return Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to finish an upload",
        ));
    };
    Digest::parse(&raw).map_err(|_| {
        RegistryError::new(ErrorCode::DigestInvalid, "invalid digest")
            .with_detail(json!({ "digest": raw }))
    })
}

fn upload_url(req: &Request, name: &Name, id: &str) -> String {
    url::client_url(req, &format!("{name}/blobs/uploads/{id}"))
}

/// Location, Range and the session id: what every answer about a live session carries.
fn session_headers(req: &Request, name: &Name, id: &str, size: u64) -> Headers {
    vec![
        ("Location".to_owned(), upload_url(req, name, id)),
        ("Range".to_owned(), plan::upload_range(size)),
        (UPLOAD_UUID_HEADER.to_owned(), id.to_owned()),
    ]
}

/// 201 for a blob now in the image.
fn created(req: &Request, name: &Name, digest: &Digest) -> Response {
    plan::empty(
        201,
        vec![
            (
                "Location".to_owned(),
                url::client_url(req, &format!("{name}/blobs/{digest}")),
            ),
            (DIGEST_HEADER.to_owned(), digest.to_string()),
        ],
    )
}

fn link(host: &impl Host, name: &Name, digest: &Digest) -> Result<(), RegistryError> {
    meta::link_blob(host, name, digest)?;
    meta::mark_image(host, name)?;
    Ok(())
}

/// `POST /v2/<name>/blobs/uploads/[?mount=&from=|?digest=]`
pub fn start(
    host: &impl Host,
    req: &Request,
    repo: &Repository,
    name: &Name,
) -> Result<Plan, RegistryError> {
    let query = req.query.as_deref();
    // a mount that cannot be done (bad digest, unknown source) falls back to an upload
    if let Some(digest) = url::query_param(query, "mount").and_then(|d| Digest::parse(&d).ok()) {
        let from = url::query_param(query, "from").filter(|f| !f.is_empty());
        if mount::mountable(host, repo, &digest, from.as_deref())? {
            link(host, name, &digest)?;
            return Ok(Plan::Respond(created(req, name, &digest)));
        }
    }
    if url::query_param(query, "digest").is_some() {
        // monolithic: the whole blob in this request's body
        let digest = digest_param(req)?;
        let id = host.upload_start()?;
        return Ok(Plan::ReceiveUpload(ReceiveUpload {
            id,
            expect_offset: Some(0),
            commit: Some(digest.to_string()),
        }));
    }
    let id = host.upload_start()?;
    Ok(Plan::Respond(plan::empty(
        202,
        session_headers(req, name, &id, 0),
    )))
}

/// A chunk's `Content-Range: <start>-<end>` (inclusive); `bytes=` / `bytes ` prefixes and a
/// `/<total>` suffix are tolerated. None when it is not a range.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (start, end) = v.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    (start <= end).then_some((start, end))
}

/// Where the body must land in the session: the Content-Range start when the client sent
/// one, else wherever the session ends (a streamed upload).
fn expected_offset(
    host: &impl Host,
    req: &Request,
    name: &Name,
    id: &Session<'_>,
) -> Result<Option<u64>, RegistryError> {
    let Some(range) = header(&req.headers, "content-range") else {
        return Ok(None);
    };
    let Some((start, end)) = parse_content_range(range) else {
        // the spec answers a malformed range like an out-of-order one
        let size = host
            .upload_size(id.0)?
            .ok_or_else(|| upload_unknown(id.0))?;
        return Err(range_error(req, name, id.0, size, "invalid Content-Range"));
    };
    let length = header(&req.headers, "content-length").and_then(|l| l.trim().parse::<u64>().ok());
    if length.is_some_and(|l| l != end - start + 1) {
        return Err(RegistryError::new(
            ErrorCode::SizeInvalid,
            "Content-Length does not match Content-Range",
        )
        .with_detail(json!({ "content_range": range, "content_length": length })));
    }
    Ok(Some(start))
}

/// 416 with the session's current range, so the client can resume from it.
fn range_error(req: &Request, name: &Name, id: &str, size: u64, message: &str) -> RegistryError {
    RegistryError::new(ErrorCode::BlobUploadInvalid, message)
        .with_status(416)
        .with_detail(json!({ "size": size }))
        .with_headers(session_headers(req, name, id, size))
}

/// `PATCH …/uploads/<session>`: append a chunk (or a stream).
pub fn patch(
    host: &impl Host,
    req: &Request,
    name: &Name,
    id: &Session<'_>,
) -> Result<Plan, RegistryError> {
    let expect_offset = expected_offset(host, req, name, id)?;
    Ok(Plan::ReceiveUpload(ReceiveUpload {
        id: id.0.to_owned(),
        expect_offset,
        commit: None,
    }))
}

/// `PUT …/uploads/<session>?digest=<d>`: append the last chunk, if any, verify and commit.
pub fn put(
    host: &impl Host,
    req: &Request,
    name: &Name,
    id: &Session<'_>,
) -> Result<Plan, RegistryError> {
    let digest = digest_param(req)?;
    let expect_offset = expected_offset(host, req, name, id)?;
    Ok(Plan::ReceiveUpload(ReceiveUpload {
        id: id.0.to_owned(),
        expect_offset,
        commit: Some(digest.to_string()),
    }))
}

/// `GET …/uploads/<session>`: how far the upload got.
pub fn status(
    host: &impl Host,
    req: &Request,
    name: &Name,
    id: &Session<'_>,
) -> Result<Plan, RegistryError> {
    let size = host
        .upload_size(id.0)?
        .ok_or_else(|| upload_unknown(id.0))?;
    Ok(Plan::Respond(plan::empty(
        204,
        session_headers(req, name, id.0, size),
    )))
}

/// `DELETE …/uploads/<session>`: cancel.
pub fn cancel(host: &impl Host, id: &Session<'_>) -> Result<Plan, RegistryError> {
    if host.upload_size(id.0)?.is_none() {
        return Err(upload_unknown(id.0));
    }
    host.upload_cancel(id.0)?;
    Ok(Plan::Respond(plan::empty(204, Vec::new())))
}

/// The client's answer once the host has carried out a `receive-upload` plan.
pub fn complete(
    host: &impl Host,
    req: &Request,
    name: &Name,
    id: &str,
    outcome: &UploadOutcome,
) -> Result<Response, RegistryError> {
    match outcome {
        UploadOutcome::Done(done) => match &done.committed {
            Some(committed) => {
                let digest = Digest::parse(committed).map_err(|_| {
                    RegistryError::new(
                        ErrorCode::Unknown,
                        format!("the host committed a malformed digest {committed:?}"),
                    )
                })?;
                link(host, name, &digest)?;
                Ok(created(req, name, &digest))
            }
            None => Ok(plan::empty(202, session_headers(req, name, id, done.size))),
        },
        UploadOutcome::OffsetMismatch(size) => Err(range_error(
            req,
            name,
            id,
            *size,
            "the chunk does not start where the upload ends",
        )),
        UploadOutcome::DigestMismatch(actual) => Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            "the uploaded content does not match the digest",
        )
        .with_detail(json!({
            "digest": url::query_param(req.query.as_deref(), "digest"),
            "actual": actual,
        }))),
        UploadOutcome::UnknownSession => Err(upload_unknown(id)),
        UploadOutcome::BodyError(m) => Err(RegistryError::new(
            ErrorCode::BlobUploadInvalid,
            format!("the upload body could not be read: {m}"),
        )),
        UploadOutcome::Internal(m) => Err(RegistryError::new(
            ErrorCode::Unknown,
            format!("the upload failed: {m}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_session_is_a_rate_limit() {
        // the host says `limit` when a repository or the server has as many sessions open as it allows
        let e = RegistryError::from_host(&crate::contract::HostError::Limit(
            "100 upload sessions are open".into(),
        ));
        assert_eq!((e.code, e.status), (ErrorCode::TooManyRequests, 429));
        let e = RegistryError::from_host(&crate::contract::HostError::Internal("disk".into()));
        assert_eq!(e.code, ErrorCode::Unknown);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range(" 100-199 "), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-5"), Some((5, 5)));
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9)));
        for bad in ["", "5", "9-5", "a-b", "-5", "0-", "0-1-2"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn session_ids() {
        assert!(Session::parse(&"a".repeat(32)).is_ok());
        assert!(Session::parse("abc-DEF_1").is_ok());
        for bad in ["", "../x", "a b", &"a".repeat(129)] {
            let e = Session::parse(bad).err().unwrap();
            assert_eq!((e.code, e.status), (ErrorCode::BlobUploadUnknown, 404));
        }
    }
}
