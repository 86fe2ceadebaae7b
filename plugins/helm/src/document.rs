//! Documents larger than a host call carries: stored blobs and upload sessions read in
//! pieces, and documents written into the blob store through an upload session.

use crate::contract::{FetchedFile, Host, HostError, Plan, ServeBlob};
use binaryrepo_plugin_sdk::http;
use std::io::Read;

/// Bytes asked of the host per call: well under the small-document limit, so memory stays
/// bounded whatever the document's size.
pub const PIECE: u64 = 256 << 10;

/// Where a document's bytes are.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Blob(&'a str),
    Upload(&'a str),
}

/// `Read` over a stored blob or an upload session, one host call per piece.
pub struct Reader<'a, H: Host> {
    host: &'a H,
    source: Source<'a>,
    offset: u64,
    buf: Vec<u8>,
    pos: usize,
    /// the host's error, kept for the caller (`io::Error` loses it)
    pub failed: Option<HostError>,
}

impl<'a, H: Host> Reader<'a, H> {
    pub fn new(host: &'a H, source: Source<'a>, offset: u64) -> Reader<'a, H> {
        Reader {
            host,
            source,
            offset,
            buf: Vec::new(),
            pos: 0,
            failed: None,
        }
    }

    /// The next piece, or an empty one at the end.
    pub fn piece(&mut self) -> Result<Vec<u8>, HostError> {
        let piece = match self.source {
            Source::Blob(d) => self.host.blob_read_range(d, self.offset, PIECE)?,
            Source::Upload(id) => self.host.upload_read(id, self.offset, PIECE)?,
        };
        self.offset += piece.len() as u64;
        Ok(piece)
    }
}

impl<H: Host> Read for Reader<'_, H> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf = self.piece().map_err(|e| {
                let io = std::io::Error::other(e.to_string());
                self.failed = Some(e);
                io
            })?;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Lines of a stored document, one piece in memory at a time (a line longer than a piece is
/// still whole; `\r` is left to the caller).
pub fn for_each_line<H: Host>(
    host: &H,
    source: Source<'_>,
    mut f: impl FnMut(&str) -> bool,
) -> Result<(), HostError> {
    let mut reader = Reader::new(host, source, 0);
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let piece = reader.piece()?;
        let end = piece.is_empty();
        carry.extend_from_slice(&piece);
        let mut start = 0;
        while let Some(i) = carry[start..].iter().position(|b| *b == b'\n') {
            if !f(&String::from_utf8_lossy(&carry[start..start + i])) {
                return Ok(());
            }
            start += i + 1;
        }
        carry.drain(..start);
        if end {
            if !carry.is_empty() {
                f(&String::from_utf8_lossy(&carry));
            }
            return Ok(());
        }
    }
}

/// A document written into the blob store through an upload session, in pieces.
pub struct Writer<'a, H: Host> {
    host: &'a H,
    id: String,
    buf: Vec<u8>,
}

impl<'a, H: Host> Writer<'a, H> {
    pub fn start(host: &'a H) -> Result<Writer<'a, H>, HostError> {
        Ok(Writer {
            host,
            id: host.upload_start()?,
            buf: Vec::new(),
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), HostError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() as u64 >= PIECE {
            self.host.upload_append(&self.id, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The session with everything written, left open (to inspect before committing).
    pub fn into_session(mut self) -> Result<String, HostError> {
        if !self.buf.is_empty() {
            self.host.upload_append(&self.id, &self.buf)?;
            self.buf.clear();
        }
        Ok(std::mem::take(&mut self.id))
    }

    pub fn commit(mut self) -> Result<FetchedFile, HostError> {
        if !self.buf.is_empty() {
            self.host.upload_append(&self.id, &self.buf)?;
            self.buf.clear();
        }
        let id = std::mem::take(&mut self.id);
        self.host.upload_commit(&id, None)
    }
}

impl<H: Host> Drop for Writer<'_, H> {
    fn drop(&mut self) {
        // an abandoned document leaves no session behind
        if !self.id.is_empty() {
            let _ = self.host.upload_cancel(&self.id);
        }
    }
}

pub const YAML: &str = "application/x-yaml";

/// A rendered document as a plan: inline when small, else stored and served from the store.
pub fn serve_rendered<H: Host>(
    host: &H,
    body: Vec<u8>,
    content_type: &str,
) -> Result<Plan, HostError> {
    if (body.len() as u64) < 2 * PIECE {
        return Ok(Plan::Respond(http::respond(200, content_type, body)));
    }
    let mut w = Writer::start(host)?;
    w.write(&body)?;
    let file = w.commit()?;
    Ok(serve(&file.digest, content_type))
}

pub fn serve(digest: &str, content_type: &str) -> Plan {
    Plan::ServeBlob(ServeBlob {
        digest: digest.to_owned(),
        headers: http::headers(&[("Content-Type", content_type)]),
    })
}
