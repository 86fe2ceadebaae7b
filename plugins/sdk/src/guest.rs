//! The component boundary: wit-bindgen bindings for world `plugin`, the `Host` trait over the
//! imported interfaces, and conversions between the generated types and `contract`.

use crate::contract as c;
use crate::format::Format;

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
    pub_export_macro: true,
    default_bindings_module: "binaryrepo_plugin_sdk::guest",
});

pub use binaryrepo::plugin::types as wit;
use binaryrepo::plugin::{blobs, log, meta, repositories, reuse, scratch, uploads, upstream};
use exports::binaryrepo::plugin::format::PluginInfo;

pub fn info<F: Format>() -> PluginInfo {
    PluginInfo {
        format: F::INFO.format.to_owned(),
        contract: c::CONTRACT.to_owned(),
        roots: F::INFO.roots.iter().map(|r| (*r).to_owned()).collect(),
        merged: F::INFO.merged.iter().map(|r| (*r).to_owned()).collect(),
        settings: F::INFO.settings.iter().map(|r| (*r).to_owned()).collect(),
    }
}

pub fn handle<F: Format>(request: wit::Request) -> wit::Plan {
    plan_out(F::handle(&WitHost, &request_in(request)))
}

pub fn handle_body<F: Format>(request: wit::Request, body: Vec<u8>) -> wit::Plan {
    plan_out(F::handle_body(&WitHost, &request_in(request), &body))
}

pub fn upload_complete<F: Format>(
    request: wit::Request,
    id: String,
    outcome: wit::UploadOutcome,
) -> wit::Response {
    response_out(F::upload_complete(
        &WitHost,
        &request_in(request),
        &id,
        &outcome_in(outcome),
    ))
}

pub fn merge<F: Format>(request: wit::Request, answers: Vec<wit::MemberAnswer>) -> wit::Plan {
    let answers: Vec<c::MemberAnswer> = answers.into_iter().map(member_answer_in).collect();
    plan_out(F::merge(&WitHost, &request_in(request), &answers))
}

pub fn file_fetched<F: Format>(
    request: wit::Request,
    key: String,
    file: wit::FetchedFile,
) -> Result<(), wit::HostError> {
    F::file_fetched(&WitHost, &request_in(request), &key, &fetched_file_in(file))
        .map_err(host_error_out)
}

pub fn render_failure<F: Format>(request: wit::Request, failure: wit::Failure) -> wit::Response {
    response_out(F::render_failure(
        &request_in(request),
        &failure_in(failure),
    ))
}

pub fn live_blobs_page<F: Format>(
    repository: wit::Repository,
    cursor: Option<String>,
) -> Result<wit::LivePage, wit::HostError> {
    // An error makes the host collect nothing: an incomplete set would delete live blobs.
    F::live_blobs_page(&WitHost, &repository_in(repository), cursor.as_deref())
        .map(|p| wit::LivePage {
            digests: p.digests,
            next: p.next,
        })
        .map_err(host_error_out)
}

pub fn cleanup<F: Format>(
    repository: wit::Repository,
    rules: wit::CleanupRules,
    now: u64,
) -> Result<wit::CleanupReport, String> {
    let rules = c::CleanupRules {
        keep_last: rules.keep_last,
        matching: rules.matching,
        untagged_after_seconds: rules.untagged_after_seconds,
    };
    F::cleanup(&WitHost, &repository_in(repository), &rules, now).map(|r| wit::CleanupReport {
        tags_removed: r.tags_removed,
        manifests_removed: r.manifests_removed,
    })
}

/// The imported interfaces behind the `contract::Host` trait.
struct WitHost;

impl c::Host for WitHost {
    fn log(&self, level: c::Level, message: &str) {
        let level = match level {
            c::Level::Trace => wit::Level::Trace,
            c::Level::Debug => wit::Level::Debug,
            c::Level::Info => wit::Level::Info,
            c::Level::Warn => wit::Level::Warn,
            c::Level::Error => wit::Level::Error,
        };
        log::log(level, message);
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, c::HostError> {
        meta::get(key).map_err(host_error_in)
    }

    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), c::HostError> {
        meta::put(key, value).map_err(host_error_in)
    }

    fn meta_delete(&self, key: &str) -> Result<(), c::HostError> {
        meta::delete(key).map_err(host_error_in)
    }

    fn meta_list(&self, prefix: &str) -> Result<Vec<String>, c::HostError> {
        meta::keys(prefix).map_err(host_error_in)
    }

    fn meta_list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, c::HostError> {
        meta::keys_page(prefix, start_after, limit).map_err(host_error_in)
    }

    fn scratch_get(&self, key: &str) -> Option<Vec<u8>> {
        scratch::get(key)
    }

    fn scratch_put(&self, key: &str, value: &[u8], ttl_seconds: u64) {
        scratch::put(key, value, ttl_seconds);
    }

    fn blob_stat(&self, digest: &str) -> Result<Option<c::BlobInfo>, c::HostError> {
        blobs::stat(digest)
            .map(|o| o.map(|i| c::BlobInfo { size: i.size }))
            .map_err(host_error_in)
    }

