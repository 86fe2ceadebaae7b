//! The checks a published module `.zip` must pass before it is stored, read from the upload
//! session's central directory (file names and sizes only, no inflating): what the `go`
//! command would refuse when it extracts the zip (`golang.org/x/mod/zip`) is refused here.
//! Hand-read rather than a zip crate: only the directory's fixed-layout records are needed,
//! read in pieces from the host, never the whole archive in the plugin's memory.

use crate::contract::{Host, HostError};
use crate::module::{ModulePath, Version};
use std::collections::HashSet;

/// `modzip.MaxZipFile`: the largest module zip, and the largest total of its files unpacked.
pub const MAX_ZIP: u64 = 500 << 20;
const EOCD_SIG: u32 = 0x0605_4b50;
const CDH_SIG: u32 = 0x0201_4b50;
const EOCD_LEN: u64 = 22;
const PIECE: u64 = 256 << 10;

/// Why a zip is refused (the publisher's fault), or the host failed reading it.
#[derive(Debug)]
pub enum ZipError {
    Invalid(String),
    Host(HostError),
}

impl From<HostError> for ZipError {
    fn from(e: HostError) -> ZipError {
        ZipError::Host(e)
    }
}

fn invalid<T>(m: impl Into<String>) -> Result<T, ZipError> {
    Err(ZipError::Invalid(m.into()))
}

fn u16_at(b: &[u8], i: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn u32_at(b: &[u8], i: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]))
}

/// `MaxGoMod` and `MaxLICENSE` of `golang.org/x/mod/zip`.
const MAX_GO_MOD: u64 = 16 << 20;

/// An element of a file path as Go's `module.CheckFilePath` allows it: not dots only, no
/// trailing dot, letters (any script), digits and `!#$%&()+,-.=@[]^_{}~ `, no Windows device
/// name (`CON`, `com1.go`).
fn file_elem_ok(e: &str) -> bool {
    let short = e.split('.').next().unwrap_or(e).to_ascii_uppercase();
    let device = matches!(short.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (short.len() == 4
            && (short.starts_with("COM") || short.starts_with("LPT"))
            && short.ends_with(|c: char| ('1'..='9').contains(&c)));
    !e.chars().all(|c| c == '.')
        && !e.ends_with('.')
        && !device
        && e.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || "!#$%&()+,-.=@[]^_{}~ ".contains(c)
                || (!c.is_ascii() && c.is_alphabetic())
        })
}

/// A file name inside a module zip of `size` bytes unpacked, as Go's `modzip.Unzip` checks
/// it: `module@version/` then a clean relative path, a `go.mod` only at the root.
fn check_name(name: &str, prefix: &str, size: u64) -> Result<(), ZipError> {
    let Some(rest) = name.strip_prefix(prefix) else {
        return invalid(format!("{name:?} is not under {prefix}"));
    };
    // directories end with `/`: their elements are checked like a file's
    let (path, dir) = match rest.strip_suffix('/') {
        Some(p) => (p, true),
        None => (rest, false),
    };
    if rest.is_empty() {
        return Ok(());
    }
    if !path.split('/').all(file_elem_ok) {
        return invalid(format!(
            "{name:?} is not a file path go accepts (an empty, dot-only or dot-ended element, \
             a character other than letters, digits and !#$%&()+,-.=@[]^_{{}}~ and space, \
             or a Windows device name)"
        ));
    }
    let base = path.rsplit('/').next().unwrap_or(path);
    if !dir && base.eq_ignore_ascii_case("go.mod") && path != "go.mod" {
        return invalid(format!(
            "{name:?}: a go.mod only in the module root, spelled go.mod"
        ));
    }
    if !dir && (path == "go.mod" || path == "LICENSE") && size > MAX_GO_MOD {
        return invalid(format!("{name:?} is larger than 16 MiB"));
    }
    Ok(())
}

