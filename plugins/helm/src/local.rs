//! A local repository: charts uploaded through the ChartMuseum API (`/api/charts`) or a plain
//! `PUT /<name>-<version>.tgz`, listed in a generated index.yaml with relative URLs.

use crate::chart::{self, ChartMeta, ChartName, ChartVersion};
use crate::contract::{
    Host, HostError, LivePage, Plan, ReceiveUpload, Request, Response, UploadOutcome,
};
use crate::document::{self, Reader, Source, Writer};
use crate::error::HelmError;
use crate::time;
use binaryrepo_plugin_sdk::live::{self, Step};
use binaryrepo_plugin_sdk::{http, meta};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Largest chart accepted (by Content-Length, and by what was received).
pub const MAX_UPLOAD: u64 = 50 << 20;
/// Largest provenance file.
const MAX_PROV: u64 = 1 << 20;
const CHART_PREFIX: &str = "chart/";

/// One stored chart version.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Stored {
    pub digest: String,
    pub size: u64,
    pub created: String,
    pub prov: Option<String>,
    /// Chart.yaml's fields
    pub metadata: Map<String, Value>,
}

fn key(name: &str, version: &str) -> String {
    format!("{CHART_PREFIX}{name}/{version}")
}

/// The index entry (and ChartMuseum API object) of a stored chart.
pub fn entry(name: &str, version: &str, s: &Stored) -> Value {
    let mut m = s.metadata.clone();
    m.insert("name".into(), name.into());
    m.insert("version".into(), version.into());
    m.insert(
        "urls".into(),
        json!([format!("charts/{name}-{version}.tgz")]),
    );
    m.insert("created".into(), s.created.clone().into());
    m.insert(
        "digest".into(),
        s.digest.trim_start_matches("sha256:").into(),
    );
    Value::Object(m)
}

/// Every stored version: name -> [(version, stored)], newest version first.
fn all(host: &impl Host) -> Result<Vec<(String, Vec<(String, Stored)>)>, HelmError> {
    let mut charts: Vec<(String, Vec<(String, Stored)>)> = Vec::new();
    for key in meta::keys(host, CHART_PREFIX) {
        let key = key?;
        let Some((name, version)) = key[CHART_PREFIX.len()..].split_once('/') else {
            continue;
        };
        let Some(s) = meta::get_json::<Stored>(host, &key)? else {
            continue;
        };
        match charts.last_mut() {
            Some((n, v)) if n == name => v.push((version.to_owned(), s)),
            _ => charts.push((name.to_owned(), vec![(version.to_owned(), s)])),
        }
    }
    for (_, versions) in &mut charts {
        versions.sort_by(|a, b| {
            let (va, vb) = (
                ChartVersion::parse(&a.0).ok(),
                ChartVersion::parse(&b.0).ok(),
            );
            vb.and_then(|v| v.semver())
                .cmp(&va.and_then(|v| v.semver()))
        });
    }
    Ok(charts)
}

/// GET `/index.yaml`.
pub fn index(host: &impl Host) -> Result<Plan, HelmError> {
    let charts = all(host)?;
    let mut entries = Map::new();
    let mut generated = String::from("1970-01-01T00:00:00Z");
    for (name, versions) in &charts {
        let list: Vec<Value> = versions.iter().map(|(v, s)| entry(name, v, s)).collect();
        for (_, s) in versions {
            generated = generated.max(s.created.clone());
        }
        entries.insert(name.clone(), Value::Array(list));
    }
    // `generated` is the newest upload, not the clock: the answer depends on the metadata only,
    // so the host may reuse it until the next upload or delete
    let doc = json!({ "apiVersion": "v1", "entries": entries, "generated": generated });
    let yaml = serde_norway::to_string(&doc).map_err(|e| HelmError::internal(e.to_string()))?;
    host.reusable(3600, &[]);
    Ok(document::serve_rendered(
        host,
        yaml.into_bytes(),
        document::YAML,
    )?)
}

/// `name-version.tgz` split where the stored charts say (names and versions both hold dashes).
fn find_file(host: &impl Host, file: &str) -> Result<Option<(String, String, Stored)>, HelmError> {
    for (i, _) in file.match_indices('-') {
        let (name, version) = (&file[..i], &file[i + 1..]);
        if ChartName::parse(name).is_err() || ChartVersion::parse(version).is_err() {
            continue;
        }
        if let Some(s) = meta::get_json::<Stored>(host, &key(name, version))? {
            return Ok(Some((name.to_owned(), version.to_owned(), s)));
        }
    }
    Ok(None)
}

