//! `WWW-Authenticate` values an upstream sends: parsed or ignored, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("docker_parsers.rs");

fuzz_target!(|value: &str| {
    let _ = challenge::parse(value);
    let _ = challenge::from_headers(&[("WWW-Authenticate".to_owned(), value.to_owned())]);
});
