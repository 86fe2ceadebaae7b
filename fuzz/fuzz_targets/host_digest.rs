//! Digests from clients and upstreams: whatever parses prints back as it was given, and names
//! nothing but `algorithm:lowercase-hex` (it is joined into storage paths).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod host_parsers;
use host_parsers::digest::Digest;

fuzz_target!(|s: &str| {
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        assert!(
            d.hex()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{s:?}"
        );
        assert!(!s.contains('/') && !s.contains(".."), "{s:?}");
    }
});
