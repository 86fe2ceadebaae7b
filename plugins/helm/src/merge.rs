//! A virtual repository's index.yaml: the members' indexes merged, the first member winning
//! for the same chart name and version. Member URLs are relative (local indexes and rewritten
//! remote ones), so they resolve through the virtual repository, which finds each file in its
//! members in order.

use crate::contract::{Host, MemberAnswer, MemberBody, Plan};
use crate::document::{self, Source};
use crate::error::HelmError;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// A member index larger than this is not merged: the merge holds each index parsed, within
/// the plugin's memory limit (`plugin_memory_mib`, 64 MiB by default).
const MAX_MEMBER_INDEX: u64 = 8 << 20;

fn body(host: &impl Host, a: &MemberAnswer) -> Result<Option<Vec<u8>>, HelmError> {
    match &a.body {
        MemberBody::None => Ok(None),
        MemberBody::Inline(b) => Ok(Some(b.clone())),
        MemberBody::Blob(f) if f.size > MAX_MEMBER_INDEX => Err(HelmError::bad_gateway(format!(
            "index.yaml of {} is too large to merge ({} bytes)",
            a.repository, f.size
        ))),
        MemberBody::Blob(f) => {
            let mut r = document::Reader::new(host, Source::Blob(&f.digest), 0);
            let mut out = Vec::with_capacity(f.size as usize);
            loop {
                let piece = r.piece()?;
                if piece.is_empty() {
                    return Ok(Some(out));
                }
                out.extend_from_slice(&piece);
            }
        }
    }
}

/// The merged index of the members' answers (members that failed or have none are skipped).
pub fn merge(host: &impl Host, answers: &[MemberAnswer]) -> Result<Plan, HelmError> {
    let mut entries: Map<String, Value> = Map::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut generated = String::new();
    for a in answers.iter().filter(|a| a.status == 200) {
        let Some(bytes) = body(host, a)? else {
            continue;
        };
        let index: Value = match serde_norway::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                host.log(
                    crate::contract::Level::Warn,
                    &format!("index.yaml of {} is not YAML: {e}", a.repository),
                );
                continue;
            }
        };
        if let Some(Value::String(g)) = index.get("generated") {
            generated = generated.max(g.clone());
        }
        let Some(Value::Object(member)) = index.get("entries") else {
            continue;
        };
        for (name, list) in member {
            let Value::Array(list) = list else { continue };
            let merged = entries
                .entry(name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(merged) = merged else {
                continue;
            };
            for e in list {
                let version = match e.get("version") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => continue,
                };
                if seen.insert((name.clone(), version)) {
                    merged.push(e.clone());
                }
            }
        }
    }
    if generated.is_empty() {
        generated = "1970-01-01T00:00:00Z".into();
    }
    let doc = json!({ "apiVersion": "v1", "entries": entries, "generated": generated });
    let yaml = serde_norway::to_string(&doc).map_err(|e| HelmError::internal(e.to_string()))?;
    Ok(document::serve_rendered(
        host,
        yaml.into_bytes(),
        document::YAML,
    )?)
}
