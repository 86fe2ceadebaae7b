//! Module paths and versions as the GOPROXY protocol spells them in URLs, validated, and the
//! request paths of the protocol (`/<module>/@v/list`, `/<module>/@v/<version>.zip`, ...).

use crate::error::GoError;

/// A module path (`github.com/BurntSushi/toml`) that passed Go's module path rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModulePath(String);

/// A version as the client named it: canonical (`v1.2.3`, `v2.0.0+incompatible`) or a query
/// the upstream resolves (`master`, `v1.2`), which `.info` accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(String);

/// One of the three files of a module version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    Info,
    Mod,
    Zip,
}

/// What a request path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    List(ModulePath),
    Latest(ModulePath),
    File(ModulePath, Version, Ext),
    /// `/sumdb/<name>/<rest>`: a checksum database endpoint
    Sumdb {
        name: String,
        rest: String,
    },
}

/// `A` -> `!a`: how module paths and versions travel in URLs and on case-insensitive disks.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `!a` -> `A`; an upper-case letter or a `!` before anything but a lower-case letter is not
/// an escaped path.
pub fn unescape(s: &str) -> Result<String, GoError> {
    let mut out = String::with_capacity(s.len());
    let mut bang = false;
    for c in s.chars() {
        match (bang, c) {
            (true, 'a'..='z') => {
                out.push(c.to_ascii_uppercase());
                bang = false;
            }
            (true, _) => return Err(GoError::bad_request(format!("invalid escaped path {s:?}"))),
            (false, '!') => bang = true,
            (false, 'A'..='Z') => {
                return Err(GoError::bad_request(format!(
                    "invalid escaped path {s:?}: upper-case letters are written !x"
                )));
            }
            (false, _) => out.push(c),
        }
    }
    if bang {
        return Err(GoError::bad_request(format!("invalid escaped path {s:?}")));
    }
    Ok(out)
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~".contains(c)
}

impl ModulePath {
    /// Go's `module.CheckPath`: slash-separated elements of letters, digits and `-._~`, none
    /// empty, `.` or dot-led/dot-ended; a first element with a dot, in lower case.
    pub fn parse(path: &str) -> Result<ModulePath, GoError> {
        let bad = |why: &str| {
            Err(GoError::bad_request(format!(
                "malformed module path {path:?}: {why}"
            )))
        };
        if path.is_empty() || path.len() > 1000 {
            return bad("empty or too long");
        }
        for elem in path.split('/') {
            if elem.is_empty() {
                return bad("empty path element");
            }
            if !elem.chars().all(path_char) {
                return bad("invalid character");
            }
            if elem.starts_with('.') || elem.ends_with('.') {
                return bad("leading or trailing dot in path element");
            }
        }
        let first = path.split('/').next().unwrap_or_default();
        if !first.contains('.') {
            return bad("missing dot in first path element");
        }
        if first.starts_with('-')
            || !first
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
        {
            return bad("invalid character in first path element");
        }
        Ok(ModulePath(path.to_owned()))
    }