/// Checks the zip of `module@version` in upload session `id` of `size` bytes.
pub fn check(
    host: &impl Host,
    id: &str,
    size: u64,
    module: &ModulePath,
    version: &Version,
) -> Result<(), ZipError> {
    if size > MAX_ZIP {
        return invalid(format!("the zip is larger than {} MiB", MAX_ZIP >> 20));
    }
    if size < EOCD_LEN {
        return invalid("not a zip file");
    }
    // the end record is in the last 22 bytes plus an archive comment of at most 64 KiB
    let tail_start = size.saturating_sub(EOCD_LEN + 0xffff);
    let tail = host.upload_read(id, tail_start, size - tail_start)?;
    let Some(at) = (0..=tail.len().saturating_sub(EOCD_LEN as usize))
        .rev()
        .find(|&i| u32_at(&tail, i) == u64::from(EOCD_SIG))
    else {
        return invalid("not a zip file (no end of central directory)");
    };
    let eocd = &tail[at..];
    let (entries, cd_size, cd_offset) = (u16_at(eocd, 10), u32_at(eocd, 12), u32_at(eocd, 16));
    if entries == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
        return invalid("zip64 archives are not accepted");
    }
    if cd_offset + cd_size > tail_start + at as u64 {
        return invalid("the central directory lies outside the zip");
    }
    let prefix = format!("{}@{}/", module.as_str(), version.as_str());
    let mut seen: HashSet<String> = HashSet::new();
    let mut unpacked = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    let (mut read, mut count) = (0u64, 0u64);
    loop {
        // a whole header in the buffer, else the next piece of the directory
        let need = if buf.len() >= 46 {
            46 + (u16_at(&buf, 28) + u16_at(&buf, 30) + u16_at(&buf, 32)) as usize
        } else {
            46
        };
        if buf.len() < need {
            if read >= cd_size {
                break;
            }
            let piece = host.upload_read(id, cd_offset + read, PIECE.min(cd_size - read))?;
            if piece.is_empty() {
                return invalid("the central directory is cut short");
            }
            read += piece.len() as u64;
            buf.extend_from_slice(&piece);
            continue;
        }
        if u32_at(&buf, 0) != u64::from(CDH_SIG) {
            return invalid("a damaged central directory");
        }
        let name_len = u16_at(&buf, 28) as usize;
        let name = std::str::from_utf8(&buf[46..46 + name_len])
            .map_err(|_| ZipError::Invalid("a file name that is not UTF-8".into()))?;
        check_name(name, &prefix, u32_at(&buf, 24))?;
        if !seen.insert(name.to_lowercase()) {
            return invalid(format!(
                "{name:?} appears twice (file names must differ in more than case)"
            ));
        }
        unpacked += u32_at(&buf, 24);
        if unpacked > MAX_ZIP {
            return invalid(format!(
                "the files unpack to more than {} MiB",
                MAX_ZIP >> 20
            ));
        }
        count += 1;
        buf.drain(..need);
    }
    if count != entries || !buf.is_empty() {
        return invalid("the central directory does not hold the entries it announces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_as_go_unzips_them() {
        let p = "example.com/m@v1.0.0/";
        let ok = |rest: &str| super::check_name(&format!("{p}{rest}"), p, 10).is_ok();
        for good in [
            "",
            "go.mod",
            "a b/ü.go",
            "sub/",
            "x/y.go",
            "LICENSE",
            "a~1.go",
            "con2.go",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "/",
            "sub/go.mod",
            "GO.MOD",
            "a:b.go",
            "x/../y",
            "./x",
            "x.",
            "...",
            "CON.go",
            "x/com1",
            "a\\b",
            "a\0b",
            "x//y",
            "a\"b",
            "a*b",
            "a?b",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(super::check_name(&format!("{p}go.mod"), p, 17 << 20).is_err());
        assert!(super::check_name("other@v1.0.0/x.go", p, 1).is_err());
    }
}
