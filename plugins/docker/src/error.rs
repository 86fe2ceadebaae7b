//! Errors in the registry's own shape: `{"errors":[{"code","message","detail"}]}` with the
//! status the distribution spec gives each code.

use crate::contract::{Headers, HostError, Response};
use serde_json::{Value, json};

pub const API_VERSION_HEADER: &str = "Docker-Distribution-API-Version";
pub const API_VERSION: &str = "registry/2.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    ManifestBlobUnknown,
    SizeInvalid,
    ManifestUnknown,
    ManifestInvalid,
    NameInvalid,
    NameUnknown,
    TagInvalid,
    DigestInvalid,
    PaginationNumberInvalid,
    Unsupported,
    Unauthorized,
    Denied,
    TooManyRequests,
    /// not in the spec: the upstream could not serve and nothing was cached
    UpstreamUnavailable,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The status the spec pairs with the code; `RegistryError::with_status` overrides it.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 404,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::SizeInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::TagInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::PaginationNumberInvalid => 400,
            ErrorCode::Unsupported => 405,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::Unknown => 500,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub status: u16,
    pub message: String,
    pub detail: Option<Value>,
    /// extra response headers (a 416's Range and Location)
    pub headers: Headers,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError {
            code,
            status: code.status(),
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: u16) -> RegistryError {
        self.status = status;
        self
    }

    pub fn with_detail(mut self, detail: Value) -> RegistryError {
        self.detail = Some(detail);
        self
    }

    pub fn with_headers(mut self, headers: Headers) -> RegistryError {
        self.headers = headers;
        self
    }

    /// Failures that a stale cached copy may paper over: the upstream is down or throttling.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::UpstreamUnavailable | ErrorCode::TooManyRequests
        )
    }

    pub fn body(&self) -> Vec<u8> {
        let mut entry = json!({ "code": self.code.as_str(), "message": self.message });
        if let (Some(detail), Some(obj)) = (&self.detail, entry.as_object_mut()) {
            obj.insert("detail".to_owned(), detail.clone());
        }
        json!({ "errors": [entry] }).to_string().into_bytes()
    }

    pub fn to_response(&self) -> Response {
        let mut headers: Headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
        headers.extend(self.headers.iter().cloned());
        Response {
            status: self.status,
            headers,
            body: self.body(),
        }
    }

    /// A host call failed while handling a request.
    pub fn from_host(err: &HostError) -> RegistryError {
        match err {
            HostError::UpstreamUnreachable(m) => RegistryError::new(
                ErrorCode::UpstreamUnavailable,
                format!("upstream unreachable: {m}"),
            ),
            HostError::DigestMismatch(m) => RegistryError::new(
                ErrorCode::DigestInvalid,
                format!("upstream content does not match its digest: {m}"),
            )
            .with_status(502),
            HostError::TooLarge(n) => RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("upstream document exceeds the size limit ({n} bytes)"),
            )
            .with_status(502),
            HostError::InvalidDigest(m) => {
                RegistryError::new(ErrorCode::DigestInvalid, format!("invalid digest: {m}"))
            }
            HostError::NotAllowed(m) => RegistryError::new(
                ErrorCode::Unknown,
                format!("plugin capability refused: {m}"),
            ),
            HostError::Limit(m) => {
                RegistryError::new(ErrorCode::TooManyRequests, format!("limit reached: {m}"))
            }
            HostError::Internal(m) => {
                RegistryError::new(ErrorCode::Unknown, format!("storage failure: {m}"))
            }
        }
    }
}

/// The error for an upstream's non-success answer. `not_found` is the code a 404 means for
/// the object asked for (MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN).
pub fn from_upstream_status(status: u16, body: &[u8], not_found: ErrorCode) -> RegistryError {
    let (code, message) = match status {
        404 => (not_found, "not found upstream".to_owned()),
        401 => (
            ErrorCode::Unauthorized,
            "the upstream registry refused the request".to_owned(),
        ),
        403 => (
            ErrorCode::Denied,
            "the upstream registry denied access".to_owned(),
        ),
        429 => (
            ErrorCode::TooManyRequests,
            "the upstream registry is rate limiting requests".to_owned(),
        ),
        s => (
            ErrorCode::UpstreamUnavailable,
            format!("the upstream registry answered {s}"),
        ),
    };
    let mut detail = json!({ "upstream_status": status });
    if let (Some(msg), Some(obj)) = (upstream_message(body), detail.as_object_mut()) {
        obj.insert("upstream_message".to_owned(), Value::String(msg));
    }
    RegistryError::new(code, message).with_detail(detail)
}

