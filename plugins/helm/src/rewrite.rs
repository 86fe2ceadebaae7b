//! The line-oriented rewrite of an upstream index.yaml: every chart URL becomes a relative
//! URL that resolves through this repository, nothing else changes by a byte (the `digest`
//! of each entry stays as the upstream wrote it). Alongside, a "sidecar" lists for each
//! rewritten URL the upstream URL and the entry's digest: `local \t upstream \t digest \n`.
//!
//! It understands the YAML that `helm repo index` and common generators write: `entries:` at
//! the top level, chart names under it, a block list of entries (indented or not) whose
//! `urls:` is a block list (`- url`, quoted or not) or a flow list (`[a, "b"]`).

/// The local path of a URL the upstream index names, as this repository serves it.
///
/// A clean relative URL (`charts/a-1.0.0.tgz`) stays as it is: it resolves against our
/// index.yaml just as against the upstream's. Anything else (absolute, `/`-rooted, `..`, a
/// query) becomes `abs/<scheme>/<host[:port]>/<path>`, which names where it came from.
pub fn local_path(url: &str, base: &str) -> Option<(String, String)> {
    // Both paths become fields of a tab-separated sidecar line: a tab or a line break in a URL
    // would let an upstream index name another upstream URL for a local path.
    if url.contains(char::is_control) {
        return None;
    }
    let clean_relative = !url.contains("://")
        && !url.starts_with('/')
        && !url.contains(['?', '#', '\\'])
        && url
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if clean_relative {
        return Some((
            url.to_owned(),
            format!("{}/{url}", base.trim_end_matches('/')),
        ));
    }
    let absolute = resolve(url, base)?;
    let (scheme, rest) = absolute.split_once("://")?;
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path_ok = path
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != "..");
    // `\` as in a relative URL: some clients read it as `/`, and a local path must mean one thing
    if !authority_ok(authority) || path.contains('\\') || !path_ok {
        return None;
    }
    Some((
        format!("abs/{}/{authority}/{path}", scheme.to_ascii_lowercase()),
        absolute,
    ))
}

/// A host and port that can stand as one segment of a local path: no user part, no `\`, and not
/// `.` or `..` (`http://../x` would otherwise climb out of `abs/http/`).
fn authority_ok(authority: &str) -> bool {
    !authority.is_empty()
        && authority != "."
        && authority != ".."
        && authority.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// `url` resolved against the directory `base` (the upstream repository URL).
fn resolve(url: &str, base: &str) -> Option<String> {
    if let Some((scheme, _)) = url.split_once("://") {
        let s = scheme.to_ascii_lowercase();
        return (s == "http" || s == "https").then(|| url.to_owned());
    }
    let origin = binaryrepo_plugin_sdk::http::origin(base)?;
    let mut segments: Vec<&str> = if url.starts_with('/') {
        Vec::new()
    } else {
        base[origin.len()..]
            .split('/')
            .filter(|s| !s.is_empty())
            .collect()
    };
    let (path, query) = match url.find(['?', '#']) {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    Some(format!("{origin}/{}{query}", segments.join("/")))
}

/// One rewritten URL of the entry being read.
struct Url {
    local: String,
    upstream: String,
}

#[derive(Default)]
pub struct Rewriter {
    /// the upstream repository URL (relative chart URLs resolve against it)
    base: String,
    in_entries: bool,
    /// column of chart names under `entries:`
    name_col: Option<usize>,
    /// column of the `-` of an entry of the current chart
    entry_col: Option<usize>,
    /// column of the `urls:` key whose block list is being read
    urls_col: Option<usize>,
    digest: Option<String>,
    urls: Vec<Url>,
    /// how many URLs could not be rewritten (kept as they were)
    pub skipped: usize,
}

/// `key: value` at the start of `s` (a plain key), the value trimmed.
fn key_value(s: &str) -> Option<(&str, &str)> {
    let i = s.find(':')?;
    let key = &s[..i];
    let rest = &s[i + 1..];
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (plain && (rest.is_empty() || rest.starts_with([' ', '\t']))).then(|| (key, rest.trim()))
}

fn unquote(s: &str) -> (&str, &str) {
    for q in ["\"", "'"] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return (&s[1..s.len() - 1], q);
        }
    }
    (s, "")
}

impl Rewriter {
    pub fn new(base: &str) -> Rewriter {
        Rewriter {
            base: base.trim_end_matches('/').to_owned(),
            ..Rewriter::default()
        }
    }

