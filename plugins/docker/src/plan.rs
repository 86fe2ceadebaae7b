//! The plans and small responses this plugin answers with.

use crate::contract::{FetchBlob, Headers, Plan, Response, UpstreamRequest};
use crate::media_type;
use crate::reference::Digest;

pub const DIGEST_HEADER: &str = "Docker-Content-Digest";

/// How long a plan served from what the repository holds may be reused by the host (the
/// contract's `reusable`). The answer holds until the repository's metadata changes or blobs
/// are removed, which the host watches itself; this only bounds it. No request header changes
/// such a plan: manifests are served as stored whatever the client accepts.
pub const HELD_SECONDS: u64 = 3600;
pub const UPLOAD_UUID_HEADER: &str = "Docker-Upload-UUID";
pub const SUBJECT_HEADER: &str = "OCI-Subject";
pub const FILTERS_APPLIED_HEADER: &str = "OCI-Filters-Applied";

fn content_headers(content_type: &str, digest: &Digest) -> Headers {
    vec![
        ("Content-Type".to_owned(), content_type.to_owned()),
        (DIGEST_HEADER.to_owned(), digest.to_string()),
    ]
}

/// A stored manifest, byte for byte, as the media type it was stored with.
pub fn serve_manifest(digest: &Digest, media_type: &str) -> Plan {
    Plan::ServeBlob(crate::contract::ServeBlob {
        digest: digest.to_string(),
        headers: content_headers(media_type, digest),
    })
}

pub fn blob_headers(digest: &Digest) -> Headers {
    content_headers(media_type::BLOB, digest)
}

pub fn serve_blob(digest: &Digest) -> Plan {
    Plan::ServeBlob(crate::contract::ServeBlob {
        digest: digest.to_string(),
        headers: blob_headers(digest),
    })
}

pub fn fetch_blob(
    digest: &Digest,
    url: String,
    auth_headers: Headers,
    with_credentials: bool,
) -> Plan {
    Plan::FetchBlob(FetchBlob {
        digest: digest.to_string(),
        request: UpstreamRequest {
            method: "GET".to_owned(),
            url,
            headers: auth_headers,
            with_credentials,
        },
        headers: blob_headers(digest),
    })
}

pub fn json(status: u16, body: Vec<u8>) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
        body,
    }
}

/// A response without a body: 201, 202 and 416 say `Content-Length: 0` as the spec shows them;
/// 204 must not carry one (RFC 9110).
pub fn empty(status: u16, mut headers: Headers) -> Response {
    if status != 204 {
        headers.push(("Content-Length".to_owned(), "0".to_owned()));
    }
    Response {
        status,
        headers,
        body: Vec::new(),
    }
}

/// `0-<last byte>` for an upload holding `size` bytes; `0-0` when empty, as distribution
/// sends it (the spec's form has no way to say "nothing yet").
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// The answer to `/v2/`: "this is a v2 registry".
pub fn api_base() -> Plan {
    Plan::Respond(json(200, b"{}".to_vec()))
}
