//! A virtual repository's `@v/list`: the versions of every member that knows the module, each
//! once, in semver order. Any other read is answered by the first member that has it.

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

/// The merged list; 404 when no member knows the module (so `GOPROXY=a,b` falls back).
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
        return Err(GoError::not_found("no member has this module"));
    }
    let list: String = versions.into_iter().map(|(_, v)| v + "\n").collect();
    Ok(Plan::Respond(http::respond(
        200,
        "text/plain; charset=utf-8",
        list,
    )))
}
