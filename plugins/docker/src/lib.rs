//! binaryrepo's Docker / OCI Registry v2 format plugin.
//!
//! Everything but `guest` is plain Rust against `contract`, so the format logic is unit
//! tested natively; `guest` binds it to the WIT world `plugin` when built for wasm32.

pub mod challenge;
pub mod contract;
pub mod error;
pub mod freshness;
pub mod handler;
pub mod local;
pub mod media_type;
pub mod meta;
pub mod plan;
pub mod reference;
pub mod remote;
pub mod route;
pub mod store;
pub mod tags;
pub mod upstream;
pub mod url;

#[cfg(target_arch = "wasm32")]
mod guest;

#[cfg(test)]
mod fake_host;
#[cfg(test)]
mod flow_tests;
