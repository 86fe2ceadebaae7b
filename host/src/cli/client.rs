//! The HTTP side of the command-line client: one blocking request at a time to `--server`, with
//! the credentials from the environment, and errors that say whose fault they were.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::Value;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8081";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    /// No answer from the server.
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server answered with an error: its message.
    #[error("{message} (HTTP {status})")]
    Server { status: StatusCode, message: String },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl CliError {
    /// 2: usage, 3: the server cannot be reached, 4: not signed in or not allowed, 1: any other
    /// error the server reported.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Server { status, .. } if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN => 4,
            CliError::Server { .. } | CliError::Protocol(_) => 1,
        }
    }

    /// A line to add under the message, when there is an obvious next step.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Unreachable { server, .. } => Some(format!(
                "is the server running at {server}? Start it with `binaryrepo serve`, or point to it with --server or BINARYREPO_SERVER"
            )),
            CliError::Server { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                Some("set BINARYREPO_TOKEN, or BINARYREPO_USER and BINARYREPO_PASSWORD".into())
            }
            _ => None,
        }
    }
}

enum Credentials {
    None,
    Basic(String, String),
    Bearer(String),
}

pub struct Api {
    server: String,
    http: Client,
    credentials: Credentials,
}

impl Api {
    /// `server`: the base URL (`http://host:port`). Credentials: `BINARYREPO_TOKEN` (an API token),
    /// else `BINARYREPO_USER` and `BINARYREPO_PASSWORD`, else none.
    pub fn new(server: &str) -> Result<Api, CliError> {
        let server = server.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&server).map_err(|e| CliError::Usage(format!("--server {server:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!("--server {server:?}: not an http:// or https:// URL")));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let credentials = match (env("BINARYREPO_TOKEN"), env("BINARYREPO_USER"), env("BINARYREPO_PASSWORD")) {
            (Some(t), _, _) => Credentials::Bearer(t),
            (None, Some(u), Some(p)) => Credentials::Basic(u, p),
            (None, Some(_), None) => return Err(CliError::Usage("BINARYREPO_USER is set without BINARYREPO_PASSWORD".into())),
            _ => Credentials::None,
        };
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // GC on a large store answers when it is done (servers without background GC).
            .timeout(Duration::from_secs(3600))
            // Credentials go to the server named, never to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Api { server, http, credentials })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.server));
        match &self.credentials {
            Credentials::None => rb,
            Credentials::Basic(u, p) => rb.basic_auth(u, Some(p)),
            Credentials::Bearer(t) => rb.bearer_auth(t),
        }
    }

    /// Sends, and turns an error status into [`CliError::Server`] with the server's message.
    pub fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value), CliError> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let value = read_json(resp)?;
        if status.is_client_error() || status.is_server_error() {
            let message = value
                .pointer("/error/message")
                .or_else(|| value.pointer("/errors/0/message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            return Err(CliError::Server { status, message });
        }
        Ok((status, value))
    }

    pub fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(reqwest::Method::GET, path, None).map(|(_, v)| v)
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        // The innermost cause says it best ("Connection refused (os error 111)").
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        CliError::Unreachable { server: self.server.clone(), reason }
    }
}

fn read_json(resp: Response) -> Result<Value, CliError> {
    let status = resp.status();
    let bytes = resp.bytes().map_err(|e| CliError::Protocol(format!("reading the answer: {e}")))?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(v),
        Err(_) if !status.is_success() => {
            // Not JSON (a proxy's error page): its first line is still the best message.
            let text = String::from_utf8_lossy(&bytes);
            Ok(serde_json::json!({"error": {"message": text.lines().next().unwrap_or("").trim()}}))
        }
        Err(e) => Err(CliError::Protocol(format!("not JSON: {e}"))),
    }
}
