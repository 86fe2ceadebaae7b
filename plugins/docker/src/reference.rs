//! Repository names, tags and digests, validated once at the edge so the rest of the
//! plugin never joins an unchecked string into a URL or a metadata key.

use std::fmt;

/// The distribution spec caps the full name (including any registry host) at 255 characters.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidName;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidTag;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidDigest;

/// A repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Name, InvalidName> {
        if s.is_empty() || s.len() > NAME_MAX || !s.split('/').all(valid_component) {
            return Err(InvalidName);
        }
        Ok(Name(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_single_component(&self) -> bool {
        !self.0.contains('/')
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: alphanumeric runs joined by exactly one of `.`, `_`, `__` or `-+`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !is_alnum(first) || !is_alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, InvalidTag> {
        let b = s.as_bytes();
        let Some(&first) = b.first() else {
            return Err(InvalidTag);
        };
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        if b.len() > TAG_MAX
            || !word(first)
            || !b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
        {
            return Err(InvalidTag);
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A content digest the host accepts: `sha256:<64 hex>` or `sha512:<128 hex>`, lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, InvalidDigest> {
        let (algorithm, hex) = s.split_once(':').ok_or(InvalidDigest)?;
        let len = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(InvalidDigest),
        };
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex.len() != len || !hex.bytes().all(lower_hex) {
            return Err(InvalidDigest);
        }
        Ok(Digest(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidReference {
    Tag,
    Digest,
}

impl Reference {
    /// Tags cannot contain ':', so a colon means the client meant a digest.
    pub fn parse(s: &str) -> Result<Reference, InvalidReference> {
        if s.contains(':') {
            Digest::parse(s)
                .map(Reference::Digest)
                .map_err(|_| InvalidReference::Digest)
        } else {
            Tag::parse(s)
                .map(Reference::Tag)
                .map_err(|_| InvalidReference::Tag)
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in [
            "redis",
            "library/redis",
            "a",
            "0",
            "my.org/my_image",
            "a__b",
            "a---b",
            "a.b-c_d/e",
            "x/y/z/w",
            "docker-remote/library/redis",
        ] {
            assert!(Name::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "", "Redis", "/redis", "redis/", "a//b", "a..b", "a___b", "a_-b", "-a", "a-", ".a",
            "a b", "a%2fb", "a:b", "a._b", "a\u{e9}b",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn names_are_capped_at_255() {
        let long = "a".repeat(255);
        assert!(Name::parse(&long).is_ok());
        assert!(Name::parse(&format!("{long}a")).is_err());
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for ok in ["latest", "7", "_x", "1.2.3-alpine", "A_b.c-D"] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b", "a+b", "é"] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
        assert!(Tag::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn digests_are_sha256_or_sha512_lower_hex() {
        let h64 = "a".repeat(64);
        let h128 = "0".repeat(128);
        assert!(Digest::parse(&format!("sha256:{h64}")).is_ok());
        assert!(Digest::parse(&format!("sha512:{h128}")).is_ok());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(Digest::parse(&format!("sha512:{h64}")).is_err());
        assert!(Digest::parse(&format!("md5:{h64}")).is_err());
        assert!(Digest::parse(&h64).is_err());
        assert!(Digest::parse(&format!("sha256:{}g", "a".repeat(63))).is_err());
    }

    #[test]
    fn references_pick_tag_or_digest_by_colon() {
        let d = format!("sha256:{}", "b".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert_eq!(
            Reference::parse("sha256:xyz"),
            Err(InvalidReference::Digest)
        );
        assert_eq!(Reference::parse("-bad"), Err(InvalidReference::Tag));
    }
}
