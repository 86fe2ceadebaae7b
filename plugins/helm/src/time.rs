//! RFC 3339 timestamps from the request clock (`created` and `generated` in index.yaml).

pub use binaryrepo_plugin_sdk::time::rfc3339;
