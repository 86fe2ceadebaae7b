//! Credentials from clients and tokens from upstreams: `Authorization` headers
//! (`host/src/auth/header.rs`), the host's signed bearer tokens and token scopes
//! (`host/src/auth/signed.rs`) and an upstream token service's JSON answer
//! (`plugins/docker/src/upstream.rs`). Never a panic; nothing unsigned verifies; what is signed
//! verifies back to the same claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("docker_parsers.rs");

#[path = "../../plugins/docker/src/upstream.rs"]
#[allow(dead_code)]
mod upstream;

#[path = "../../host/src/auth/header.rs"]
#[allow(dead_code)]
mod header;
#[path = "../../host/src/auth/signed.rs"]
#[allow(dead_code)]
mod signed;

use header::Credentials;

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    match header::parse(data) {
        Ok(Credentials::Basic { user, password }) => {
            assert!(!user.contains(':'), "{user:?}");
            assert!(!(user.is_empty() && password.is_empty()));
        }
        Ok(Credentials::Bearer(token)) => assert_eq!(token, token.trim_ascii()),
        Ok(Credentials::Anonymous) | Err(_) => {}
    }

    if let Some((token, lifetime)) = upstream::parse_token(data) {
        assert!(!token.is_empty() && lifetime > 0);
        let ttl = upstream::token_ttl(lifetime);
        assert!(ttl > 0 && ttl <= lifetime, "{lifetime} -> {ttl}");
    }

    let Ok(text) = std::str::from_utf8(data) else { return };
    let signer = signed::Signer::new(b"the fuzzer's key");
    assert!(signer.verify(text, NOW).is_err(), "{text:?} verified without being signed");
    if let Ok(scope) = signed::Scope::parse(text) {
        assert!(!scope.kind.is_empty() && !scope.kind.contains(':'), "{text:?}");
        assert!(!scope.name.is_empty(), "{text:?}");
        assert!(scope.actions.iter().all(|a| !a.is_empty() && !a.contains([',', ':'])), "{text:?}");
        let claims = signed::Claims {
            iss: signed::ISSUER.into(),
            sub: scope.name.clone(),
            aud: "binaryrepo".into(),
            exp: NOW + 60,
            nbf: NOW,
            iat: NOW,
            jti: text.chars().take(32).collect(),
            access: vec![scope],
            uid: String::new(),
        };
        let token = signer.sign(&claims);
        assert_eq!(signer.verify(&token, NOW), Ok(claims.clone()));
        assert_eq!(signer.verify(&token, NOW + 60), Err(signed::TokenError::Expired));
        assert!(signed::Signer::new(b"another key").verify(&token, NOW).is_err());
    }
});
