//! Compiled plugins kept between starts.
//!
//! Compiling the Docker plugin with Cranelift takes seconds on two cores and leaves ~15 MiB of
//! the compiler's code and heap resident for the life of the process. The compiled artifact is
//! written once to the data directory, named by the plugin's bytes and the engine's settings,
//! and later starts map it from there (code pages are then file-backed and paged on demand).

use std::hash::{Hash, Hasher as _};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::digest::{Algorithm, Hasher};

/// `<stem>-<key>.cwasm`: the key covers the plugin's bytes and everything in the engine's
/// configuration that makes compiled code incompatible (wasmtime version, target, settings).
fn cached_path(engine: &Engine, file: &Path, wasm: &[u8], cache: &Path) -> PathBuf {
    let mut settings = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let mut key = Hasher::new(Algorithm::Sha256);
    key.update(wasm);
    key.update(&settings.finish().to_le_bytes());
    let key = key.finish();
    cache.join(format!("{}-{}.cwasm", stem(file), &key.hex()[..32]))
}

fn stem(file: &Path) -> String {
    file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into())
}

pub fn load(engine: &Engine, file: &Path, wasm: &[u8], cache: &Path) -> wasmtime::Result<Component> {
    let path = cached_path(engine, file, wasm, cache);
    if path.is_file() {
        // SAFETY: wasmtime runs whatever native code the file holds. The file is only ever
        // written below, from `precompile_component` of these bytes by an engine with these
        // settings (its name is their hash), inside the data directory the server owns; the
        // deserializer still refuses artifacts from another wasmtime or configuration.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok(c),
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "compiled plugin unusable; compiling again"),
        }
    }
    let compiled = engine.precompile_component(wasm)?;
    if let Err(e) = store(&path, &compiled) {
        tracing::warn!(file = %path.display(), error = %e, "cannot keep the compiled plugin; it is compiled again at the next start");
        return Component::new(engine, wasm);
    }
    remove_stale(&path, &stem(file));
    // SAFETY: as above; the file was just written from `compiled`.
    unsafe { Component::deserialize_file(engine, &path) }
}

/// Written under a temporary name and renamed, so a crash never leaves a torn artifact.
fn store(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no cache directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Older artifacts of the same plugin (an earlier build of it, another wasmtime).
fn remove_stale(keep: &Path, stem: &str) {
    let Some(dir) = keep.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.strip_prefix(stem).and_then(|r| r.strip_prefix('-')).is_some_and(|r| r.len() == 32 + ".cwasm".len());
        if p != keep && ours && name.ends_with(".cwasm") {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_key_follows_the_bytes() {
        let engine = wasmtime::Engine::default();
        let dir = std::path::Path::new("/cache");
        let a = super::cached_path(&engine, "p/docker.wasm".as_ref(), b"one", dir);
        let b = super::cached_path(&engine, "p/docker.wasm".as_ref(), b"two", dir);
        assert_ne!(a, b);
        assert!(a.file_name().is_some_and(|n| n.to_string_lossy().starts_with("docker-")));
        assert_eq!(a, super::cached_path(&engine, "p/docker.wasm".as_ref(), b"one", dir));
    }
}
