//! Manifest media types: what we ask upstreams for and what we serve a stored manifest as.

use serde_json::Value;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const BLOB: &str = "application/octet-stream";

/// The Accept value sent upstream for every manifest request; fixed (not the client's) so
/// that what is cached under a tag does not depend on which client asked first.
pub fn manifest_accept() -> String {
    [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ]
    .join(", ")
}

/// Content types that say nothing about which manifest schema a body is.
pub fn is_generic(content_type: &str) -> bool {
    matches!(
        content_type,
        "" | "application/json" | "text/plain" | "application/octet-stream"
    )
}

/// The media type to serve a manifest as: the upstream's Content-Type when it is specific,
/// else the body's own `mediaType`, else a guess from its shape.
pub fn detect(content_type: Option<&str>, body: &[u8]) -> String {
    let declared = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !is_generic(&declared) {
        return declared;
    }
    sniff(body).unwrap_or_else(|| OCI_MANIFEST.to_owned())
}

/// The media type of a body that looks like an image manifest or index; None for anything
/// else (a config blob, a layer), so that a stored blob is not mistaken for a manifest.
pub fn sniff(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let schema = obj.get("schemaVersion").and_then(Value::as_u64)?;
    if let Some(mt) = obj.get("mediaType").and_then(Value::as_str) {
        return Some(mt.to_owned());
    }
    Some(
        match schema {
            1 if obj.contains_key("signatures") => DOCKER_SCHEMA1_SIGNED,
            1 => DOCKER_SCHEMA1,
            _ if obj.contains_key("manifests") => OCI_INDEX,
            _ => OCI_MANIFEST,
        }
        .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_content_type_wins() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert_eq!(
            detect(
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
                body
            ),
            DOCKER_MANIFEST
        );
    }

    #[test]
    fn generic_content_type_falls_back_to_body() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert_eq!(detect(Some("application/json"), body), DOCKER_MANIFEST_LIST);
        assert_eq!(detect(None, body), DOCKER_MANIFEST_LIST);
    }

    #[test]
    fn shape_when_no_media_type_field() {
        assert_eq!(
            detect(None, br#"{"schemaVersion":2,"manifests":[]}"#),
            OCI_INDEX
        );
        assert_eq!(
            detect(None, br#"{"schemaVersion":2,"config":{},"layers":[]}"#),
            OCI_MANIFEST
        );
        assert_eq!(
            detect(None, br#"{"schemaVersion":1,"signatures":[]}"#),
            DOCKER_SCHEMA1_SIGNED
        );
        assert_eq!(detect(None, b"not json"), OCI_MANIFEST);
    }

    #[test]
    fn sniff_refuses_non_manifests() {
        assert_eq!(sniff(br#"{"architecture":"amd64","config":{}}"#), None);
        assert_eq!(sniff(b"\x1f\x8b\x08"), None);
        assert_eq!(sniff(b"[]"), None);
    }

    #[test]
    fn accept_lists_all_four() {
        let a = manifest_accept();
        for t in [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ] {
            assert!(a.contains(t));
        }
    }
}
