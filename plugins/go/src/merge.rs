//! A virtual repository's `@v/list`: the versions of every member that knows the module, each
//! once, in semver order; its `@latest`: the member answer naming the highest version. Any other
//! read is answered by the first member that has it.

use crate::contract::{Host, MemberAnswer, MemberBody, Plan};
use crate::error::GoError;
use crate::module::Version;
use binaryrepo_plugin_sdk::http;
use std::collections::BTreeSet;

/// A member list longer than this is not merged (a list is a few KiB; this bounds memory).
const MAX_MEMBER_LIST: u64 = 4 << 20;

fn body(host: &impl Host, a: &MemberAnswer) -> Result<Vec<u8>, GoError> {
    match &a.body {
        MemberBody::None => Ok(Vec::new()),
        MemberBody::Inline(b) => Ok(b.clone()),
        MemberBody::Blob(f) if f.size > MAX_MEMBER_LIST => Err(GoError::bad_gateway(format!(
            "the version list of {} is too large to merge ({} bytes)",
            a.repository, f.size
        ))),
        MemberBody::Blob(f) => Ok(host.blob_read_range(&f.digest, 0, f.size)?),
    }
}

/// The merged list; 404 when no member knows the module (so `GOPROXY=a,b` falls back), 502 when
/// none does and one could not be asked.
pub fn merge(host: &impl Host, answers: &[MemberAnswer]) -> Result<Plan, GoError> {
    let mut versions: BTreeSet<(Option<semver::Version>, String)> = BTreeSet::new();
    let mut found = false;
    for a in answers.iter().filter(|a| a.status == 200) {
        found = true;
        for line in String::from_utf8_lossy(&body(host, a)?).lines() {
            // a line may carry the version's time after it (`v1.2.3 2019-01-01T00:00:00Z`)
            let Some(v) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(parsed) = Version::parse(v) {
                versions.insert((parsed.canonical(), v.to_owned()));
            }
        }
    }
    if !found {
        return Err(none_has_it(answers));
    }
    let list: String = versions.into_iter().map(|(_, v)| v + "\n").collect();
    Ok(Plan::Respond(http::respond(
        200,
        "text/plain; charset=utf-8",
        list,
    )))
}

/// `@latest` over the members: go asks for it when a module has no tagged versions, so the
/// members answer with pseudo-versions, which sort by the time in them; the answer naming the
/// highest version wins (the first such member's on a tie, the first answer when none names a
/// version). No member with it: as for the list.
pub fn latest(host: &impl Host, answers: &[MemberAnswer]) -> Result<Plan, GoError> {
    let mut best: Option<(Option<semver::Version>, Vec<u8>)> = None;
    for a in answers.iter().filter(|a| a.status == 200) {
        let info = body(host, a)?;
        let version = crate::remote::info_version(&info)
            .and_then(|v| Version::parse(&v).ok())
            .and_then(|v| v.canonical());
        let better = match &best {
            None => true,
            Some((held, _)) => version.is_some() && version > *held,
        };
        if better {
            best = Some((version, info));
        }
    }
    match best {
        Some((_, info)) => Ok(Plan::Respond(http::respond(200, "application/json", info))),
        None => Err(none_has_it(answers)),
    }
}

/// No member answered 200: 502 when one could not be asked (its upstream down), since a 404
/// would send `GOPROXY=virtual,next` on as if the module did not exist; else 404.
fn none_has_it(answers: &[MemberAnswer]) -> GoError {
    match answers.iter().find(|a| matches!(a.status, 502..=504)) {
        Some(a) => GoError::bad_gateway(format!(
            "member {} is unavailable ({})",
            a.repository, a.status
        )),
        None => GoError::not_found("no member has this module"),
    }
}
