//! `?n=&last=` on tag lists and the catalog: a page size or a clear error, never a panic.
#![no_main]

use crate::paging::Paging;
use libfuzzer_sys::fuzz_target;

include!("docker_parsers.rs");

fuzz_target!(|query: &str| {
    let _ = Paging::from_query(Some(query));
});
