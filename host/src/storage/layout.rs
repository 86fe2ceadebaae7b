//! Where everything lives under the data directory, in one place.
//!
//! ```text
//! <data>/blobs/<algorithm>/<first two hex>/<hex>   verified content, named by its digest
//! <data>/staging/<uuid>                             writes in progress (locked while in use); the
//!                                                  unlocked ones are removed at start
//! <data>/uploads/<repo>/<id>                        upload sessions (removed after a day untouched)
//! <data>/meta.redb                                  per-repository metadata (tag links, ...)
//! <data>/repositories.json                          repository definitions
//! <data>/cache/plugins/<stem>-<key>.cwasm           compiled plugins (rebuilt when missing)
//! ```

use std::path::{Path, PathBuf};

use crate::digest::Digest;

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn blob(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs().join(digest.algorithm().name()).join(&hex[..2]).join(hex)
    }

    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    pub fn staged(&self) -> PathBuf {
        self.staging().join(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
    }

    pub fn meta_db(&self) -> PathBuf {
        self.root.join("meta.redb")
    }

    pub fn repositories(&self) -> PathBuf {
        self.root.join("repositories.json")
    }

    pub fn compiled_plugins(&self) -> PathBuf {
        self.root.join("cache").join("plugins")
    }
}
