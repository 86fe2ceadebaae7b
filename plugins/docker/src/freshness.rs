//! When a cached tag may be served without asking the upstream.

use crate::meta::TagLink;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagDecision {
    /// confirmed within the tag-check window: serve it, no upstream request
    Fresh,
    /// cached but older than the window: HEAD upstream to see whether it moved
    Revalidate,
    /// nothing usable cached
    Fetch,
}

/// `cached` is the tag link whose manifest blob is present in the store. A `checked` in
/// the future (clock stepped back) counts as just checked rather than as expired.
pub fn decide(cached: Option<&TagLink>, now: u64, tag_check_seconds: u64) -> TagDecision {
    match cached {
        None => TagDecision::Fetch,
        Some(link) if now.saturating_sub(link.checked) < tag_check_seconds => TagDecision::Fresh,
        Some(_) => TagDecision::Revalidate,
    }
}

/// What a successful upstream HEAD means for the cached link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadVerdict {
    /// same digest: refresh `checked`, serve the cached manifest
    Unchanged,
    /// the tag moved (or was never cached) to this digest
    Moved(String),
    /// the upstream did not say which digest: GET by tag
    Unknown,
}

pub fn after_head(cached: Option<&TagLink>, upstream_digest: Option<&str>) -> HeadVerdict {
    match (cached, upstream_digest) {
        (_, None) => HeadVerdict::Unknown,
        (Some(link), Some(d)) if link.digest == d => HeadVerdict::Unchanged,
        (_, Some(d)) => HeadVerdict::Moved(d.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(checked: u64) -> TagLink {
        TagLink {
            digest: "sha256:a".into(),
            media_type: "m".into(),
            checked,
        }
    }

    #[test]
    fn window() {
        assert_eq!(decide(None, 1000, 300), TagDecision::Fetch);
        assert_eq!(decide(Some(&link(1000)), 1000, 300), TagDecision::Fresh);
        assert_eq!(decide(Some(&link(701)), 1000, 300), TagDecision::Fresh);
        assert_eq!(decide(Some(&link(700)), 1000, 300), TagDecision::Revalidate);
        assert_eq!(decide(Some(&link(2000)), 1000, 300), TagDecision::Fresh);
    }

    #[test]
    fn zero_window_always_revalidates() {
        assert_eq!(decide(Some(&link(1000)), 1000, 0), TagDecision::Revalidate);
    }

    #[test]
    fn head_verdicts() {
        let l = link(0);
        assert_eq!(
            after_head(Some(&l), Some("sha256:a")),
            HeadVerdict::Unchanged
        );
        assert_eq!(
            after_head(Some(&l), Some("sha256:b")),
            HeadVerdict::Moved("sha256:b".into())
        );
        assert_eq!(
            after_head(None, Some("sha256:a")),
            HeadVerdict::Moved("sha256:a".into())
        );
        assert_eq!(after_head(Some(&l), None), HeadVerdict::Unknown);
    }
}
