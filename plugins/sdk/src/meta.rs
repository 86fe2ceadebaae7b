//! Metadata values as JSON: the plugin's records in the host's key-value store, and walks over
//! its keys a page at a time.

use crate::contract::{Host, HostError};
use serde::{Serialize, de::DeserializeOwned};

/// Why a metadata record could not be used.
#[derive(Debug)]
pub enum MetaError {
    Host(HostError),
    /// the stored bytes are not the record this plugin writes (a damaged store: our fault)
    Corrupt {
        key: String,
        reason: String,
    },
}

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaError::Host(e) => write!(f, "{e}"),
            MetaError::Corrupt { key, reason } => {
                write!(f, "metadata {key} is unreadable: {reason}")
            }
        }
    }
}

impl From<HostError> for MetaError {
    fn from(e: HostError) -> MetaError {
        MetaError::Host(e)
    }
}

/// The record under `key`, if any.
pub fn get_json<T: DeserializeOwned>(host: &impl Host, key: &str) -> Result<Option<T>, MetaError> {
    let Some(bytes) = host.meta_get(key)? else {
        return Ok(None);
    };
    decode(key, &bytes).map(Some)
}

/// The record under `key` in another repository of this format.
pub fn get_json_in<T: DeserializeOwned>(
    host: &impl Host,
    repository: &str,
    key: &str,
) -> Result<Option<T>, MetaError> {
    let Some(bytes) = host.meta_get_in(repository, key)? else {
        return Ok(None);
    };
    decode(key, &bytes).map(Some)
}

pub fn put_json<T: Serialize>(host: &impl Host, key: &str, value: &T) -> Result<(), MetaError> {
    let bytes = serde_json::to_vec(value).map_err(|e| MetaError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    host.meta_put(key, &bytes).map_err(MetaError::Host)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|e| MetaError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Every record under `prefix`, for garbage collection: one that cannot be read is an error,
/// as an incomplete list of live blobs would delete blobs still in use.
pub fn records<T: DeserializeOwned>(host: &impl Host, prefix: &str) -> Result<Vec<T>, HostError> {
    let mut out = Vec::new();
    for key in keys(host, prefix) {
        let key = key?;
        if let Some(bytes) = host.meta_get(&key)? {
            out.push(
                serde_json::from_slice(&bytes)
                    .map_err(|e| HostError::Internal(format!("{key}: {e}")))?,
            );
        }
    }
    Ok(out)
}

/// The most keys the host answers per page (`keys-page`): a page the plugin holds at once.
pub const HOST_PAGE_MAX: u32 = 1000;

/// The longest key the host takes (longer ones are refused as the plugin's mistake).
pub const MAX_KEY: usize = 1024;

/// Whose keys a walk reads.
#[derive(Clone)]
enum Of {
    Own,
    Repository(String),
}

/// The keys under a prefix, in byte order, fetched from the host a page at a time: a walk holds
/// one page however many keys there are, and a walk that stops early (a page of a tag list)
/// reads only about as many keys as it used. Items are `Err` once, when the host fails.
pub struct Keys<'h, H: Host + ?Sized> {
    host: &'h H,
    of: Of,
    prefix: String,
    after: Option<String>,
    page: std::vec::IntoIter<String>,
    page_size: u32,
    done: bool,
}

/// Every key of the request's repository under `prefix`.
pub fn keys<'h, H: Host + ?Sized>(host: &'h H, prefix: &str) -> Keys<'h, H> {
    Keys {
        host,
        of: Of::Own,
        prefix: prefix.to_owned(),
        after: None,
        page: Vec::new().into_iter(),
        page_size: HOST_PAGE_MAX,
        done: false,
    }
}

/// Every key of another repository of this format under `prefix`.
pub fn keys_in<'h, H: Host + ?Sized>(host: &'h H, repository: &str, prefix: &str) -> Keys<'h, H> {
    Keys {
        of: Of::Repository(repository.to_owned()),
        ..keys(host, prefix)
    }
}

