//! `n` / `last` pagination shared by the tag list and the catalog: lexical order, at most `n`
//! entries after `last`, and a `Link: <…?n=N&last=X>; rel="next"` when more remain.

use crate::error::{ErrorCode, RegistryError};
use crate::url;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    pub n: Option<usize>,
    pub last: Option<String>,
}

impl Paging {
    pub fn from_query(query: Option<&str>) -> Result<Paging, RegistryError> {
        let n = match url::query_param(query, "n") {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.parse::<usize>().map_err(|_| {
                RegistryError::new(
                    ErrorCode::PaginationNumberInvalid,
                    "n must be a non-negative integer",
                )
                .with_detail(serde_json::json!({ "n": s }))
            })?),
        };
        let last = url::query_param(query, "last").filter(|s| !s.is_empty());
        Ok(Paging { n, last })
    }

    pub fn params(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(n) = self.n {
            p.push(("n", n.to_string()));
        }
        if let Some(last) = &self.last {
            p.push(("last", last.clone()));
        }
        p
    }
}

/// One page of a listing from `after`, its entries after `paging.last` in order: at most `n`,
/// and the paging of the next page when more remain. Reads at most `n + 1` entries, so a page
/// costs what it shows, however long the listing.
pub fn page_from<E>(
    after: impl Iterator<Item = Result<String, E>>,
    paging: &Paging,
) -> Result<(Vec<String>, Option<Paging>), E> {
    let Some(n) = paging.n else {
        return Ok((after.collect::<Result<_, E>>()?, None));
    };
    if n == 0 {
        return Ok((Vec::new(), None));
    }
    let mut page: Vec<String> = after.take(n.saturating_add(1)).collect::<Result<_, E>>()?;
    if page.len() <= n {
        return Ok((page, None));
    }
    page.truncate(n);
    let next = Paging {
        n: Some(n),
        last: page.last().cloned(),
    };
    Ok((page, Some(next)))
}

/// Entries after `paging.last` in a sorted list, as `page_from` reads them from a listing.
#[cfg(test)]
fn paginate(all: &[String], paging: &Paging) -> (Vec<String>, Option<Paging>) {
    let after = all
        .iter()
        .filter(|t| paging.last.as_ref().is_none_or(|l| t.as_str() > l.as_str()))
        .map(|t| Ok::<_, std::convert::Infallible>(t.clone()));
    match page_from(after, paging) {
        Ok(page) => page,
        Err(never) => match never {},
    }
}

/// `<endpoint?n=…&last=…>; rel="next"`
pub fn next_link(endpoint: &str, next: &Paging) -> String {
    let params = next.params();
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    format!("<{}>; rel=\"next\"", url::with_query(endpoint, &params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paging_query() {
        assert_eq!(Paging::from_query(None).unwrap(), Paging::default());
        assert_eq!(
            Paging::from_query(Some("n=2&last=b")).unwrap(),
            Paging {
                n: Some(2),
                last: Some("b".into())
            }
        );
        let e = Paging::from_query(Some("n=-1")).unwrap_err();
        assert_eq!(
            (e.code, e.status),
            (ErrorCode::PaginationNumberInvalid, 400)
        );
    }

    #[test]
    fn pages() {
        let all = list(&["a", "b", "c", "d"]);
        let p = |n, last: Option<&str>| Paging {
            n,
            last: last.map(Into::into),
        };
        assert_eq!(paginate(&all, &p(None, None)), (all.clone(), None));
        assert_eq!(
            paginate(&all, &p(Some(2), None)),
            (list(&["a", "b"]), Some(p(Some(2), Some("b"))))
        );
        assert_eq!(
            paginate(&all, &p(Some(2), Some("b"))),
            (list(&["c", "d"]), None)
        );
        assert_eq!(paginate(&all, &p(None, Some("c"))), (list(&["d"]), None));
        assert_eq!(paginate(&all, &p(Some(0), None)), (vec![], None));
        assert_eq!(paginate(&all, &p(Some(10), Some("z"))), (vec![], None));
    }

    #[test]
    fn links() {
        let next = Paging {
            n: Some(2),
            last: Some("a/b".into()),
        };
        assert_eq!(
            next_link("http://h/v2/_catalog", &next),
            "<http://h/v2/_catalog?n=2&last=a%2Fb>; rel=\"next\""
        );
    }
}
