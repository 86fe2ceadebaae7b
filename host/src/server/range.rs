//! The `Range` request header against a blob of known length (RFC 9110 14.1-14.2): one range
//! of bytes, or the whole blob. Multiple ranges and anything malformed are ignored (the whole is
//! served), as a server may.

/// A single `bytes=` range against a blob of `len` bytes: Some(Ok((start, len))), Some(Err)
/// when unsatisfiable, None to serve it whole (absent, malformed or multi-range).
pub fn parse_range(header: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        // An empty blob has no byte a 206 could name ("bytes 0--1/0" is what some registries
        // send): the suffix covers the whole, so the whole is served (200, no body).
        if len == 0 {
            return None;
        }
        let n = n.min(len);
        (len - n, n)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() { len.saturating_sub(1) } else { b.parse::<u64>().ok()?.min(len.saturating_sub(1)) };
        if start >= len || end < start {
            return Some(Err(()));
        }
        (start, end - start + 1)
    };
    Some(Ok(range))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 10))));
        assert_eq!(parse_range("bytes=-5", 100), Some(Ok((95, 5))));
        assert_eq!(parse_range("bytes=50-1000", 100), Some(Ok((50, 50))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        // an empty blob (RFC 9110 14.1.1): a non-zero suffix is the whole of it, a first byte is never there
        assert_eq!(parse_range("bytes=-5", 0), None);
        assert_eq!(parse_range("bytes=-0", 0), Some(Err(())));
        assert_eq!(parse_range("bytes=0-", 0), Some(Err(())));
        assert_eq!(parse_range("bytes=0-0", 0), Some(Err(())));
        assert_eq!(parse_range("bytes=7-3", 0), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,2-3", 0), None);
        assert_eq!(parse_range("bytes=x", 0), None);
    }
}
