//! Plugins built against `binaryrepo:plugin@0.2.x`, served by this host: their world's single
//! `host` interface delegates to the same capabilities as the current one, and their requests,
//! plans and answers are converted to and from the current types. One implementation, thin
//! adapters (the way Zed keeps its older extension worlds).

use super::bindings::types as now;
use super::bindings::v0_2::binaryrepo::plugin::{host, types as old};
use super::state::CallState;
use super::{bindings, caps};

impl old::Host for CallState {}

fn host_error(e: now::HostError) -> old::HostError {
    match e {
        now::HostError::NotAllowed(m) => old::HostError::NotAllowed(m),
        now::HostError::UpstreamUnreachable(m) => old::HostError::UpstreamUnreachable(m),
        now::HostError::TooLarge(n) => old::HostError::TooLarge(n),
        now::HostError::InvalidDigest(m) => old::HostError::InvalidDigest(m),
        now::HostError::DigestMismatch(m) => old::HostError::DigestMismatch(m),
        // 0.2 has no "limit": the closest it knows is the host failing.
        now::HostError::Limit(m) | now::HostError::Internal(m) => old::HostError::Internal(m),
    }
}

fn level(l: old::Level) -> now::Level {
    match l {
        old::Level::Trace => now::Level::Trace,
        old::Level::Debug => now::Level::Debug,
        old::Level::Info => now::Level::Info,
        old::Level::Warn => now::Level::Warn,
        old::Level::Error => now::Level::Error,
    }
}

fn repo_type(t: now::RepoType) -> old::RepoType {
    match t {
        now::RepoType::Local => old::RepoType::Local,
        now::RepoType::Remote => old::RepoType::Remote,
        now::RepoType::Virtual => old::RepoType::Virtual,
    }
}

pub fn repository(r: &now::Repository) -> old::Repository {
    old::Repository {
        name: r.name.clone(),
        repo_type: repo_type(r.repo_type),
        remote_url: r.remote_url.clone(),
        has_credentials: r.has_credentials,
        tag_check_seconds: r.tag_check_seconds,
        members: r.members.clone(),
        delete_enabled: r.delete_enabled,
        default_local: r.default_local.clone(),
    }
}

fn mount(m: now::Mount) -> old::Mount {
    match m {
        now::Mount::Port => old::Mount::Port,
        now::Mount::Host => old::Mount::Host,
        now::Mount::Prefix => old::Mount::Prefix,
        now::Mount::Path => old::Mount::Path,
        now::Mount::Root => old::Mount::Root,
    }
}

pub fn request(r: &now::Request) -> old::Request {
    old::Request {
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.headers.clone(),
        base_url: r.base_url.clone(),
        path_repo: r.path_repo.clone(),
        repository: r.repository.as_ref().map(repository),
        mount: mount(r.mount),
        now: r.now,
    }
}

fn upstream_request(r: old::UpstreamRequest) -> now::UpstreamRequest {
    now::UpstreamRequest { method: r.method, url: r.url, headers: r.headers, with_credentials: r.with_credentials }
}

pub fn plan(p: old::Plan) -> now::Plan {
    match p {
        old::Plan::Respond(r) => now::Plan::Respond(response(r)),
        old::Plan::ServeBlob(s) => now::Plan::ServeBlob(now::ServeBlob { digest: s.digest, headers: s.headers }),
        old::Plan::FetchBlob(f) => {
            now::Plan::FetchBlob(now::FetchBlob { digest: f.digest, request: upstream_request(f.request), headers: f.headers })
        }
        old::Plan::ReadBody(max) => now::Plan::ReadBody(max),
        old::Plan::ReceiveUpload(u) => {
            now::Plan::ReceiveUpload(now::ReceiveUpload { id: u.id, expect_offset: u.expect_offset, commit: u.commit })
        }
    }
}

pub fn response(r: old::Response) -> now::Response {
    now::Response { status: r.status, headers: r.headers, body: r.body }
}

pub fn upload_outcome(o: &now::UploadOutcome) -> old::UploadOutcome {
    match o {
        now::UploadOutcome::Done(d) => old::UploadOutcome::Done(old::UploadDone { size: d.size, committed: d.committed.clone() }),
        now::UploadOutcome::OffsetMismatch(n) => old::UploadOutcome::OffsetMismatch(*n),
        now::UploadOutcome::DigestMismatch(d) => old::UploadOutcome::DigestMismatch(d.clone()),
        now::UploadOutcome::UnknownSession => old::UploadOutcome::UnknownSession,
        now::UploadOutcome::BodyError(m) => old::UploadOutcome::BodyError(m.clone()),
        now::UploadOutcome::Internal(m) => old::UploadOutcome::Internal(m.clone()),
    }
}

