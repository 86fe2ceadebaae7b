//! The sha256 digests the plugin records and the checksum clients send.

use binaryrepo_plugin_sdk::contract::Request;

/// `sha256:` and 64 lowercase hex digits: the name the host stores content under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Digest(s.to_owned()))
    }

    /// The digest a metadata value holds, if it is one.
    pub fn from_meta(value: &[u8]) -> Option<Digest> {
        Digest::parse(std::str::from_utf8(value).ok()?)
    }

    /// `X-Checksum-Sha256: <hex>` (the header Artifactory clients send), for the host to verify
    /// the upload against; an error when the client sent one that is not a sha256.
    pub fn expected(request: &Request) -> Result<Option<Digest>, String> {
        let Some(v) = request.header("x-checksum-sha256") else {
            return Ok(None);
        };
        Digest::parse(&format!("sha256:{}", v.trim().to_ascii_lowercase()))
            .map(Some)
            .ok_or_else(|| "X-Checksum-Sha256 is not 64 hex digits".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use binaryrepo_plugin_sdk::contract::{Caller, Mount};

    fn with_checksum(v: &str) -> Request {
        Request {
            method: "PUT".into(),
            path: "/f".into(),
            query: None,
            headers: vec![("X-Checksum-Sha256".into(), v.into())],
            base_url: "http://br".into(),
            path_repo: None,
            repository: None,
            mount: Mount::Prefix,
            now: 0,
            caller: Caller::default(),
        }
    }

    #[test]
    fn digests() {
        let hex = "ab".repeat(32);
        let d = Digest::from_meta(format!("sha256:{hex}").as_bytes()).unwrap();
        assert_eq!(
            (d.as_str(), d.hex()),
            (format!("sha256:{hex}").as_str(), hex.as_str())
        );
        assert_eq!(Digest::from_meta(b"sha256:xyz"), None);
        assert_eq!(Digest::parse(&format!("sha512:{hex}")), None);
        assert_eq!(
            Digest::expected(&with_checksum(&hex.to_uppercase())),
            Ok(Some(d))
        );
        assert!(Digest::expected(&with_checksum("nope")).is_err());
        let mut none = with_checksum("");
        none.headers.clear();
        assert_eq!(Digest::expected(&none), Ok(None));
    }
}
