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
    /// `/v2/<name>/blobs/uploads/` (start) or `/v2/<name>/blobs/uploads/<session>`
    Upload {
        name: &'a str,
        session: Option<&'a str>,
    },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        name: &'a str,
        digest: &'a str,
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
            if name.is_empty() {
                return Route::Unknown;
            }
            return Route::Upload {
                name,
                session: None,
            };
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
            ("blobs", "uploads") => Route::Upload {
                name,
                session: None,
            },
            ("blobs", digest) => Route::Blob { name, digest },
            ("referrers", digest) => Route::Referrers { name, digest },
            ("uploads", session) => match name.rsplit_once('/') {
                Some((name, "blobs")) if !name.is_empty() => Route::Upload {
                    name,
                    session: Some(session),
                },
                _ => Route::Unknown,
            },
            _ => Route::Unknown,
        }
    }

    /// Methods the route has in the API; anything else is UNSUPPORTED. Whether the
    /// repository takes writes is decided later, by its type.
    pub fn allows(&self, method: &str) -> bool {
        let read = method == "GET" || method == "HEAD";
        match self {
            Route::Base => read,
            Route::Manifest { .. } => read || method == "PUT" || method == "DELETE",
            Route::Blob { .. } => read || method == "DELETE",
            Route::Upload { session: None, .. } => method == "POST",
            Route::Upload {
                session: Some(_), ..
            } => read || matches!(method, "PATCH" | "PUT" | "DELETE"),
            Route::TagsList { .. } | Route::Referrers { .. } | Route::Catalog => method == "GET",
            Route::Unknown => false,
        }
    }

    /// The image name the route is about, when it has one.
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. }
            | Route::TagsList { name } => Some(name),
            Route::Base | Route::Catalog | Route::Unknown => None,
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
            Route::Upload {
                name: "x",
                session: None
            }
        );
        assert_eq!(
            Route::parse("/v2/x/y/blobs/uploads"),
            Route::Upload {
                name: "x/y",
                session: None
            }
        );
        assert_eq!(
            Route::parse("/v2/x/blobs/uploads/1234-5"),
            Route::Upload {
                name: "x",
                session: Some("1234-5")
            }
        );
        assert_eq!(Route::parse("/v2/blobs/uploads/"), Route::Unknown);
    }

    #[test]
    fn referrers() {
        assert_eq!(
            Route::parse("/v2/a/b/referrers/sha256:x"),
            Route::Referrers {
                name: "a/b",
                digest: "sha256:x"
            }
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
        let manifest = Route::Manifest {
            name: "a",
            reference: "b",
        };
        assert!(manifest.allows("PUT") && manifest.allows("DELETE"));
        assert!(!manifest.allows("POST") && !manifest.allows("PATCH"));
        assert!(!Route::TagsList { name: "a" }.allows("HEAD"));
        let start = Route::Upload {
            name: "a",
            session: None,
        };
        assert!(start.allows("POST") && !start.allows("PUT"));
        let session = Route::Upload {
            name: "a",
            session: Some("s"),
        };
        for m in ["GET", "PATCH", "PUT", "DELETE"] {
            assert!(session.allows(m), "{m}");
        }
        assert!(!session.allows("POST"));
        assert!(Route::Catalog.allows("GET") && !Route::Catalog.allows("DELETE"));
    }
}
