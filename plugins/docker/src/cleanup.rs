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
//!
//! What is held at once: an image's tags are never held. They stream past a page at a time,
//! up to three times: once through a heap of the N newest (`keep_last`), which leaves the push
//! time and name the N-th newest tag has (a tag older than that is removed), once to remove
//! those tags and mark what the others lead to, and once, only when manifests are to go, to
//! spare any a tag leads to by then. The image's manifest graph is held while its removals
//! are decided (the digest of each of its manifests with its children and subject, no layers),
//! and only when some manifest may go: whether a removed tag's manifest is still reached goes
//! by every kept tag and every index and referrer of the image, and the metadata keeps no
//! reverse link (from a manifest to the tags and indexes that lead to it) to ask instead.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use binaryrepo_plugin_sdk::meta::{HOST_PAGE_MAX, Keys, keys};

use crate::contract::{CleanupReport, CleanupRules, Host, HostError, Level, RepoType, Repository};
use crate::meta::{self, ImageManifest};
use crate::reference::{Digest, Name, Tag};

/// Compiled size a pattern may take; the host refuses larger ones when the rules are set.
const PATTERN_SIZE_LIMIT: usize = 256 << 10;

pub fn cleanup(
    host: &impl Host,
    repo: &Repository,
    rules: &CleanupRules,
    now: u64,
) -> Result<CleanupReport, String> {
    cleanup_weighed(host, repo, rules, now).map(|(report, _)| report)
}

/// As `cleanup`, with the most entries it held at once.
pub(crate) fn cleanup_weighed(
    host: &impl Host,
    repo: &Repository,
    rules: &CleanupRules,
    now: u64,
) -> Result<(CleanupReport, Held), String> {
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
    let mut held = Held::default();
    let report = run(host, &rules, now, &mut held).map_err(|e| format!("metadata: {e:?}"))?;
    Ok((report, held))
}

struct Rules {
    keep_last: Option<usize>,
    matching: Option<regex_lite::Regex>,
    untagged_after: Option<u64>,
}

impl Rules {
    fn counts(&self, tag: &Tag) -> bool {
        self.matching
            .as_ref()
            .is_none_or(|re| re.is_match(tag.as_str()))
    }
}

/// The most entries a cleanup held at once (besides the page of keys a walk holds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// tags (the `keep_last` heap)
    pub tags: usize,
    /// manifests of one image (its graph, while its removals are decided)
    pub manifests: usize,
}