    /// Rewrites one line (without its `\n`) into `out`; finished entries go to `side`.
    pub fn line(&mut self, line: &str, out: &mut String, side: &mut String) {
        let trimmed = line.trim_end_matches('\r');
        let indent = trimmed.len() - trimmed.trim_start_matches(' ').len();
        let body = &trimmed[indent..];
        if body.is_empty() || body.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            return;
        }
        if indent == 0 {
            self.end_entry(side);
            self.in_entries = key_value(body).is_some_and(|(k, v)| k == "entries" && v.is_empty());
            self.name_col = None;
            out.push_str(line);
            out.push('\n');
            return;
        }
        if !self.in_entries {
            out.push_str(line);
            out.push('\n');
            return;
        }
        let item = body == "-" || body.starts_with("- ");
        let content = if item { body[1..].trim_start() } else { body };
        let content_col = trimmed.len() - content.len();
        if let Some(col) = self.urls_col {
            if item && indent >= col && key_value(content).is_none() {
                let rewritten = self.url(content);
                out.push_str(&trimmed[..content_col]);
                out.push_str(&rewritten);
                out.push_str(&line[trimmed.len()..]);
                out.push('\n');
                return;
            }
            self.urls_col = None;
        }
        let kv = key_value(content);
        if !item
            && kv.is_some_and(|(_, v)| v.is_empty())
            && self.name_col.is_none_or(|c| c == indent)
        {
            // a chart name: its entries follow
            self.end_entry(side);
            self.name_col = Some(indent);
            self.entry_col = None;
        } else if item && kv.is_some() && self.name_col.is_some() {
            if self.entry_col.is_none() && self.name_col.is_some_and(|c| indent >= c) {
                self.entry_col = Some(indent);
            }
            if self.entry_col == Some(indent) {
                self.end_entry(side);
            }
        }
        let entry_key = self
            .entry_col
            .is_some_and(|c| content_col == c + 2 || (item && Some(indent) == self.entry_col));
        if let (true, Some((key, value))) = (entry_key, kv) {
            match key {
                // a field of the tab-separated sidecar: a digest with a tab or a control
                // character in it is no digest
                "digest" => {
                    self.digest = Some(unquote(value).0)
                        .filter(|d| !d.is_empty() && !d.contains(char::is_control))
                        .map(str::to_owned)
                }
                "urls" if value.is_empty() => self.urls_col = Some(content_col),
                "urls" if value.starts_with('[') && value.ends_with(']') => {
                    let inner = &value[1..value.len() - 1];
                    let items: Vec<String> = inner
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| self.url(s))
                        .collect();
                    let at = trimmed.len() - value.len();
                    out.push_str(&trimmed[..at]);
                    out.push('[');
                    out.push_str(&items.join(", "));
                    out.push(']');
                    out.push_str(&line[trimmed.len()..]);
                    out.push('\n');
                    return;
                }
                _ => {}
            }
        }
        out.push_str(line);
        out.push('\n');
    }

    /// After the last line.
    pub fn finish(&mut self, side: &mut String) {
        self.end_entry(side);
    }

    /// One URL scalar (quoted or not) rewritten, quotes kept.
    fn url(&mut self, scalar: &str) -> String {
        let scalar = scalar.split(" #").next().unwrap_or(scalar).trim();
        let (raw, quote) = unquote(scalar);
        match local_path(raw, &self.base) {
            Some((local, upstream)) => {
                let out = format!("{quote}{local}{quote}");
                self.urls.push(Url { local, upstream });
                out
            }
            None => {
                self.skipped += 1;
                scalar.to_owned()
            }
        }
    }

    fn end_entry(&mut self, side: &mut String) {
        let digest = self.digest.take().unwrap_or_else(|| "-".to_owned());
        for u in self.urls.drain(..) {
            side.push_str(&format!("{}\t{}\t{}\n", u.local, u.upstream, digest));
        }
        self.urls_col = None;
    }
}