/// The failure as 0.2 knows it; none for the kinds 0.2 cannot render (refusals and limits),
/// which the host then answers in a plain shape of its own.
pub fn failure(f: &now::Failure) -> Option<old::Failure> {
    let kind = match f.kind {
        now::FailureKind::BlobUnknown => old::FailureKind::BlobUnknown,
        now::FailureKind::UpstreamStatus => old::FailureKind::UpstreamStatus,
        now::FailureKind::UpstreamUnreachable => old::FailureKind::UpstreamUnreachable,
        now::FailureKind::DigestMismatch => old::FailureKind::DigestMismatch,
        now::FailureKind::Internal => old::FailureKind::Internal,
        now::FailureKind::TooLarge => old::FailureKind::TooLarge,
        now::FailureKind::Unauthenticated
        | now::FailureKind::Denied
        | now::FailureKind::TooManyRequests
        | now::FailureKind::BadRequest
        | now::FailureKind::Unavailable => return None,
    };
    Some(old::Failure { kind, status: f.status, message: f.message.clone() })
}

pub fn host_error_back(e: old::HostError) -> now::HostError {
    match e {
        old::HostError::NotAllowed(m) => now::HostError::NotAllowed(m),
        old::HostError::UpstreamUnreachable(m) => now::HostError::UpstreamUnreachable(m),
        old::HostError::TooLarge(n) => now::HostError::TooLarge(n),
        old::HostError::InvalidDigest(m) => now::HostError::InvalidDigest(m),
        old::HostError::DigestMismatch(m) => now::HostError::DigestMismatch(m),
        old::HostError::Internal(m) => now::HostError::Internal(m),
    }
}

pub fn info(i: bindings::v0_2::exports::binaryrepo::plugin::format::PluginInfo) -> bindings::PluginInfo {
    bindings::PluginInfo { format: i.format, contract: i.contract, roots: i.roots, merged: Vec::new(), settings: Vec::new() }
}

/// 0.2's `host`: the same capabilities, the same accounting, as the current interfaces.
impl host::Host for CallState {
    async fn log(&mut self, l: old::Level, message: String) {
        let format = self.repo.as_ref().map_or("-", |r| r.format.as_str());
        caps::log::log(format, level(l), &message);
    }

    async fn meta_get(&mut self, key: String) -> Result<Option<Vec<u8>>, old::HostError> {
        timed!(self, caps::meta::get(&self.scope(), key)).map_err(host_error)
    }

    async fn meta_put(&mut self, key: String, value: Vec<u8>) -> Result<(), old::HostError> {
        self.only_read = false;
        timed!(self, caps::meta::put(&self.scope(), key, value)).map_err(host_error)
    }

    async fn meta_delete(&mut self, key: String) -> Result<(), old::HostError> {
        self.only_read = false;
        timed!(self, caps::meta::delete(&self.scope(), key)).map_err(host_error)
    }

    async fn meta_list(&mut self, prefix: String) -> Result<Vec<String>, old::HostError> {
        timed!(self, caps::meta::list(&self.scope(), prefix)).map_err(host_error)
    }

    async fn meta_get_in(&mut self, repository: String, key: String) -> Result<Option<Vec<u8>>, old::HostError> {
        self.only_read = false;
        timed!(self, caps::meta::get_in(&self.scope(), repository, key)).map_err(host_error)
    }

    async fn meta_list_in(&mut self, repository: String, prefix: String) -> Result<Vec<String>, old::HostError> {
        self.only_read = false;
        timed!(self, caps::meta::list_in(&self.scope(), repository, prefix)).map_err(host_error)
    }

    async fn repositories(&mut self) -> Vec<old::Repository> {
        self.only_read = false;
        caps::repositories::list(&self.scope()).iter().map(repository).collect()
    }

    async fn upload_start(&mut self) -> Result<String, old::HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::start(&self.scope())).map_err(host_error)
    }

    async fn upload_size(&mut self, id: String) -> Result<Option<u64>, old::HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::size(&self.scope(), id)).map_err(host_error)
    }

    async fn upload_cancel(&mut self, id: String) -> Result<(), old::HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::cancel(&self.scope(), id)).map_err(host_error)
    }

    async fn scratch_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.only_read = false;
        caps::scratch::get(&self.scope(), &key)
    }

    async fn scratch_put(&mut self, key: String, value: Vec<u8>, ttl_seconds: u64) {
        self.only_read = false;
        caps::scratch::put(&self.scope(), &key, value, ttl_seconds)
    }

    async fn blob_stat(&mut self, digest: String) -> Result<Option<old::BlobInfo>, old::HostError> {
        timed!(self, caps::blobs::stat(&self.scope(), digest)).map(|o| o.map(|i| old::BlobInfo { size: i.size })).map_err(host_error)
    }

    async fn blob_read(&mut self, digest: String) -> Result<Vec<u8>, old::HostError> {
        timed!(self, caps::blobs::read(&self.scope(), digest)).map_err(host_error)
    }

    async fn blob_write(&mut self, data: Vec<u8>, expected: Option<String>) -> Result<String, old::HostError> {
        self.only_read = false;
        timed!(self, caps::blobs::write(&self.scope(), data, expected)).map_err(host_error)
    }

    async fn upstream(&mut self, request: old::UpstreamRequest) -> Result<old::UpstreamResponse, old::HostError> {
        self.only_read = false;
        timed!(self, caps::upstream::request(&self.scope(), upstream_request(request)))
            .map(|r| old::UpstreamResponse { status: r.status, headers: r.headers, body: r.body })
            .map_err(host_error)
    }

    async fn reusable(&mut self, seconds: u64, vary: Vec<String>) {
        self.offer = super::reuse::offer(seconds, &vary);
    }
}
