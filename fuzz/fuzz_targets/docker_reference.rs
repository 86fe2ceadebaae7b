//! Repository names, tags, digests and manifest references from request paths: what parses
//! prints back unchanged, and a name never escapes its place in a metadata key or URL.
#![no_main]

use crate::reference::{Digest, Name, Reference, Tag};
use libfuzzer_sys::fuzz_target;

include!("docker_parsers.rs");

fuzz_target!(|s: &str| {
    if let Ok(n) = Name::parse(s) {
        assert_eq!(n.as_str(), s);
        assert!(
            !s.contains(':') && !s.contains('@') && !s.contains(".."),
            "{s:?}"
        );
        assert!(
            !s.starts_with('/') && !s.ends_with('/') && !s.contains("//"),
            "{s:?}"
        );
    }
    if let Ok(t) = Tag::parse(s) {
        assert_eq!(t.as_str(), s);
        assert!(!s.contains('/') && !s.contains(':'), "{s:?}");
    }
    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.as_str(), s);
        assert!(!s.contains('/'), "{s:?}");
    }
    if let Ok(r) = Reference::parse(s) {
        assert_eq!(r.as_str(), s);
    }
});