    /// From its escaped URL form.
    pub fn from_escaped(escaped: &str) -> Result<ModulePath, GoError> {
        ModulePath::parse(&unescape(escaped)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn escaped(&self) -> String {
        escape(&self.0)
    }

    /// The major version the path's suffix demands (`/v2`, gopkg.in's `.v3`), `None` for a
    /// path without one (v0 or v1); `Err` for a suffix Go rejects (`/v1`, `/v02`, a gopkg.in
    /// path without `.vN`): Go's `module.SplitPathVersion`.
    fn path_major(&self) -> Result<Option<u64>, ()> {
        let p = self.0.as_str();
        let gopkg = p.starts_with("gopkg.in/");
        let stem = if gopkg {
            p.strip_suffix("-unstable").unwrap_or(p)
        } else {
            p
        };
        let digits = stem.trim_end_matches(|c: char| c.is_ascii_digit());
        let n = &stem[digits.len()..];
        let sep = if gopkg { ".v" } else { "/v" };
        if !digits.ends_with(sep) || digits.len() == sep.len() {
            return if gopkg { Err(()) } else { Ok(None) };
        }
        match n.parse::<u64>() {
            Ok(0) if gopkg && n == "0" => Ok(Some(0)),
            Ok(m) if !n.starts_with('0') && (gopkg || m >= 2) => Ok(Some(m)),
            _ => Err(()),
        }
    }

    /// Whether `v` may be a version of this module, as the `go` command checks when it unpacks
    /// it: `example.com/m` holds v0 and v1 (v2+ only `+incompatible`), `example.com/m/v2`
    /// v2 only, `gopkg.in/yaml.v3` v3 only (Go's `module.CheckPathMajor`).
    pub fn check_major(&self, v: &Version) -> Result<(), GoError> {
        let major = v.canonical().map_or(0, |s| s.major);
        let incompatible = v.as_str().ends_with("+incompatible");
        let bad = |why: String| {
            Err(GoError::bad_request(format!(
                "{}@{}: invalid version: {why}",
                self.as_str(),
                v.as_str()
            )))
        };
        match self.path_major() {
            Err(()) => bad("the module path has an invalid major version suffix".into()),
            Ok(None) if incompatible && major < 2 => bad(format!(
                "+incompatible suffix not allowed: major version v{major} is compatible"
            )),
            Ok(None) if major < 2 || incompatible => Ok(()),
            Ok(None) => bad(format!("should be v0 or v1, not v{major}")),
            Ok(Some(_)) if incompatible => bad(
                "+incompatible suffix not allowed: the module path has a major version suffix"
                    .into(),
            ),
            // gopkg.in/x.v1's old pseudo-versions were v0.0.0-
            Ok(Some(1)) if v.as_str().starts_with("v0.0.0-") => Ok(()),
            Ok(Some(want)) if want == major => Ok(()),
            Ok(Some(want)) => bad(format!("should be v{want}, not v{major}")),
        }
    }
}

impl Version {
    /// A version a URL may name: a single path element of letters, digits and `-._+~`.
    pub fn parse(v: &str) -> Result<Version, GoError> {
        let ok = !v.is_empty()
            && v.len() <= 200
            && !v.starts_with('.')
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._+~".contains(c));
        if !ok {
            return Err(GoError::bad_request(format!("malformed version {v:?}")));
        }
        Ok(Version(v.to_owned()))
    }

    pub fn from_escaped(escaped: &str) -> Result<Version, GoError> {
        Version::parse(&unescape(escaped)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn escaped(&self) -> String {
        escape(&self.0)
    }

    /// `vMAJOR.MINOR.PATCH[-pre][+incompatible]`, as Go's `semver.Canonical` returns it: the
    /// only versions whose files never change.
    pub fn canonical(&self) -> Option<semver::Version> {
        let rest = self.0.strip_prefix('v')?;
        let rest = rest.strip_suffix("+incompatible").unwrap_or(rest);
        let v = semver::Version::parse(rest).ok()?;
        v.build.is_empty().then_some(v)
    }
}

impl Ext {
    pub fn parse(s: &str) -> Option<Ext> {
        match s {
            "info" => Some(Ext::Info),
            "mod" => Some(Ext::Mod),
            "zip" => Some(Ext::Zip),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ext::Info => "info",
            Ext::Mod => "mod",
            Ext::Zip => "zip",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Ext::Info => "application/json",
            Ext::Mod => "text/plain; charset=utf-8",
            Ext::Zip => "application/zip",
        }
    }

    /// Largest file of this kind: Go's own limits (`modzip.MaxZipFile`, `modfetch`'s go.mod cap).
    pub fn max_bytes(self) -> u64 {
        match self {
            Ext::Info => 1 << 20,
            Ext::Mod => 16 << 20,
            Ext::Zip => 500 << 20,
        }
    }
}

/// A checksum database name: a host name with an optional port (`sum.golang.org`).
fn sumdb_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c))
}

/// Percent-decoding of a URL path (`go` sends `!` as `%21`). An escaped `/` would hide an
/// element boundary from the checks below, and `+` stays a plus (`+incompatible`).
fn percent_decode(raw: &str) -> Result<String, GoError> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b'/') => {
                    return Err(GoError::bad_request(
                        "escaped slashes are not allowed in paths",
                    ));
                }
                Some(c) => out.push(c),
                None => return Err(GoError::bad_request("a malformed percent escape")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| GoError::bad_request("a path that is not UTF-8"))
}