/// GET `/charts/<name>-<version>.tgz[.prov]` (also without `charts/`).
pub fn file(host: &impl Host, file: &str) -> Result<Plan, HelmError> {
    let missing = || HelmError::not_found(format!("{file} not found"));
    if let Some(base) = file.strip_suffix(".tgz.prov") {
        let (_, _, s) = find_file(host, base)?.ok_or_else(missing)?;
        let prov = s.prov.ok_or_else(missing)?;
        return Ok(document::serve(&prov, "application/pgp-signature"));
    }
    let base = file.strip_suffix(".tgz").ok_or_else(missing)?;
    let (_, _, s) = find_file(host, base)?.ok_or_else(missing)?;
    Ok(document::serve(&s.digest, "application/gzip"))
}

/// GET `/api/charts[/<name>[/<version>]]`.
pub fn api_get(host: &impl Host, rest: &[&str]) -> Result<Response, HelmError> {
    let value = match rest {
        [] => {
            let mut m = Map::new();
            for (name, versions) in all(host)? {
                let list = versions.iter().map(|(v, s)| entry(&name, v, s)).collect();
                m.insert(name, Value::Array(list));
            }
            Value::Object(m)
        }
        [name] => {
            let charts = all(host)?;
            let (_, versions) = charts
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| HelmError::not_found("chart not found"))?;
            versions.iter().map(|(v, s)| entry(name, v, s)).collect()
        }
        [name, version] => {
            let s = meta::get_json::<Stored>(host, &key(name, version))?
                .ok_or_else(|| HelmError::not_found("improper constraint: not found"))?;
            entry(name, version, &s)
        }
        _ => return Err(HelmError::not_found("not found")),
    };
    Ok(http::json(200, &value))
}

/// DELETE `/api/charts/<name>/<version>`.
pub fn api_delete(host: &impl Host, name: &str, version: &str) -> Result<Response, HelmError> {
    let k = key(name, version);
    if host.meta_get(&k)?.is_none() {
        return Err(HelmError::not_found(format!("{name}-{version} not found")));
    }
    host.meta_delete(&k)?;
    Ok(http::json(200, &json!({ "deleted": true })))
}

/// POST `/api/charts`, PUT `/<file>.tgz`: receive the body into a session, decide afterwards.
pub fn upload(host: &impl Host, req: &Request) -> Result<Plan, HelmError> {
    if req.content_length().is_some_and(|n| n > MAX_UPLOAD) {
        return Err(too_large());
    }
    let id = host.upload_start()?;
    Ok(Plan::ReceiveUpload(ReceiveUpload {
        id,
        expect_offset: Some(0),
        commit: None,
    }))
}

fn too_large() -> HelmError {
    HelmError::new(413, format!("chart larger than {} MiB", MAX_UPLOAD >> 20))
}

/// After the body is in session `id`: validate, store, answer. Nothing stays stored on error.
pub fn upload_complete(
    host: &impl Host,
    req: &Request,
    id: &str,
    outcome: &UploadOutcome,
) -> Result<Response, HelmError> {
    let result = match outcome {
        UploadOutcome::Done(d) if d.size > MAX_UPLOAD => Err(too_large()),
        UploadOutcome::Done(d) => store(host, req, id, d.size),
        UploadOutcome::BodyError(m) => Err(HelmError::bad_request(format!(
            "request body unreadable: {m}"
        ))),
        UploadOutcome::Internal(m) => Err(HelmError::internal(m.clone())),
        other => Err(HelmError::internal(format!("upload session: {other:?}"))),
    };
    // ends the session whatever happened (a no-op once committed)
    let _ = host.upload_cancel(id);
    result
}

fn store(host: &impl Host, req: &Request, id: &str, size: u64) -> Result<Response, HelmError> {
    let force = req
        .query_param("force")
        .is_some_and(|v| v != "false" && v != "0");
    let multipart = req
        .header("content-type")
        .filter(|t| t.to_ascii_lowercase().starts_with("multipart/form-data"))
        .map(boundary)
        .transpose()?;
    let (chart_id, prov) = match multipart {
        Some(b) => split_multipart(host, id, size, &b)?,
        None => (id.to_owned(), None),
    };
    let result = store_chart(host, req, &chart_id, prov, force);
    if chart_id != id {
        let _ = host.upload_cancel(&chart_id);
    }
    result
}

