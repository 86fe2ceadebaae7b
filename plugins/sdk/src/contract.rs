//! The shapes of the WIT contract (`binaryrepo:plugin@0.3.0`, interface `types`) as plain Rust,
//! and the `Host` trait over the imported interfaces.
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
    /// the repository's format settings, in name order (only names in `PluginInfo::settings`)
    pub settings: Vec<(String, String)>,
}

impl Repository {
    /// The value of a format setting, when the repository sets it.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
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

/// Fetch a file whose digest is not known in advance; the host calls `file_fetched` with `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchFile {
    pub key: String,
    pub request: UpstreamRequest,
    pub headers: Headers,
    /// refuse (and store nothing) past this many bytes
    pub max_bytes: u64,
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
    FetchFile(FetchFile),
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

/// A file the host stored (by `FetchFile`, `upstream_fetch` or `upload_commit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedFile {
    pub digest: String,
    pub size: u64,
}

/// What `upstream_fetch` got: the final answer, its body (2xx only) in the blob store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedDocument {
    pub status: u16,
    pub headers: Headers,
    pub file: Option<FetchedFile>,
}

/// The body of a member's answer, handed to `merge`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberBody {
    None,
    Inline(Vec<u8>),
    /// a stored blob: read it with `blob_read_range`
    Blob(FetchedFile),
}

/// One member's answer to a read a virtual repository merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAnswer {
    pub repository: String,
    pub status: u16,
    pub headers: Headers,
    pub body: MemberBody,
}

/// What a plugin tells the host about itself (`info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub format: &'static str,
    pub roots: &'static [&'static str],
    /// path suffixes whose reads a virtual repository merges over its members
    pub merged: &'static [&'static str],
    /// names of the per-repository settings the format understands
    pub settings: &'static [&'static str],
}

/// The contract version this SDK binds.
pub const CONTRACT: &str = "0.3.0";

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

/// A local repository's cleanup rules, as the host validated them (see the WIT `cleanup-rules`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupRules {
    /// keep this many of the most recently pushed matching tags of each image; none: keep all
    pub keep_last: Option<u32>,
    /// the tags `keep_last` counts (a regular expression); none: every tag
    pub matching: Option<String>,
    /// remove unreferenced manifests pushed at least this long ago; none: never
    pub untagged_after_seconds: Option<u64>,
}

/// What a cleanup removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub tags_removed: u64,
    pub manifests_removed: u64,
}

/// One page of the digests a repository still needs (`live-blobs-page`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LivePage {
    /// digests found on this page (repeats are fine)
    pub digests: Vec<String>,
    /// where the next page starts; none: this was the last
    pub next: Option<String>,
}

/// The capabilities the host grants (the imported interfaces), so the logic can run against a fake.
pub trait Host {
    fn log(&self, level: Level, message: &str);
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    fn meta_delete(&self, key: &str) -> Result<(), HostError>;
    /// every key under `prefix`: only for prefixes whose keys stay few (see `meta::keys`)
    fn meta_list(&self, prefix: &str) -> Result<Vec<String>, HostError>;
    /// one page of the keys under `prefix` after `start_after`, at most `limit` (the host
    /// answers at most `meta::HOST_PAGE_MAX`)
    fn meta_list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError>;
    fn scratch_get(&self, key: &str) -> Option<Vec<u8>>;
    fn scratch_put(&self, key: &str, value: &[u8], ttl_seconds: u64);
    /// read-only metadata of another repository of this format
    fn meta_get_in(&self, repository: &str, key: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn meta_list_in(&self, repository: &str, prefix: &str) -> Result<Vec<String>, HostError>;
    /// one page of another repository's keys, as `meta_list_page`
    fn meta_list_in_page(
        &self,
        repository: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, HostError>;
    fn repositories(&self) -> Vec<Repository>;
    fn upload_start(&self) -> Result<String, HostError>;
    fn upload_size(&self, id: &str) -> Result<Option<u64>, HostError>;
    fn upload_cancel(&self, id: &str) -> Result<(), HostError>;
    fn blob_stat(&self, digest: &str) -> Result<Option<BlobInfo>, HostError>;
    fn blob_read(&self, digest: &str) -> Result<Vec<u8>, HostError>;
    fn blob_write(&self, data: &[u8], expected: Option<&str>) -> Result<String, HostError>;
    /// up to `length` bytes of an upload session from `offset`
    fn upload_read(&self, id: &str, offset: u64, length: u64) -> Result<Vec<u8>, HostError>;
    /// append bytes the plugin made; the session's size
    fn upload_append(&self, id: &str, data: &[u8]) -> Result<u64, HostError>;
    /// commit the session to the blob store (verified against `expected` when given); it ends
    fn upload_commit(&self, id: &str, expected: Option<&str>) -> Result<FetchedFile, HostError>;
    /// up to `length` bytes of a blob of any size from `offset`
    fn blob_read_range(&self, digest: &str, offset: u64, length: u64)
    -> Result<Vec<u8>, HostError>;
    fn upstream(&self, request: &UpstreamRequest) -> Result<UpstreamResponse, HostError>;
    /// fetch a document of any size into the blob store (shared by concurrent calls with `key`)
    fn upstream_fetch(
        &self,
        key: &str,
        request: &UpstreamRequest,
        max_bytes: u64,
    ) -> Result<FetchedDocument, HostError>;
    /// let upstream requests reach `origin`, which an upstream answer of this call named
    fn allow_origin(&self, origin: &str) -> Result<(), HostError>;
    /// the plan this call returns may answer the same request for `seconds` (see the WIT)
    fn reusable(&self, seconds: u64, vary: &[&str]);
}

pub use crate::http::{header, header_values};
