//! Cleanup rules of a local repository (tag retention), applied by each garbage collection run
//! before its mark. Each image (`library/app`) is cleaned on its own:
//!
//! - `keep_last` N: of the image's tags whose name matches `matching` (every tag when none),
//!   the N most recently pushed stay and the others are removed with the manifests only they
//!   lead to (an index's children, the referrers of a removed manifest). Tags that do not match
//!   are never removed. A tag's push time is its link's `checked` time: a local tag is written
//!   only by a push, so that is when it was last pushed (tags written before cleanup existed
//!   have it too). Ties go to the name that sorts last.
//! - `untagged_after_seconds`: a manifest no kept tag leads to is removed once it was pushed
//!   that long ago. A manifest recorded before push times were kept gets the time of the first
//!   cleanup that sees it, so it goes one delay later rather than at once.
//!
//! Whatever stays keeps what it references: a manifest a kept index lists, or whose subject is
//! kept (a signature, an SBOM), is never removed. Each removal is checked again right before
//! it happens, so a push that lands meanwhile (the tag pushed again, the manifest pushed again)
//! wins over the rule.

use std::collections::{BTreeMap, BTreeSet};

use binaryrepo_plugin_sdk::meta::keys;

use crate::contract::{CleanupReport, CleanupRules, Host, HostError, Level, RepoType, Repository};
use crate::meta::{self, ImageManifest, TagLink};
use crate::reference::{Digest, Name, Tag};

/// Compiled size a pattern may take; the host refuses larger ones when the rules are set.
const PATTERN_SIZE_LIMIT: usize = 256 << 10;

pub fn cleanup(
    host: &impl Host,
    repo: &Repository,
    rules: &CleanupRules,
    now: u64,
) -> Result<CleanupReport, String> {
    if repo.repo_type != RepoType::Local {
        return Err("cleanup rules apply to local repositories only".into());
    }
    let matching = rules
        .matching
        .as_deref()
        .map(|p| {
            regex_lite::RegexBuilder::new(p)
                .size_limit(PATTERN_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("matching {p:?}: {e}"))
        })
        .transpose()?;
    let rules = Rules {
        keep_last: rules.keep_last.map(|n| n as usize),
        matching,
        untagged_after: rules.untagged_after_seconds,
    };
    run(host, &rules, now).map_err(|e| format!("metadata: {e:?}"))
}

struct Rules {
    keep_last: Option<usize>,
    matching: Option<regex_lite::Regex>,
    untagged_after: Option<u64>,
}

/// One image's tags and manifest records.
#[derive(Default)]
struct Image {
    tags: Vec<(Tag, TagLink)>,
    manifests: BTreeMap<String, Option<ImageManifest>>,
}

/// Image by image, so what the plugin holds at once is one image's tags and manifests: the tag
/// and `image-manifest` keys are walked side by side in key order, a page at a time.
fn run(host: &impl Host, rules: &Rules, now: u64) -> Result<CleanupReport, HostError> {
    let mut tags = ByImage::new(keys(host, meta::TAG), meta::TAG, ':').peekable();
    let mut manifests =
        ByImage::new(keys(host, meta::IMAGE_MANIFEST), meta::IMAGE_MANIFEST, '@').peekable();
    let mut report = CleanupReport::default();
    loop {
        // the next image: the one of the two walks whose name comes first in tag-key order
        let next_tags = match tags.peek() {
            Some(Ok((n, _))) => Some(tag_order(n)),
            Some(Err(_)) => return Err(take_err(&mut tags)),
            None => None,
        };
        let next_manifests = match manifests.peek() {
            Some(Ok((n, _))) => Some(tag_order(n)),
            Some(Err(_)) => return Err(take_err(&mut manifests)),
            None => None,
        };
        let (take_tags, take_manifests) = match (&next_tags, &next_manifests) {
            (None, None) => break,
            (Some(_), None) => (true, false),
            (None, Some(_)) => (false, true),
            (Some(t), Some(m)) => (t <= m, m <= t),
        };
        let mut name = None;
        let mut image = Image::default();
        if let Some(Ok((n, rests))) = take_tags.then(|| tags.next()).flatten() {
            if let Ok(parsed) = Name::parse(&n) {
                for rest in rests {
                    let Ok(tag) = Tag::parse(&rest) else {
                        continue;
                    };
                    if let Some(link) = meta::get_tag(host, &parsed, &tag)? {
                        image.tags.push((tag, link));
                    }
                }
                name = Some(parsed);
            }
        }
        if let Some(Ok((n, rests))) = take_manifests.then(|| manifests.next()).flatten() {
            let Ok(parsed) = Name::parse(&n) else {
                continue;
            };
            for rest in rests {
                let Ok(digest) = Digest::parse(&rest) else {
                    continue;
                };
                let record = meta::get_image_manifest(host, &parsed, &digest)?;
                image.manifests.insert(digest.to_string(), record);
            }
            name = Some(parsed);
        }
        if let Some(name) = name {
            clean_image(host, rules, now, &name, &image, &mut report)?;
        }
    }
    Ok(report)
}

