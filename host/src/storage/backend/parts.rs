//! Buffers for the parts of multipart uploads, and the node-wide budget they come out of.
//!
//! A part is read from the local file that already holds the blob (a fill's staging file, a
//! commit's spool file) into a buffer of its own just before it is sent, and that buffer is
//! unmapped as soon as the store has it. Every buffer holds its share of one budget per node
//! until it is freed, so what all uploads of a node hold in memory is bounded by the budget,
//! however many fills, commits and composed sessions run at once: past it, an upload waits
//! for a buffer, and since the bytes are in the local file, waiting costs only time, never
//! memory. (Buffers that grew per upload, as object_store's `WriteMultipart` keeps them, made
//! memory grow with the number of concurrent fills.)
//!
//! A buffer is an anonymous map of its own, not heap memory: freed, it goes back to the OS at
//! once rather than staying in an allocator's arena (glibc keeps up to its trim threshold per
//! arena, host/src/lib.rs `tune_allocator`).

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const MIB: usize = 1024 * 1024;

/// Part buffers a node may hold at once, in MiB.
pub struct PartBudget {
    permits: Arc<Semaphore>,
    mib: u32,
}

impl PartBudget {
    pub fn new(mib: u32) -> PartBudget {
        PartBudget { permits: Arc::new(Semaphore::new(mib as usize)), mib }
    }

    /// Waits until `len` bytes of buffer fit in the budget, then reads them from `file` at
    /// `offset`. The buffer holds its share of the budget until the last `Bytes` over it is
    /// dropped. A part larger than the whole budget takes all of it. The read itself is a
    /// plain `pread`: callers run on threads that may block (see `s3::block_on`).
    pub async fn read(&self, file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let permit = self.hold(len as u64).await?;
        let mut buf = PartBuffer::new(len, permit)?;
        file.read_exact_at(buf.as_mut(), offset)?;
        Ok(Bytes::from_owner(buf))
    }

    /// Takes `bytes` of the budget (whole MiB; all of it at the most) until the permit is
    /// dropped: for `read`'s buffers and for buffers kept elsewhere (a `WriteMultipart`'s).
    pub async fn hold(&self, bytes: u64) -> io::Result<OwnedSemaphorePermit> {
        let want = u32::try_from(bytes.div_ceil(MIB as u64)).unwrap_or(u32::MAX).min(self.mib);
        self.permits.clone().acquire_many_owned(want).await.map_err(io::Error::other)
    }

    /// MiB of buffer in use now (for tests).
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.mib as usize - self.permits.available_permits()
    }
}

/// One part's bytes in an anonymous private map, with its share of the budget.
struct PartBuffer {
    ptr: *mut c_void,
    len: usize,
    _permit: OwnedSemaphorePermit,
}

// SAFETY: the map is owned by this value alone; after `new` it is only read (through `AsRef`),
// and it is unmapped once, when the value is dropped.
unsafe impl Send for PartBuffer {}
unsafe impl Sync for PartBuffer {}

impl PartBuffer {
    fn new(len: usize, permit: OwnedSemaphorePermit) -> io::Result<PartBuffer> {
        use rustix::mm::{Advice, MapFlags, ProtFlags};
        // SAFETY: a fresh private anonymous map at an address the kernel picks.
        let ptr = unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE) }?;
        // Huge pages, where the kernel gives them on request, spare a page fault per 4 KiB
        // (1,280 per 5 MiB part). Only a hint: a kernel that refuses it still serves the map.
        // SAFETY: advice on the range just mapped; it changes no contents.
        let _ = unsafe { rustix::mm::madvise(ptr, len, Advice::LinuxHugepage) };
        Ok(PartBuffer { ptr, len, _permit: permit })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` writable bytes for the lifetime of `self`, and `&mut self`
        // makes this the only reference to them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }
}

impl AsRef<[u8]> for PartBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes for the lifetime of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for PartBuffer {
    fn drop(&mut self) {
        // SAFETY: mapped by `new`, and nothing refers to it any more (the last `Bytes` over it
        // is being dropped).
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr, self.len) } {
            tracing::warn!(error = %e, "munmap of an upload part buffer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::{MIB, PartBudget};

    #[tokio::test]
    async fn buffers_hold_the_budget_until_freed_and_a_reader_past_it_waits() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * MIB + 5).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let budget = PartBudget::new(4);
        let a = budget.read(&file, 0, 2 * MIB).await.unwrap();
        let b = budget.read(&file, 2 * MIB as u64, MIB + 5).await.unwrap();
        assert!(a == data[..2 * MIB] && b == data[2 * MIB..]);
        assert_eq!(budget.in_use(), 4);
        // the budget is spent: the next read waits until a buffer is dropped
        let waiting = tokio::time::timeout(Duration::from_millis(100), budget.read(&file, 0, 1)).await;
        assert!(waiting.is_err(), "a read past the budget did not wait");
        let slice = a.slice(10..20);
        drop(a);
        assert_eq!(budget.in_use(), 4, "a slice keeps its buffer");
        drop(slice);
        assert_eq!(budget.in_use(), 2);
        // a part larger than the whole budget takes all of it rather than waiting forever
        drop(b);
        let all = budget.read(&file, 0, 3 * MIB + 5).await.unwrap();
        assert!(all == data[..]);
        assert_eq!(budget.in_use(), 4);
        // reading past the end of the file is an error, and gives its share back
        drop(all);
        assert!(budget.read(&file, 3 * MIB as u64, MIB).await.is_err());
        assert_eq!(budget.in_use(), 0);
    }
}
