//! The web page: static files from `ui/`, built into the binary, served at `/ui/` on the main
//! listener. The page is a client of the management API and of each format's own API like any
//! other; nothing here knows a format.

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::server::body::{self, Body};

/// Where the page lives.
pub const PREFIX: &str = "/ui/";

/// Every file of `ui/`, built in: a format's browser (`formats/<format>.js`) joins the page by
/// being added there, without a change here.
static FILES: include_dir::Dir<'static> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/../ui");

/// The type of a file of the page, by its extension; anything else is not served.
fn content_type(path: &str) -> Option<&'static str> {
    Some(match path.rsplit_once('.')?.1 {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => return None,
    })
}

/// No inline script or style, nothing from elsewhere, no framing: names shown on the page are
/// user input, and this keeps a slip in escaping from becoming script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is the page's (on the main listener).
pub fn owns(path: &str) -> bool {
    path == "/ui" || path.starts_with(PREFIX)
}

/// A file of the page, or a redirect from `/ui` and `/` (when no repository answers `/`).
pub fn serve(method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are supported here\n");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let Some(rest) = path.strip_prefix(PREFIX) else { return redirect() };
    let rest = if rest.is_empty() { "index.html" } else { rest };
    let found = content_type(rest).zip(FILES.get_file(rest).map(|f| f.contents()));
    let Some((content_type, bytes)) = found else {
        return plain(StatusCode::NOT_FOUND, "no such file in the web page\n");
    };
    let mut resp = Response::new(if method == Method::HEAD { body::empty() } else { body::full(bytes::Bytes::from_static(bytes)) });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    // The files change only with the binary; revalidating keeps an upgrade visible at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(h);
    resp
}

/// `/` and `/ui` lead to the page.
pub fn redirect() -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static(PREFIX));
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(bytes::Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    secure(resp.headers_mut());
    resp
}

fn secure(h: &mut http::HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_carry_their_type_and_the_security_headers() {
        let resp = serve(&Method::GET, "/ui/app.js");
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap_or_default();
        assert!(csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(serve(&Method::GET, "/ui/").headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
    }

    #[test]
    fn unknown_files_methods_and_bare_paths() {
        assert_eq!(serve(&Method::GET, "/ui/../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve(&Method::GET, "/ui/formats/none.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve(&Method::POST, "/ui/").status(), StatusCode::METHOD_NOT_ALLOWED);
        let r = serve(&Method::GET, "/ui");
        assert_eq!((r.status(), &r.headers()[header::LOCATION]), (StatusCode::FOUND, &HeaderValue::from_static("/ui/")));
        assert!(owns("/ui") && owns("/ui/x") && !owns("/uix") && !owns("/"));
    }
}
