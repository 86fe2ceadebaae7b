//! The benchmarks are in `plugin_request.rs` (`cargo bench -p binaryrepo-benches`).
