//! A pushed manifest document: its media type, what it references and what it says about
//! itself (subject, artifact type, annotations), validated before anything is stored.
//!
//! Parsed loosely from a `serde_json::Value` rather than a fixed struct: manifests carry
//! fields we do not know (platform, urls, custom annotations), and the bytes are stored as
//! sent anyway; only the fields we rely on are checked.

use crate::media_type::{self, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::reference::Digest;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The largest manifest a push may send (the contract's small-document limit).
pub const MAX_SIZE: u64 = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// an image manifest (also artifacts): config and layers
    Image,
    /// an image index or manifest list: child manifests
    Index,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// non-distributable (foreign) layers name where they live instead of being pushed
    pub external: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub kind: Kind,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Why a document is not an acceptable manifest (the message of a MANIFEST_INVALID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

impl Manifest {
    /// Blobs the manifest needs in the image: config and layers, except external layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter())
            .filter(|d| !d.external)
    }

    /// What the referrers API calls the manifest: its `artifactType`, else (image manifests)
    /// its config's media type; an index without one has none.
    pub fn referrer_artifact_type(&self) -> Option<String> {
        self.artifact_type.clone().or_else(|| match self.kind {
            Kind::Image => self.config.as_ref().map(|c| c.media_type.clone()),
            Kind::Index => None,
        })
    }
}

/// Parse a pushed manifest. `content_type` is the request's Content-Type header.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, Invalid> {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else {
        return invalid("the manifest is not a JSON object");
    };
    if doc.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return invalid("schemaVersion must be 2");
    }
    let declared = optional_string(&doc, "mediaType")?;
    let media_type = resolve_media_type(content_type, declared, &doc)?;
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
        OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
        other => return invalid(format!("unsupported manifest media type {other:?}")),
    };
    let (config, layers, manifests) = match kind {
        Kind::Image => {
            let Some(config) = doc.get("config") else {
                return invalid("an image manifest needs a config");
            };
            let layers = match doc.get("layers") {
                Some(Value::Array(a)) => descriptors(a, "layers")?,
                None if media_type == OCI_MANIFEST => Vec::new(),
                _ => return invalid("layers must be an array of descriptors"),
            };
            (Some(descriptor(config, "config")?), layers, Vec::new())
        }
        Kind::Index => {
            let Some(Value::Array(a)) = doc.get("manifests") else {
                return invalid("an index needs a manifests array");
            };
            (None, Vec::new(), descriptors(a, "manifests")?)
        }
    };
    let subject = doc
        .get("subject")
        .filter(|v| !v.is_null())
        .map(|v| descriptor(v, "subject"))
        .transpose()?;
    let artifact_type = optional_string(&doc, "artifactType")?
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let annotations = match doc.get("annotations") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(string_map(m)?).filter(|m| !m.is_empty()),
        Some(_) => return invalid("annotations must be an object of strings"),
    };
    Ok(Manifest {
        media_type,
        kind,
        config,
        layers,
        manifests,
        subject,
        artifact_type,
        annotations,
    })
}

/// The media type the manifest is stored and served as: a specific Content-Type, which must
/// agree with the document's own `mediaType` when it has one; else the document's, else its
/// shape. A client that says one thing and sends another gets MANIFEST_INVALID rather than a
/// manifest that every later pull misreads.
fn resolve_media_type(
    content_type: Option<&str>,
    declared: Option<&str>,
    doc: &Map<String, Value>,
) -> Result<String, Invalid> {
    let header = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase())
        .filter(|ct| !media_type::is_generic(ct));
    match (header, declared) {
        (Some(h), Some(d)) if h != d => invalid(format!(
            "Content-Type {h} does not match the manifest's mediaType {d}"
        )),
        (Some(h), _) => Ok(h),
        (None, Some(d)) => Ok(d.to_owned()),
        (None, None) if doc.contains_key("manifests") => Ok(OCI_INDEX.to_owned()),
        (None, None) => Ok(OCI_MANIFEST.to_owned()),
    }
}

fn optional_string<'a>(doc: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Invalid> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => invalid(format!("{key} must be a string")),
    }
}

fn string_map(m: &Map<String, Value>) -> Result<BTreeMap<String, String>, Invalid> {
    m.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => invalid(format!("annotation {k:?} must be a string")),
        })
        .collect()
}

fn descriptors(values: &[Value], field: &str) -> Result<Vec<Descriptor>, Invalid> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| descriptor(v, &format!("{field}[{i}]")))
        .collect()
}

