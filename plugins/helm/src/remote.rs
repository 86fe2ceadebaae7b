//! A remote repository: the upstream's index.yaml cached and revalidated, rewritten so chart
//! URLs go through this repository, and charts cached forever (verified by the index digest).

use crate::contract::{
    FetchBlob, FetchFile, FetchedFile, Host, HostError, LivePage, Plan, Request, UpstreamRequest,
    header,
};
use crate::document::{self, Source, Writer};
use crate::error::HelmError;
use crate::rewrite::{self, Rewriter};
use binaryrepo_plugin_sdk::live::{self, Step};
use binaryrepo_plugin_sdk::{http, meta};
use serde::{Deserialize, Serialize};

/// An upstream index.yaml larger than this is refused (and nothing stored).
pub const MAX_INDEX: u64 = 256 << 20;
/// A chart larger than this is refused.
pub const MAX_CHART: u64 = 256 << 20;
const INDEX_KEY: &str = "remote/index";
const FILE_PREFIX: &str = "file/";

/// The cached index: what we serve and how to revalidate it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CachedIndex {
    /// the rewritten index.yaml we serve
    pub digest: String,
    /// the sidecar: local path -> upstream URL, digest
    pub sidecar: String,
    /// unix seconds of the last upstream check
    pub checked: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// the upstream document it was rewritten from
    #[serde(default)]
    pub source: Option<String>,
}

/// A chart fetched (or being fetched) into the store.
#[derive(Serialize, Deserialize)]
struct CachedFile {
    digest: String,
}

fn remote_url(req: &Request) -> Result<String, HelmError> {
    req.repository
        .as_ref()
        .and_then(|r| r.remote_url.clone())
        .map(|u| u.trim_end_matches('/').to_owned())
        .ok_or_else(|| HelmError::internal("remote repository without an upstream URL"))
}

/// GET/HEAD `/index.yaml`.
pub fn index(host: &impl Host, req: &Request) -> Result<Plan, HelmError> {
    let window = req.repository.as_ref().map_or(0, |r| r.tag_check_seconds);
    let cached: Option<CachedIndex> = meta::get_json(host, INDEX_KEY)?;
    if let Some(c) = &cached
        && req.now < c.checked.saturating_add(window)
        && host.blob_stat(&c.digest)?.is_some()
    {
        host.reusable(c.checked + window - req.now, &[]);
        return Ok(document::serve(&c.digest, document::YAML));
    }
    let c = refresh(host, req, cached)?;
    Ok(document::serve(&c.digest, document::YAML))
}

