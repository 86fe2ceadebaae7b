//! Errors as the `go` command sees them: plain text (it prints the body), and 404/410 for
//! "not found here", which lets `GOPROXY=a,b` fall back to the next proxy.

pub use binaryrepo_plugin_sdk::error::HttpError as GoError;