/// Where an image's tag keys sort: the order both walks are merged in. Image names hold no byte
/// between ':' and '@', so names sort alike under either separator; were that ever not so, an
/// image would be cleaned in two halves, which is still safe (a manifest is removed only when no
/// tag leads to it at that moment).
fn tag_order(name: &str) -> String {
    format!("{name}:")
}

fn take_err<I: Iterator<Item = Result<(String, Vec<String>), HostError>>>(
    walk: &mut std::iter::Peekable<I>,
) -> HostError {
    match walk.next() {
        Some(Err(e)) => e,
        _ => HostError::Internal("cleanup: a metadata walk ended unexpectedly".into()),
    }
}

/// One image's keys at a time from a walk in key order: (image name, what follows the
/// separator in each key). An image's keys share the prefix `<prefix><name><separator>`, so
/// they come together; keys not of that form are skipped.
struct ByImage<I: Iterator<Item = Result<String, HostError>>> {
    keys: std::iter::Peekable<I>,
    prefix: &'static str,
    separator: char,
}

impl<I: Iterator<Item = Result<String, HostError>>> ByImage<I> {
    fn new(keys: I, prefix: &'static str, separator: char) -> Self {
        ByImage {
            keys: keys.peekable(),
            prefix,
            separator,
        }
    }
}

fn split<'k>(key: &'k str, prefix: &str, separator: char) -> Option<(&'k str, &'k str)> {
    key.strip_prefix(prefix)?.split_once(separator)
}

impl<I: Iterator<Item = Result<String, HostError>>> Iterator for ByImage<I> {
    type Item = Result<(String, Vec<String>), HostError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let key = match self.keys.next()? {
                Ok(key) => key,
                Err(e) => return Some(Err(e)),
            };
            let Some((name, rest)) = split(&key, self.prefix, self.separator) else {
                continue;
            };
            let (name, mut rests) = (name.to_owned(), vec![rest.to_owned()]);
            while let Some(Ok(next)) = self.keys.peek() {
                match split(next, self.prefix, self.separator) {
                    Some((n, r)) if n == name => rests.push(r.to_owned()),
                    Some(_) => break,
                    None => {}
                }
                self.keys.next();
            }
            return Some(Ok((name, rests)));
        }
    }
}

/// What one image loses under the rules: (tags, manifests).
fn select(rules: &Rules, now: u64, image: &Image) -> (Vec<Tag>, BTreeSet<String>) {
    let mut removed_tags: Vec<&(Tag, TagLink)> = Vec::new();
    if let Some(keep) = rules.keep_last {
        let mut counted: Vec<&(Tag, TagLink)> = image
            .tags
            .iter()
            .filter(|(t, _)| {
                rules
                    .matching
                    .as_ref()
                    .is_none_or(|re| re.is_match(t.as_str()))
            })
            .collect();
        // newest first
        counted.sort_by(|(ta, la), (tb, lb)| {
            lb.checked
                .cmp(&la.checked)
                .then_with(|| tb.as_str().cmp(ta.as_str()))
        });
        removed_tags = counted.into_iter().skip(keep).collect();
    }
    let removed: BTreeSet<&str> = removed_tags.iter().map(|(t, _)| t.as_str()).collect();
    let kept_roots = image
        .tags
        .iter()
        .filter(|(t, _)| !removed.contains(t.as_str()))
        .map(|(_, l)| l.digest.clone());
    let kept = closure(image, kept_roots);

    // what removed tags led to, and the untagged manifests old enough
    let mut doomed = closure(image, removed_tags.iter().map(|(_, l)| l.digest.clone()));
    if let Some(after) = rules.untagged_after {
        for (digest, record) in &image.manifests {
            let old_enough = record
                .as_ref()
                .and_then(|r| r.pushed)
                .is_some_and(|pushed| now.saturating_sub(pushed) >= after);
            if old_enough && !kept.contains(digest) {
                doomed.insert(digest.clone());
            }
        }
    }
    doomed.retain(|d| !kept.contains(d) && image.manifests.contains_key(d));

    // what stays keeps what it references: the children of a surviving index, the referrers
    // of a surviving subject (until nothing changes, as one may lead to the other)
    loop {
        let survives = |d: &str| image.manifests.contains_key(d) && !doomed.contains(d);
        let mut spared: Vec<String> = Vec::new();
        for (digest, record) in &image.manifests {
            let Some(record) = record else { continue };
            if survives(digest) {
                spared.extend(
                    record
                        .manifests
                        .iter()
                        .filter(|c| doomed.contains(*c))
                        .cloned(),
                );
            } else if doomed.contains(digest)
                && record
                    .subject
                    .as_deref()
                    .is_some_and(|s| survives(s) || kept.contains(s))
            {
                spared.push(digest.clone());
            }
        }
        if spared.is_empty() {
            break;
        }
        for d in spared {
            doomed.remove(&d);
        }
    }
    (
        removed_tags.into_iter().map(|(t, _)| t.clone()).collect(),
        doomed,
    )
}