/// One sidecar line: (local path, upstream URL, digest when the index gave one).
pub fn parse_side(line: &str) -> Option<(&str, &str, Option<&str>)> {
    let mut parts = line.splitn(3, '\t');
    let local = parts.next()?;
    let upstream = parts.next()?;
    let digest = parts.next()?.trim();
    Some((local, upstream, (digest != "-").then_some(digest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_control_characters_are_not_rewritten() {
        let base = "https://charts.example.com/sub";
        for url in [
            "a.tgz\tx",
            "a\thttp:/10.0.0.1/x",
            "/x.tgz\n",
            "a//b\\c.tgz",
            "http://h\\i/c.tgz",
            "https://h/a\r.tgz",
            "a\u{0}.tgz",
        ] {
            assert_eq!(local_path(url, base), None, "{url:?}");
        }
        let (out, side) = run(
            base,
            "entries:\n  a:\n  - urls:\n    - a\thttp:/10.0.0.1/x\n",
        );
        assert!(side.is_empty(), "{side:?}");
        let (_, side) = run(
            base,
            "entries:\n  a:\n  - digest: \"x\ty\"\n    urls:\n    - a.tgz\n",
        );
        assert_eq!(side, format!("a.tgz\t{base}/a.tgz\t-\n"));
        assert!(
            out.ends_with("    - a\thttp:/10.0.0.1/x\n"),
            "kept as it was: {out:?}"
        );
    }

    fn run(base: &str, text: &str) -> (String, String) {
        let mut r = Rewriter::new(base);
        let (mut out, mut side) = (String::new(), String::new());
        for l in text.split_inclusive('\n') {
            r.line(l.strip_suffix('\n').unwrap_or(l), &mut out, &mut side);
        }
        r.finish(&mut side);
        (out, side)
    }

    const HELM: &str = "apiVersion: v1
entries:
  alpine:
  - apiVersion: v2
    created: \"2024-01-01T00:00:00Z\"
    digest: 515c58e5f79d8b2913a10cb400ebb6fa9c77fe813287afbacf1a0b897cd78727
    maintainers:
    - email: a@b.c
      name: someone
    name: alpine
    urls:
    - https://charts.example.com/alpine-0.2.0.tgz
    - charts/alpine-0.2.0.tgz
    version: 0.2.0
  - digest: \"aaaa\"
    name: alpine
    urls:
    - 'alpine-0.1.0.tgz'
    version: 0.1.0
  nginx:
    - name: nginx
      urls: [\"http://127.0.0.1:9/n/nginx-1.0.0.tgz\", ../up/nginx-1.0.0.tgz]
      digest: bbbb
      version: 1.0.0
generated: \"2024-01-01T00:00:00Z\"
serverInfo:
  urls:
  - https://not.an.entry/
";

    #[test]
    fn rewrites_urls_only() {
        let (out, side) = run("http://up:8080/repo", HELM);
        let expect = HELM
            .replace(
                "- https://charts.example.com/alpine-0.2.0.tgz",
                "- abs/https/charts.example.com/alpine-0.2.0.tgz",
            )
            .replace(
                "[\"http://127.0.0.1:9/n/nginx-1.0.0.tgz\", ../up/nginx-1.0.0.tgz]",
                "[\"abs/http/127.0.0.1:9/n/nginx-1.0.0.tgz\", abs/http/up:8080/up/nginx-1.0.0.tgz]",
            );
        assert_eq!(out, expect);
        assert_eq!(
            side,
            "abs/https/charts.example.com/alpine-0.2.0.tgz\thttps://charts.example.com/alpine-0.2.0.tgz\t515c58e5f79d8b2913a10cb400ebb6fa9c77fe813287afbacf1a0b897cd78727
charts/alpine-0.2.0.tgz\thttp://up:8080/repo/charts/alpine-0.2.0.tgz\t515c58e5f79d8b2913a10cb400ebb6fa9c77fe813287afbacf1a0b897cd78727
alpine-0.1.0.tgz\thttp://up:8080/repo/alpine-0.1.0.tgz\taaaa
abs/http/127.0.0.1:9/n/nginx-1.0.0.tgz\thttp://127.0.0.1:9/n/nginx-1.0.0.tgz\tbbbb
abs/http/up:8080/up/nginx-1.0.0.tgz\thttp://up:8080/up/nginx-1.0.0.tgz\tbbbb
"
        );
    }

    #[test]
    fn local_paths() {
        assert_eq!(
            local_path("a.tgz", "http://u/r/").unwrap().1,
            "http://u/r/a.tgz"
        );
        assert_eq!(
            local_path("/x/a.tgz", "http://u/r").unwrap().0,
            "abs/http/u/x/a.tgz"
        );
        assert_eq!(local_path("ftp://u/a.tgz", "http://u"), None);
        assert_eq!(local_path("http://user@u/a.tgz", "http://u"), None);
        assert_eq!(local_path("http://u/a/../b.tgz", "http://u"), None);
        // an authority that is a path segment of its own
        for url in [
            "http://../z",
            "http://./z",
            "https://../../etc/x.tgz",
            "http://a%2f../x.tgz",
        ] {
            assert_eq!(local_path(url, "http://u"), None, "{url}");
        }
        assert_eq!(
            local_path("http://[::1]:8080/a.tgz", "http://u").unwrap().0,
            "abs/http/[::1]:8080/a.tgz"
        );
        assert_eq!(
            local_path("../b.tgz", "http://u/r/s").unwrap().0,
            "abs/http/u/r/b.tgz"
        );
    }

    #[test]
    fn crlf_and_comments() {
        let (out, side) = run(
            "http://u",
            "entries:\r\n  a:\r\n  - urls:\r\n    - x.tgz # c\r\n    name: a\r\n",
        );
        assert_eq!(
            out,
            "entries:\r\n  a:\r\n  - urls:\r\n    - x.tgz\r\n    name: a\r\n"
        );
        assert_eq!(side, "x.tgz\thttp://u/x.tgz\t-\n");
    }
}
