//! A local repository: modules published with `PUT /<module>/@v/<version>.zip|.mod|.info`,
//! served back with a generated `list` and `@latest`. A version's files never change: the same
//! bytes again are accepted, other bytes are refused with 409.

use crate::contract::{
    Host, HostError, LivePage, Plan, ReceiveUpload, Request, Response, UploadOutcome,
};
use crate::error::GoError;
use crate::module::{self, Ext, ModulePath, Route, Version};
use crate::zipcheck::{self, ZipError};
use binaryrepo_plugin_sdk::live::{self, Step};
use binaryrepo_plugin_sdk::time::is_rfc3339;
use binaryrepo_plugin_sdk::{http, meta};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "mod/";
/// `.mod` and `.info` bodies are read whole into the plugin: well under its memory.
const MAX_SMALL: u64 = 4 << 20;

/// One published file.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Stored {
    digest: String,
    size: u64,
    /// unix seconds of the upload: the `Time` of a generated `.info`
    published: u64,
}

fn versions_prefix(m: &ModulePath) -> String {
    format!("{PREFIX}{}/@v/", m.escaped())
}

fn key(m: &ModulePath, v: &Version, ext: Ext) -> String {
    format!("{}{}.{}", versions_prefix(m), v.escaped(), ext.as_str())
}

fn serve(digest: &str, ext: Ext) -> Plan {
    Plan::ServeBlob(crate::contract::ServeBlob {
        digest: digest.to_owned(),
        headers: http::headers(&[("Content-Type", ext.content_type())]),
    })
}

/// Modules a catalog lists at most: a page of a browser, not an export.
const CATALOG_MAX: usize = 10_000;

/// `GET /@modules`: the modules this repository holds, for the web page (the GOPROXY protocol
/// has no catalog; `@` cannot start a module path, so no module is shadowed).
pub fn catalog(host: &impl Host) -> Result<Response, GoError> {
    // a page of keys at a time, and no further than the catalog shows
    let mut modules = std::collections::BTreeSet::new();
    for k in meta::keys(host, PREFIX) {
        let k = k?;
        let Some((m, _)) = k[PREFIX.len()..].split_once("/@v/") else {
            continue;
        };
        if let Ok(m) = module::unescape(m) {
            modules.insert(m);
        }
        if modules.len() > CATALOG_MAX {
            break;
        }
    }
    let more = modules.len() > CATALOG_MAX;
    let modules: Vec<String> = modules.into_iter().take(CATALOG_MAX).collect();
    Ok(http::json(
        200,
        &serde_json::json!({ "modules": modules, "truncated": more }),
    ))
}

/// The published versions of a module (those with a `.zip`), in semver order.
fn versions(host: &impl Host, m: &ModulePath) -> Result<Vec<Version>, GoError> {
    let prefix = versions_prefix(m);
    let mut out: Vec<Version> = Vec::new();
    for k in meta::keys(host, &prefix) {
        let k = k?;
        let Some(v) = k[prefix.len()..].strip_suffix(".zip") else {
            continue;
        };
        // a key below a longer module path (`<module>/x/@v/...`) does not parse as a version
        if let Ok(v) = Version::from_escaped(v) {
            out.push(v);
        }
    }
    out.sort_by_key(Version::canonical);
    Ok(out)
}

fn info_json(v: &Version, published: u64) -> Vec<u8> {
    serde_json::json!({ "Version": v.as_str(), "Time": binaryrepo_plugin_sdk::time::rfc3339(published) })
        .to_string()
        .into_bytes()
}

