//! Request paths: every path maps to one operation (or none) without panicking, and the name
//! an operation is about is a part of the path.
#![no_main]

use crate::route::Route;
use libfuzzer_sys::fuzz_target;

include!("docker_parsers.rs");

const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"];

fuzz_target!(|path: &str| {
    let route = Route::parse(path);
    if let Some(name) = route.name() {
        assert!(
            !name.is_empty() && path.contains(name),
            "{path:?}: {route:?}"
        );
    }
    for m in METHODS {
        let _ = route.allows(m);
    }
});
