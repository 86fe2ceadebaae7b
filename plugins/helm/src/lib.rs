//! binaryrepo's Helm chart repository format plugin: remote (a caching proxy of an upstream
//! chart repository), local (ChartMuseum API and plain PUT) and virtual (merged index.yaml).
//!
//! The format logic is plain Rust against the SDK's `contract`, unit tested natively with the
//! SDK's fake host; `binaryrepo_plugin_sdk::export_format!` binds it to the WIT world `plugin`.

pub mod chart;
pub mod document;
pub mod error;
pub mod handler;
pub mod local;
pub mod merge;
pub mod remote;
pub mod rewrite;
pub mod time;

pub use binaryrepo_plugin_sdk::contract;

binaryrepo_plugin_sdk::export_format!(handler::Helm);

#[cfg(test)]
mod flow_tests;