/// Revalidates (or first fetches) the upstream index. A cached index is served on when the
/// upstream is down or failing: charts already listed stay installable.
pub fn refresh(
    host: &impl Host,
    req: &Request,
    cached: Option<CachedIndex>,
) -> Result<CachedIndex, HelmError> {
    let base = remote_url(req)?;
    let cached = match cached {
        Some(c)
            if host.blob_stat(&c.digest)?.is_some() && host.blob_stat(&c.sidecar)?.is_some() =>
        {
            Some(c)
        }
        _ => None,
    };
    let mut headers = http::headers(&[("Accept", "application/x-yaml, text/yaml, */*")]);
    if let Some(c) = &cached {
        if let Some(e) = &c.etag {
            headers.push(("If-None-Match".into(), e.clone()));
        }
        if let Some(m) = &c.last_modified {
            headers.push(("If-Modified-Since".into(), m.clone()));
        }
    }
    let request = UpstreamRequest {
        method: "GET".into(),
        url: format!("{base}/index.yaml"),
        headers,
        with_credentials: true,
    };
    let fetched = host.upstream_fetch("index.yaml", &request, MAX_INDEX);
    let stale = |c: CachedIndex, why: String| {
        host.log(
            crate::contract::Level::Warn,
            &format!("serving the cached index.yaml: {why}"),
        );
        Ok(c)
    };
    let doc = match (fetched, cached.clone()) {
        (Ok(doc), _) if (200..300).contains(&doc.status) => doc,
        (Ok(doc), Some(mut c)) if doc.status == 304 => {
            c.checked = req.now;
            meta::put_json(host, INDEX_KEY, &c)?;
            return Ok(c);
        }
        (Ok(doc), Some(c)) if doc.status >= 500 || doc.status == 429 => {
            return stale(c, format!("upstream answered {}", doc.status));
        }
        (Ok(doc), _) if doc.status == 404 => {
            return Err(HelmError::not_found("index.yaml not found upstream"));
        }
        (Ok(doc), _) => {
            return Err(HelmError::bad_gateway(format!(
                "upstream answered {} for index.yaml",
                doc.status
            )));
        }
        (Err(HostError::UpstreamUnreachable(m)), Some(c)) => return stale(c, m),
        (Err(e), _) => return Err(e.into()),
    };
    let file = doc
        .file
        .ok_or_else(|| HelmError::bad_gateway("upstream index.yaml has no body"))?;
    let etag = header(&doc.headers, "etag").map(str::to_owned);
    let last_modified = header(&doc.headers, "last-modified").map(str::to_owned);
    let fresh = |c: CachedIndex| CachedIndex {
        checked: req.now,
        etag: etag.clone(),
        last_modified: last_modified.clone(),
        ..c
    };
    // the same document again (an upstream without validators): nothing to rewrite
    if let Some(c) = cached.filter(|c| c.source.as_deref() == Some(file.digest.as_str())) {
        let c = fresh(c);
        meta::put_json(host, INDEX_KEY, &c)?;
        return Ok(c);
    }
    // Concurrent cold requests got the same document from one shared fetch: one of them
    // rewrites it, the others wait for its result rather than each doing the same work.
    let lock = format!("rewriting/{}", file.digest);
    if host.scratch_get(&lock).is_some()
        && let Some(c) = wait_for(host, &file.digest)?
    {
        return Ok(c);
    }
    host.scratch_put(&lock, b"1", REWRITE_LOCK_SECONDS);
    let (digest, sidecar) = rewrite_index(host, &file, &base)?;
    let c = fresh(CachedIndex {
        digest,
        sidecar,
        checked: 0,
        etag: None,
        last_modified: None,
        source: Some(file.digest.clone()),
    });
    meta::put_json(host, INDEX_KEY, &c)?;
    Ok(c)
}

/// How long a rewrite may keep others waiting before they do it themselves.
const REWRITE_LOCK_SECONDS: u64 = 30;
/// How long one waits: within the host's default per-call budget (`plugin_cpu_ms`, 2 s), as the
/// wait counts against it. After that it rewrites the document itself.
const WAIT: std::time::Duration = std::time::Duration::from_millis(1700);

