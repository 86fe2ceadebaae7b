//! The filesystem backend: blobs as files under `<data>/blobs/` (storage/layout.rs), committed
//! by a durable rename, served from the page cache.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{Backend, Listed, Stored};
use crate::digest::Digest;
use crate::storage::{Layout, durable};

pub struct FsBackend {
    layout: Layout,
}

impl FsBackend {
    pub fn new(layout: Layout) -> io::Result<FsBackend> {
        fs::create_dir_all(layout.blobs())?;
        Ok(FsBackend { layout })
    }

    fn open_file(&self, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.layout.blob(digest)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Backend for FsBackend {
    fn kind(&self) -> &'static str {
        "filesystem"
    }

    fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.layout.blob(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, digest: &Digest) -> io::Result<Option<Stored>> {
        Ok(self.open_file(digest)?.map(|(f, len)| Stored::File(f, len)))
    }

    fn read_range(&self, digest: &Digest, offset: u64, length: u64) -> io::Result<Option<Vec<u8>>> {
        let Some((file, len)) = self.open_file(digest)? else { return Ok(None) };
        let want = length.min(len.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, offset)?;
        Ok(Some(buf))
    }

    fn stream(&self, _digest: &Digest, _offset: u64, _length: u64) -> BoxStream<'static, io::Result<Bytes>> {
        // `open` answers files, which are served from the page cache, never through here.
        stream::once(async { Err(io::Error::other("the filesystem backend serves files, not streams")) }).boxed()
    }

    fn commit(&self, staged: &Path, digest: &Digest) -> io::Result<()> {
        let dest = self.layout.blob(digest);
        if let Some(parent) = dest.parent()
            && !parent.is_dir()
        {
            fs::create_dir_all(parent)?;
            // The new directory's own name lives in its parent (blobs/<algorithm>/).
            if let Some(grandparent) = parent.parent() {
                durable::sync_dir(grandparent)?;
            }
        }
        File::open(staged).and_then(|f| f.sync_all())?;
        durable::rename(staged, &dest)
    }

    fn list(&self, visit: &mut dyn FnMut(Listed)) -> io::Result<()> {
        for algo in fs::read_dir(self.layout.blobs())?.flatten() {
            for shard in fs::read_dir(algo.path())?.flatten() {
                for entry in fs::read_dir(shard.path())?.flatten() {
                    let name = format!("{}:{}", algo.file_name().to_string_lossy(), entry.file_name().to_string_lossy());
                    let Ok(digest) = name.parse::<Digest>() else { continue };
                    let Ok(meta) = entry.metadata() else { continue };
                    let modified = meta.modified().unwrap_or_else(|_| std::time::SystemTime::now());
                    visit(Listed { digest, size: meta.len(), modified });
                }
            }
        }
        Ok(())
    }

    fn delete(&self, digest: &Digest) -> io::Result<bool> {
        match fs::remove_file(self.layout.blob(digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn presign(&self, _digest: &Digest, _ttl: Duration) -> io::Result<Option<String>> {
        // A local file has no URL of its own: blobs are always served by binaryrepo.
        Ok(None)
    }
}