/// The route of a request path (the mount and format root removed, no leading `/`). Anything
/// that is not one of the protocol's paths is `None` (404); malformed names are 400.
pub fn route(raw: &str) -> Result<Option<Route>, GoError> {
    let path = &percent_decode(raw)?;
    if path.contains('%') || path.contains('\\') {
        return Err(GoError::bad_request(
            "escaped characters are not allowed in module paths",
        ));
    }
    if path.split('/').any(|e| e == ".." || e == ".") {
        return Err(GoError::bad_request(
            "dot segments are not allowed in paths",
        ));
    }
    if let Some(rest) = path.strip_prefix("sumdb/") {
        let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
        if !sumdb_name(name) || rest.is_empty() || rest.split('/').any(str::is_empty) {
            return Err(GoError::bad_request(format!(
                "malformed checksum database path /sumdb/{name}/{rest}"
            )));
        }
        let ok = rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~!+@/".contains(c));
        if !ok {
            return Err(GoError::bad_request("malformed checksum database path"));
        }
        return Ok(Some(Route::Sumdb {
            name: name.to_owned(),
            rest: rest.to_owned(),
        }));
    }
    if let Some(module) = path.strip_suffix("/@latest") {
        return Ok(Some(Route::Latest(ModulePath::from_escaped(module)?)));
    }
    let Some((module, file)) = path.split_once("/@v/") else {
        return Ok(None);
    };
    let module = ModulePath::from_escaped(module)?;
    if file == "list" {
        return Ok(Some(Route::List(module)));
    }
    let Some((version, ext)) = file.rsplit_once('.') else {
        return Ok(None);
    };
    let Some(ext) = Ext::parse(ext) else {
        return Ok(None);
    };
    Ok(Some(Route::File(
        module,
        Version::from_escaped(version)?,
        ext,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        assert_eq!(
            escape("github.com/BurntSushi/toml"),
            "github.com/!burnt!sushi/toml"
        );
        assert_eq!(
            unescape("github.com/!burnt!sushi/toml").unwrap(),
            "github.com/BurntSushi/toml"
        );
        assert!(unescape("github.com/Burnt").is_err());
        assert!(unescape("x!").is_err());
        assert!(unescape("x!1").is_err());
    }

    #[test]
    fn module_paths() {
        assert!(ModulePath::parse("example.com/foo/v2").is_ok());
        assert!(ModulePath::parse("gopkg.in/yaml.v3").is_ok());
        for bad in [
            "foo",
            "example.com//x",
            "example.com/.x",
            "example.com/x.",
            "/x.com",
            "x.com/",
            "Example.com/x",
            "x.com/a b",
        ] {
            assert!(ModulePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn major_versions() {
        let ok = |m: &str, v: &str| {
            ModulePath::parse(m)
                .unwrap()
                .check_major(&Version::parse(v).unwrap())
                .is_ok()
        };
        assert!(ok("example.com/m", "v1.2.3"));
        assert!(ok("example.com/m", "v0.0.0-20190101000000-abcdef123456"));
        assert!(ok("example.com/m", "v2.0.0+incompatible"));
        assert!(!ok("example.com/m", "v2.0.0"));
        assert!(!ok("example.com/m", "v1.0.0+incompatible"));
        assert!(ok("example.com/m/v2", "v2.1.0"));
        assert!(ok("example.com/m/v3", "v3.0.0-RC1"));
        assert!(!ok("example.com/m/v2", "v1.0.0"));
        assert!(!ok("example.com/m/v2", "v3.0.0"));
        assert!(!ok("example.com/m/v2", "v2.0.0+incompatible"));
        assert!(!ok("example.com/m/v1", "v1.0.0"));
        assert!(!ok("example.com/m/v02", "v2.0.0"));
        assert!(ok("example.com/m/v2x", "v1.0.0"));
        assert!(ok("gopkg.in/yaml.v2", "v2.4.0"));
        assert!(ok("gopkg.in/yaml.v0", "v0.1.0"));
        assert!(ok(
            "gopkg.in/check.v1",
            "v0.0.0-20200227125254-8fa46927fb4f"
        ));
        assert!(ok("gopkg.in/src-d/go-git.v4-unstable", "v4.0.0"));
        assert!(!ok("gopkg.in/yaml.v2", "v3.0.0"));
        assert!(!ok("gopkg.in/yaml", "v1.0.0"));
    }

    #[test]
    fn canonical_versions() {
        let c = |v: &str| Version::parse(v).unwrap().canonical().is_some();
        assert!(c("v1.2.3"));
        assert!(c("v2.0.0+incompatible"));
        assert!(c("v0.0.0-20200101000000-abcdefabcdef"));
        assert!(!c("v1.2"));
        assert!(!c("master"));
        assert!(!c("v1.2.3+meta"));
        assert!(!c("v01.2.3"));
        assert!(!c("v1.0.0-01"), "a leading zero: not semver to Go, a query");
    }

    #[test]
    fn routes() {
        let m = |s: &str| ModulePath::parse(s).unwrap();
        assert_eq!(
            route("example.com/!foo/@v/list").unwrap(),
            Some(Route::List(m("example.com/Foo")))
        );
        assert_eq!(
            route("example.com/foo/@latest").unwrap(),
            Some(Route::Latest(m("example.com/foo")))
        );
        assert_eq!(
            route("example.com/foo/@v/v1.0.0.zip").unwrap(),
            Some(Route::File(
                m("example.com/foo"),
                Version::parse("v1.0.0").unwrap(),
                Ext::Zip
            ))
        );
        assert_eq!(route("example.com/foo/@v/v1.0.0.tgz").unwrap(), None);
        assert_eq!(route("favicon.ico").unwrap(), None);
        assert!(route("example.com/../x/@v/list").is_err());
        assert!(route("example.com%2Fx/@v/list").is_err());
        assert!(route("example.com/%2e%2e/x/@v/list").is_err());
        assert_eq!(
            route("example.com/%21foo/@v/list").unwrap(),
            Some(Route::List(m("example.com/Foo")))
        );
        assert!(route("example.com/foo/@v/v1..zip").is_ok());
        assert!(route("example.com/foo/@v/.v1.zip").is_err());
        assert!(matches!(
            route("sumdb/sum.golang.org/supported").unwrap(),
            Some(Route::Sumdb { .. })
        ));
        assert!(route("sumdb/../supported").is_err());
        assert!(route("sumdb/sum.golang.org/").is_err());
    }
}
