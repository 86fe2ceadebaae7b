//! binaryrepo's Docker / OCI Distribution format plugin.
//!
//! The format logic is plain Rust against the SDK's `contract`, unit tested natively with the
//! SDK's fake host; `binaryrepo_plugin_sdk::export_format!` binds it to the WIT world `plugin`.

pub mod access;
pub mod catalog;
pub mod challenge;
pub mod cleanup;
pub mod error;
pub mod freshness;
pub mod gc;
pub mod handler;
pub mod local;
pub mod manifest;
pub mod media_type;
pub mod meta;
pub mod mount;
pub mod paging;
pub mod plan;
pub mod push;
pub mod reference;
pub mod referrers;
pub mod remote;
pub mod route;
pub mod sibling;
pub mod store;
pub mod tags;
pub mod upload;
pub mod upstream;
pub mod url;

pub use binaryrepo_plugin_sdk::contract;

binaryrepo_plugin_sdk::export_format!(handler::Docker);

#[cfg(test)]
mod fake_host;
#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod local_flow_tests;
