//! A remote repository: a caching proxy of an upstream GOPROXY (and of the checksum databases
//! it proxies). The files of a canonical version and checksum-database tiles never change, so
//! they are fetched once and kept; `list`, `@latest`, version queries and the database's
//! `latest` change, so they are kept for the check window, revalidated, and served stale
//! while the upstream is down. Only the checksum databases the repository's
//! `checksum_databases` setting names are proxied (default: `sum.golang.org`).

use crate::contract::{
    FetchFile, FetchedFile, Host, HostError, Level, LivePage, Plan, Request, ServeBlob,
    UpstreamRequest, header,
};
use crate::error::GoError;
use crate::module::{Ext, ModulePath, Route, Version};
use binaryrepo_plugin_sdk::live::{self, Step};
use binaryrepo_plugin_sdk::{http, meta};
use serde::{Deserialize, Serialize};

/// metadata: a stored immutable file, by its path in the protocol
const FILE_PREFIX: &str = "file/";
/// metadata: the last answer for a mutable path
const DOC_PREFIX: &str = "doc/";
/// Mutable documents (`list`, `@latest`, `.info` of a query, a checksum database's `latest`).
const MAX_DOC: u64 = 16 << 20;
/// A checksum database lookup answer or tile.
const MAX_SUMDB: u64 = 1 << 20;
/// How long an immutable answer may be reused without asking the plugin again.
const IMMUTABLE_REUSE: u64 = 86_400;

const TEXT: &str = "text/plain; charset=utf-8";

/// The setting naming the checksum databases a remote proxies: names separated by commas or
/// white space; empty for none.
pub const CHECKSUM_DATABASES: &str = "checksum_databases";
/// The checksum databases a remote proxies when its definition does not say.
const DEFAULT_CHECKSUM_DATABASES: &str = "sum.golang.org";

/// Whether this repository proxies checksum database `name`: a repository is a route out
/// only to the databases its administrator chose, whatever else its upstream proxies.
fn proxies_checksum_database(req: &Request, name: &str) -> bool {
    let names = req
        .repository
        .as_ref()
        .and_then(|r| r.setting(CHECKSUM_DATABASES))
        .unwrap_or(DEFAULT_CHECKSUM_DATABASES);
    names
        .split(|c: char| c == ',' || c.is_whitespace())
        .any(|n| n == name)
}

/// An immutable file fetched into the store.
#[derive(Serialize, Deserialize)]
struct CachedFile {
    digest: String,
}

/// The last upstream document for a mutable path.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct CachedDoc {
    digest: String,
    /// unix seconds of the last upstream check
    checked: u64,
    etag: Option<String>,
    last_modified: Option<String>,
}

fn remote_url(req: &Request) -> Result<String, GoError> {
    req.repository
        .as_ref()
        .and_then(|r| r.remote_url.clone())
        .map(|u| u.trim_end_matches('/').to_owned())
        .ok_or_else(|| GoError::internal("remote repository without an upstream URL"))
}

/// The protocol path of a route, escaped as it travels upstream.
fn upstream_path(route: &Route) -> String {
    match route {
        Route::List(m) => format!("{}/@v/list", m.escaped()),
        Route::Latest(m) => format!("{}/@latest", m.escaped()),
        Route::File(m, v, ext) => format!("{}/@v/{}.{}", m.escaped(), v.escaped(), ext.as_str()),
        Route::Sumdb { name, rest } => format!("sumdb/{name}/{rest}"),
    }
}

/// GET/HEAD of any protocol path.
pub fn read(host: &impl Host, req: &Request, route: &Route) -> Result<Plan, GoError> {
    let path = upstream_path(route);
    match route {
        // a 404 makes `go` reach the database directly, as for a proxy that does not proxy it
        Route::Sumdb { name, .. } if !proxies_checksum_database(req, name) => Err(
            GoError::not_found(format!("checksum database {name} is not proxied here")),
        ),
        Route::File(_, v, Ext::Zip) if v.canonical().is_some() => immutable(
            host,
            req,
            &path,
            Ext::Zip.content_type(),
            Ext::Zip.max_bytes(),
        ),
        Route::File(m, v, ext) if v.canonical().is_some() => probed(host, req, &path, (m, v, *ext)),
        Route::File(_, _, ext) => {
            let max = ext.max_bytes().min(MAX_DOC);
            mutable(host, req, &path, ext.content_type(), max)
        }
        Route::List(_) => mutable(host, req, &path, TEXT, MAX_DOC),
        Route::Latest(_) => mutable(host, req, &path, "application/json", Ext::Info.max_bytes()),
        // a lookup answer and a tile never change; `latest` and `supported` may
        Route::Sumdb { rest, .. } if rest.starts_with("lookup/") || rest.starts_with("tile/") => {
            immutable(host, req, &path, TEXT, MAX_SUMDB)
        }
        Route::Sumdb { rest, .. } if rest == "latest" || rest == "supported" => {
            mutable(host, req, &path, TEXT, MAX_SUMDB)
        }
        Route::Sumdb { .. } => Err(GoError::not_found(format!("/{path} not found"))),
    }
}

