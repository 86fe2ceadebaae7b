//! Registry v2 URL layout: which operation a path names. Validation of the name and the
//! reference is left to the caller so that it can answer with the right error code.

/// The operation a path names; the strings borrow from the path and are not yet validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`: the API version check clients start with
    Base,
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        name: &'a str,
        reference: &'a str,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/[<id>]`: push, not offered by this contract version
    Upload {
        name: &'a str,
    },
    /// `/v2/<name>/tags/list`
    TagsList {
        name: &'a str,
    },
    /// `/v2/_catalog`
    Catalog,
    Unknown,
}

impl<'a> Route<'a> {
    pub fn parse(path: &'a str) -> Route<'a> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Route::Unknown;
        };
        if rest.is_empty() || rest == "/" {
            return Route::Base;
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Route::Unknown;
        };
        if rest == "_catalog" {
            return Route::Catalog;
        }
        // Upload URLs end with a slash (`.../blobs/uploads/`); everything else must not.
        if let Some(name) = rest.strip_suffix("/blobs/uploads/") {
            return Route::Upload { name };
        }
        // A name may itself contain "manifests" or "blobs" components, so the operation is
        // recognised from the end of the path.
        let Some((head, last)) = rest.rsplit_once('/') else {
            return Route::Unknown;
        };
        let Some((name, op)) = head.rsplit_once('/') else {
            return Route::Unknown;
        };
        if last.is_empty() || name.is_empty() {
            return Route::Unknown;
        }
        match (op, last) {
            ("manifests", reference) => Route::Manifest { name, reference },
            ("tags", "list") => Route::TagsList { name },
            ("blobs", "uploads") => Route::Upload { name },
            ("blobs", digest) => Route::Blob { name, digest },
            ("uploads", _) => match name.rsplit_once('/') {
                Some((name, "blobs")) if !name.is_empty() => Route::Upload { name },
                _ => Route::Unknown,
            },
            _ => Route::Unknown,
        }
    }

    /// Methods this contract version serves for the route; anything else is UNSUPPORTED.
    pub fn allows(&self, method: &str) -> bool {
        match self {
            Route::Base | Route::Manifest { .. } | Route::Blob { .. } => {
                method == "GET" || method == "HEAD"
            }
            Route::TagsList { .. } => method == "GET",
            Route::Upload { .. } | Route::Catalog | Route::Unknown => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base() {
        assert_eq!(Route::parse("/v2/"), Route::Base);
        assert_eq!(Route::parse("/v2"), Route::Base);
        assert_eq!(Route::parse("/v3/"), Route::Unknown);
        assert_eq!(Route::parse("/v2x/"), Route::Unknown);
        assert_eq!(Route::parse("/"), Route::Unknown);
    }

    #[test]
    fn manifests_blobs_tags() {
        assert_eq!(
            Route::parse("/v2/library/redis/manifests/7"),
            Route::Manifest {
                name: "library/redis",
                reference: "7"
            }
        );
        assert_eq!(
            Route::parse("/v2/redis/blobs/sha256:abc"),
            Route::Blob {
                name: "redis",
                digest: "sha256:abc"
            }
        );
        assert_eq!(
            Route::parse("/v2/a/b/c/tags/list"),
            Route::TagsList { name: "a/b/c" }
        );
    }

    #[test]
    fn operation_words_inside_names() {
        assert_eq!(
            Route::parse("/v2/foo/manifests/bar/manifests/latest"),
            Route::Manifest {
                name: "foo/manifests/bar",
                reference: "latest"
            }
        );
        assert_eq!(
            Route::parse("/v2/blobs/blobs/sha256:x"),
            Route::Blob {
                name: "blobs",
                digest: "sha256:x"
            }
        );
        assert_eq!(
            Route::parse("/v2/tags/tags/list"),
            Route::TagsList { name: "tags" }
        );
    }

    #[test]
    fn uploads() {
        assert_eq!(
            Route::parse("/v2/x/blobs/uploads/"),
            Route::Upload { name: "x" }
        );
        assert_eq!(
            Route::parse("/v2/x/y/blobs/uploads"),
            Route::Upload { name: "x/y" }
        );
        assert_eq!(
            Route::parse("/v2/x/blobs/uploads/1234-5"),
            Route::Upload { name: "x" }
        );
    }

    #[test]
    fn malformed() {
        for p in [
            "/v2/redis",
            "/v2/redis/",
            "/v2/manifests/latest",
            "/v2/redis/manifests/",
            "/v2/redis/tags/lists",
            "/v2//manifests/x",
            "/v2/redis/unknown/x",
            "/api/v2/",
        ] {
            assert_eq!(Route::parse(p), Route::Unknown, "{p}");
        }
        assert_eq!(Route::parse("/v2/_catalog"), Route::Catalog);
    }

    #[test]
    fn methods() {
        assert!(Route::Base.allows("HEAD"));
        assert!(
            Route::Manifest {
                name: "a",
                reference: "b"
            }
            .allows("GET")
        );
        assert!(
            !Route::Manifest {
                name: "a",
                reference: "b"
            }
            .allows("PUT")
        );
        assert!(
            !Route::Manifest {
                name: "a",
                reference: "b"
            }
            .allows("DELETE")
        );
        assert!(!Route::TagsList { name: "a" }.allows("HEAD"));
        assert!(!Route::Upload { name: "a" }.allows("POST"));
    }
}
