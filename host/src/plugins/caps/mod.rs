//! The capabilities a plugin imports, one file each. Every one is scoped to the request's
//! repository; a request with no repository gets none of them.

pub mod blobs;
pub mod log;
pub mod meta;
pub mod repositories;
pub mod scratch;
pub mod uploads;
pub mod upstream;

use std::sync::Arc;

use super::Capabilities;
use super::bindings::types::HostError;
use crate::repos::Repository;

/// What a capability call may touch: the host's services, for one repository.
#[derive(Clone)]
pub struct Scope {
    pub caps: Arc<Capabilities>,
    pub format: Option<String>,
    pub repo: Option<Arc<Repository>>,
    /// The other repositories the caller may read.
    pub readable: Readable,
    /// The call is garbage collection's own: what it looks at is not a reference to keep.
    pub collection: bool,
    /// Why the call must be answered 503 whatever it returns (`CallState::refused`).
    pub refused: Arc<std::sync::OnceLock<String>>,
}

/// Which repositories the request's caller may read: views of other repositories
/// (`repositories` import) show only those. The host's own calls (garbage collection) see all.
#[derive(Clone)]
pub struct Readable(Option<CanRead>);

type CanRead = Arc<dyn Fn(&Repository) -> bool + Send + Sync>;

impl Readable {
    pub fn all() -> Readable {
        Readable(None)
    }

    pub fn only(filter: Arc<dyn Fn(&Repository) -> bool + Send + Sync>) -> Readable {
        Readable(Some(filter))
    }

    pub fn may_read(&self, repo: &Repository) -> bool {
        self.0.as_ref().is_none_or(|f| f(repo))
    }
}

/// Runs blocking storage work off the async threads; a panicked task is our fault.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, HostError> + Send + 'static) -> Result<T, HostError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| HostError::Internal(e.to_string()))?
}

impl Scope {
    /// The server cannot serve this call safely now (a blob reference it could not record).
    pub fn refuse(&self, why: String) {
        let _ = self.refused.set(why);
    }

    /// The format whose repositories this call may read.
    pub fn format(&self) -> Result<String, HostError> {
        self.repo
            .as_ref()
            .map(|r| r.format.clone())
            .or_else(|| self.format.clone())
            .ok_or_else(|| HostError::NotAllowed("no format in scope".into()))
    }

    pub fn repo(&self) -> Result<Arc<Repository>, HostError> {
        self.repo.clone().ok_or_else(|| HostError::NotAllowed("this request names no repository".into()))
    }
}
