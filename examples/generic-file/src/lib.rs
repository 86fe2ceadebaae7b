//! `generic`: a repository of plain files addressed by path, like Nexus "raw" or Artifactory
//! "generic" repositories.
//!
//! - local: `PUT` stores the request body under its path, `GET`/`HEAD` serve it, `DELETE`
//!   removes it. A `X-Checksum-Sha256` header on `PUT` makes the server verify the body.
//! - remote: `GET` of a path not cached yet fetches `<remote-url>/<path>` from the remote
//!   (any HTTP file server), streams it to the client and keeps it; later `GET`s are served
//!   from the store without asking the remote again.
//!
//! The plugin only decides; the host moves every byte. What the plugin keeps is one metadata
//! key per file, `file:<path>` -> the sha256 digest the host stored the content under.
//!
//! Everything is plain Rust against the guest SDK's `contract` types, tested natively with the
//! SDK's fake host; `export_format!` binds [`Generic`] to the component's exports on wasm32.

pub mod digest;
pub mod format;
pub mod path;

#[cfg(test)]
mod flow_tests;

pub use format::Generic;

/// Which build answered: on every response, so a replaced plugin is visible to clients.
pub const BUILD: &str = concat!("generic-file/", env!("CARGO_PKG_VERSION"));

binaryrepo_plugin_sdk::export_format!(Generic);
