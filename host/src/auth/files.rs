//! The auth directory: `<data_dir>/auth/` (mode 0700) with `users.json`, `tokens.json` and
//! `signing.key`, each 0600 and replaced atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new file, never half of one.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

pub const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not valid: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: expected {KEY_BYTES} bytes, found {found}; remove it to generate a new key (outstanding tokens stop working)")]
    KeyLength { path: PathBuf, found: usize },
    #[error("no randomness from the operating system")]
    Random,
    /// The shared metadata store failed, or another node changed the document meanwhile.
    #[error(transparent)]
    Shared(crate::storage::meta::MetaError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io { path: path.into(), source }
}

/// Creates `dir` (0700) or tightens an existing one to 0700.
pub fn private_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], FileError> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| FileError::Random)?;
    Ok(out)
}

/// Replaces `path` with `bytes`, readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    crate::storage::durable::replace(path, bytes, 0o600).map_err(|source| {
        tracing::error!(path = %path.display(), error = %source, "auth file not saved");
        FileError::Io { path: path.into(), source }
    })
}

impl FileError {
    /// What failed, without the server's paths: for answers to clients (the log has the path).
    pub fn reason(&self) -> String {
        match self {
            FileError::Io { source, .. } => source.to_string(),
            FileError::Json { source, .. } => format!("not valid: {source}"),
            FileError::KeyLength { found, .. } => format!("signing key of {found} bytes"),
            FileError::Random | FileError::Shared(_) => self.to_string(),
        }
    }

    /// The disk is full: the change can be retried once space is freed.
    /// Another node changed the same document at the same time: the change can be retried.
    pub fn is_conflict(&self) -> bool {
        matches!(self, FileError::Shared(crate::storage::meta::MetaError::Conflict(_)))
    }

    pub fn is_out_of_space(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if crate::storage::durable::is_out_of_space(source))
    }
}

/// Reads `path` if it exists, tightening its mode to 0600 (a file restored from a backup may
/// have come back world-readable).
pub fn read_private(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(FileError::Io { path: path.into(), source }),
    };
    let mode = f.metadata().map_err(io_err(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "auth file was readable by others; mode set to 0600");
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    }
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(io_err(path))?;
    Ok(Some(out))
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, FileError> {
    match read_private(path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| FileError::Json { path: path.into(), source }),
    }
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| FileError::Json { path: path.into(), source })?;
    write_private(path, &bytes)
}

/// The token-signing key: read, or generated and stored on first start.
pub fn signing_key(path: &Path) -> Result<[u8; KEY_BYTES], FileError> {
    if let Some(bytes) = read_private(path)? {
        return bytes.as_slice().try_into().map_err(|_| FileError::KeyLength { path: path.into(), found: bytes.len() });
    }
    let key = random_bytes::<KEY_BYTES>()?;
    write_private(path, &key)?;
    Ok(key)
}