/// The manifests `roots` lead to within the image: themselves, an index's children, and the
/// referrers of any of those.
fn closure(image: &Image, roots: impl Iterator<Item = String>) -> BTreeSet<String> {
    // subject -> its referrers, once: an image may hold thousands of manifests
    let mut referrers: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for (digest, record) in &image.manifests {
        if let Some(subject) = record.as_ref().and_then(|r| r.subject.as_deref()) {
            referrers.entry(subject).or_default().push(digest);
        }
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = roots.collect();
    while let Some(d) = todo.pop() {
        if seen.contains(&d) {
            continue;
        }
        if let Some(Some(r)) = image.manifests.get(&d) {
            todo.extend(r.manifests.iter().cloned());
        }
        if let Some(refs) = referrers.get(d.as_str()) {
            todo.extend(refs.iter().map(|r| (*r).clone()));
        }
        seen.insert(d);
    }
    seen
}

fn clean_image(
    host: &impl Host,
    rules: &Rules,
    now: u64,
    name: &Name,
    image: &Image,
    report: &mut CleanupReport,
) -> Result<(), HostError> {
    let (tags, manifests) = select(rules, now, image);
    for tag in &tags {
        let before = image.tags.iter().find(|(t, _)| t == tag).map(|(_, l)| l);
        // pushed again since it was read: the push wins
        if meta::get_tag(host, name, tag)?.as_ref() != before {
            continue;
        }
        host.meta_delete(&meta::tag_key(name, tag))?;
        report.tags_removed += 1;
    }
    // indexes and referrers before what they reference: an interrupted cleanup never leaves
    // a kept manifest pointing to a removed one
    let mut order: Vec<&String> = manifests.iter().collect();
    order.sort_by_key(|d| {
        let r = image.manifests.get(*d).and_then(Option::as_ref);
        !r.is_some_and(|r| !r.manifests.is_empty() || r.subject.is_some())
    });
    let tagged_now: BTreeSet<String> = if order.is_empty() {
        BTreeSet::new()
    } else {
        let mut t = BTreeSet::new();
        for tag in meta::list_tags(host, name)? {
            let Ok(tag) = Tag::parse(&tag) else { continue };
            if let Some(l) = meta::get_tag(host, name, &tag)? {
                t.insert(l.digest);
            }
        }
        t
    };
    for digest in order {
        let Ok(d) = Digest::parse(digest) else {
            continue;
        };
        let current = meta::get_image_manifest(host, name, &d)?;
        // pushed again (or tagged) since it was read: the push wins
        if current.as_ref() != image.manifests.get(digest).and_then(Option::as_ref)
            || tagged_now.contains(digest)
        {
            continue;
        }
        if let Some(subject) = current
            .as_ref()
            .and_then(|r| r.subject.as_deref())
            .and_then(|s| Digest::parse(s).ok())
        {
            host.meta_delete(&meta::referrer_key(name, &subject, &d))?;
        }
        host.meta_delete(&meta::image_manifest_key(name, &d))?;
        report.manifests_removed += 1;
    }
    // records from before push times were kept: their delay starts now
    if rules.untagged_after.is_some() {
        for (digest, record) in &image.manifests {
            let Some(record) = record.as_ref().filter(|r| r.pushed.is_none()) else {
                continue;
            };
            let Ok(d) = Digest::parse(digest) else {
                continue;
            };
            if manifests.contains(digest) {
                continue;
            }
            let stamped = ImageManifest {
                pushed: Some(now),
                ..record.clone()
            };
            if let Err(e) = meta::put_image_manifest(host, name, &d, &stamped) {
                host.log(
                    Level::Warn,
                    &format!("cleanup: push time of {name}@{digest} not recorded: {e:?}"),
                );
            }
        }
    }
    Ok(())
}
