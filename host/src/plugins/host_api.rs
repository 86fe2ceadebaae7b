//! The host side of the current contract: one impl per imported interface, each import
//! delegating to its capability file, and time spent in the host taken off the plugin's CPU
//! budget. Every import but the reads of this repository's metadata and of the blob store marks
//! the call as one whose plan is not reused.

use super::bindings::v0_3::binaryrepo::plugin::{blobs, log, meta, repositories, reuse, scratch, types, uploads, upstream};
use super::caps;
use super::state::CallState;
use types::{BlobInfo, FetchedDocument, FetchedFile, HostError, Level, Repository, UpstreamRequest, UpstreamResponse};

impl types::Host for CallState {}

impl log::Host for CallState {
    async fn log(&mut self, level: Level, message: String) {
        let format = self.repo.as_ref().map_or("-", |r| r.format.as_str());
        caps::log::log(format, level, &message);
    }
}

impl meta::Host for CallState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        timed!(self, caps::meta::get(&self.scope(), key))
    }

    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        self.only_read = false;
        timed!(self, caps::meta::put(&self.scope(), key, value))
    }

    async fn delete(&mut self, key: String) -> Result<(), HostError> {
        self.only_read = false;
        timed!(self, caps::meta::delete(&self.scope(), key))
    }

    async fn keys(&mut self, prefix: String) -> Result<Vec<String>, HostError> {
        timed!(self, caps::meta::list(&self.scope(), prefix))
    }

    async fn keys_page(&mut self, prefix: String, start_after: Option<String>, limit: u32) -> Result<Vec<String>, HostError> {
        timed!(self, caps::meta::list_page(&self.scope(), prefix, start_after, limit))
    }
}

impl repositories::Host for CallState {
    async fn all(&mut self) -> Vec<Repository> {
        self.only_read = false;
        caps::repositories::list(&self.scope())
    }

    async fn meta_get_in(&mut self, repository: String, key: String) -> Result<Option<Vec<u8>>, HostError> {
        self.only_read = false;
        timed!(self, caps::meta::get_in(&self.scope(), repository, key))
    }

    async fn meta_list_in(&mut self, repository: String, prefix: String) -> Result<Vec<String>, HostError> {
        self.only_read = false;
        timed!(self, caps::meta::list_in(&self.scope(), repository, prefix))
    }

    async fn meta_list_in_page(
        &mut self,
        repository: String,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, HostError> {
        self.only_read = false;
        timed!(self, caps::meta::list_in_page(&self.scope(), repository, prefix, start_after, limit))
    }
}

impl scratch::Host for CallState {
    async fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.only_read = false;
        caps::scratch::get(&self.scope(), &key)
    }

    async fn put(&mut self, key: String, value: Vec<u8>, ttl_seconds: u64) {
        self.only_read = false;
        caps::scratch::put(&self.scope(), &key, value, ttl_seconds)
    }
}

impl uploads::Host for CallState {
    async fn start(&mut self) -> Result<String, HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::start(&self.scope()))
    }

    async fn size(&mut self, id: String) -> Result<Option<u64>, HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::size(&self.scope(), id))
    }

    async fn cancel(&mut self, id: String) -> Result<(), HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::cancel(&self.scope(), id))
    }

    async fn read(&mut self, id: String, offset: u64, length: u64) -> Result<Vec<u8>, HostError> {
        self.only_read = false;
        let read = timed!(self, caps::uploads::read(&self.scope(), id, offset, length));
        if let Ok(bytes) = &read {
            self.credit_bytes(bytes.len());
        }
        read
    }

    async fn append(&mut self, id: String, data: Vec<u8>) -> Result<u64, HostError> {
        self.only_read = false;
        self.credit_bytes(data.len());
        timed!(self, caps::uploads::append(&self.scope(), id, data))
    }

    async fn commit(&mut self, id: String, expected: Option<String>) -> Result<FetchedFile, HostError> {
        self.only_read = false;
        timed!(self, caps::uploads::commit(&self.scope(), id, expected))
    }
}

impl blobs::Host for CallState {
    async fn stat(&mut self, digest: String) -> Result<Option<BlobInfo>, HostError> {
        timed!(self, caps::blobs::stat(&self.scope(), digest))
    }

    async fn read(&mut self, digest: String) -> Result<Vec<u8>, HostError> {
        let read = timed!(self, caps::blobs::read(&self.scope(), digest));
        if let Ok(bytes) = &read {
            self.credit_bytes(bytes.len());
            self.seen.remember(bytes);
        }
        read
    }

    async fn read_range(&mut self, digest: String, offset: u64, length: u64) -> Result<Vec<u8>, HostError> {
        let read = timed!(self, caps::blobs::read_range(&self.scope(), digest, offset, length));
        if let Ok(bytes) = &read {
            self.credit_bytes(bytes.len());
            self.seen.remember(bytes);
        }
        read
    }

    async fn write(&mut self, data: Vec<u8>, expected: Option<String>) -> Result<String, HostError> {
        self.only_read = false;
        timed!(self, caps::blobs::write(&self.scope(), data, expected))
    }
}

impl upstream::Host for CallState {
    async fn send(&mut self, request: UpstreamRequest) -> Result<UpstreamResponse, HostError> {
        self.only_read = false;
        let resp = timed!(self, caps::upstream::request(&self.scope(), request));
        if let Ok(resp) = &resp {
            self.seen.remember(&resp.body);
            for (_, v) in &resp.headers {
                self.seen.remember(v.as_bytes());
            }
        }
        resp
    }

    async fn fetch(&mut self, key: String, request: UpstreamRequest, max_bytes: u64) -> Result<FetchedDocument, HostError> {
        self.only_read = false;
        let scope = self.scope();
        let doc = timed!(self, caps::upstream::fetch(&scope, &mut self.leases, key, request, max_bytes));
        // The body's origins count once the plugin reads it (`blobs.read-range`); the headers now.
        if let Ok(doc) = &doc {
            for (_, v) in &doc.headers {
                self.seen.remember(v.as_bytes());
            }
        }
        doc
    }

    async fn allow_origin(&mut self, origin: String) -> Result<(), HostError> {
        self.only_read = false;
        caps::upstream::allow_origin(&self.scope(), &self.seen, &origin)
    }
}

impl reuse::Host for CallState {
    async fn offer(&mut self, seconds: u64, vary: Vec<String>) {
        self.offer = super::reuse::offer(seconds, &vary);
    }
}