fn serve(digest: &str, content_type: &str) -> Plan {
    Plan::ServeBlob(ServeBlob {
        digest: digest.to_owned(),
        headers: http::headers(&[("Content-Type", content_type)]),
    })
}

/// A file fetched once (one upstream request however many ask at once) and kept.
fn immutable(
    host: &impl Host,
    req: &Request,
    path: &str,
    content_type: &str,
    max_bytes: u64,
) -> Result<Plan, GoError> {
    if let Some(f) = meta::get_json::<CachedFile>(host, &format!("{FILE_PREFIX}{path}"))?
        && host.blob_stat(&f.digest)?.is_some()
    {
        host.reusable(IMMUTABLE_REUSE, &[]);
        return Ok(serve(&f.digest, content_type));
    }
    Ok(Plan::FetchFile(FetchFile {
        key: path.to_owned(),
        request: UpstreamRequest {
            method: "GET".into(),
            url: format!("{}/{path}", remote_url(req)?),
            headers: Vec::new(),
            with_credentials: true,
        },
        headers: http::headers(&[("Content-Type", content_type)]),
        max_bytes,
    }))
}

/// The `.info` or `.mod` of a canonical version: kept for good like a `.zip`, but fetched by
/// the plugin (concurrent askers still share one upstream request) so that a 404 or 410 is
/// remembered for the check window: `go get example.com/m/v2@v2.1.0` asks for the `.info` of
/// every path prefix (`example.com/@v/v2.1.0.info`, `example.com/m/@v/...`), and all but one
/// are not found.
fn probed(
    host: &impl Host,
    req: &Request,
    path: &str,
    (m, v, ext): (&ModulePath, &Version, Ext),
) -> Result<Plan, GoError> {
    if let Some(f) = meta::get_json::<CachedFile>(host, &format!("{FILE_PREFIX}{path}"))?
        && host.blob_stat(&f.digest)?.is_some()
    {
        host.reusable(IMMUTABLE_REUSE, &[]);
        return Ok(serve(&f.digest, ext.content_type()));
    }
    if let Some(e) = known_missing(host, path) {
        return Err(e);
    }
    let request = get(req, path, Vec::new())?;
    let d = host.upstream_fetch(path, &request, ext.max_bytes())?;
    match (d.status, d.file) {
        (200..300, Some(file)) => {
            if ext == Ext::Info && m.check_major(v).is_ok() {
                names_version(host, &file, v)?;
            }
            file_fetched(host, path, &file)?;
            Ok(serve(&file.digest, ext.content_type()))
        }
        (404 | 410, _) => Err(remember_missing(host, req, path, d.status)),
        (status, _) => Err(GoError::bad_gateway(format!(
            "upstream answered {status} for /{path}"
        ))),
    }
}

/// The `.info` of a version its module path allows must name that version: `go` refuses any
/// other answer ("proxy returned info for version ... instead of requested version"), so
/// keeping it for good would keep the version broken after the upstream is fixed. (For
/// `example.com/m@v2.0.0` an upstream rightly answers `v2.0.0+incompatible`.)
fn names_version(host: &impl Host, file: &FetchedFile, v: &Version) -> Result<(), GoError> {
    let body = host.blob_read_range(&file.digest, 0, file.size)?;
    let named = info_version(&body);
    if named.as_deref() == Some(v.as_str()) {
        return Ok(());
    }
    Err(GoError::bad_gateway(format!(
        "the upstream's .info of {} names version {:?}: not kept",
        v.as_str(),
        named.unwrap_or_default()
    )))
}

/// The version an `.info` names (its `"Version"`), if it is JSON that names one.
pub fn info_version(info: &[u8]) -> Option<String> {
    let info: serde_json::Value = serde_json::from_slice(info).ok()?;
    Some(info.get("Version")?.as_str()?.to_owned())
}

fn get(
    req: &Request,
    path: &str,
    headers: Vec<(String, String)>,
) -> Result<UpstreamRequest, GoError> {
    Ok(UpstreamRequest {
        method: "GET".into(),
        url: format!("{}/{path}", remote_url(req)?),
        headers,
        with_credentials: true,
    })
}

/// A 404 or 410 the upstream gave for `path` within the check window, kept in the host's
/// bounded scratch space only, so that no request for a path that does not exist can grow
/// the repository's metadata.
fn known_missing(host: &impl Host, path: &str) -> Option<GoError> {
    let status = host.scratch_get(&format!("missing/{path}"))?;
    Some(not_found(if status == b"410" { 410 } else { 404 }))
}

