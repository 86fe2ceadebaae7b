//! The file a request names.

/// The format root: `/generic/<repository>/<path>` reaches a repository without `/repo/<name>`.
pub const ROOT: &str = "/generic/";
/// Longest path accepted, in bytes.
const MAX_PATH: usize = 1024;

/// A file path inside a repository, checked: relative, no empty, `.` or `..` segments, no
/// control characters or backslashes. What the plugin records as `file:<path>` and asks a
/// remote for, so it can never climb out of the remote's base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePath(String);

impl FilePath {
    /// `path` is the request's path below the repository's mount; `root_mounted` when the
    /// repository was named after the format root (`/generic/<repo>/...`), which is removed too.
    pub fn parse(path: &str, root_mounted: bool) -> Result<FilePath, String> {
        let path = match root_mounted {
            true => path
                .strip_prefix(ROOT.trim_end_matches('/'))
                .unwrap_or(path),
            false => path,
        };
        let path = path.strip_prefix('/').unwrap_or(path);
        if path.is_empty() {
            return Err("a file path is needed: /<path/to/file>".into());
        }
        if path.len() > MAX_PATH {
            return Err(format!("path longer than {MAX_PATH} bytes"));
        }
        if path.chars().any(|c| c.is_control() || c == '\\') {
            return Err("path has control characters or backslashes".into());
        }
        if path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err("path has an empty, '.' or '..' segment".into());
        }
        Ok(FilePath(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The metadata key the file's digest is kept under.
    pub fn key(&self) -> String {
        format!("file:{}", self.0)
    }

    /// Where the remote has it: its base URL joined with the path.
    pub fn remote_url(&self, base: &str) -> String {
        format!("{}/{}", base.trim_end_matches('/'), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            FilePath::parse("/a/b.txt", false).map(|p| p.key()),
            Ok("file:a/b.txt".into())
        );
        assert_eq!(
            FilePath::parse("/generic/a/b.txt", true).map(|p| p.0),
            Ok("a/b.txt".into())
        );
        assert_eq!(
            FilePath::parse("/generic/a", false).map(|p| p.0),
            Ok("generic/a".into())
        );
        for bad in [
            "/", "", "/a//b", "/a/../b", "/./a", "/a/", "/a\u{0}b", "/a\\b",
        ] {
            assert!(FilePath::parse(bad, false).is_err(), "{bad:?}");
        }
        assert!(FilePath::parse(&format!("/{}", "a".repeat(MAX_PATH + 1)), false).is_err());
        let p = FilePath::parse("/dir/f.tgz", false).unwrap();
        assert_eq!(
            p.remote_url("http://127.0.0.1:9000/files/"),
            "http://127.0.0.1:9000/files/dir/f.tgz"
        );
    }
}
