//! Response bodies: small ones whole, blobs as streams of slices of the mapped file (sent
//! with `sendfile` by the connection, server/zero_copy.rs) or, where a file cannot be mapped or
//! the connection cannot `sendfile` (TLS), read chunk by chunk, so memory stays flat however
//! large the blob.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;

use super::zero_copy;
use crate::storage::mapped;
use crate::upstream::fill::Fill;

pub type Body = BoxBody<Bytes, io::Error>;

/// Bytes read per step when streaming a blob.
const CHUNK: u64 = 512 * 1024;
/// Bytes of a mapped blob per body frame: no memory is behind it (the connection sends it
/// from the page cache), so it is large; it still bounds what one poll of the body hands out.
const MAPPED_CHUNK: u64 = 4 * 1024 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Reads one chunk into `buf` and splits it off. Once hyper has written and dropped the previous
/// chunk, `reserve` takes its memory back, so a stream cycles through one or two resident buffers
/// instead of mapping, faulting in and unmapping a fresh 512 KiB for every chunk. The read goes
/// into the buffer's spare capacity: zeroing it first cost ~3% of a blob GET's CPU.
async fn read_at(file: Arc<File>, pos: u64, want: u64, mut buf: BytesMut) -> io::Result<(Bytes, BytesMut)> {
    tokio::task::spawn_blocking(move || {
        let want = want as usize;
        buf.clear();
        buf.reserve(want);
        let spare = &mut buf.spare_capacity_mut()[..want];
        let n = rustix::io::pread(&*file, spare, pos)?.0.len();
        // SAFETY: pread initialised the first `n` bytes of the spare capacity (rustix hands back
        // exactly the initialised part), and `n <= want <= capacity`.
        unsafe { buf.set_len(n) };
        Ok((buf.split().freeze(), buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// `len` bytes of a stored blob from `start`.
pub fn file_range(file: Arc<File>, start: u64, len: u64) -> Body {
    let end = start + len;
    if len >= mapped::MAP_MIN && zero_copy::sendfile_available() {
        match mapped::map(file.clone(), end) {
            Ok(map) => return mapped_range(map, start, end),
            Err(e) => tracing::debug!(error = %e, "blob not mapped; reading it"),
        }
    }
    let s = stream::unfold((file, start, BytesMut::new()), move |(file, pos, buf)| async move {
        if pos >= end {
            return None;
        }
        match read_at(file.clone(), pos, CHUNK.min(end - pos), buf).await {
            Ok((b, buf)) if !b.is_empty() => {
                let next = pos + b.len() as u64;
                Some((Ok(Frame::data(b)), (file, next, buf)))
            }
            Ok((_, buf)) => Some((Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob shorter than its size")), (file, end, buf))),
            Err(e) => Some((Err(e), (file, end, BytesMut::new()))),
        }
    });
    StreamBody::new(s).boxed()
}

/// A blob the storage backend streams (an object in S3): its chunks as they arrive.
pub fn stream(chunks: futures_util::stream::BoxStream<'static, io::Result<Bytes>>) -> Body {
    // A body must be `Sync`, a boxed stream is only `Send`: the (never contended) mutex makes it so.
    let chunks = std::sync::Mutex::new(chunks);
    let frames = stream::poll_fn(move |cx| {
        let mut chunks = chunks.lock().unwrap_or_else(|e| e.into_inner());
        futures_util::StreamExt::poll_next_unpin(&mut *chunks, cx).map(|c| c.map(|c| c.map(Frame::data)))
    });
    StreamBody::new(frames).boxed()
}

/// Bytes `start..end` of a mapped file, as slices of the map.
fn mapped_range(map: Bytes, start: u64, end: u64) -> Body {
    let frames = (start..end).step_by(MAPPED_CHUNK as usize).map(move |at| {
        let to = (at + MAPPED_CHUNK).min(end);
        Ok(Frame::data(map.slice(at as usize..to as usize)))
    });
    StreamBody::new(stream::iter(frames)).boxed()
}

/// Streams bytes `start..end` (`end` None: to the end) of a fill in progress as it grows, from
/// the staging file's map, else the fill's recent chunks while it keeps up, else the staging file. Where
/// the fill holds the last byte back until the blob is verified, so does this stream. A fill that
/// fails ends the stream with an error, which aborts the response, so a client never takes a
/// partial blob, or a wrong one found out before its end, for a whole one.
pub fn follow(fill: Arc<Fill>, start: u64, end: Option<u64>) -> Body {
    struct St {
        fill: Arc<Fill>,
        rx: tokio::sync::watch::Receiver<crate::upstream::fill::Progress>,
        pos: u64,
        stop: u64,
        done: bool,
        buf: BytesMut,
        /// Whether the fill's map may be used: only where the connection sends it with `sendfile`.
        map: bool,
    }
    let map = zero_copy::sendfile_available();
    let rx = fill.progress.clone();
    let stop = end.unwrap_or(u64::MAX);
    let s = stream::unfold(St { fill, rx, pos: start, stop, done: false, buf: BytesMut::new(), map }, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if st.pos >= st.stop {
                return None;
            }
            let step = st.rx.borrow_and_update().readable(st.fill.hold_last_byte);
            let (available, at_end) = match step {
                Ok(s) => s,
                Err(e) => {
                    st.done = true;
                    return Some((Err(io::Error::other(format!("cache fill failed: {e}"))), st));
                }
            };
            if at_end && st.pos >= available {
                return None;
            }
            let limit = available.min(st.stop);
            if let Some(map) = st.fill.mapped.get().filter(|m| st.map && limit <= m.len() as u64) {
                if st.pos < limit {
                    let to = limit.min(st.pos + MAPPED_CHUNK);
                    let b = map.slice(st.pos as usize..to as usize);
                    st.pos = to;
                    return Some((Ok(Frame::data(b)), st));
                }
            } else if let Some(kept) = st.fill.recent.get(st.pos, limit) {
                st.pos += kept.len() as u64;
                return Some((Ok(Frame::data(kept)), st));
            }
            if st.pos < limit {
                let buf = std::mem::take(&mut st.buf);
                match read_at(st.fill.reader.clone(), st.pos, CHUNK.min(limit - st.pos), buf).await {
                    Ok((b, buf)) if !b.is_empty() => {
                        st.buf = buf;
                        st.pos += b.len() as u64;
                        return Some((Ok(Frame::data(b)), st));
                    }
                    Ok(_) => {
                        st.done = true;
                        return Some((Err(io::Error::new(io::ErrorKind::UnexpectedEof, "staged blob shorter than written")), st));
                    }
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
            }
            if st.rx.changed().await.is_err() {
                st.done = true;
                return Some((Err(io::Error::other("cache fill ended without an outcome")), st));
            }
        }
    });
    StreamBody::new(s).boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::follow;
    use crate::upstream::fill::{Fill, Progress, Recent};

    const MIB: usize = 1024 * 1024;

    /// A 10 MiB fill whose every byte has arrived: the staging file holds only the first 6 MiB
    /// (so a read of the tail from the file would fail), memory the last `RECENT_BYTES` (at least 4 MiB).
    fn fill(dir: &std::path::Path) -> (Arc<Fill>, Vec<u8>) {
        let blob: Vec<u8> = (0..10 * MIB).map(|i| (i % 251) as u8).collect();
        let path = dir.join("staged");
        std::fs::write(&path, &blob[..6 * MIB]).unwrap();
        let recent = Recent::default();
        for (i, chunk) in blob.chunks(MIB).enumerate() {
            recent.push((i * MIB) as u64, Bytes::copy_from_slice(chunk));
        }
        let len = blob.len() as u64;
        let progress = Progress { started: true, total: Some(len), written: len, received: true, outcome: None, stored: None };
        let (_tx, rx) = tokio::sync::watch::channel(progress);
        let fill = Fill {
            digest: Some(format!("sha256:{}", "0".repeat(64)).parse().unwrap()),
            reader: Arc::new(std::fs::File::open(&path).unwrap()),
            recent: Arc::new(recent),
            mapped: std::sync::OnceLock::new(),
            progress: rx,
            hold_last_byte: false,
            max_bytes: None,
        };
        (Arc::new(fill), blob)
    }

    #[tokio::test]
    async fn a_late_reader_moves_from_the_staging_file_to_the_kept_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (fill, blob) = fill(dir.path());
        let got = follow(fill.clone(), 0, None).collect().await.unwrap().to_bytes();
        assert!(got == blob[..], "{} bytes, not the blob's {}", got.len(), blob.len());
        // a range across the file/memory boundary, ending inside a kept chunk
        let (start, end) = (5 * MIB + 3, 9 * MIB + 7);
        let got = follow(fill, start as u64, Some(end as u64)).collect().await.unwrap().to_bytes();
        assert!(got == blob[start..end], "range: {} bytes", got.len());
    }
}
