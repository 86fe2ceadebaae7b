//! Blob files mapped read-only into memory, so that a response body can be made of the file's
//! own pages and a connection can send them with `sendfile` (server/zero_copy.rs) instead of
//! copying them through a buffer twice (`pread` into it, `write` out of it).
//!
//! A body slice is an ordinary `Bytes`: whatever touches it (a test collecting a body, a
//! framing layer that copies small pieces) reads the file's bytes through the map. The
//! connection recognises a slice by its address: every live map is listed in a registry
//! with its file, so "these bytes are the file's bytes at offset N" is a lookup, and a
//! `sendfile` of that range sends exactly the bytes the slice holds.
//!
//! Only files that never shrink while mapped are mapped: stored blobs (immutable; removal
//! unlinks, the map keeps the inode) and staging files reserved at their full length before
//! the map is made. Reading a mapped page past the end of its file would be a SIGBUS.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// Files smaller than this are read into buffers: a map and its unmap cost more than a copy.
pub const MAP_MIN: u64 = 1024 * 1024;

struct Region {
    end: usize,
    file: Arc<File>,
}

/// Live maps by start address.
static REGIONS: RwLock<BTreeMap<usize, Region>> = RwLock::new(BTreeMap::new());
/// How many maps are live: most writes (headers, manifests) skip the registry's lock.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// One read-only, shared map of a file from offset 0.
struct Mapping {
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: the memory is mapped read-only and never written through; it stays mapped until
// the last owner (the `Bytes` made from this `Mapping`) drops it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes of a file at least that long (see `map`), for the
        // lifetime of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Out of the registry before the address range can be reused by another map.
        let removed = REGIONS.write().unwrap_or_else(|e| e.into_inner()).remove(&(self.ptr as usize));
        if removed.is_some() {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
        // SAFETY: the range was mapped by `map` and nothing refers to it any more (the last
        // `Bytes` over it is being dropped).
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr, self.len) } {
            tracing::warn!(error = %e, "munmap of a blob map failed");
        }
    }
}

/// Maps the first `len` bytes of `file`, which must be at least that long and must not shrink
/// while any slice of the result lives. `len` 0 cannot be mapped (an error).
pub fn map(file: Arc<File>, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("blob too large to map"))?;
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map an empty file"));
    }
    let actual = file.metadata()?.len();
    if actual < len as u64 {
        return Err(io::Error::other(format!("file holds {actual} bytes, {len} asked to be mapped")));
    }
    // SAFETY: a fresh mapping at an address the kernel picks, read-only, of a file checked to
    // be at least `len` bytes long.
    let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ, rustix::mm::MapFlags::SHARED, &*file, 0) }?;
    let mapping = Mapping { ptr, len };
    REGIONS.write().unwrap_or_else(|e| e.into_inner()).insert(ptr as usize, Region { end: ptr as usize + len, file });
    LIVE.fetch_add(1, Ordering::Relaxed);
    Ok(Bytes::from_owner(mapping))
}

/// The file and offset whose bytes `buf` is, if `buf` lies wholly inside a live map.
pub fn lookup(buf: &[u8]) -> Option<(Arc<File>, u64)> {
    lookup_range(buf.as_ptr() as usize, buf.len())
}

fn lookup_range(start: usize, len: usize) -> Option<(Arc<File>, u64)> {
    if len == 0 || LIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let regions = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    let (base, region) = regions.range(..=start).next_back()?;
    (start.checked_add(len)? <= region.end).then(|| (region.file.clone(), (start - base) as u64))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::{lookup, lookup_range, map};

    #[test]
    fn a_slice_of_a_map_is_found_with_its_file_offset_until_the_map_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i % 253) as u8).collect();
        std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let whole = map(file.clone(), data.len() as u64).unwrap();
        assert!(whole == data[..]);
        let part = whole.slice(5000..9000);
        let (found, offset) = lookup(&part).unwrap();
        assert!(Arc::ptr_eq(&found, &file));
        assert_eq!(offset, 5000);
        // ordinary memory, and a range running past the map's end, are not the file's
        assert!(lookup(&data[..10]).is_none());
        let addr = part.as_ptr() as usize;
        assert!(lookup_range(addr, data.len()).is_none());
        drop((whole, part));
        assert!(lookup_range(addr, 1).is_none());
        // a file shorter than asked, and an empty one, are refused
        assert!(map(file.clone(), data.len() as u64 + 1).is_err());
        assert!(map(file, 0).is_err());
    }
}