fn descriptor(v: &Value, field: &str) -> Result<Descriptor, Invalid> {
    let Some(obj) = v.as_object() else {
        return invalid(format!("{field} must be a descriptor object"));
    };
    let Some(media_type) = obj.get("mediaType").and_then(Value::as_str) else {
        return invalid(format!("{field} needs a mediaType"));
    };
    let Some(digest) = obj.get("digest").and_then(Value::as_str) else {
        return invalid(format!("{field} needs a digest"));
    };
    let Ok(digest) = Digest::parse(digest) else {
        return invalid(format!("{field} has an invalid digest {digest:?}"));
    };
    let Some(size) = obj.get("size").and_then(Value::as_u64) else {
        return invalid(format!("{field} needs a non-negative integer size"));
    };
    let external = obj
        .get("urls")
        .and_then(Value::as_array)
        .is_some_and(|u| !u.is_empty());
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        external,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":5}}]{extra}}}"#,
            d('a'),
            d('b')
        )
    }

    #[test]
    fn image_manifest() {
        let m = parse(Some(OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(m.kind, Kind::Image);
        let blobs: Vec<&str> = m.blobs().map(|b| b.digest.as_str()).collect();
        assert_eq!(blobs, vec![d('a'), d('b')]);
        assert_eq!(m.subject, None);
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn artifact_with_subject_and_annotations() {
        let extra = format!(
            r#","artifactType":"application/vnd.example+type","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}},"annotations":{{"k":"v"}}"#,
            d('c')
        );
        let m = parse(Some(OCI_MANIFEST), image(&extra).as_bytes()).unwrap();
        assert_eq!(
            m.subject.as_ref().map(|s| s.digest.as_str()),
            Some(d('c').as_str())
        );
        assert_eq!(
            m.referrer_artifact_type().as_deref(),
            Some("application/vnd.example+type")
        );
        assert_eq!(m.annotations.unwrap()["k"], "v");
    }

    #[test]
    fn index() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":7,"platform":{{"os":"linux"}}}}]}}"#,
            d('e')
        );
        let m = parse(Some(OCI_INDEX), body.as_bytes()).unwrap();
        assert_eq!(m.kind, Kind::Index);
        assert_eq!(m.manifests.len(), 1);
        assert_eq!(m.referrer_artifact_type(), None);
        assert_eq!(m.blobs().count(), 0);
    }

    #[test]
    fn media_type_from_header_body_or_shape() {
        let body = image("");
        // generic header: the document's mediaType
        let m = parse(Some("application/json"), body.as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        // no mediaType anywhere: the shape
        let bare = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(parse(None, bare.as_bytes()).unwrap().media_type, OCI_INDEX);
        // Docker schema2 by header
        let docker = body.replace(OCI_MANIFEST, DOCKER_MANIFEST);
        let m = parse(Some(DOCKER_MANIFEST), docker.as_bytes()).unwrap();
        assert_eq!(
            (m.media_type.as_str(), m.kind),
            (DOCKER_MANIFEST, Kind::Image)
        );
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{}","size":1}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar","digest":"{}","size":1,"urls":["https://example/x"]}}]}}"#,
            d('a'),
            d('b')
        );
        let m = parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.blobs().count(), 1);
    }

    #[test]
    fn rejects() {
        let mismatch = parse(Some(OCI_INDEX), image("").as_bytes());
        assert!(mismatch.unwrap_err().0.contains("does not match"));
        for (ct, body) in [
            (Some(OCI_MANIFEST), "not json".to_owned()),
            (Some(OCI_MANIFEST), "[]".to_owned()),
            (
                Some(OCI_MANIFEST),
                image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
            ),
            (Some(OCI_MANIFEST), image("").replace(&d('b'), "sha256:zz")),
            (
                Some(OCI_MANIFEST),
                image("").replace("\"size\":5", "\"size\":-5"),
            ),
            (Some(OCI_MANIFEST), image(r#","annotations":{"k":1}"#)),
            (Some(OCI_MANIFEST), image(r#","subject":"sha256:x""#)),
            (
                Some(DOCKER_MANIFEST),
                format!(
                    r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{}","size":1}}}}"#,
                    d('a')
                ),
            ),
            (
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                r#"{"schemaVersion":2}"#.to_owned(),
            ),
            (
                Some(OCI_INDEX),
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#
                    .to_owned(),
            ),
        ] {
            assert!(parse(ct, body.as_bytes()).is_err(), "{body}");
        }
    }
}