impl<H: Host + ?Sized> Keys<'_, H> {
    /// Starts (or goes on) after `key`, skipping what lies between: a jump over the keys of
    /// one name to the next name is one host call. Keys the host refuses to take (longer than
    /// `MAX_KEY`, or with a NUL) are cut to a start at or before them, so the caller must still
    /// drop keys at or before its own bound.
    pub fn after(mut self, key: Option<&str>) -> Self {
        self.skip_to(key);
        self
    }

    /// As `after`, on a walk under way.
    pub fn skip_to(&mut self, key: Option<&str>) {
        self.after = key.map(start_key);
        self.page = Vec::new().into_iter();
        self.done = false;
    }

    /// Asks the host for pages of `size` keys (at most `HOST_PAGE_MAX`): a walk that needs `n`
    /// keys asks for no more than that.
    pub fn page_size(mut self, size: usize) -> Self {
        self.page_size = u32::try_from(size)
            .unwrap_or(u32::MAX)
            .clamp(1, HOST_PAGE_MAX);
        self
    }

    fn fetch(&self) -> Result<Vec<String>, HostError> {
        let after = self.after.as_deref();
        match &self.of {
            Of::Own => self
                .host
                .meta_list_page(&self.prefix, after, self.page_size),
            Of::Repository(r) => {
                self.host
                    .meta_list_in_page(r, &self.prefix, after, self.page_size)
            }
        }
    }
}

impl<H: Host + ?Sized> Iterator for Keys<'_, H> {
    type Item = Result<String, HostError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(key) = self.page.next() {
            return Some(Ok(key));
        }
        if self.done {
            return None;
        }
        let page = match self.fetch() {
            Ok(page) => page,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        // A short page is the last: the host fills every page it can.
        self.done = page.len() < self.page_size as usize;
        self.after = page.last().cloned().or(self.after.take());
        self.page = page.into_iter();
        let key = self.page.next()?;
        Some(Ok(key))
    }
}

/// A start the host takes, at or before `key`: cut at a NUL and to `MAX_KEY` bytes.
fn start_key(key: &str) -> String {
    let mut end = key.find('\0').unwrap_or(key.len()).min(MAX_KEY);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    key[..end].to_owned()
}

#[cfg(all(test, feature = "fake-host"))]
mod tests {
    use super::*;
    use crate::fake_host::{FakeHost, NoUpstream};

    fn host(n: usize) -> FakeHost {
        let h = FakeHost::new("r", NoUpstream);
        for i in 0..n {
            h.meta.borrow_mut().insert(format!("k/{i:05}"), vec![]);
        }
        h.meta.borrow_mut().insert("l".into(), vec![]);
        h
    }

    #[test]
    fn a_walk_sees_every_key_once_in_order() {
        let h = host(2500);
        let walked: Vec<String> = keys(&h, "k/").map(Result::unwrap).collect();
        let want: Vec<String> = (0..2500).map(|i| format!("k/{i:05}")).collect();
        assert_eq!(walked, want);
        assert_eq!(h.keys_listed.get(), 2500, "three pages, each key once");
    }

    #[test]
    fn a_walk_that_stops_early_reads_about_what_it_used() {
        let h = host(100_000);
        let got: Vec<String> = keys(&h, "k/")
            .after(Some("k/05000"))
            .page_size(11)
            .take(11)
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.first().map(String::as_str), Some("k/05001"));
        assert_eq!(got.len(), 11);
        assert_eq!(h.keys_listed.get(), 11);
    }

    #[test]
    fn skipping_jumps_and_bad_starts_are_cut() {
        let h = host(30);
        let mut walk = keys(&h, "k/").page_size(2);
        assert_eq!(walk.next().unwrap().unwrap(), "k/00000");
        walk.skip_to(Some("k/00027"));
        let rest: Vec<String> = walk.map(Result::unwrap).collect();
        assert_eq!(rest, vec!["k/00028", "k/00029"]);
        let cut: Vec<String> = keys(&h, "k/")
            .after(Some("k/00028\0zz"))
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            cut,
            vec!["k/00029"],
            "cut at the NUL: a start at or before it"
        );
        let long = format!("k/{}", "9".repeat(5000));
        assert_eq!(keys(&h, "k/").after(Some(&long)).count(), 0);
    }

    #[test]
    fn another_repositorys_keys_and_its_errors() {
        let h = host(0);
        h.put_in("s", "k/a", b"");
        let got: Vec<String> = keys_in(&h, "s", "k/").map(Result::unwrap).collect();
        assert_eq!(got, vec!["k/a"]);
        let mut missing = keys_in(&h, "nope", "k/");
        assert!(missing.next().unwrap().is_err());
        assert!(missing.next().is_none(), "an error ends the walk");
    }
}