/// GET/HEAD of a protocol path.
pub fn read(host: &impl Host, route: &Route) -> Result<Plan, GoError> {
    let respond = |ct: &str, body: Vec<u8>| {
        // the answer depends on the metadata only: reusable until the next publish
        host.reusable(3600, &[]);
        Ok(Plan::Respond(http::respond(200, ct, body)))
    };
    match route {
        Route::List(m) => {
            let all = versions(host, m)?;
            if all.is_empty() {
                // "not here" rather than an empty list: a virtual repository or `GOPROXY=a,b`
                // then asks the next one
                host.reusable(3600, &[]);
                return Err(GoError::not_found(format!(
                    "{} has no published versions",
                    m.as_str()
                )));
            }
            let list: String = all.iter().map(|v| format!("{}\n", v.as_str())).collect();
            respond("text/plain; charset=utf-8", list.into_bytes())
        }
        Route::Latest(m) => {
            let all = versions(host, m)?;
            // the highest release, else the highest pre-release (what `go` picks from a list)
            let latest = all
                .iter()
                .rev()
                .find(|v| v.canonical().is_some_and(|s| s.pre.is_empty()))
                .or(all.last())
                .ok_or_else(|| {
                    GoError::not_found(format!("{} has no published versions", m.as_str()))
                })?;
            // the published `.info` (its `Time` is what `go` shows), else one made
            if let Some(s) = meta::get_json::<Stored>(host, &key(m, latest, Ext::Info))? {
                host.reusable(3600, &[]);
                return Ok(serve(&s.digest, Ext::Info));
            }
            let zip = meta::get_json::<Stored>(host, &key(m, latest, Ext::Zip))?;
            respond(
                "application/json",
                info_json(latest, zip.map_or(0, |s| s.published)),
            )
        }
        Route::File(m, v, ext) => {
            if let Some(s) = meta::get_json::<Stored>(host, &key(m, v, *ext))? {
                host.reusable(3600, &[]);
                return Ok(serve(&s.digest, *ext));
            }
            // a version published without its .info: made from the zip's upload time
            if *ext == Ext::Info
                && let Some(s) = meta::get_json::<Stored>(host, &key(m, v, Ext::Zip))?
            {
                return respond("application/json", info_json(v, s.published));
            }
            Err(GoError::not_found(format!(
                "{}@{} not found",
                m.as_str(),
                v.as_str()
            )))
        }
        Route::Sumdb { .. } => Err(GoError::not_found(
            "a local repository proxies no checksum database",
        )),
    }
}

fn canonical(route: &Route) -> Result<(&ModulePath, &Version, Ext), GoError> {
    match route {
        // a version `go` refuses to unpack would also become the module's `@latest`
        Route::File(m, v, ext) if v.canonical().is_some() => {
            m.check_major(v)?;
            Ok((m, v, *ext))
        }
        Route::File(_, v, _) => Err(GoError::bad_request(format!(
            "{} is not a canonical version (vMAJOR.MINOR.PATCH[-pre][+incompatible])",
            v.as_str()
        ))),
        _ => Err(GoError::new(
            405,
            "publish files as PUT /<module>/@v/<version>.zip|.mod|.info",
        )),
    }
}

/// PUT: `.zip` is streamed into an upload session and checked there; `.mod` and `.info` are
/// small and read whole.
pub fn publish(req: &Request, host: &impl Host, route: &Route) -> Result<Plan, GoError> {
    let (_, _, ext) = canonical(route)?;
    match ext {
        Ext::Zip => {
            if req.content_length().is_some_and(|n| n > zipcheck::MAX_ZIP) {
                return Err(too_large());
            }
            Ok(Plan::ReceiveUpload(ReceiveUpload {
                id: host.upload_start()?,
                expect_offset: Some(0),
                commit: None,
            }))
        }
        Ext::Mod | Ext::Info => Ok(Plan::ReadBody(MAX_SMALL)),
    }
}

fn too_large() -> GoError {
    GoError::new(
        413,
        format!(
            "a module zip may be at most {} MiB",
            zipcheck::MAX_ZIP >> 20
        ),
    )
}

/// Records a published file, unless the version already has other bytes there.
fn record(
    host: &impl Host,
    req: &Request,
    key: &str,
    digest: String,
    size: u64,
) -> Result<Response, GoError> {
    if let Some(existing) = meta::get_json::<Stored>(host, key)? {
        if existing.digest == digest {
            return Ok(http::text(200, "already published with the same content"));
        }
        return Err(GoError::new(
            409,
            "this version is already published with other content: versions are immutable",
        ));
    }
    meta::put_json(
        host,
        key,
        &Stored {
            digest,
            size,
            published: req.now,
        },
    )?;
    Ok(http::text(201, "published"))
}

