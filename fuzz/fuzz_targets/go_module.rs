//! GOPROXY request paths, module paths and versions (`plugins/go/src/module.rs`): the `!`
//! escaping round-trips, and a route names nothing outside its module (no `..`, no empty or
//! dot element, no `/` in a version), whatever the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../plugins/go/src/error.rs"]
#[allow(dead_code)]
mod error;
#[path = "../../plugins/go/src/module.rs"]
#[allow(dead_code)]
mod module;

use module::{ModulePath, Route, Version, escape, unescape};

fn clean_path(p: &str) -> bool {
    !p.starts_with('/') && p.split('/').all(|e| !e.is_empty() && e != "." && e != "..")
}

fuzz_target!(|raw: &str| {
    // escaping: what unescapes escapes back to the same text, and text without `!` survives
    // a round trip
    if let Ok(plain) = unescape(raw) {
        assert_eq!(escape(&plain), raw);
    }
    if !raw.contains('!') {
        assert_eq!(unescape(&escape(raw)).ok().as_deref(), Some(raw));
    }
    // a version Go calls canonical prints back as it was given
    if let Ok(v) = Version::parse(raw)
        && let Some(sv) = v.canonical()
    {
        let plain = format!("v{sv}");
        assert!(raw == plain || raw == format!("{plain}+incompatible"), "{raw:?} is canonical as {plain:?}");
    }
    match module::route(raw) {
        Ok(Some(Route::List(m) | Route::Latest(m))) => check_module(&m),
        Ok(Some(Route::File(m, v, _))) => {
            check_module(&m);
            assert!(!v.as_str().contains('/') && v.as_str() != "." && v.as_str() != "..", "{raw:?}");
            assert_eq!(Version::from_escaped(&v.escaped()).as_ref(), Ok(&v));
        }
        Ok(Some(Route::Sumdb { name, rest })) => {
            assert!(!name.contains('/') && !name.is_empty(), "{raw:?}");
            assert!(clean_path(&rest), "{raw:?} -> {rest:?}");
        }
        Ok(None) | Err(_) => {}
    }
});

fn check_module(m: &ModulePath) {
    assert!(clean_path(m.as_str()), "{:?}", m.as_str());
    assert!(!m.as_str().contains(['%', '\\', '!']), "{:?}", m.as_str());
    assert_eq!(ModulePath::from_escaped(&m.escaped()).as_ref(), Ok(m));
}
