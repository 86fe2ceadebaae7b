//! Compiled plugins kept between starts.
//!
//! Compiling the Docker plugin with Cranelift takes seconds on two cores and leaves ~15 MiB of
//! the compiler's code and heap resident for the life of the process. The compiled artifact is
//! written once to the data directory, named by the plugin's bytes and the engine's settings,
//! and later starts and reloads load it from there.
//!
//! The artifact is native code that wasmtime runs as is, so it is never trusted on its name: a
//! header binds it to the `.wasm` it was compiled from and to this engine, and carries the
//! sha256 of the code itself. A file that was cut short (a crash, a full disk), altered, or
//! written by another build is removed and compiled again, never deserialized. The code is
//! verified in memory and deserialized from those same bytes, so nothing can change it between
//! the check and the load.

use std::hash::{Hash, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::digest::{Algorithm, Digest, Hasher};

const MAGIC: &[u8; 8] = b"BRCWASM\x01";
/// magic, engine fingerprint, sha256 of the source `.wasm`, sha256 of the code, the code's length
const HEADER_LEN: usize = 8 + 32 + 32 + 32 + 8;

/// Everything that makes compiled code incompatible: wasmtime's compatibility hash (its version,
/// the target, the compiler settings and enabled features) and this host's build.
fn fingerprint(engine: &Engine) -> [u8; 32] {
    let mut settings = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(&settings.finish().to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(std::env::consts::ARCH.as_bytes());
    h.update(std::env::consts::OS.as_bytes());
    sha256_bytes(h.finish())
}

fn sha256_bytes(d: Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(v) = hex::decode(d.hex()) {
        let n = v.len().min(32);
        out[..n].copy_from_slice(&v[..n]);
    }
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    sha256_bytes(Digest::of(Algorithm::Sha256, data))
}

/// `<stem>-<key>.cwasm`: the key covers the plugin's bytes and the engine's fingerprint.
fn cached_path(fingerprint: &[u8; 32], file: &Path, source: &[u8; 32], cache: &Path) -> PathBuf {
    let mut key = Hasher::new(Algorithm::Sha256);
    key.update(source);
    key.update(fingerprint);
    let key = key.finish();
    cache.join(format!("{}-{}.cwasm", stem(file), &key.hex()[..32]))
}

fn stem(file: &Path) -> String {
    file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into())
}

/// Why a kept artifact was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum Unusable {
    #[error("shorter than its header")]
    Short,
    #[error("not a compiled plugin of this host")]
    Magic,
    #[error("compiled by another build or configuration")]
    Engine,
    #[error("compiled from other plugin bytes")]
    Source,
    #[error("length {found} instead of {expected}")]
    Length { expected: u64, found: u64 },
    #[error("checksum mismatch")]
    Checksum,
}

fn seal(fingerprint: &[u8; 32], source: &[u8; 32], code: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + code.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(source);
    out.extend_from_slice(&sha256(code));
    out.extend_from_slice(&(code.len() as u64).to_le_bytes());
    out.extend_from_slice(code);
    out
}

/// The code of a kept artifact, once its header vouches for it.
fn unseal<'a>(fingerprint: &[u8; 32], source: &[u8; 32], file: &'a [u8]) -> Result<&'a [u8], Unusable> {
    if file.len() < HEADER_LEN {
        return Err(Unusable::Short);
    }
    let (header, code) = file.split_at(HEADER_LEN);
    if &header[..8] != MAGIC {
        return Err(Unusable::Magic);
    }
    if &header[8..40] != fingerprint {
        return Err(Unusable::Engine);
    }
    if &header[40..72] != source {
        return Err(Unusable::Source);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[104..112]);
    let expected = u64::from_le_bytes(len);
    if expected != code.len() as u64 {
        return Err(Unusable::Length { expected, found: code.len() as u64 });
    }
    if header[72..104] != sha256(code) {
        return Err(Unusable::Checksum);
    }
    Ok(code)
}