fn store_chart(
    host: &impl Host,
    req: &Request,
    id: &str,
    prov: Option<Vec<u8>>,
    force: bool,
) -> Result<Response, HelmError> {
    let mut reader = Reader::new(host, Source::Upload(id), 0);
    let meta_of = chart::inspect(&mut reader);
    if let Some(e) = reader.failed {
        return Err(e.into());
    }
    let chart: ChartMeta = meta_of.map_err(HelmError::bad_request)?;
    if req.method == "PUT" {
        let file = req.path.rsplit('/').next().unwrap_or("");
        if file != chart.file_name() {
            return Err(HelmError::bad_request(format!(
                "file name {file} does not match the chart: {}",
                chart.file_name()
            )));
        }
    }
    let k = key(chart.name.as_str(), chart.version.as_str());
    if !force && host.meta_get(&k)?.is_some() {
        return Err(HelmError::new(409, "file already exists"));
    }
    let prov = prov.map(|p| host.blob_write(&p, None)).transpose()?;
    let file = host.upload_commit(id, None)?;
    let stored = Stored {
        digest: file.digest,
        size: file.size,
        created: time::rfc3339(req.now),
        prov,
        metadata: chart.fields,
    };
    meta::put_json(host, &k, &stored)?;
    Ok(http::json(201, &json!({ "saved": true })))
}

fn boundary(content_type: &str) -> Result<String, HelmError> {
    content_type
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim_matches('"').to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or_else(|| HelmError::bad_request("multipart body without a boundary"))
}

/// Cuts the `chart` part of a multipart body into a session of its own (copied in pieces),
/// and reads the `prov` part, if any.
fn split_multipart(
    host: &impl Host,
    id: &str,
    size: u64,
    boundary: &str,
) -> Result<(String, Option<Vec<u8>>), HelmError> {
    let delim = format!("\r\n--{boundary}");
    // positions where a delimiter line starts; the body starts with one (no leading CRLF)
    let mut marks = find_all(host, id, size, delim.as_bytes())?;
    let opening = &delim.as_bytes()[2..];
    if host.upload_read(id, 0, opening.len() as u64)? != opening {
        return Err(HelmError::bad_request(
            "multipart body does not start with its boundary",
        ));
    }
    marks.insert(0, 0);
    let mut chart = None;
    let mut prov = None;
    for w in marks.windows(2) {
        let start = if w[0] == 0 {
            opening.len() as u64
        } else {
            w[0] + delim.len() as u64
        };
        let head = host.upload_read(id, start, 8192)?;
        let Some(end) = head.windows(4).position(|x| x == b"\r\n\r\n") else {
            return Err(HelmError::bad_request("multipart part without headers"));
        };
        let headers = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        let body_start = start + end as u64 + 4;
        let body_len = w[1].saturating_sub(body_start);
        if headers.contains("name=\"chart\"") {
            chart = Some((body_start, body_len));
        } else if headers.contains("name=\"prov\"") {
            if body_len > MAX_PROV {
                return Err(HelmError::bad_request("provenance file too large"));
            }
            prov = Some(host.upload_read(id, body_start, body_len)?);
        }
    }
    let (start, len) =
        chart.ok_or_else(|| HelmError::bad_request("multipart body has no \"chart\" field"))?;
    let mut w = Writer::start(host)?;
    let mut at = start;
    while at < start + len {
        let piece = host.upload_read(id, at, (start + len - at).min(document::PIECE))?;
        if piece.is_empty() {
            break;
        }
        at += piece.len() as u64;
        w.write(&piece)?;
    }
    Ok((w.into_session()?, prov))
}

/// Offsets of `needle` in session `id` (at most a few: a form has two or three parts).
fn find_all(host: &impl Host, id: &str, size: u64, needle: &[u8]) -> Result<Vec<u64>, HostError> {
    let mut found = Vec::new();
    let mut offset = 0u64;
    let overlap = needle.len() as u64 - 1;
    while offset < size && found.len() < 16 {
        let piece = host.upload_read(id, offset, document::PIECE)?;
        if piece.is_empty() {
            break;
        }
        let mut i = 0;
        while let Some(p) = piece[i..].windows(needle.len()).position(|w| w == needle) {
            let at = offset + (i + p) as u64;
            if found.last() != Some(&at) {
                found.push(at);
            }
            i += p + 1;
        }
        if (piece.len() as u64) <= overlap {
            break;
        }
        offset += piece.len() as u64 - overlap;
    }
    Ok(found)
}

/// Garbage collection: every stored chart and provenance file.
pub fn live_blobs_page(host: &impl Host, cursor: Option<&str>) -> Result<LivePage, HostError> {
    live::page(
        host,
        cursor,
        &mut [Step::records(host, CHART_PREFIX, |s: Stored, live| {
            live.push(s.digest);
            live.extend(s.prov);
        })],
    )
}
