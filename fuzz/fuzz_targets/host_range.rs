//! `Range` headers against blobs of any length: a range served is never empty and never
//! reaches past the blob, whatever the header says.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod host_parsers;
use host_parsers::range::parse_range;

fuzz_target!(|input: (&str, u64)| {
    let (header, len) = input;
    if let Some(Ok((start, count))) = parse_range(header, len) {
        assert!(count >= 1, "{header:?} on {len}: empty range");
        assert!(
            start.checked_add(count).is_some_and(|end| end <= len),
            "{header:?} on {len}: ({start}, {count})"
        );
    }
    // the small lengths are where the edge cases are
    let small = len % 4;
    if let Some(Ok((start, count))) = parse_range(header, small) {
        assert!(
            count >= 1 && start + count <= small,
            "{header:?} on {small}: ({start}, {count})"
        );
    }
});
