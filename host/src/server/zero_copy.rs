//! The connection's socket as hyper sees it, with one difference: bytes that are slices of a
//! mapped blob file (storage/mapped.rs) go out with `sendfile` from the file instead of
//! `write` from memory. hyper still does all the HTTP framing; only how the body's bytes reach
//! the socket changes, and the bytes sent are by construction the bytes hyper asked to write.
//!
//! Why: a blob GET otherwise costs two copies in the kernel per byte (page cache to a buffer,
//! buffer to the socket); `sendfile` hands the page cache pages to the socket (the peer's
//! receive then copies them once, as from nginx). Measured: docs/performance.md, "warm GET".
//!
//! Over TLS the bytes are encrypted in user space, so there is nothing for `sendfile` to do
//! (kTLS aside): a request on a TLS connection runs with `sendfile_available()` false, and its
//! blob bodies are read in chunks (server/body.rs) rather than mapped. Read through a map, every
//! page of a blob would be faulted into the process (its RSS growing by the blob's size) on the
//! async worker thread, where a read from disk blocks other connections.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::storage::mapped;

tokio::task_local! {
    static SENDFILE: bool;
}

/// Runs a request's handler knowing whether its connection sends mapped slices with `sendfile`.
pub fn scope<F: Future>(sendfile: bool, handler: F) -> impl Future<Output = F::Output> {
    SENDFILE.scope(sendfile, handler)
}

/// Whether a body made now is sent by a connection that can `sendfile` mapped slices. Outside a
/// request (tests) it is, as for plain HTTP.
pub fn sendfile_available() -> bool {
    SENDFILE.try_with(|s| *s).unwrap_or(true)
}

pub struct ZeroCopyStream {
    inner: TcpStream,
}

impl ZeroCopyStream {
    pub fn new(inner: TcpStream) -> Self {
        ZeroCopyStream { inner }
    }

    /// Sends up to `len` bytes of `file` from `offset`, as many as the socket takes now.
    fn poll_send_file(&self, cx: &mut Context<'_>, file: &std::fs::File, offset: u64, len: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                let mut at = offset;
                rustix::fs::sendfile(&self.inner, file, Some(&mut at), len).map_err(io::Error::from)
            });
            match sent {
                // The map covers the file's length, so the file cannot end before the slice does.
                Ok(0) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob file ended inside its map"))),
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match mapped::lookup(buf) {
            Some((file, offset)) => this.poll_send_file(cx, &file, offset, buf.len()),
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    /// A run of ordinary buffers goes out in one `writev`; a mapped slice at the front goes out
    /// with `sendfile` on its own. Writing less than all of `bufs` is allowed: hyper calls again
    /// with the rest.
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let bufs = &bufs[first..];
        if let Some((file, offset)) = mapped::lookup(&bufs[0]) {
            return this.poll_send_file(cx, &file, offset, bufs[0].len());
        }
        // bufs[0] was just looked up: the run of ordinary buffers starts with it.
        let plain = 1 + bufs[1..].iter().take_while(|b| mapped::lookup(b).is_none()).count();
        Pin::new(&mut this.inner).poll_write_vectored(cx, &bufs[..plain])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
