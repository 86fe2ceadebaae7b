//! A SHA-256 whose state can be saved and restored: an upload session hashes its bytes as they
//! arrive and keeps the state beside the session file, so committing a 10 GB layer does not
//! read it back, and a session survives a restart with its hash.
//!
//! The block function is the `sha2` crate's (SHA-NI or assembly where the CPU has them); only
//! the state around it (eight words, a partial block, the length) and the final padding
//! (FIPS 180-4 §5.1.1) are ours, because no maintained crate lets that state be saved.

use sha2::digest::generic_array::GenericArray;
use sha2::digest::typenum::U64;

use crate::digest::{Algorithm, Digest};

const BLOCK: usize = 64;
const INIT: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
/// Saved states start with this (format version 1).
const MAGIC: &[u8; 8] = b"brsha2v1";
/// The most a saved state takes: magic, length, state, partial-block length and bytes.
pub const SAVED_MAX: usize = 8 + 8 + 32 + 1 + BLOCK;

#[derive(Clone)]
pub struct Sha256State {
    state: [u32; 8],
    partial: [u8; BLOCK],
    partial_len: usize,
    /// Bytes hashed so far.
    len: u64,
}

impl Default for Sha256State {
    fn default() -> Self {
        Self::new()
    }
}

/// Whole blocks as the block function takes them.
fn blocks(data: &[u8]) -> &[GenericArray<u8, U64>] {
    debug_assert_eq!(data.len() % BLOCK, 0);
    // SAFETY: GenericArray<u8, U64> is a `repr(transparent)` array of 64 bytes (size 64, align 1),
    // so a byte slice whose length is a multiple of 64 is a slice of them; `sha2` casts the
    // same way for its own buffers.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<GenericArray<u8, U64>>(), data.len() / BLOCK) }
}

impl Sha256State {
    pub fn new() -> Sha256State {
        Sha256State { state: INIT, partial: [0; BLOCK], partial_len: 0, len: 0 }
    }

    /// How many bytes were hashed.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.partial_len > 0 {
            let take = (BLOCK - self.partial_len).min(data.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&data[..take]);
            self.partial_len += take;
            data = &data[take..];
            if self.partial_len < BLOCK {
                return;
            }
            sha2::compress256(&mut self.state, blocks(&self.partial));
            self.partial_len = 0;
        }
        let whole = data.len() - data.len() % BLOCK;
        if whole > 0 {
            sha2::compress256(&mut self.state, blocks(&data[..whole]));
        }
        let rest = &data[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    pub fn finish(&self) -> Digest {
        let mut state = self.state;
        let mut tail = [0u8; 2 * BLOCK];
        tail[..self.partial_len].copy_from_slice(&self.partial[..self.partial_len]);
        tail[self.partial_len] = 0x80;
        // The length in bits goes in the last 8 bytes of one block or, without room, of two.
        let end = if self.partial_len < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
        tail[end - 8..end].copy_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        sha2::compress256(&mut state, blocks(&tail[..end]));
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Digest::from_bytes(Algorithm::Sha256, &out)
    }

    /// The state as bytes (at most `SAVED_MAX`), for `restore`.
    pub fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SAVED_MAX);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.len.to_le_bytes());
        for w in self.state {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.push(self.partial_len as u8);
        out.extend_from_slice(&self.partial[..self.partial_len]);
        out
    }

    /// A state saved by `save`; None when the bytes are not one (then hash the data again).
    pub fn restore(bytes: &[u8]) -> Option<Sha256State> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (len, rest) = rest.split_first_chunk::<8>()?;
        let (words, rest) = rest.split_first_chunk::<32>()?;
        let (&partial_len, partial) = rest.split_first()?;
        let len = u64::from_le_bytes(*len);
        let partial_len = partial_len as usize;
        if partial_len >= BLOCK || partial.len() != partial_len || len % BLOCK as u64 != partial_len as u64 {
            return None;
        }
        let mut state = [0u32; 8];
        for (w, b) in state.iter_mut().zip(words.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let mut buf = [0u8; BLOCK];
        buf[..partial_len].copy_from_slice(partial);
        Some(Sha256State { state, partial: buf, partial_len, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sha256_across_splits_and_saves() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for total in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 10_000] {
            let want = Digest::of(Algorithm::Sha256, &data[..total]);
            let mut whole = Sha256State::new();
            whole.update(&data[..total]);
            assert_eq!(whole.finish(), want, "{total} bytes at once");
            for cut in [0, 1, 3, 63, 64, 65, 500] {
                let cut = cut.min(total);
                let mut a = Sha256State::new();
                a.update(&data[..cut]);
                let mut b = Sha256State::restore(&a.save()).expect("restores");
                assert!(a.save().len() <= SAVED_MAX);
                b.update(&data[cut..total]);
                assert_eq!(b.len(), total as u64);
                assert_eq!(b.finish(), want, "{total} bytes cut at {cut}");
            }
        }
    }

    #[test]
    fn restore_refuses_what_is_not_a_state() {
        let mut s = Sha256State::new();
        s.update(b"hello");
        let saved = s.save();
        assert!(Sha256State::restore(&saved[..saved.len() - 1]).is_none());
        assert!(Sha256State::restore(b"junk").is_none());
        let mut bad = saved.clone();
        bad[8] = 9; // length no longer matches the partial block
        assert!(Sha256State::restore(&bad).is_none());
    }
}
