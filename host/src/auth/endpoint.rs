//! The Docker token service (the distribution token spec), over plain types so the server only
//! routes to it.
//!
//! `GET ?service=…&scope=…&account=…` with Basic credentials (or an API token) or none: an
//! anonymous caller gets an anonymous token, which is what lets `docker pull` work without
//! `docker login` where a repository allows anonymous reads. `POST` with a form
//! (`grant_type=password&username=…&password=…&scope=…&service=…`) is the OAuth2 variant
//! containerd uses. A token proves who the caller is; the scopes are echoed, not granted.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::signed::{MAX_SCOPES, Scope};
use super::{Auth, AuthFailure, Identity};

/// Largest form body read (a few scopes and credentials).
const MAX_FORM_BYTES: usize = 64 * 1024;
const MAX_PARAMS: usize = 64;
const MAX_SERVICE_BYTES: usize = 256;

type Response = (StatusCode, Vec<(String, String)>, Vec<u8>);

fn respond(status: StatusCode, body: serde_json::Value, extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string()), ("cache-control".into(), "no-store".into())];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    (status, headers, serde_json::to_vec(&body).unwrap_or_default())
}

/// An error body in the registry's shape, which Docker and containerd print as
/// `CODE: message`.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    respond(status, json!({"errors": [{"code": code, "message": message}]}), &[])
}

/// The request's parameters, and the credentials they carry.
struct TokenRequest {
    service: String,
    scopes: Vec<Scope>,
    account: Option<String>,
    /// An `Authorization` value: the request's header, or Basic built from a password grant.
    authorization: Option<HeaderValue>,
}

fn parse(method: &Method, query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, Response> {
    let bad = |m: &str| refuse(StatusCode::BAD_REQUEST, "UNSUPPORTED", m);
    let form = match *method {
        Method::GET => query.unwrap_or("").as_bytes(),
        Method::POST => {
            let form_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
            if !form_type {
                return Err(bad("POST a form (application/x-www-form-urlencoded)"));
            }
            if body.len() > MAX_FORM_BYTES {
                return Err(bad("form too large"));
            }
            body
        }
        _ => {
            return Err(respond(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"errors": [{"code": "UNSUPPORTED", "message": "use GET or POST"}]}),
                &[("allow", "GET, POST")],
            ));
        }
    };
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(form).take(MAX_PARAMS + 1).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if params.len() > MAX_PARAMS {
        return Err(bad("too many parameters"));
    }
    let one = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let service = one("service").unwrap_or_default();
    if service.len() > MAX_SERVICE_BYTES || service.chars().any(char::is_control) {
        return Err(bad("service is not valid"));
    }
    // Repeated `scope` parameters (GET), or several separated by spaces (OAuth2 form).
    let mut scopes = Vec::new();
    for value in params.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| v.split(' ')).filter(|s| !s.is_empty()) {
        if scopes.len() == MAX_SCOPES {
            return Err(bad(&format!("at most {MAX_SCOPES} scopes")));
        }
        scopes.push(Scope::parse(value).map_err(|e| bad(&e.to_string()))?);
    }
    let mut authorization = headers.get(header::AUTHORIZATION).cloned();
    let mut account = one("account");
    if *method == Method::POST {
        match one("grant_type").as_deref() {
            Some("password") => {
                let (Some(user), Some(password)) = (one("username"), one("password")) else {
                    return Err(bad("grant_type=password needs username and password"));
                };
                let basic = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
                authorization = Some(HeaderValue::from_str(&basic).map_err(|_| bad("username or password is not valid"))?);
                account = Some(user);
            }
            Some(other) => {
                return Err(respond(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "unsupported_grant_type", "error_description": format!("grant_type {:?} is not supported; use password", other.chars().take(40).collect::<String>())}),
                    &[],
                ));
            }
            None => return Err(bad("grant_type is missing")),
        }
    }
    Ok(TokenRequest { service, scopes, account, authorization })
}

/// Answers a token request: 200 `{"token","access_token","expires_in","issued_at"}`, 401 for
/// credentials that do not check out (after the throttling delay), 400 for a malformed
/// request, 405 for other methods.
pub async fn token_endpoint(
    auth: &Auth,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    client: IpAddr,
) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
    let request = match parse(method, query, headers, body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let identity = match auth.authenticate(request.authorization.as_ref(), client).await {
        Ok(identity) => identity,
        Err(failure @ AuthFailure::Unavailable(_)) => return refuse(failure.status(), "UNAVAILABLE", &failure.to_string()),
        Err(failure) => return refuse(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", &failure.to_string()),
    };
    // `account` names who the client thinks it is; a token for someone else is not what it asked for.
    if let (Some(account), Identity::User(user)) = (&request.account, &identity)
        && !account.is_empty()
        && account != user.name.as_str()
    {
        return refuse(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "account does not match the credentials");
    }
    let issued = auth.issue_token(&identity, &request.service, &request.scopes);
    let issued_at = humantime::format_rfc3339_seconds(issued.issued_at).to_string();
    respond(
        StatusCode::OK,
        json!({"token": issued.token, "access_token": issued.token, "expires_in": issued.expires_in, "issued_at": issued_at}),
        &[],
    )
}
