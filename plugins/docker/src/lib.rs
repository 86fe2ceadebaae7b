//! binaryrepo's Docker / OCI Distribution format plugin.
//!
//! Everything but `guest` is plain Rust against `contract`, so the format logic is unit
//! tested natively; `guest` binds it to the WIT world `plugin` when built for wasm32.

pub mod access;
pub mod catalog;
pub mod challenge;
pub mod contract;
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
pub mod store;
pub mod tags;
pub mod upload;
pub mod upstream;
pub mod url;

#[cfg(target_arch = "wasm32")]
mod guest;

#[cfg(test)]
mod fake_host;
#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod local_flow_tests;