/// A `.mod` or `.info` body.
pub fn publish_small(
    host: &impl Host,
    req: &Request,
    route: &Route,
    body: &[u8],
) -> Result<Response, GoError> {
    let (m, v, ext) = canonical(route)?;
    match ext {
        Ext::Info => {
            let info: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| GoError::bad_request(format!("the .info is not JSON: {e}")))?;
            if info.get("Version").and_then(|x| x.as_str()) != Some(v.as_str()) {
                return Err(GoError::bad_request(format!(
                    "the .info must name \"Version\": {:?}",
                    v.as_str()
                )));
            }
            // `go` refuses an .info whose time does not parse, and a version is immutable
            match info.get("Time") {
                None | Some(serde_json::Value::Null) => {}
                Some(t) if t.as_str().is_some_and(is_rfc3339) => {}
                Some(t) => {
                    return Err(GoError::bad_request(format!(
                        "the .info's \"Time\" {t} is not an RFC 3339 time (2006-01-02T15:04:05Z)"
                    )));
                }
            }
        }
        Ext::Mod => {
            let text = std::str::from_utf8(body)
                .map_err(|_| GoError::bad_request("the .mod is not UTF-8 text"))?;
            // `module path` or `module "path"`, possibly followed by a comment; the rare
            // block form `module (` is left to the go command
            let declared = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("module "))
                .and_then(|r| r.split("//").next())
                .map(|r| r.trim().trim_matches('"'))
                .filter(|d| *d != "(");
            if declared.is_some_and(|d| d != m.as_str()) {
                return Err(GoError::bad_request(format!(
                    "the .mod declares module {:?}, not {:?}",
                    declared.unwrap_or(""),
                    m.as_str()
                )));
            }
        }
        Ext::Zip => return Err(GoError::internal("a zip body read whole")),
    }
    let digest = host.blob_write(body, None)?;
    record(host, req, &key(m, v, ext), digest, body.len() as u64)
}

/// After a `.zip` body is in session `id`: check, store, answer. Nothing stays stored on error.
pub fn zip_complete(
    host: &impl Host,
    req: &Request,
    route: &Route,
    id: &str,
    outcome: &UploadOutcome,
) -> Result<Response, GoError> {
    let result = match outcome {
        UploadOutcome::Done(d) if d.size > zipcheck::MAX_ZIP => Err(too_large()),
        UploadOutcome::Done(d) => store_zip(host, req, route, id, d.size),
        UploadOutcome::BodyError(m) => Err(GoError::bad_request(format!(
            "request body unreadable: {m}"
        ))),
        UploadOutcome::Internal(m) => Err(GoError::internal(m.clone())),
        other => Err(GoError::internal(format!("upload session: {other:?}"))),
    };
    // ends the session whatever happened (a no-op once committed)
    let _ = host.upload_cancel(id);
    result
}

fn store_zip(
    host: &impl Host,
    req: &Request,
    route: &Route,
    id: &str,
    size: u64,
) -> Result<Response, GoError> {
    let (m, v, _) = canonical(route)?;
    match zipcheck::check(host, id, size, m, v) {
        Ok(()) => {}
        Err(ZipError::Invalid(why)) => {
            return Err(GoError::bad_request(format!(
                "not a module zip of {}@{}: {why}",
                m.as_str(),
                v.as_str()
            )));
        }
        Err(ZipError::Host(e)) => return Err(e.into()),
    }
    let file = host.upload_commit(id, None)?;
    record(host, req, &key(m, v, Ext::Zip), file.digest, file.size)
}

/// Garbage collection: every published file, a page at a time.
pub fn live_blobs_page(host: &impl Host, cursor: Option<&str>) -> Result<LivePage, HostError> {
    live::page(
        host,
        cursor,
        &mut [Step::records(host, PREFIX, |s: Stored, live| {
            live.push(s.digest)
        })],
    )
}

/// The route a PUT names (upload-complete and handle-body see the request again).
pub fn route_of(path: &str) -> Result<Route, GoError> {
    module::route(path)?.ok_or_else(|| GoError::not_found(format!("/{path} is not a GOPROXY path")))
}
