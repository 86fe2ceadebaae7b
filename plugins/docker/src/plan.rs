//! The plans and small responses this plugin answers with.

use crate::contract::{FetchBlob, Headers, Plan, Response, UpstreamRequest};
use crate::media_type;
use crate::reference::Digest;

pub const DIGEST_HEADER: &str = "Docker-Content-Digest";

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

/// The answer to `/v2/`: "this is a v2 registry".
pub fn api_base() -> Plan {
    Plan::Respond(json(200, b"{}".to_vec()))
}
