//! The shapes of the WIT contract (`binaryrepo:plugin@0.3.0`, interface `types`) as plain Rust.
//!
//! The format logic is written against these rather than the wit-bindgen types so that it
//! builds and is tested natively; `guest` converts at the component boundary.

/// HTTP header fields in order; a name may repeat.
pub type Headers = Vec<(String, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoType {
    Local,
    Remote,
    Virtual,
}

#[derive(Clone, Debug)]
pub struct Repository {
    pub name: String,
    pub repo_type: RepoType,
    pub remote_url: Option<String>,
    pub has_credentials: bool,
    pub tag_check_seconds: u64,
    pub members: Vec<String>,
    pub delete_enabled: bool,
    pub default_local: Option<String>,
}

/// How the request named its repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mount {
    Port,
    Host,
    Prefix,
    Path,
    Root,
}

/// What a request needs of its repository (the host checked it before the plugin is asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Delete,
    Admin,
}

/// The host's token service, named in challenges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenService {
    pub realm: String,
    pub service: String,
}

/// Who the host found the caller to be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: Option<String>,
    pub token_service: Option<TokenService>,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Headers,
    pub base_url: String,
    pub path_repo: Option<String>,
    pub repository: Option<Repository>,
    pub mount: Mount,
    pub now: u64,
    pub caller: Caller,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub method: String,
    pub url: String,
    pub headers: Headers,
    pub with_credentials: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeBlob {
    pub digest: String,
    pub headers: Headers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchBlob {
    pub digest: String,
    pub request: UpstreamRequest,
    pub headers: Headers,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveUpload {
    pub id: String,
    pub expect_offset: Option<u64>,
    pub commit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Respond(Response),
    ServeBlob(ServeBlob),
    FetchBlob(FetchBlob),
    /// read the request body (at most this many bytes) and call `handle_body`
    ReadBody(u64),
    ReceiveUpload(ReceiveUpload),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadDone {
    pub size: u64,
    pub committed: Option<String>,
}

/// What became of a `ReceiveUpload` plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    Done(UploadDone),
    /// the session held this many bytes, not `expect_offset`; nothing appended
    OffsetMismatch(u64),
    /// the content hashed to this digest instead; nothing stored, the session is gone
    DigestMismatch(String),
    UnknownSession,
    BodyError(String),
    Internal(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostError {
    NotAllowed(String),
    UpstreamUnreachable(String),
    TooLarge(u64),
    InvalidDigest(String),
    DigestMismatch(String),
    /// a configured limit was reached: try again later
    Limit(String),
    Internal(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::NotAllowed(m) => write!(f, "not allowed: {m}"),
            HostError::UpstreamUnreachable(m) => write!(f, "upstream unreachable: {m}"),
            HostError::TooLarge(n) => write!(f, "document too large ({n} bytes)"),
            HostError::InvalidDigest(m) => write!(f, "invalid digest: {m}"),
            HostError::DigestMismatch(m) => write!(f, "digest mismatch: {m}"),
            HostError::Limit(m) => write!(f, "limit reached: {m}"),
            HostError::Internal(m) => write!(f, "host failure: {m}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    BlobUnknown,
    UpstreamStatus,
    UpstreamUnreachable,
    DigestMismatch,
    Internal,
    /// a request body was larger than `ReadBody` allowed
    TooLarge,
    /// no or wrong credentials where they are needed (401)
    Unauthenticated,
    /// a known caller without the permission (403)
    Denied,
    /// a configured limit (429)
    TooManyRequests,
    /// malformed in a way the host saw (400)
    BadRequest,
    /// the server cannot take writes now (503)
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub status: Option<u16>,
    pub message: String,
    /// unauthenticated, denied: what the request needed
    pub access: Option<Access>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The capabilities the host grants (the imported interfaces), so the logic can run against a fake.
pub trait Host {
    fn log(&self, level: Level, message: &str);
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    fn meta_delete(&self, key: &str) -> Result<(), HostError>;
    fn meta_list(&self, prefix: &str) -> Result<Vec<String>, HostError>;
    fn scratch_get(&self, key: &str) -> Option<Vec<u8>>;
    fn scratch_put(&self, key: &str, value: &[u8], ttl_seconds: u64);
    /// read-only metadata of another repository of this format
    fn meta_get_in(&self, repository: &str, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn meta_list_in(&self, repository: &str, prefix: &str) -> Result<Vec<String>, HostError>;
    fn repositories(&self) -> Vec<Repository>;
    fn upload_start(&self) -> Result<String, HostError>;
    fn upload_size(&self, id: &str) -> Result<Option<u64>, HostError>;
    fn upload_cancel(&self, id: &str) -> Result<(), HostError>;
    fn blob_stat(&self, digest: &str) -> Result<Option<BlobInfo>, HostError>;
    fn blob_read(&self, digest: &str) -> Result<Vec<u8>, HostError>;
    fn blob_write(&self, data: &[u8], expected: Option<&str>) -> Result<String, HostError>;
    fn upstream(&self, request: &UpstreamRequest) -> Result<UpstreamResponse, HostError>;
    /// the plan this call returns may answer the same request for `seconds` (see the WIT)
    fn reusable(&self, seconds: u64, vary: &[&str]);
}

/// First value of a header, names compared case-insensitively.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of a header, in order.
pub fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}
