//! Garbage collection's mark a page at a time (`live-blobs-page`): a format describes its live
//! set as steps, each a prefix of metadata keys and what to take from each key, and [`page`]
//! walks them from a cursor, cutting a page after [`KEYS_PER_PAGE`] keys. The plugin holds one
//! page of keys and the digests found on it, never the repository's whole live set.
//!
//! The cursor is `<step>:<last key read>`, the plugin's own: the host hands it back as it is.

use crate::contract::{Host, HostError, Level, LivePage};
use crate::meta::keys;
use serde::de::DeserializeOwned;

/// Keys read per page: what one `live-blobs-page` call's CPU budget is sized for.
pub const KEYS_PER_PAGE: usize = 1000;

/// What a step takes from each key: it adds the digests the key's record needs to `live`.
pub type Visit<'a> = dyn FnMut(&str, &mut Vec<String>) -> Result<(), HostError> + 'a;

/// One step of a live-set walk: every key under `prefix`, in order.
pub struct Step<'a> {
    pub prefix: &'a str,
    pub visit: Box<Visit<'a>>,
    /// Tidying, not marking: a failure is logged and ends the step, and the walk goes on
    /// (a failure while marking must fail the page: an incomplete set deletes live blobs).
    pub housekeeping: bool,
}

impl<'a> Step<'a> {
    /// A step whose keys name what is live.
    pub fn mark(
        prefix: &'a str,
        visit: impl FnMut(&str, &mut Vec<String>) -> Result<(), HostError> + 'a,
    ) -> Step<'a> {
        Step {
            prefix,
            visit: Box::new(visit),
            housekeeping: false,
        }
    }

    /// A step over JSON records: each one decoded and handed to `take`, which adds the digests
    /// it needs. A record that cannot be read fails the page (an incomplete set deletes live
    /// blobs); one gone since it was listed needs nothing.
    pub fn records<T: DeserializeOwned, H: Host + ?Sized>(
        host: &'a H,
        prefix: &'a str,
        mut take: impl FnMut(T, &mut Vec<String>) + 'a,
    ) -> Step<'a> {
        Step::mark(prefix, move |key, live| {
            if let Some(bytes) = host.meta_get(key)? {
                let record = serde_json::from_slice(&bytes)
                    .map_err(|e| HostError::Internal(format!("{key}: {e}")))?;
                take(record, live);
            }
            Ok(())
        })
    }

    /// A step that tidies metadata on the way (drops dangling links) and marks nothing.
    pub fn tidy(
        prefix: &'a str,
        mut visit: impl FnMut(&str) -> Result<(), HostError> + 'a,
    ) -> Step<'a> {
        Step {
            prefix,
            visit: Box::new(move |key, _| visit(key)),
            housekeeping: true,
        }
    }
}

/// Where a walk stands.
struct Cursor {
    step: usize,
    after: Option<String>,
}

fn parse(cursor: Option<&str>) -> Result<Cursor, HostError> {
    let Some(c) = cursor else {
        return Ok(Cursor {
            step: 0,
            after: None,
        });
    };
    let (step, after) = c
        .split_once(':')
        .ok_or_else(|| HostError::Internal(format!("not a live-set cursor: {c:?}")))?;
    let step = step
        .parse()
        .map_err(|_| HostError::Internal(format!("not a live-set cursor: {c:?}")))?;
    Ok(Cursor {
        step,
        after: Some(after.to_owned()),
    })
}

/// The page of the walk over `steps` that starts at `cursor`.
pub fn page(
    host: &impl Host,
    cursor: Option<&str>,
    steps: &mut [Step<'_>],
) -> Result<LivePage, HostError> {
    let Cursor {
        step: first,
        mut after,
    } = parse(cursor)?;
    let mut digests = Vec::new();
    let mut read = 0;
    for (i, step) in steps.iter_mut().enumerate().skip(first) {
        let bound = after.take();
        let walk = keys(host, step.prefix).after(bound.as_deref());
        for key in walk {
            let key = match key {
                Ok(k) => k,
                Err(e) if step.housekeeping => {
                    host.log(
                        Level::Warn,
                        &format!("gc: tidying {} stopped: {e}", step.prefix),
                    );
                    break;
                }
                Err(e) => return Err(e),
            };
            // `after` may start a little early (a key the host would not take): skip to the bound
            if bound.as_deref().is_some_and(|b| key.as_str() <= b) {
                continue;
            }
            if let Err(e) = (step.visit)(&key, &mut digests) {
                if !step.housekeeping {
                    return Err(e);
                }
                host.log(Level::Warn, &format!("gc: {key} not tidied: {e}"));
            }
            read += 1;
            if read >= KEYS_PER_PAGE {
                return Ok(LivePage {
                    digests,
                    next: Some(format!("{i}:{key}")),
                });
            }
        }
    }
    Ok(LivePage {
        digests,
        next: None,
    })
}

#[cfg(all(test, feature = "fake-host"))]
mod tests {
    use super::{KEYS_PER_PAGE, Step, page};
    use crate::contract::Host;
    use crate::fake_host::{FakeHost, NoUpstream};

    #[test]
    fn a_walk_is_cut_into_pages_that_cover_every_key_once() {
        let h = FakeHost::new("r", NoUpstream);
        for i in 0..2500 {
            h.meta_put(&format!("a/{i:05}"), b"x").unwrap();
        }
        h.meta_put("b/one", b"y").unwrap();
        h.meta_put("c/gone", b"z").unwrap();
        let (mut seen, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let mut steps = [
                Step::mark("a/", |k, live| {
                    live.push(k.to_owned());
                    Ok(())
                }),
                Step::tidy("c/", |k| h.meta_delete(k)),
                Step::mark("b/", |k, live| {
                    live.push(k.to_owned());
                    Ok(())
                }),
            ];
            let p = page(&h, cursor.as_deref(), &mut steps).unwrap();
            pages += 1;
            assert!(p.digests.len() <= KEYS_PER_PAGE);
            seen.extend(p.digests);
            match p.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 2501);
        assert_eq!(seen.last().map(String::as_str), Some("b/one"));
        assert!(
            h.meta_get("c/gone").unwrap().is_none(),
            "the tidying step ran"
        );
    }

    #[test]
    fn a_bad_cursor_is_an_error() {
        let h = FakeHost::new("r", NoUpstream);
        assert!(page(&h, Some("nonsense"), &mut []).is_err());
    }
}
