//! Errors for formats whose clients print the body of an error answer (Helm, Go): a status and
//! a message, and what the host's errors and failures mean for the client.

use crate::contract::{Failure, FailureKind, HostError, Plan, Response};
use crate::http;
use crate::meta::MetaError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }
    /// the client sent something unusable
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(400, message)
    }
    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError::new(404, message)
    }
    /// the upstream failed us
    pub fn bad_gateway(message: impl Into<String>) -> HttpError {
        HttpError::new(502, message)
    }
    /// our fault
    pub fn internal(message: impl Into<String>) -> HttpError {
        HttpError::new(500, message)
    }

    /// A plain-text answer.
    pub fn text(&self) -> Response {
        http::text(self.status, &self.message)
    }

    /// A JSON answer: `{"error": "<message>"}`.
    pub fn json(&self) -> Response {
        http::json(self.status, &serde_json::json!({ "error": self.message }))
    }

    /// The error as the client of a request with this method sees it. A GET or HEAD has no body
    /// of its own, so a "too large" there is about an upstream's answer (a document or file
    /// past its limit): the upstream's fault, 502, not the client's 413.
    pub fn for_request_method(self, method: &str) -> HttpError {
        if self.status == 413 && (method == "GET" || method == "HEAD") {
            HttpError::bad_gateway(format!(
                "the upstream's answer is too large: {}",
                self.message
            ))
        } else {
            self
        }
    }

    /// What a failure the host met while carrying out a plan (or a request it refused) means
    /// for the client. An upstream's 404 stays "not found"; its other errors are 502.
    pub fn from_failure(failure: &Failure) -> HttpError {
        let (status, message) = match failure.kind {
            FailureKind::BlobUnknown => (404, "not found".to_owned()),
            FailureKind::UpstreamStatus if failure.status == Some(404) => {
                (404, "not found upstream".to_owned())
            }
            FailureKind::UpstreamStatus => (
                502,
                format!("upstream answered {}", failure.status.unwrap_or(0)),
            ),
            FailureKind::UpstreamUnreachable => {
                (502, format!("upstream unreachable: {}", failure.message))
            }
            FailureKind::DigestMismatch => (
                502,
                "the upstream's file does not match its digest".to_owned(),
            ),
            FailureKind::Internal => (500, "internal error".to_owned()),
            FailureKind::TooLarge => (413, "too large".to_owned()),
            FailureKind::Unauthenticated => (401, "authentication required".to_owned()),
            FailureKind::Denied => (403, "access denied".to_owned()),
            FailureKind::TooManyRequests => (429, "too many requests: try again later".to_owned()),
            FailureKind::BadRequest => (400, format!("bad request: {}", failure.message)),
            FailureKind::Unavailable => (503, "unavailable: try again later".to_owned()),
        };
        HttpError::new(status, message)
    }
}

/// `response` with a Basic challenge when it is a 401: the clients of plain formats (helm, go)
/// send Basic credentials.
/// The plan for a handler's result: an error as `render` shapes it, and any answer fitted to
/// the request's method (no body for HEAD).
pub fn plan_for(
    method: &str,
    r: Result<Plan, HttpError>,
    render: impl FnOnce(&HttpError) -> Response,
) -> Plan {
    match r {
        Ok(Plan::Respond(resp)) => Plan::Respond(resp.for_method(method)),
        Ok(p) => p,
        Err(e) => Plan::Respond(render(&e.for_request_method(method)).for_method(method)),
    }
}

/// The response for a handler's result, as `plan_for` makes plans.
pub fn response_for(
    method: &str,
    r: Result<Response, HttpError>,
    render: impl FnOnce(&HttpError) -> Response,
) -> Response {
    r.unwrap_or_else(|e| render(&e.for_request_method(method)))
        .for_method(method)
}

pub fn with_challenge(response: Response) -> Response {
    if response.status == 401 {
        response.with_header("WWW-Authenticate", r#"Basic realm="binaryrepo""#)
    } else {
        response
    }
}

impl From<HostError> for HttpError {
    fn from(e: HostError) -> HttpError {
        match e {
            HostError::UpstreamUnreachable(m) => {
                HttpError::bad_gateway(format!("upstream unreachable: {m}"))
            }
            HostError::DigestMismatch(m) => HttpError::bad_gateway(format!("digest mismatch: {m}")),
            HostError::TooLarge(n) => {
                HttpError::new(413, format!("document too large ({n} bytes)"))
            }
            HostError::Limit(m) => HttpError::new(429, format!("try again later: {m}")),
            e @ (HostError::NotAllowed(_)
            | HostError::InvalidDigest(_)
            | HostError::Internal(_)) => HttpError::internal(e.to_string()),
        }
    }
}

impl From<MetaError> for HttpError {
    fn from(e: MetaError) -> HttpError {
        match e {
            MetaError::Host(h) => h.into(),
            c @ MetaError::Corrupt { .. } => HttpError::internal(c.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn too_large() -> Failure {
        Failure {
            kind: FailureKind::TooLarge,
            status: None,
            message: String::new(),
            access: None,
        }
    }

    /// Guards `for_request_method`: an upstream's answer past its limit is the upstream's fault
    /// on a read (502), a request body past it the client's (413).
    #[test]
    fn too_large_is_the_upstreams_fault_on_a_read_and_the_clients_on_a_write() {
        let of = |m| {
            HttpError::from_failure(&too_large())
                .for_request_method(m)
                .status
        };
        assert_eq!(
            (of("GET"), of("HEAD"), of("PUT"), of("POST")),
            (502, 502, 413, 413)
        );
        let answered = |m: &str| {
            let r: Result<Response, HttpError> = Err(HostError::TooLarge(2 << 20).into());
            response_for(m, r, HttpError::text).status
        };
        assert_eq!((answered("GET"), answered("PUT")), (502, 413));
        let planned = match plan_for("GET", Err(HttpError::new(413, "big")), HttpError::text) {
            Plan::Respond(r) => r.status,
            _ => 0,
        };
        assert_eq!(planned, 502);
    }
}