pub fn load(engine: &Engine, file: &Path, wasm: &[u8], cache: &Path) -> wasmtime::Result<Component> {
    let fingerprint = fingerprint(engine);
    let source = sha256(wasm);
    let path = cached_path(&fingerprint, file, &source, cache);
    match std::fs::read(&path) {
        Ok(kept) => match unseal(&fingerprint, &source, &kept) {
            // SAFETY: wasmtime runs whatever native code these bytes hold. They are exactly the
            // bytes `precompile_component` produced for this `.wasm` on an engine with this
            // fingerprint (the header's checksum, verified just now on this very buffer, says
            // so), inside the data directory the server owns; the deserializer also refuses
            // artifacts from another wasmtime or configuration.
            Ok(code) => match unsafe { Component::deserialize(engine, code) } {
                Ok(c) => return Ok(c),
                Err(e) => discard(&path, &e.to_string()),
            },
            Err(why) => discard(&path, &why.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "compiled plugin unreadable; compiling again"),
    }
    let compiled = engine.precompile_component(wasm)?;
    let sealed = seal(&fingerprint, &source, &compiled);
    match store(&path, &sealed) {
        Ok(()) => remove_stale(&path, &stem(file)),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot keep the compiled plugin; it is compiled again at the next start")
        }
    }
    // SAFETY: as above; these are the bytes just compiled.
    unsafe { Component::deserialize(engine, &compiled) }
}

fn discard(path: &Path, why: &str) {
    tracing::warn!(file = %path.display(), reason = why, "compiled plugin unusable; removed and compiled again");
    let _ = std::fs::remove_file(path);
}

/// Written under a temporary name, flushed to disk, renamed, and the directory flushed: after a
/// crash the artifact is either whole or absent (and a torn one would fail `unseal` anyway).
fn store(path: &Path, sealed: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no cache directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(sealed)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
    use super::*;

    /// The smallest component there is: the preamble of a component binary.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn only_artifact(dir: &Path) -> PathBuf {
        let found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn the_key_follows_the_bytes() {
        let engine = Engine::default();
        let fp = fingerprint(&engine);
        let dir = Path::new("/cache");
        let a = cached_path(&fp, "p/docker.wasm".as_ref(), &sha256(b"one"), dir);
        let b = cached_path(&fp, "p/docker.wasm".as_ref(), &sha256(b"two"), dir);
        assert_ne!(a, b);
        assert!(a.file_name().is_some_and(|n| n.to_string_lossy().starts_with("docker-")));
        assert_eq!(a, cached_path(&fp, "p/docker.wasm".as_ref(), &sha256(b"one"), dir));
        let mut other = fp;
        other[0] ^= 1;
        assert_ne!(a, cached_path(&other, "p/docker.wasm".as_ref(), &sha256(b"one"), dir), "another engine, another entry");
    }

    #[test]
    fn every_kind_of_damage_is_detected() {
        let (fp, src) = (sha256(b"engine"), sha256(b"plugin"));
        let sealed = seal(&fp, &src, b"native code");
        assert_eq!(unseal(&fp, &src, &sealed), Ok(&b"native code"[..]));
        assert_eq!(unseal(&fp, &src, &sealed[..sealed.len() - 1]), Err(Unusable::Length { expected: 11, found: 10 }));
        assert_eq!(unseal(&fp, &src, &sealed[..HEADER_LEN - 1]), Err(Unusable::Short));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x20;
        assert_eq!(unseal(&fp, &src, &flipped), Err(Unusable::Checksum));
        assert_eq!(unseal(&sha256(b"another engine"), &src, &sealed), Err(Unusable::Engine));
        assert_eq!(unseal(&fp, &sha256(b"another plugin"), &sealed), Err(Unusable::Source));
        let mut magic = sealed.clone();
        magic[0] = b'X';
        assert_eq!(unseal(&fp, &src, &magic), Err(Unusable::Magic));
    }

    #[test]
    fn a_truncated_or_tampered_artifact_is_compiled_again() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let plugin = Path::new("p/x.wasm");
        load(&engine, plugin, EMPTY_COMPONENT, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let artifact = only_artifact(dir.path());
        let good = std::fs::read(&artifact).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&good[..8], MAGIC);

        // cut short, as after a crash on a filesystem without ordered writes
        std::fs::write(&artifact, &good[..good.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
        load(&engine, plugin, EMPTY_COMPONENT, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&artifact).unwrap_or_else(|e| panic!("{e}")), good, "rewritten whole");

        // one byte of code changed: never deserialized, rewritten
        let mut tampered = good.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0xff;
        std::fs::write(&artifact, &tampered).unwrap_or_else(|e| panic!("{e}"));
        load(&engine, plugin, EMPTY_COMPONENT, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&artifact).unwrap_or_else(|e| panic!("{e}")), good);

        // an unsealed artifact (an older host's format) is not trusted either
        std::fs::write(&artifact, &good[HEADER_LEN..]).unwrap_or_else(|e| panic!("{e}"));
        load(&engine, plugin, EMPTY_COMPONENT, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&artifact).unwrap_or_else(|e| panic!("{e}")), good);
        assert_eq!(only_artifact(dir.path()), artifact, "no temporary files left");
    }
}
