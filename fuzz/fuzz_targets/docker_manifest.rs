//! Manifests and indexes as clients push them and upstreams serve them (any bytes, any
//! `Content-Type`): parsed or refused, never a panic; what parses names only valid digests.
#![no_main]

use crate::reference::Digest;
use libfuzzer_sys::fuzz_target;

include!("docker_parsers.rs");

const TYPES: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
];

fuzz_target!(|input: (u8, &[u8])| {
    let (t, body) = input;
    if let Ok(m) = manifest::parse(TYPES[t as usize % TYPES.len()], body) {
        for d in m.blobs().chain(m.manifests.iter()) {
            assert!(Digest::parse(d.digest.as_str()).is_ok());
        }
    }
});
