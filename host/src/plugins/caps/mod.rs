//! The capabilities a plugin imports, one file each. Every one is scoped to the request's
//! repository; a request with no repository gets none of them.

pub mod blobs;
pub mod log;
pub mod meta;
pub mod scratch;
pub mod upstream;

use std::sync::Arc;

use super::Capabilities;
use super::bindings::types::HostError;
use crate::repos::Repository;

/// What a capability call may touch: the host's services, for one repository.
#[derive(Clone)]
pub struct Scope {
    pub caps: Arc<Capabilities>,
    pub repo: Option<Arc<Repository>>,
}

impl Scope {
    pub fn repo(&self) -> Result<Arc<Repository>, HostError> {
        self.repo.clone().ok_or_else(|| HostError::NotAllowed("this request names no repository".into()))
    }
}
