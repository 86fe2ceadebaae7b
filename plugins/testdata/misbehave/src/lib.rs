//! A format plugin that misbehaves on purpose, for the end-to-end tests of plugin isolation
//! (tests/e2e/test_17_plugin_isolation.py). Never shipped: it lives under plugins/testdata/,
//! which `plugins/build.sh build` does not look into.
//!
//! Format `misbehave`, root `/misbehave/`. What a request does is chosen by the last segment
//! of its path (`/repo/<name>/count`, `/misbehave/<name>/count`, ...):
//!
//! | segment       | what the plugin does |
//! |---------------|----------------------|
//! | `count`       | 200, body: this instance's request counter (1 on a fresh instance) |
//! | `ok`          | 200 `ok` |
//! | `trap`        | panics (`panic = "abort"`: a wasm `unreachable` trap) |
//! | `loop`        | loops forever: only the CPU deadline ends it |
//! | `hog`         | allocates and touches memory until the memory limit stops it |
//! | `recurse`     | unbounded recursion: a wasm stack overflow |
//! | `grow`        | grows its memory to 16 MiB (under the limit), then 200 with the counter |
//! | `render-trap` | plans `serve-blob` of an absent blob, then traps in `render-failure` |
//! | `bad-status`  | responds with status `?status=N` (default 1000: a broken contract, not a trap) |
//! | `reusable`    | as `count`, and offers the plan for reuse for 60 s, varying on `X-Variant` |
//! | `reusable-write` | writes a metadata key, then as `reusable` (an offer the host must refuse) |
//!
//! Anything else is a 404 in the format's own error shape, `{"errors":[{"code":..}]}`.

#[cfg(target_arch = "wasm32")]
mod guest;

pub const FORMAT: &str = "misbehave";
pub const CONTRACT: &str = "0.2.1";
pub const ROOTS: &[&str] = &["/misbehave/"];
/// Patched to `info=trap` in a copy of the built file by tests/e2e/test_28_plugin_reload.py:
/// that copy traps in `info` (a plugin the host must refuse to load).
pub static INFO_MARK: &str = "info=keep";

/// The last non-empty segment of a path: the action.
pub fn action(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Memory touched by `grow`: past the host's 8 MiB keep-for-reuse threshold, under any
/// sensible `plugin_memory_mib`.
pub const GROW_BYTES: usize = 16 << 20;
/// `hog` gives up (and answers 200 "hog survived") past this: the test then fails plainly
/// instead of the machine running out of memory.
pub const HOG_CAP_BYTES: usize = 1 << 30;

#[cfg(test)]
mod tests {
    #[test]
    fn actions() {
        assert_eq!(super::action("/count"), "count");
        assert_eq!(super::action("/misbehave/count/"), "count");
        assert_eq!(super::action("/"), "");
    }
}
