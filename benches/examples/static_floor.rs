//! The floor of a hyper/tokio file server: every file of a directory held in memory and answered
//! by path, with the same connection settings as binaryrepo (HTTP/1 or 2 by preface, a 30 s
//! header read timeout, `TCP_NODELAY`) and nothing else: no repository, permission, plan,
//! garbage-collection record, metric or access line. `tests/bench/go_floor.py` runs G1's
//! workload against it beside binaryrepo and nginx, which says how much of binaryrepo's time is
//! the runtime and HTTP stack it is built on, and how much its own request path.
//!
//! `cargo run --release -p binaryrepo-benches --example static_floor -- DIR 127.0.0.1:PORT`

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

fn load(root: &Path, dir: &Path, out: &mut HashMap<String, Bytes>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            load(root, &path, out)?;
        } else if let Some(rel) = path.strip_prefix(root).ok().and_then(|p| p.to_str()) {
            out.insert(format!("/{rel}"), Bytes::from(std::fs::read(&path)?));
        }
    }
    Ok(())
}

/// `%XX` escapes decoded, as nginx does before it looks for the file (GOPROXY paths escape `!`).
fn decoded(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(files: &HashMap<String, Bytes>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let found = if path.contains('%') { files.get(&decoded(path)) } else { files.get(path) };
    let mut resp = Response::new(Full::new(found.cloned().unwrap_or_default()));
    match found {
        Some(body) => {
            let h = resp.headers_mut();
            h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
            h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
        }
        None => *resp.status_mut() = StatusCode::NOT_FOUND,
    }
    resp
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: static_floor DIR HOST:PORT");
        std::process::exit(2);
    };
    let mut files = HashMap::new();
    load(Path::new(dir), Path::new(dir), &mut files)?;
    let files = Arc::new(files);
    let listener = tokio::net::TcpListener::bind(addr.as_str()).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let files = files.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| std::future::ready(Ok::<_, Infallible>(answer(&files, &req))));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30)).keep_alive(true);
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
        });
    }
}
