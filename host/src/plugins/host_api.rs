//! The host side of the contract: each import delegates to its capability file, and time spent
//! in the host is taken off the plugin's CPU budget. Every import but the reads of this
//! repository's metadata and of the blob store marks the call as one whose plan is not reused.

use std::time::Instant;

use super::bindings::binaryrepo::plugin::{host, types};
use super::caps;
use super::state::CallState;
use types::{BlobInfo, HostError, Level, Repository, UpstreamRequest, UpstreamResponse};

impl types::Host for CallState {}

macro_rules! timed {
    ($self:ident, $body:expr) => {{
        let started = Instant::now();
        let out = $body;
        $self.add_host_time(started.elapsed());
        out
    }};
}

impl host::Host for CallState {
    async fn log(&mut self, level: Level, message: String) {
        let format = self.repo.as_ref().map_or("-", |r| r.format.as_str());
        caps::log::log(format, level, &message);
    }

    async fn meta_get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        timed!(self, caps::meta::get(&self.scope(), key).await)
    }

    async fn meta_put(&mut self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        self.only_read = false;
        timed!(self, caps::meta::put(&self.scope(), key, value).await)
    }

    async fn meta_delete(&mut self, key: String) -> Result<(), HostError> {
        self.only_read = false;
        timed!(self, caps::meta::delete(&self.scope(), key).await)
    }

    async fn meta_list(&mut self, prefix: String) -> Result<Vec<String>, HostError> {
        timed!(self, caps::meta::list(&self.scope(), prefix).await)
    }

    async fn meta_get_in(&mut self, repository: String, key: String) -> Result<Option<Vec<u8>>, HostError> {
        self.only_read = false;
        timed!(self, caps::meta::get_in(&self.scope(), repository, key).await)
    }

    async fn meta_list_in(&mut self, repository: String, prefix: String) -> Result<Vec<String>, HostError> {
        self.only_read = false;
        timed!(self, caps::meta::list_in(&self.scope(), repository, prefix).await)
    }

    async fn repositories(&mut self) -> Vec<Repository> {
        self.only_read = false;
        caps::repositories::list(&self.scope())
    }

    async fn upload_start(&mut self) -> Result<String, HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::start(&self.scope()).await)
    }

    async fn upload_size(&mut self, id: String) -> Result<Option<u64>, HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::size(&self.scope(), id).await)
    }

    async fn upload_cancel(&mut self, id: String) -> Result<(), HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::cancel(&self.scope(), id).await)
    }

    async fn scratch_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.only_read = false;
        caps::scratch::get(&self.scope(), &key)
    }

    async fn scratch_put(&mut self, key: String, value: Vec<u8>, ttl_seconds: u64) {
        self.only_read = false;
        caps::scratch::put(&self.scope(), &key, value, ttl_seconds)
    }

    async fn blob_stat(&mut self, digest: String) -> Result<Option<BlobInfo>, HostError> {
        timed!(self, caps::blobs::stat(&self.scope(), digest).await)
    }

    async fn blob_read(&mut self, digest: String) -> Result<Vec<u8>, HostError> {
        timed!(self, caps::blobs::read(&self.scope(), digest).await)
    }

    async fn blob_write(&mut self, data: Vec<u8>, expected: Option<String>) -> Result<String, HostError> {
        self.only_read = false;
        timed!(self, caps::blobs::write(&self.scope(), data, expected).await)
    }

    async fn reusable(&mut self, seconds: u64, vary: Vec<String>) {
        self.offer = super::reuse::offer(seconds, &vary);
    }

    async fn upstream(&mut self, request: UpstreamRequest) -> Result<UpstreamResponse, HostError> {
        self.only_read = false;
        timed!(self, caps::upstream::request(&self.scope(), request).await)
    }
}