fn remember_missing(host: &impl Host, req: &Request, path: &str, status: u16) -> GoError {
    let window = req.repository.as_ref().map_or(0, |r| r.tag_check_seconds);
    host.scratch_put(
        &format!("missing/{path}"),
        status.to_string().as_bytes(),
        window,
    );
    not_found(status)
}

/// After a fetch-file: the file's digest under its protocol path.
pub fn file_fetched(host: &impl Host, key: &str, file: &FetchedFile) -> Result<(), HostError> {
    // an upstream that answers 200 with a page (a captive portal, a catch-all web server) has
    // it served this once, not kept for good as the version's zip: go refuses it anyway
    if key.ends_with(".zip") && host.blob_read_range(&file.digest, 0, 2)? != b"PK" {
        host.log(
            Level::Warn,
            &format!("/{key} from upstream is not a zip: not kept"),
        );
        return Ok(());
    }
    let value = serde_json::to_vec(&CachedFile {
        digest: file.digest.clone(),
    })
    .map_err(|e| HostError::Internal(e.to_string()))?;
    host.meta_put(&format!("{FILE_PREFIX}{key}"), &value)
}

/// A document that changes upstream: the last one within the check window, else revalidated.
/// A 404 or 410 is passed on and remembered for the window (`known_missing`), so that `go
/// get`'s probes of path prefixes are answered at once. At most `max_bytes` is taken.
fn mutable(
    host: &impl Host,
    req: &Request,
    path: &str,
    content_type: &str,
    max_bytes: u64,
) -> Result<Plan, GoError> {
    let window = req.repository.as_ref().map_or(0, |r| r.tag_check_seconds);
    let key = format!("{DOC_PREFIX}{path}");
    let cached = match meta::get_json::<CachedDoc>(host, &key)? {
        Some(c) if host.blob_stat(&c.digest)?.is_some() => Some(c),
        _ => None,
    };
    if let Some(c) = &cached
        && req.now < c.checked.saturating_add(window)
    {
        host.reusable(c.checked + window - req.now, &[]);
        return Ok(serve(&c.digest, content_type));
    }
    if let Some(e) = known_missing(host, path) {
        return Err(e);
    }
    let mut headers = Vec::new();
    if let Some(c) = &cached {
        if let Some(e) = &c.etag {
            headers.push(("If-None-Match".to_owned(), e.clone()));
        }
        if let Some(m) = &c.last_modified {
            headers.push(("If-Modified-Since".to_owned(), m.clone()));
        }
    }
    let request = get(req, path, headers)?;
    let stale = |c: &CachedDoc, why: String| {
        host.log(Level::Warn, &format!("serving the cached /{path}: {why}"));
        Ok(serve(&c.digest, content_type))
    };
    let store = |doc: CachedDoc| -> Result<Plan, GoError> {
        meta::put_json(host, &key, &doc)?;
        Ok(serve(&doc.digest, content_type))
    };
    match (host.upstream_fetch(path, &request, max_bytes), cached) {
        (Ok(d), _) if (200..300).contains(&d.status) => {
            let file = d.file.ok_or_else(|| {
                GoError::bad_gateway(format!("upstream answered /{path} without a body"))
            })?;
            store(CachedDoc {
                digest: file.digest,
                checked: req.now,
                etag: header(&d.headers, "etag").map(str::to_owned),
                last_modified: header(&d.headers, "last-modified").map(str::to_owned),
            })
        }
        (Ok(d), Some(c)) if d.status == 304 => store(CachedDoc {
            checked: req.now,
            ..c
        }),
        (Ok(d), cached) if d.status == 404 || d.status == 410 => {
            if cached.is_some() {
                host.meta_delete(&key)?;
            }
            Err(remember_missing(host, req, path, d.status))
        }
        (Ok(d), Some(c)) if d.status >= 500 || d.status == 429 => {
            stale(&c, format!("upstream answered {}", d.status))
        }
        (Ok(d), _) => Err(GoError::bad_gateway(format!(
            "upstream answered {} for /{path}",
            d.status
        ))),
        (Err(HostError::UpstreamUnreachable(m)), Some(c)) => stale(&c, m),
        (Err(e), _) => Err(e.into()),
    }
}

fn not_found(status: u16) -> GoError {
    GoError::new(status, "not found upstream")
}

/// Garbage collection: every immutable file and the last answer of every mutable path, a
/// page at a time.
pub fn live_blobs_page(host: &impl Host, cursor: Option<&str>) -> Result<LivePage, HostError> {
    live::page(
        host,
        cursor,
        &mut [
            Step::records(host, FILE_PREFIX, |f: CachedFile, live| live.push(f.digest)),
            Step::records(host, DOC_PREFIX, |d: CachedDoc, live| live.push(d.digest)),
        ],
    )
}