/// The index another call is rewriting from `source`, once it is stored (none after `WAIT`).
fn wait_for(host: &impl Host, source: &str) -> Result<Option<CachedIndex>, HelmError> {
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        if let Some(c) = meta::get_json::<CachedIndex>(host, INDEX_KEY)?
            && c.source.as_deref() == Some(source)
        {
            return Ok(Some(c));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(None)
}

/// Reads the stored upstream index in pieces, writes the rewritten index and its sidecar
/// into the store in pieces: memory stays at a few pieces whatever the index's size.
fn rewrite_index(
    host: &impl Host,
    file: &FetchedFile,
    base: &str,
) -> Result<(String, String), HelmError> {
    let mut index = Writer::start(host)?;
    let mut side = Writer::start(host)?;
    let mut r = Rewriter::new(base);
    let (mut out, mut side_buf) = (String::new(), String::new());
    let mut failed: Option<HostError> = None;
    let mut first = true;
    document::for_each_line(host, Source::Blob(&file.digest), |line| {
        // a BOM before `apiVersion` would hide the top-level keys
        let line = if first {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        first = false;
        r.line(line, &mut out, &mut side_buf);
        if out.len() as u64 >= document::PIECE {
            failed = index.write(out.as_bytes()).err().or(failed.take());
            out.clear();
        }
        if side_buf.len() as u64 >= document::PIECE {
            failed = side.write(side_buf.as_bytes()).err().or(failed.take());
            side_buf.clear();
        }
        failed.is_none()
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    r.finish(&mut side_buf);
    index.write(out.as_bytes())?;
    side.write(side_buf.as_bytes())?;
    if r.skipped > 0 {
        host.log(
            crate::contract::Level::Warn,
            &format!(
                "{} chart URLs in the upstream index.yaml were kept as they are",
                r.skipped
            ),
        );
    }
    Ok((index.commit()?.digest, side.commit()?.digest))
}

/// GET/HEAD of a chart (or provenance) file the rewritten index names.
pub fn file(host: &impl Host, req: &Request, local: &str) -> Result<Plan, HelmError> {
    let key = format!("{FILE_PREFIX}{local}");
    let content_type = content_type(local);
    if let Some(f) = meta::get_json::<CachedFile>(host, &key)?
        && host.blob_stat(&f.digest)?.is_some()
    {
        host.reusable(86_400, &[]);
        return Ok(document::serve(&f.digest, content_type));
    }
    let cached = meta::get_json::<CachedIndex>(host, INDEX_KEY)?;
    let index = match cached {
        Some(c) if host.blob_stat(&c.sidecar)?.is_some() => c,
        other => refresh(host, req, other)?,
    };
    let found = match find(host, &index.sidecar, local)? {
        Some(f) => Some(f),
        // a provenance file sits next to its chart (`helm pull --verify`)
        None => match local.strip_suffix(".prov") {
            Some(chart) => {
                find(host, &index.sidecar, chart)?.map(|(url, _)| (format!("{url}.prov"), None))
            }
            None => None,
        },
    };
    let (upstream, digest) =
        found.ok_or_else(|| HelmError::not_found(format!("{local} is not in the index")))?;
    let base = remote_url(req)?;
    let same_origin = http::origin(&upstream) == http::origin(&base);
    if !same_origin && let Some(o) = http::origin(&upstream) {
        // the sidecar read just now named it, as the upstream's index did
        host.allow_origin(o)?;
    }
    let request = UpstreamRequest {
        method: "GET".into(),
        url: upstream,
        headers: Vec::new(),
        // credentials never leave the remote's origin
        with_credentials: same_origin,
    };
    let headers = http::headers(&[("Content-Type", content_type)]);
    match digest.filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())) {
        Some(hex) => {
            let digest = format!("sha256:{}", hex.to_ascii_lowercase());
            meta::put_json(
                host,
                &key,
                &CachedFile {
                    digest: digest.clone(),
                },
            )?;
            Ok(Plan::FetchBlob(FetchBlob {
                digest,
                request,
                headers,
            }))
        }
        None => Ok(Plan::FetchFile(FetchFile {
            key: local.to_owned(),
            request,
            headers,
            max_bytes: MAX_CHART,
        })),
    }
}

/// After a fetch-file: the chart's digest under its local path.
pub fn file_fetched(host: &impl Host, key: &str, file: &FetchedFile) -> Result<(), HostError> {
    let value = serde_json::to_vec(&CachedFile {
        digest: file.digest.clone(),
    })
    .map_err(|e| HostError::Internal(e.to_string()))?;
    host.meta_put(&format!("{FILE_PREFIX}{key}"), &value)
}

fn content_type(local: &str) -> &'static str {
    if local.ends_with(".prov") {
        "application/pgp-signature"
    } else {
        "application/gzip"
    }
}

/// The sidecar line for `local`: (upstream URL, digest).
fn find(
    host: &impl Host,
    sidecar: &str,
    local: &str,
) -> Result<Option<(String, Option<String>)>, HostError> {
    let mut found = None;
    document::for_each_line(host, Source::Blob(sidecar), |line| {
        if let Some((l, up, d)) = rewrite::parse_side(line)
            && l == local
        {
            found = Some((up.to_owned(), d.map(str::to_owned)));
            return false;
        }
        true
    })?;
    Ok(found)
}

/// Garbage collection: the served index, its sidecar and every cached chart.
pub fn live_blobs_page(host: &impl Host, cursor: Option<&str>) -> Result<LivePage, HostError> {
    live::page(
        host,
        cursor,
        &mut [
            Step::mark(INDEX_KEY, |key, live| {
                if key == INDEX_KEY
                    && let Some(bytes) = host.meta_get(INDEX_KEY)?
                    && let Ok(c) = serde_json::from_slice::<CachedIndex>(&bytes)
                {
                    live.push(c.digest);
                    live.push(c.sidecar);
                }
                Ok(())
            }),
            Step::records(host, FILE_PREFIX, |f: CachedFile, live| live.push(f.digest)),
        ],
    )
}
