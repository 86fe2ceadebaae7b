//! A format plugin whose paths exercise each import of contract 0.3, for the end-to-end tests
//! of the host's side of it (tests/e2e/test_26_contract.py). Never shipped: it lives under
//! plugins/testdata/, which `plugins/build.sh build` does not look into.
//!
//! Format `probe`, root `/probe/`, merged suffix `/index.txt`. Paths (after the root):
//!
//! | path                 | what the plugin does |
//! |----------------------|----------------------|
//! | `upload`             | uploads.start/append/read/commit, a too-large append, a mismatching commit; a text report |
//! | `blob/<digest>`      | serve-blob |
//! | `fetch/<name>?max=N` | upstream.fetch of `<remote>/<name>` (key `<name>`), then reads it back with blobs.read-range; a text report (FNV-1a 64 of the bytes) |
//! | `origin/<name>?origin=O` | upstream.fetch, allow-origin(O) before and after reading the body |
//! | `file/<name>?max=N`  | a fetch-file plan for `<remote>/<name>` under key `file/<name>` |
//! | `recorded/<name>`    | what file-fetched recorded for `file/<name>` |
//! | `index.txt`          | local: `local <repo>` (404 for a repository whose name contains `empty`); remote: fetch-file of `<remote>/index.txt` |
//!
//! `merge` answers one line per member: `<repo> <status> <none|inline|blob> <body text>`.
//!
//! `live-blobs-page` walks that never end, for the host's guard on them: a repository whose
//! name contains `cycle` hands back cursors `a`, `b`, `a`, …; one whose name contains
//! `endless` counts `1`, `2`, `3`, … without ever finishing.

#[cfg(target_arch = "wasm32")]
mod guest;

pub const FORMAT: &str = "probe";
pub const CONTRACT: &str = "0.3.0";
pub const ROOTS: &[&str] = &["/probe/"];
pub const MERGED: &[&str] = &["/index.txt"];

/// FNV-1a 64: a checksum the test computes too (the plugin has no sha256 of its own).
pub fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub const FNV_START: u64 = 0xcbf29ce484222325;

/// The value of `name` in a query string.
pub fn query<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_and_fnv() {
        assert_eq!(super::query(Some("a=1&max=20"), "max"), Some("20"));
        assert_eq!(super::query(Some("maxx=1"), "max"), None);
        assert_eq!(super::fnv(super::FNV_START, b"a"), 0xaf63dc4c8601ec8c);
    }
}
