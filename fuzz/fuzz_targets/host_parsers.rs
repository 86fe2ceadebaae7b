//! The host's pure request-facing parsers, compiled in from the host's own source files.

#[path = "../../host/src/digest.rs"]
#[allow(dead_code)]
pub mod digest;

#[path = "../../host/src/server/range.rs"]
#[allow(dead_code)]
pub mod range;
