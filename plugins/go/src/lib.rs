//! binaryrepo's Go modules format plugin: remote (a caching GOPROXY and checksum-database
//! proxy), local (modules published with `PUT`) and virtual (merged `@v/list`).
//!
//! The format logic is plain Rust against the SDK's `contract`, unit tested natively with the
//! SDK's fake host; `binaryrepo_plugin_sdk::export_format!` binds it to the WIT world `plugin`.

pub mod error;
pub mod handler;
pub mod local;
pub mod merge;
pub mod module;
pub mod remote;
pub mod zipcheck;

pub use binaryrepo_plugin_sdk::contract;

binaryrepo_plugin_sdk::export_format!(handler::Go);

#[cfg(test)]
mod flow_tests;
