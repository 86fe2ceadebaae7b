//! Metadata values as JSON: the plugin's records in the host's key-value store.

use crate::contract::{Host, HostError};
use serde::{Serialize, de::DeserializeOwned};

/// Why a metadata record could not be used.
#[derive(Debug)]
pub enum MetaError {
    Host(HostError),
    /// the stored bytes are not the record this plugin writes (a damaged store: our fault)
    Corrupt {
        key: String,
        reason: String,
    },
}

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaError::Host(e) => write!(f, "{e}"),
            MetaError::Corrupt { key, reason } => {
                write!(f, "metadata {key} is unreadable: {reason}")
            }
        }
    }
}

impl From<HostError> for MetaError {
    fn from(e: HostError) -> MetaError {
        MetaError::Host(e)
    }
}

/// The record under `key`, if any.
pub fn get_json<T: DeserializeOwned>(host: &impl Host, key: &str) -> Result<Option<T>, MetaError> {
    let Some(bytes) = host.meta_get(key)? else {
        return Ok(None);
    };
    decode(key, &bytes).map(Some)
}

/// The record under `key` in another repository of this format.
pub fn get_json_in<T: DeserializeOwned>(
    host: &impl Host,
    repository: &str,
    key: &str,
) -> Result<Option<T>, MetaError> {
    let Some(bytes) = host.meta_get_in(repository, key)? else {
        return Ok(None);
    };
    decode(key, &bytes).map(Some)
}

pub fn put_json<T: Serialize>(host: &impl Host, key: &str, value: &T) -> Result<(), MetaError> {
    let bytes = serde_json::to_vec(value).map_err(|e| MetaError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    host.meta_put(key, &bytes).map_err(MetaError::Host)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|e| MetaError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Every record under `prefix`, for garbage collection: one that cannot be read is an error,
/// as an incomplete list of live blobs would delete blobs still in use.
pub fn records<T: DeserializeOwned>(host: &impl Host, prefix: &str) -> Result<Vec<T>, HostError> {
    let mut out = Vec::new();
    for key in host.meta_list(prefix)? {
        if let Some(bytes) = host.meta_get(&key)? {
            out.push(
                serde_json::from_slice(&bytes)
                    .map_err(|e| HostError::Internal(format!("{key}: {e}")))?,
            );
        }
    }
    Ok(out)
}
