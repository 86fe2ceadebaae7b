//! The `Authorization` header split into what it claims, before anything is looked up: Basic
//! `user:secret`, Bearer `<token>`, or the empty Basic pair of a client that has no credentials.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// `Basic Og==` (an empty user and password): skopeo and podman answer a Basic challenge
    /// with it when they have nothing to send. An anonymous request, not a failed login.
    Anonymous,
    Basic {
        user: String,
        password: Vec<u8>,
    },
    Bearer(&'a str),
}

/// The scheme is case-insensitive; what is wrong is named for the client (`AuthFailure::Malformed`).
pub fn parse(header: &[u8]) -> Result<Credentials<'_>, &'static str> {
    let (scheme, rest) = match header.iter().position(|&b| b == b' ') {
        Some(i) => (&header[..i], header[i + 1..].trim_ascii()),
        None => (header, &b""[..]),
    };
    if scheme.eq_ignore_ascii_case(b"basic") {
        let mut decoded = STANDARD.decode(rest).map_err(|_| "Basic credentials are not base64")?;
        let colon = decoded.iter().position(|&b| b == b':').ok_or("Basic credentials have no ':'")?;
        let password = decoded.split_off(colon + 1);
        decoded.truncate(colon);
        let user = String::from_utf8(decoded).map_err(|_| "user name is not UTF-8")?;
        if user.is_empty() && password.is_empty() {
            return Ok(Credentials::Anonymous);
        }
        Ok(Credentials::Basic { user, password })
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        std::str::from_utf8(rest).map(Credentials::Bearer).map_err(|_| "Bearer token is not text")
    } else {
        Err("unsupported scheme: use Basic or Bearer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(parse(b"Basic Og=="), Ok(Credentials::Anonymous));
        assert_eq!(parse(b"basic YTpiOmM="), Ok(Credentials::Basic { user: "a".into(), password: b"b:c".to_vec() }));
        assert_eq!(parse(b"BEARER  tok "), Ok(Credentials::Bearer("tok")));
        assert!(parse(b"Basic !!").is_err());
        assert!(parse(b"Basic YQ==").is_err());
        assert!(parse(b"Digest x").is_err());
        assert!(parse(b"").is_err());
    }
}
