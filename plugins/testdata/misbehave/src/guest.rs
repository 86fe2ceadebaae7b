//! The component boundary: wit-bindgen bindings for world `plugin` (as plugins/docker binds
//! it) and the misbehaviour itself.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({
    path: "../../../wit/past/0.2.1",
    world: "plugin",
});

use binaryrepo::plugin::host;
use binaryrepo::plugin::types as wit;
use exports::binaryrepo::plugin::format::{Guest, PluginInfo};

/// Requests this instance answered with `count` or `grow`: per instance, so 1 means a fresh
/// instance and more means the host reused one.
static COUNT: AtomicU64 = AtomicU64::new(0);

struct Component;

fn text(status: u16, body: impl Into<Vec<u8>>) -> wit::Response {
    wit::Response {
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: body.into(),
    }
}

fn error(status: u16, code: &str, message: &str) -> wit::Response {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#);
    wit::Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into_bytes(),
    }
}

fn count() -> wit::Response {
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    text(200, n.to_string())
}

#[inline(never)]
fn recurse(depth: u64, pad: [u64; 16]) -> u64 {
    let pad = black_box(pad);
    if depth == u64::MAX {
        return 0;
    }
    black_box(recurse(black_box(depth + 1), pad)) + pad[(depth % 16) as usize]
}

fn hog() -> wit::Response {
    let mut held: Vec<Vec<u8>> = Vec::new();
    let chunk = 1 << 20;
    while held.len() * chunk < crate::HOG_CAP_BYTES {
        let mut v = vec![0u8; chunk];
        // touch every page so nothing is optimised away
        for i in (0..chunk).step_by(4096) {
            v[i] = i as u8;
        }
        held.push(black_box(v));
    }
    text(200, format!("hog survived: {} MiB", held.len()))
}

fn grow() -> wit::Response {
    let mut v = vec![0u8; crate::GROW_BYTES];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    black_box(&v);
    drop(v);
    count()
}

impl Guest for Component {
    fn info() -> PluginInfo {
        // A copy of this build with `info=keep` replaced by `info=trap` in its bytes traps here:
        // the reload tests' plugin whose `info` fails. `black_box` keeps the check at run time.
        if core::hint::black_box(crate::INFO_MARK).ends_with("trap") {
            panic!("info traps in this build");
        }
        PluginInfo {
            format: crate::FORMAT.to_owned(),
            contract: crate::CONTRACT.to_owned(),
            roots: crate::ROOTS.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn handle(request: wit::Request) -> wit::Plan {
        let resp = match crate::action(&request.path) {
            "count" => count(),
            "ok" => text(200, "ok"),
            "reusable" => {
                host::reusable(60, &["X-Variant".to_owned()]);
                count()
            }
            "reusable-write" => {
                // a plan decided after a write may depend on more than the host can watch
                let _ = host::meta_put("written", b"1");
                host::reusable(60, &["X-Variant".to_owned()]);
                count()
            }
            "trap" => panic!("misbehave: trap on purpose"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = black_box(x.wrapping_add(1));
                }
            }
            "hog" => hog(),
            "recurse" => text(200, format!("recursion returned {}", recurse(0, [7; 16]))),
            "grow" => grow(),
            "render-trap" => {
                return wit::Plan::ServeBlob(wit::ServeBlob {
                    digest: format!("sha256:{}", "0".repeat(64)),
                    headers: vec![],
                });
            }
            "bad-status" => {
                // ?status=N (default 1000): a status the host must refuse or pass on sanely
                let status = request
                    .query
                    .as_deref()
                    .and_then(|q| q.strip_prefix("status="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1000);
                text(status, "not HTTP")
            }
            _ => error(404, "NOT_FOUND", "no such action"),
        };
        wit::Plan::Respond(resp)
    }

    fn handle_body(_request: wit::Request, _body: Vec<u8>) -> wit::Plan {
        wit::Plan::Respond(error(400, "UNSUPPORTED", "no bodies here"))
    }

    fn upload_complete(
        _request: wit::Request,
        _id: String,
        _outcome: wit::UploadOutcome,
    ) -> wit::Response {
        error(400, "UNSUPPORTED", "no uploads here")
    }

    fn render_failure(request: wit::Request, failure: wit::Failure) -> wit::Response {
        if crate::action(&request.path) == "render-trap" {
            panic!("misbehave: trap in render-failure on purpose");
        }
        error(500, "FAILED", &format!("{:?}", failure.kind))
    }

    fn live_blobs(_repository: wit::Repository) -> Result<Vec<String>, wit::HostError> {
        Ok(Vec::new())
    }
}

export!(Component);