/// Image by image, so what the plugin holds at once is one image's state: the tag and
/// `image-manifest` keys are walked side by side in key order, jumping from one image's first
/// key to the next image's.
fn run(
    host: &impl Host,
    rules: &Rules,
    now: u64,
    held: &mut Held,
) -> Result<CleanupReport, HostError> {
    let mut report = CleanupReport::default();
    if rules.keep_last.is_none() && rules.untagged_after.is_none() {
        return Ok(report);
    }
    let mut tags = Names::new(host, meta::TAG, ':');
    let mut manifests = Names::new(host, meta::IMAGE_MANIFEST, '@');
    loop {
        // the next image: the one of the two walks whose name comes first in tag-key order
        let next_tags = tags.peek()?.map(tag_order);
        let next_manifests = manifests.peek()?.map(tag_order);
        let next = match (next_tags, next_manifests) {
            (None, None) => break,
            (Some(t), None) => t,
            (None, Some(m)) => m,
            (Some(t), Some(m)) => t.min(m),
        };
        let raw = next.strip_suffix(':').unwrap_or(&next).to_owned();
        tags.skip(&raw)?;
        manifests.skip(&raw)?;
        if let Ok(name) = Name::parse(&raw) {
            clean_image(host, rules, now, &name, &mut report, held)?;
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

/// The image names of a walk of `<prefix><name><separator>…` keys, one per image in key
/// order: past a name the walk jumps over the rest of that image's keys, so it holds a page,
/// never an image's keys. Keys not of that form are skipped.
struct Names<'h, H: Host> {
    keys: Keys<'h, H>,
    prefix: &'static str,
    separator: char,
    head: Option<String>,
}

impl<'h, H: Host> Names<'h, H> {
    fn new(host: &'h H, prefix: &'static str, separator: char) -> Self {
        Names {
            keys: keys(host, prefix),
            prefix,
            separator,
            head: None,
        }
    }

    /// The next image's name, if any.
    fn peek(&mut self) -> Result<Option<&str>, HostError> {
        loop {
            if self.head.is_none() {
                match self.keys.next().transpose()? {
                    Some(key) => self.head = Some(key),
                    None => return Ok(None),
                }
            }
            let split = self
                .head
                .as_deref()
                .and_then(|k| k.strip_prefix(self.prefix)?.split_once(self.separator))
                .is_some();
            if split {
                break;
            }
            self.head = None;
        }
        Ok(self
            .head
            .as_deref()
            .and_then(|k| k.strip_prefix(self.prefix)?.split_once(self.separator))
            .map(|(name, _)| name))
    }

    /// Goes on after every key of image `name` (and before the next image's): a step at a
    /// time through what is left of a page (neighbouring images with few keys), then a jump
    /// past the rest (an image with many).
    fn skip(&mut self, name: &str) -> Result<(), HostError> {
        for _ in 0..HOST_PAGE_MAX {
            let Some(key) = self.head.as_deref() else {
                return Ok(());
            };
            let same = key
                .strip_prefix(self.prefix)
                .and_then(|r| r.split_once(self.separator))
                .is_none_or(|(n, _)| n == name);
            if !same {
                return Ok(());
            }
            self.head = self.keys.next().transpose()?;
        }
        // the character right after the separator: every `<name><separator>…` key sorts
        // before it, and no image name holds it (names are lower case, digits and `._-/`)
        let past = char::from_u32(self.separator as u32 + 1).unwrap_or(char::MAX);
        self.keys
            .skip_to(Some(&format!("{}{name}{past}", self.prefix)));
        self.head = None;
        Ok(())
    }
}

/// A tag's place in `keep_last` order: later push, then the name that sorts last, is newer.
type Rank = (u64, String);

/// Which of an image's counted tags `keep_last` removes.
enum Cut {
    /// none (no rule, or no more counted tags than it keeps)
    Nothing,
    /// every counted tag (`keep_last` 0)
    Every,
    /// counted tags older than this one (the N-th newest)
    Below(Rank),
}

impl Cut {
    fn removes(&self, rank: &Rank) -> bool {
        match self {
            Cut::Nothing => false,
            Cut::Every => true,
            Cut::Below(last) => rank < last,
        }
    }
}

/// The first walk of the tags: the N newest counted tags through a heap, so what it holds is
/// N tags whatever the image has.
fn cut(host: &impl Host, rules: &Rules, name: &Name, held: &mut Held) -> Result<Cut, HostError> {
    let Some(keep) = rules.keep_last else {
        return Ok(Cut::Nothing);
    };
    // oldest on top: it is the one that goes when a newer tag comes
    let mut newest: BinaryHeap<Reverse<Rank>> = BinaryHeap::with_capacity(keep.min(1024));
    let mut counted = 0usize;
    for tag in meta::tags_after(host, name, None, None) {
        let Ok(tag) = Tag::parse(&tag?) else { continue };
        if !rules.counts(&tag) {
            continue;
        }
        let Some(link) = meta::get_tag(host, name, &tag)? else {
            continue;
        };
        counted += 1;
        let rank = (link.checked, tag.as_str().to_owned());
        if newest.len() < keep {
            newest.push(Reverse(rank));
        } else if newest.peek().is_some_and(|Reverse(oldest)| *oldest < rank) {
            newest.pop();
            newest.push(Reverse(rank));
        }
        held.tags = held.tags.max(newest.len());
    }
    Ok(if counted <= keep {
        Cut::Nothing
    } else {
        match newest.peek() {
            Some(Reverse(last)) => Cut::Below(last.clone()),
            None => Cut::Every,
        }
    })
}

/// What the cleanup needs of a manifest record: what it leads to, and when it was pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Edges {
    /// child manifests (an index)
    manifests: Vec<String>,
    subject: Option<String>,
    pushed: Option<u64>,
}

impl Edges {
    fn of(record: &ImageManifest) -> Edges {
        Edges {
            manifests: record.manifests.clone(),
            subject: record.subject.clone(),
            pushed: record.pushed,
        }
    }

    fn leads_on(&self) -> bool {
        !self.manifests.is_empty() || self.subject.is_some()
    }
}

/// One image's manifests (None: a record that cannot be read) and what its tags lead to.
#[derive(Default)]
struct Graph {
    manifests: BTreeMap<String, Option<Edges>>,
    /// subject -> its referrers
    referrers: BTreeMap<String, Vec<String>>,
    /// digests kept tags point to (of this graph, or a subject in it)
    kept_roots: BTreeSet<String>,
    /// digests removed tags pointed to (likewise)
    removed_roots: BTreeSet<String>,
}

impl Graph {
    fn read(host: &impl Host, name: &Name) -> Result<Graph, HostError> {
        let mut graph = Graph::default();
        let prefix = format!("{}{name}@", meta::IMAGE_MANIFEST);
        for key in keys(host, &prefix) {
            let key = key?;
            let Some(Ok(digest)) = key.strip_prefix(&prefix).map(Digest::parse) else {
                continue;
            };
            let edges = meta::get_image_manifest(host, name, &digest)?.map(|r| Edges::of(&r));
            if let Some(subject) = edges.as_ref().and_then(|e| e.subject.clone()) {
                graph
                    .referrers
                    .entry(subject)
                    .or_default()
                    .push(digest.to_string());
            }
            graph.manifests.insert(digest.to_string(), edges);
        }
        Ok(graph)
    }

    /// Notes where a tag leads; only digests the closure can go on from are kept.
    fn root(&mut self, digest: String, kept: bool) {
        if !self.manifests.contains_key(&digest) && !self.referrers.contains_key(&digest) {
            return;
        }
        if kept {
            self.kept_roots.insert(digest);
        } else {
            self.removed_roots.insert(digest);
        }
    }

    /// The manifests `roots` lead to within the image: themselves, an index's children, and
    /// the referrers of any of those.
    fn closure<'a>(&self, roots: impl Iterator<Item = &'a String>) -> BTreeSet<String> {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut todo: Vec<String> = roots.cloned().collect();
        while let Some(d) = todo.pop() {
            if seen.contains(&d) {
                continue;
            }
            if let Some(Some(r)) = self.manifests.get(&d) {
                todo.extend(r.manifests.iter().cloned());
            }
            if let Some(refs) = self.referrers.get(&d) {
                todo.extend(refs.iter().cloned());
            }
            seen.insert(d);
        }
        seen
    }

    /// The manifests that go under the rules.
    fn doomed(&self, rules: &Rules, now: u64) -> BTreeSet<String> {
        let kept = self.closure(self.kept_roots.iter());
        // what removed tags led to, and the untagged manifests old enough
        let mut doomed = self.closure(self.removed_roots.iter());
        if let Some(after) = rules.untagged_after {
            for (digest, record) in &self.manifests {
                let old_enough = record
                    .as_ref()
                    .and_then(|r| r.pushed)
                    .is_some_and(|pushed| now.saturating_sub(pushed) >= after);
                if old_enough && !kept.contains(digest) {
                    doomed.insert(digest.clone());
                }
            }
        }
        doomed.retain(|d| !kept.contains(d) && self.manifests.contains_key(d));

        // what stays keeps what it references: the children of a surviving index, the
        // referrers of a surviving subject (until nothing changes, as one may lead to the other)
        loop {
            let survives = |d: &str| self.manifests.contains_key(d) && !doomed.contains(d);
            let mut spared: Vec<String> = Vec::new();
            for (digest, record) in &self.manifests {
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
        doomed
    }
}

fn clean_image(
    host: &impl Host,
    rules: &Rules,
    now: u64,
    name: &Name,
    report: &mut CleanupReport,
    held: &mut Held,
) -> Result<(), HostError> {
    let cut = cut(host, rules, name, held)?;
    let removes_tags = !matches!(cut, Cut::Nothing);
    if !removes_tags && rules.untagged_after.is_none() {
        return Ok(());
    }
    let mut graph = Graph::read(host, name)?;
    held.manifests = held.manifests.max(graph.manifests.len());

    // the second walk of the tags: remove those the cut leaves out, note where each leads
    for tag in meta::tags_after(host, name, None, None) {
        let Ok(tag) = Tag::parse(&tag?) else { continue };
        let Some(link) = meta::get_tag(host, name, &tag)? else {
            continue;
        };
        let removed = rules.counts(&tag) && cut.removes(&(link.checked, tag.as_str().to_owned()));
        if removed {
            host.meta_delete(&meta::tag_key(name, &tag))?;
            report.tags_removed += 1;
        }
        graph.root(link.digest, !removed);
    }

    let doomed = graph.doomed(rules, now);
    if !doomed.is_empty() {
        // tagged since the graph was read (a push that lands meanwhile): the push wins
        let mut tagged_now = BTreeSet::new();
        for tag in meta::tags_after(host, name, None, None) {
            let Ok(tag) = Tag::parse(&tag?) else { continue };
            if let Some(l) = meta::get_tag(host, name, &tag)?
                && doomed.contains(&l.digest)
            {
                tagged_now.insert(l.digest);
            }
        }
        // indexes and referrers before what they reference: an interrupted cleanup never
        // leaves a kept manifest pointing to a removed one
        let mut order: Vec<&String> = doomed.iter().filter(|d| !tagged_now.contains(*d)).collect();
        order.sort_by_key(|d| {
            let r = graph.manifests.get(*d).and_then(Option::as_ref);
            !r.is_some_and(Edges::leads_on)
        });
        for digest in order {
            let Ok(d) = Digest::parse(digest) else {
                continue;
            };
            let current = meta::get_image_manifest(host, name, &d)?;
            // pushed again since it was read: the push wins
            if current.as_ref().map(Edges::of).as_ref()
                != graph.manifests.get(digest).and_then(Option::as_ref)
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
    }
    // records from before push times were kept: their delay starts now
    if rules.untagged_after.is_some() {
        for (digest, edges) in &graph.manifests {
            if edges.as_ref().is_none_or(|e| e.pushed.is_some()) || doomed.contains(digest) {
                continue;
            }
            let Ok(d) = Digest::parse(digest) else {
                continue;
            };
            let Some(record) = meta::get_image_manifest(host, name, &d)? else {
                continue;
            };
            if record.pushed.is_some() {
                continue;
            }
            let stamped = ImageManifest {
                pushed: Some(now),
                ..record
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