impl From<HostError> for RegistryError {
    fn from(err: HostError) -> RegistryError {
        RegistryError::from_host(&err)
    }
}

/// The message of the first error in an upstream's OCI error body, to pass on as detail.
pub fn upstream_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let first = v.get("errors")?.get(0)?;
    first.get("message")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carry_spec_statuses() {
        let cases = [
            (ErrorCode::BlobUnknown, 404),
            (ErrorCode::BlobUploadInvalid, 400),
            (ErrorCode::BlobUploadUnknown, 404),
            (ErrorCode::ManifestBlobUnknown, 400),
            (ErrorCode::SizeInvalid, 400),
            (ErrorCode::ManifestUnknown, 404),
            (ErrorCode::NameInvalid, 400),
            (ErrorCode::NameUnknown, 404),
            (ErrorCode::TagInvalid, 400),
            (ErrorCode::DigestInvalid, 400),
            (ErrorCode::Unsupported, 405),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Denied, 403),
            (ErrorCode::TooManyRequests, 429),
            (ErrorCode::UpstreamUnavailable, 502),
            (ErrorCode::Unknown, 500),
        ];
        for (code, status) in cases {
            assert_eq!(RegistryError::new(code, "x").status, status, "{code:?}");
        }
    }

    #[test]
    fn body_is_oci_shaped() {
        let e = RegistryError::new(ErrorCode::ManifestUnknown, "manifest unknown")
            .with_detail(json!({"tag": "7"}));
        let r = e.to_response();
        assert_eq!(r.status, 404);
        assert_eq!(
            r.headers,
            vec![("Content-Type".into(), "application/json".into())]
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            json!({"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"tag":"7"}}]})
        );
    }

    #[test]
    fn host_errors_map_to_whose_fault() {
        let e = RegistryError::from_host(&HostError::UpstreamUnreachable("down".into()));
        assert_eq!((e.code, e.status), (ErrorCode::UpstreamUnavailable, 502));
        assert!(e.is_transient());
        let e = RegistryError::from_host(&HostError::DigestMismatch("x".into()));
        assert_eq!((e.code, e.status), (ErrorCode::DigestInvalid, 502));
        let e = RegistryError::from_host(&HostError::Internal("disk".into()));
        assert_eq!((e.code, e.status), (ErrorCode::Unknown, 500));
        assert!(!e.is_transient());
    }

    #[test]
    fn upstream_statuses_map_to_codes() {
        let e = from_upstream_status(404, b"", ErrorCode::ManifestUnknown);
        assert_eq!((e.code, e.status), (ErrorCode::ManifestUnknown, 404));
        let e = from_upstream_status(401, b"", ErrorCode::BlobUnknown);
        assert_eq!((e.code, e.status), (ErrorCode::Unauthorized, 401));
        let e = from_upstream_status(403, b"", ErrorCode::BlobUnknown);
        assert_eq!((e.code, e.status), (ErrorCode::Denied, 403));
        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
        let e = from_upstream_status(429, body, ErrorCode::BlobUnknown);
        assert_eq!((e.code, e.status), (ErrorCode::TooManyRequests, 429));
        assert_eq!(
            e.detail,
            Some(json!({"upstream_status": 429, "upstream_message": "slow down"}))
        );
        assert!(e.is_transient());
        for s in [500, 502, 503, 307, 418] {
            let e = from_upstream_status(s, b"", ErrorCode::BlobUnknown);
            assert_eq!(
                (e.code, e.status),
                (ErrorCode::UpstreamUnavailable, 502),
                "{s}"
            );
        }
    }

    #[test]
    fn upstream_message_is_extracted() {
        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limit"}]}"#;
        assert_eq!(upstream_message(body).as_deref(), Some("rate limit"));
        assert_eq!(upstream_message(b"<html>"), None);
    }
}
