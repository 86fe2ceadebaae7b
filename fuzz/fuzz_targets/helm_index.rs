//! Upstream Helm `index.yaml` documents through the line rewriter (`plugins/helm/src/rewrite.rs`):
//! one output line per input line, every sidecar line reads back as it was written, and every
//! local path is relative and free of `..` (it is joined under the repository's storage).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../plugins/helm/src/rewrite.rs"]
#[allow(dead_code)]
mod rewrite;

fn check_local(local: &str, input: &str) {
    assert!(!local.starts_with('/'), "{local:?} from {input:?}");
    assert!(local.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{local:?} from {input:?}");
    assert!(!local.contains(['\t', '\n', '\r', '?', '#', '\\']), "{local:?} from {input:?}");
}

fuzz_target!(|input: &str| {
    for base in ["https://charts.example.com/sub/", "http://127.0.0.1:8080"] {
        let mut r = rewrite::Rewriter::new(base);
        let (mut out, mut side) = (String::new(), String::new());
        let mut lines = 0;
        for l in input.split('\n') {
            r.line(l, &mut out, &mut side);
            lines += 1;
        }
        r.finish(&mut side);
        assert_eq!(out.matches('\n').count(), lines, "{input:?}");
        for line in side.lines() {
            let (local, upstream, digest) = rewrite::parse_side(line).expect("a sidecar line parses");
            check_local(local, input);
            let scheme = upstream.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            assert!(matches!(scheme.as_deref(), Some("http" | "https")), "{upstream:?} from {input:?}");
            assert!(!upstream.contains(['\t', '\n']), "{upstream:?}");
            assert!(digest.is_none_or(|d| !d.contains(['\t', '\n'])), "{line:?}");
        }
    }
    // single URLs, as an entry names them
    if let Some((local, upstream)) = rewrite::local_path(input, "https://charts.example.com/sub") {
        check_local(&local, input);
        assert!(!upstream.contains(['\t', '\n']), "{upstream:?}");
    }
});