    fn blob_read(&self, digest: &str) -> Result<Vec<u8>, c::HostError> {
        blobs::read(digest).map_err(host_error_in)
    }

    fn blob_write(&self, data: &[u8], expected: Option<&str>) -> Result<String, c::HostError> {
        blobs::write(data, expected).map_err(host_error_in)
    }

    fn meta_get_in(&self, repository: &str, key: &str) -> Result<Option<Vec<u8>>, c::HostError> {
        repositories::meta_get_in(repository, key).map_err(host_error_in)
    }

    fn meta_list_in(&self, repository: &str, prefix: &str) -> Result<Vec<String>, c::HostError> {
        repositories::meta_list_in(repository, prefix).map_err(host_error_in)
    }

    fn meta_list_in_page(
        &self,
        repository: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, c::HostError> {
        repositories::meta_list_in_page(repository, prefix, start_after, limit)
            .map_err(host_error_in)
    }

    fn repositories(&self) -> Vec<c::Repository> {
        repositories::all().into_iter().map(repository_in).collect()
    }

    fn reusable(&self, seconds: u64, vary: &[&str]) {
        let vary: Vec<String> = vary.iter().map(|v| (*v).to_owned()).collect();
        reuse::offer(seconds, &vary);
    }

    fn upload_start(&self) -> Result<String, c::HostError> {
        uploads::start().map_err(host_error_in)
    }

    fn upload_size(&self, id: &str) -> Result<Option<u64>, c::HostError> {
        uploads::size(id).map_err(host_error_in)
    }

    fn upload_cancel(&self, id: &str) -> Result<(), c::HostError> {
        uploads::cancel(id).map_err(host_error_in)
    }

    fn upload_read(&self, id: &str, offset: u64, length: u64) -> Result<Vec<u8>, c::HostError> {
        uploads::read(id, offset, length).map_err(host_error_in)
    }

    fn upload_append(&self, id: &str, data: &[u8]) -> Result<u64, c::HostError> {
        uploads::append(id, data).map_err(host_error_in)
    }

    fn upload_commit(
        &self,
        id: &str,
        expected: Option<&str>,
    ) -> Result<c::FetchedFile, c::HostError> {
        uploads::commit(id, expected)
            .map(fetched_file_in)
            .map_err(host_error_in)
    }

    fn blob_read_range(
        &self,
        digest: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, c::HostError> {
        blobs::read_range(digest, offset, length).map_err(host_error_in)
    }

    fn upstream_fetch(
        &self,
        key: &str,
        request: &c::UpstreamRequest,
        max_bytes: u64,
    ) -> Result<c::FetchedDocument, c::HostError> {
        let request = upstream_request_out(request.clone());
        upstream::fetch(key, &request, max_bytes)
            .map(|d| c::FetchedDocument {
                status: d.status,
                headers: d.headers,
                file: d.file.map(fetched_file_in),
            })
            .map_err(host_error_in)
    }

    fn allow_origin(&self, origin: &str) -> Result<(), c::HostError> {
        upstream::allow_origin(origin).map_err(host_error_in)
    }

    fn upstream(&self, request: &c::UpstreamRequest) -> Result<c::UpstreamResponse, c::HostError> {
        let request = upstream_request_out(request.clone());
        upstream::send(&request)
            .map(|r| c::UpstreamResponse {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
            .map_err(host_error_in)
    }
}

fn host_error_out(e: c::HostError) -> wit::HostError {
    match e {
        c::HostError::NotAllowed(m) => wit::HostError::NotAllowed(m),
        c::HostError::UpstreamUnreachable(m) => wit::HostError::UpstreamUnreachable(m),
        c::HostError::TooLarge(n) => wit::HostError::TooLarge(n),
        c::HostError::InvalidDigest(m) => wit::HostError::InvalidDigest(m),
        c::HostError::DigestMismatch(m) => wit::HostError::DigestMismatch(m),
        c::HostError::Limit(m) => wit::HostError::Limit(m),
        c::HostError::Internal(m) => wit::HostError::Internal(m),
    }
}

fn host_error_in(e: wit::HostError) -> c::HostError {
    match e {
        wit::HostError::NotAllowed(m) => c::HostError::NotAllowed(m),
        wit::HostError::UpstreamUnreachable(m) => c::HostError::UpstreamUnreachable(m),
        wit::HostError::TooLarge(n) => c::HostError::TooLarge(n),
        wit::HostError::InvalidDigest(m) => c::HostError::InvalidDigest(m),
        wit::HostError::DigestMismatch(m) => c::HostError::DigestMismatch(m),
        wit::HostError::Limit(m) => c::HostError::Limit(m),
        wit::HostError::Internal(m) => c::HostError::Internal(m),
    }
}

fn repository_in(repo: wit::Repository) -> c::Repository {
    c::Repository {
        name: repo.name,
        repo_type: match repo.repo_type {
            wit::RepoType::Local => c::RepoType::Local,
            wit::RepoType::Remote => c::RepoType::Remote,
            wit::RepoType::Virtual => c::RepoType::Virtual,
        },
        remote_url: repo.remote_url,
        has_credentials: repo.has_credentials,
        tag_check_seconds: repo.tag_check_seconds,
        members: repo.members,
        delete_enabled: repo.delete_enabled,
        default_local: repo.default_local,
        settings: repo.settings,
    }
}

fn request_in(r: wit::Request) -> c::Request {
    c::Request {
        method: r.method,
        path: r.path,
        query: r.query,
        headers: r.headers,
        base_url: r.base_url,
        path_repo: r.path_repo,
        repository: r.repository.map(repository_in),
        mount: match r.mount {
            wit::Mount::Port => c::Mount::Port,
            wit::Mount::Host => c::Mount::Host,
            wit::Mount::Prefix => c::Mount::Prefix,
            wit::Mount::Path => c::Mount::Path,
            wit::Mount::Root => c::Mount::Root,
        },
        now: r.now,
        caller: c::Caller {
            user: r.caller.user,
            token_service: r.caller.token_service.map(|t| c::TokenService {
                realm: t.realm,
                service: t.service,
            }),
        },
    }
}

fn outcome_in(o: wit::UploadOutcome) -> c::UploadOutcome {
    match o {
        wit::UploadOutcome::Done(d) => c::UploadOutcome::Done(c::UploadDone {
            size: d.size,
            committed: d.committed,
        }),
        wit::UploadOutcome::OffsetMismatch(size) => c::UploadOutcome::OffsetMismatch(size),
        wit::UploadOutcome::DigestMismatch(actual) => c::UploadOutcome::DigestMismatch(actual),
        wit::UploadOutcome::UnknownSession => c::UploadOutcome::UnknownSession,
        wit::UploadOutcome::BodyError(m) => c::UploadOutcome::BodyError(m),
        wit::UploadOutcome::Internal(m) => c::UploadOutcome::Internal(m),
    }
}

fn failure_in(f: wit::Failure) -> c::Failure {
    c::Failure {
        kind: match f.kind {
            wit::FailureKind::BlobUnknown => c::FailureKind::BlobUnknown,
            wit::FailureKind::UpstreamStatus => c::FailureKind::UpstreamStatus,
            wit::FailureKind::UpstreamUnreachable => c::FailureKind::UpstreamUnreachable,
            wit::FailureKind::DigestMismatch => c::FailureKind::DigestMismatch,
            wit::FailureKind::Internal => c::FailureKind::Internal,
            wit::FailureKind::TooLarge => c::FailureKind::TooLarge,
            wit::FailureKind::Unauthenticated => c::FailureKind::Unauthenticated,
            wit::FailureKind::Denied => c::FailureKind::Denied,
            wit::FailureKind::TooManyRequests => c::FailureKind::TooManyRequests,
            wit::FailureKind::BadRequest => c::FailureKind::BadRequest,
            wit::FailureKind::Unavailable => c::FailureKind::Unavailable,
        },
        status: f.status,
        message: f.message,
        access: f.access.map(|a| match a {
            wit::Access::Read => c::Access::Read,
            wit::Access::Write => c::Access::Write,
            wit::Access::Delete => c::Access::Delete,
            wit::Access::Admin => c::Access::Admin,
        }),
    }
}

fn response_out(r: c::Response) -> wit::Response {
    wit::Response {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

fn upstream_request_out(r: c::UpstreamRequest) -> wit::UpstreamRequest {
    wit::UpstreamRequest {
        method: r.method,
        url: r.url,
        headers: r.headers,
        with_credentials: r.with_credentials,
    }
}

fn plan_out(p: c::Plan) -> wit::Plan {
    match p {
        c::Plan::Respond(r) => wit::Plan::Respond(response_out(r)),
        c::Plan::ServeBlob(s) => wit::Plan::ServeBlob(wit::ServeBlob {
            digest: s.digest,
            headers: s.headers,
        }),
        c::Plan::FetchBlob(f) => wit::Plan::FetchBlob(wit::FetchBlob {
            digest: f.digest,
            request: upstream_request_out(f.request),
            headers: f.headers,
        }),
        c::Plan::FetchFile(f) => wit::Plan::FetchFile(wit::FetchFile {
            key: f.key,
            request: upstream_request_out(f.request),
            headers: f.headers,
            max_bytes: f.max_bytes,
        }),
        c::Plan::ReadBody(max) => wit::Plan::ReadBody(max),
        c::Plan::ReceiveUpload(u) => wit::Plan::ReceiveUpload(wit::ReceiveUpload {
            id: u.id,
            expect_offset: u.expect_offset,
            commit: u.commit,
        }),
    }
}

fn fetched_file_in(f: wit::FetchedFile) -> c::FetchedFile {
    c::FetchedFile {
        digest: f.digest,
        size: f.size,
    }
}

fn member_answer_in(a: wit::MemberAnswer) -> c::MemberAnswer {
    c::MemberAnswer {
        repository: a.repository,
        status: a.status,
        headers: a.headers,
        body: match a.body {
            wit::MemberBody::None => c::MemberBody::None,
            wit::MemberBody::Inline(b) => c::MemberBody::Inline(b),
            wit::MemberBody::Blob(f) => c::MemberBody::Blob(fetched_file_in(f)),
        },
    }
}
