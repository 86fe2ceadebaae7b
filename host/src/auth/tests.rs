//! `Auth` end to end, without a server: files, credentials, tokens, users, the token endpoint.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::*;
use crate::config::{AuthConfig, ConfigUser};
use base64::engine::general_purpose::STANDARD;

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

fn config() -> AuthConfig {
    AuthConfig { password_hash_cost: 4, ..AuthConfig::default() }
}

fn open(dir: &Path, config: &AuthConfig) -> Auth {
    Auth::open_with(dir, config, Some("first-admin-pw".into())).unwrap()
}

fn basic(user: &str, password: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))).unwrap()
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

async fn login(auth: &Auth, value: HeaderValue) -> Result<Identity, AuthFailure> {
    auth.authenticate(Some(&value), CLIENT).await
}

async fn add_user(auth: &Auth, name: &str, password: &str) {
    auth.create_user(NewUser { name: name.into(), password: Some(password.into()), ..NewUser::default() }).await.unwrap();
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Captures this thread's log lines until the guard is dropped.
fn capture_logs() -> (tracing::subscriber::DefaultGuard, LogBuf) {
    let buf = LogBuf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    (tracing::subscriber::set_default(subscriber), buf)
}

/// Log lines written while `f` runs.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let (guard, buf) = capture_logs();
    let out = f();
    drop(guard);
    (out, buf.text())
}

/// Guards `files::private_dir`, `files::write_private` (0600, no leftovers) and `files::read_private`
/// (a loosened mode is tightened), and that the signing key is kept across restarts.
#[tokio::test]
async fn files_are_private_and_the_signing_key_is_stable() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &config());
    let mode = |p: &str| std::fs::metadata(tmp.path().join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("auth"), 0o700);
    assert_eq!(mode("auth/signing.key"), 0o600);
    assert_eq!(mode("auth/users.json"), 0o600);
    let key = std::fs::read(tmp.path().join("auth/signing.key")).unwrap();
    assert_eq!(key.len(), 32);
    let token = auth.issue_token(&Identity::Anonymous, "svc", &[]).token;
    drop(auth);
    // A loosened mode is tightened again on open; the key stays, so tokens survive a restart.
    std::fs::set_permissions(tmp.path().join("auth/signing.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let auth = open(tmp.path(), &config());
    assert_eq!(std::fs::read(tmp.path().join("auth/signing.key")).unwrap(), key);
    assert_eq!(mode("auth/signing.key"), 0o600);
    assert_eq!(login(&auth, bearer(&token)).await, Ok(Identity::Anonymous));
    // No temporary files left behind.
    let names: Vec<String> =
        std::fs::read_dir(tmp.path().join("auth")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn first_admin_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let (auth, log) = logged(|| Auth::open_with(tmp.path(), &config(), Some("from-the-env".into())).unwrap());
    assert!(!log.contains("from-the-env"), "{log}");
    let admin = auth.user("admin").unwrap();
    assert!(admin.admin && admin.source == Source::Api);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(rt.block_on(login(&auth, basic("admin", "from-the-env"))).unwrap().is_admin());
    // Too short a password is refused, not silently replaced.
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(Auth::open_with(tmp.path(), &config(), Some("short".into())), Err(AuthError::AdminPassword(_))));
}

/// Guards `first_admin`: a generated password, logged once at WARN, never again on a later start.
#[test]
fn first_admin_generated_and_logged_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (auth, log) = logged(|| Auth::open_with(tmp.path(), &config(), None).unwrap());
    let line = log.lines().find(|l| l.contains("created user admin with password")).expect(&log);
    assert!(line.contains("WARN"), "{line}");
    let password = line.split("with password ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    assert!(password.len() >= 20, "{password}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(rt.block_on(login(&auth, basic("admin", &password))).unwrap().is_admin());
    drop(auth);
    // Later starts neither create nor print anything, whatever the environment says.
    let (auth, log) = logged(|| Auth::open_with(tmp.path(), &config(), Some("another-one".into())).unwrap());
    assert!(!log.contains(&password) && !log.contains("created user"), "{log}");
    assert!(rt.block_on(login(&auth, basic("admin", &password))).is_ok());
    assert!(rt.block_on(login(&auth, basic("admin", "another-one"))).is_err());
}

#[tokio::test]
async fn htpasswd_and_config_users_sign_in_and_are_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    // Written by Apache's `htpasswd -nbB carol htpasswd-pw` (apache2-utils): $2y$, cost 5.
    let y = "$2y$05$96WFu4p1/SLZZTX8udywNebw9LKDYHpa1gJPgLg7QmPcqVKgaqpqC";
    let file = tmp.path().join("users.htpasswd");
    std::fs::write(&file, format!("carol:{y}\n")).unwrap();
    let b = bcrypt::hash("config-pw", 4).unwrap();
    let config = AuthConfig {
        htpasswd_file: Some(file.clone()),
        users: vec![ConfigUser { name: "dave".into(), password_hash: b, groups: vec!["ops".into()], admin: true }],
        ..config()
    };
    let auth = open(tmp.path(), &config);
    // Users exist, so no admin is created.
    assert!(auth.user("admin").is_none());
    let carol = login(&auth, basic("carol", "htpasswd-pw")).await.unwrap();
    assert_eq!(carol.name(), "carol");
    assert_eq!(carol.user().unwrap().via, Via::Password);
    let dave = login(&auth, basic("dave", "config-pw")).await.unwrap();
    assert!(dave.is_admin() && dave.user().unwrap().groups[0].as_str() == "ops");
    assert!(matches!(auth.delete_user("carol"), Err(UserError::ReadOnly { defined_in: "htpasswd", .. })));
    assert!(matches!(
        auth.update_user("dave", UserUpdate { admin: Some(false), ..Default::default() }).await,
        Err(UserError::ReadOnly { .. })
    ));
    assert!(matches!(
        auth.create_user(NewUser { name: "dave".into(), password: Some("whatever-pw".into()), ..Default::default() }).await,
        Err(UserError::Exists(_))
    ));
    // A non-bcrypt line is refused at start, naming the line.
    std::fs::write(&file, format!("carol:{y}\nerin:$apr1$salt$hash\n")).unwrap();
    let err = Auth::open_with(tmp.path(), &config, None).err().unwrap().to_string();
    assert!(err.contains("line 2") && err.contains("erin"), "{err}");
}

/// Guards `Auth::basic`: the cache is filled only after bcrypt said yes, and keyed by the password
/// (`CredentialCache::key`), so a wrong password always costs a bcrypt and is refused.
#[tokio::test]
async fn wrong_password_is_refused_and_never_cached_right_one_is() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &config());
    add_user(&auth, "alice", "alice-password").await;
    let start = auth.bcrypt_runs();
    for _ in 0..3 {
        assert_eq!(login(&auth, basic("alice", "wrong-password")).await, Err(AuthFailure::BadCredentials));
    }
    assert_eq!(auth.bcrypt_runs() - start, 3, "every wrong password is checked by bcrypt, none answered from the cache");
    assert_eq!(auth.cache.len(), 0);
    let start = auth.bcrypt_runs();
    for _ in 0..5 {
        assert_eq!(login(&auth, basic("alice", "alice-password")).await.unwrap().name(), "alice");
    }
    assert_eq!(auth.bcrypt_runs() - start, 1, "only the first right password costs a bcrypt");
    // Unknown users cost a decoy bcrypt too (no timing difference), and are refused.
    assert_eq!(login(&auth, basic("nobody", "alice-password")).await, Err(AuthFailure::BadCredentials));
    assert_eq!(login(&auth, basic("No Body", "x")).await, Err(AuthFailure::BadCredentials));
    assert_eq!(auth.bcrypt_runs() - start, 3);
}

/// Guards `CredentialCache::turn`: a client that opens 16 connections at once and sends the same
/// new credentials on each costs one bcrypt, not 16. Mutation check: without the turn (or without
/// looking in the cache again once it is held) all 16 run bcrypt.
#[tokio::test]
async fn a_burst_of_the_same_new_credentials_costs_one_bcrypt() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &config());
    add_user(&auth, "alice", "alice-password").await;
    add_user(&auth, "bob", "bob-password1").await;
    let start = auth.bcrypt_runs();
    let burst = (0..16).map(|_| login(&auth, basic("alice", "alice-password")));
    for identity in futures_util::future::join_all(burst).await {
        assert_eq!(identity.unwrap().name(), "alice");
    }
    assert_eq!(auth.bcrypt_runs() - start, 1);
    // Wrong passwords are never cached: each is still checked, turn or not.
    let start = auth.bcrypt_runs();
    let wrong = (0..3).map(|_| login(&auth, basic("bob", "not-bobs-password")));
    for refused in futures_util::future::join_all(wrong).await {
        assert_eq!(refused, Err(AuthFailure::BadCredentials));
    }
    assert_eq!(auth.bcrypt_runs() - start, 3);
    assert_eq!(login(&auth, basic("bob", "bob-password1")).await.unwrap().name(), "bob");
}

/// Guards `CredentialCache::hit`: the generation comparison (a changed or deleted user) and the TTL.
/// Mutation check: without the generation comparison the old password still signs in here.
#[tokio::test(start_paused = true)]
async fn cached_credentials_expire_and_drop_when_the_user_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &AuthConfig { credential_cache_ttl: Duration::from_secs(60), ..config() });
    add_user(&auth, "alice", "alice-password").await;
    login(&auth, basic("alice", "alice-password")).await.unwrap();
    let runs = auth.bcrypt_runs();
    login(&auth, basic("alice", "alice-password")).await.unwrap();
    assert_eq!(auth.bcrypt_runs(), runs);
    tokio::time::advance(Duration::from_secs(61)).await;
    login(&auth, basic("alice", "alice-password")).await.unwrap();
    assert_eq!(auth.bcrypt_runs(), runs + 1, "past the TTL the password is checked again");
    // A changed password: the old one stops working at once, cache or not.
    auth.update_user("alice", UserUpdate { password: Some("new-password".into()), ..Default::default() }).await.unwrap();
    assert_eq!(login(&auth, basic("alice", "alice-password")).await, Err(AuthFailure::BadCredentials));
    // Changed groups show at once, for a cached password too.
    login(&auth, basic("alice", "new-password")).await.unwrap();
    auth.update_user("alice", UserUpdate { groups: Some(vec!["dev".into()]), ..Default::default() }).await.unwrap();
    let alice = login(&auth, basic("alice", "new-password")).await.unwrap();
    assert_eq!(alice.user().unwrap().groups[0].as_str(), "dev");
    // A deleted user's cached password no longer signs in.
    auth.delete_user("alice").unwrap();
    assert_eq!(login(&auth, basic("alice", "new-password")).await, Err(AuthFailure::BadCredentials));
}

/// Guards `Auth::bearer`: the user must still exist as the same record (`record.id == claims.uid`),
/// and `Signer::verify`'s expiry. Mutation check: without the id comparison a deleted user's token works.
#[tokio::test]
async fn signed_tokens_verify_expire_and_end_with_their_user() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &AuthConfig { token_ttl: Duration::from_secs(300), ..config() });
    add_user(&auth, "alice", "alice-password").await;
    let alice = login(&auth, basic("alice", "alice-password")).await.unwrap();
    let scopes = [Scope::parse("repository:docker-local/app:pull,push").unwrap()];
    let issued = auth.issue_token(&alice, "binaryrepo", &scopes);
    assert_eq!(issued.expires_in, 300);
    let runs = auth.bcrypt_runs();
    let via_token = login(&auth, bearer(&issued.token)).await.unwrap();
    assert_eq!((via_token.name(), via_token.user().unwrap().via), ("alice", Via::BearerToken));
    assert_eq!(auth.bcrypt_runs(), runs, "a bearer token costs no bcrypt");
    // Tampered: one character of the claims changed.
    let mut bytes = issued.token.clone().into_bytes();
    bytes[40] = if bytes[40] == b'a' { b'b' } else { b'a' };
    assert_eq!(login(&auth, bearer(std::str::from_utf8(&bytes).unwrap())).await, Err(AuthFailure::InvalidToken));
    // Expired.
    auth.clock_skew.store(301, Ordering::Relaxed);
    assert_eq!(login(&auth, bearer(&issued.token)).await, Err(AuthFailure::ExpiredToken));
    auth.clock_skew.store(0, Ordering::Relaxed);
    // Deleted: refused at once; created again under the same name: still refused.
    auth.delete_user("alice").unwrap();
    assert_eq!(login(&auth, bearer(&issued.token)).await, Err(AuthFailure::InvalidToken));
    add_user(&auth, "alice", "alice-password").await;
    assert_eq!(login(&auth, bearer(&issued.token)).await, Err(AuthFailure::InvalidToken));
    // A token from another server's key.
    let other = tempfile::tempdir().unwrap();
    let foreign = open(other.path(), &config()).issue_token(&Identity::Anonymous, "x", &[]).token;
    assert_eq!(login(&auth, bearer(&foreign)).await, Err(AuthFailure::InvalidToken));
}

/// Guards `Auth::api_token`: expiry, the owner's record id, and the owner-name check for Basic.
/// Mutation check: without the `expired` branch the short-lived token keeps working.
#[tokio::test]
async fn api_tokens_work_as_password_and_bearer_until_revoked_or_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &config());
    add_user(&auth, "ci", "ci-password-1").await;
    add_user(&auth, "bob", "bob-password").await;
    let (view, secret) = auth.create_token("ci", "pipeline", None).unwrap();
    assert!(secret.expose().starts_with("brt_") && secret.expose().len() == 4 + 43);
    assert!(!format!("{secret:?}").contains("brt_"));
    // Stored hashed only.
    let stored = std::fs::read_to_string(tmp.path().join("auth/tokens.json")).unwrap();
    assert!(!stored.contains(secret.expose()) && stored.contains(&hex::encode(api_tokens::hash(secret.expose()))));
    let runs = auth.bcrypt_runs();
    let by_basic = login(&auth, basic("ci", secret.expose())).await.unwrap();
    assert_eq!((by_basic.name(), by_basic.user().unwrap().via), ("ci", Via::ApiToken));
    assert_eq!(login(&auth, bearer(secret.expose())).await.unwrap().name(), "ci");
    assert_eq!(auth.bcrypt_runs(), runs, "an API token costs no bcrypt");
    // Another user's name with ci's token: refused.
    assert_eq!(login(&auth, basic("bob", secret.expose())).await, Err(AuthFailure::BadCredentials));
    assert_eq!(auth.tokens("ci"), vec![view.clone()]);
    // Survives a restart.
    drop(auth);
    let auth = open(tmp.path(), &config());
    assert!(login(&auth, bearer(secret.expose())).await.is_ok());
    assert_eq!(auth.revoke_token(&view.id).unwrap(), view);
    assert_eq!(login(&auth, bearer(secret.expose())).await, Err(AuthFailure::InvalidToken));
    assert_eq!(login(&auth, basic("ci", secret.expose())).await, Err(AuthFailure::BadCredentials));
    assert!(matches!(auth.revoke_token(&view.id), Err(UserError::NoSuchToken(_))));
    // Expiring.
    let (_, short) = auth.create_token("ci", "short", Some(60)).unwrap();
    assert!(login(&auth, bearer(short.expose())).await.is_ok());
    auth.clock_skew.store(61, Ordering::Relaxed);
    assert_eq!(login(&auth, bearer(short.expose())).await, Err(AuthFailure::ExpiredToken));
    assert_eq!(login(&auth, basic("ci", short.expose())).await, Err(AuthFailure::ExpiredToken));
    auth.clock_skew.store(0, Ordering::Relaxed);
    // Deleting the user removes their tokens; a new user of that name does not get them.
    let (_, kept) = auth.create_token("ci", "kept", None).unwrap();
    auth.delete_user("ci").unwrap();
    add_user(&auth, "ci", "ci-password-2").await;
    assert_eq!(login(&auth, bearer(kept.expose())).await, Err(AuthFailure::InvalidToken));
    assert!(auth.tokens("ci").is_empty());
    // Bad input.
    assert!(matches!(auth.create_token("ci", "", None), Err(UserError::TokenName)));
    assert!(matches!(auth.create_token("ci", "x", Some(0)), Err(UserError::TokenExpiry)));
    assert!(matches!(auth.create_token("ghost", "x", None), Err(UserError::NoSuchUser(_))));
}

/// Guards what lets the front index answer credentials without checking them (`epoch`,
/// `trusted_until`): every change to users or tokens moves the epoch, and the time a header is
/// trusted ends with the credential cache's TTL and its token's expiry. Mutation check: without
/// `changed()` in `commit_tokens` a revoked token keeps the epoch where it was.
#[tokio::test]
async fn credentials_are_trusted_no_longer_than_the_cache_or_their_token_and_only_in_one_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(120);
    let auth = open(tmp.path(), &AuthConfig { credential_cache_ttl: ttl, token_ttl: Duration::from_secs(30), ..config() });
    let mut epoch = auth.epoch();
    let mut moved = |auth: &Auth, what: &str| {
        assert!(auth.epoch() > epoch, "{what} moves the epoch");
        epoch = auth.epoch();
    };
    add_user(&auth, "alice", "alice-password").await;
    moved(&auth, "a new user");
    let now = auth.now();
    let until = auth.trusted_until(&basic("alice", "alice-password")).unwrap();
    assert!((now + 120..=now + 121).contains(&until), "a password: the cache's TTL");
    assert_eq!(auth.trusted_until(&HeaderValue::from_static("Basic Og==")).map(|u| u >= now + 120), Some(true));
    let (view, short) = auth.create_token("alice", "short", Some(60)).unwrap();
    moved(&auth, "a new token");
    let at = auth.trusted_until(&bearer(short.expose())).unwrap();
    assert!((now + 60..=now + 61).contains(&at), "an API token: its expiry");
    assert_eq!(auth.trusted_until(&basic("alice", short.expose())), Some(at), "the same token as a password");
    let alice = login(&auth, basic("alice", "alice-password")).await.unwrap();
    let signed = auth.issue_token(&alice, "binaryrepo", &[]);
    let at = auth.trusted_until(&bearer(&signed.token)).unwrap();
    assert!((now + 30..=now + 31).contains(&at), "a signed token: its exp");
    assert_eq!(auth.trusted_until(&HeaderValue::from_static("Digest x")), None, "not credentials");
    assert_eq!(auth.trusted_until(&bearer("forged")), None, "a token that does not verify");
    auth.revoke_token(&view.id).unwrap();
    moved(&auth, "a revoked token");
    auth.update_user("alice", UserUpdate { groups: Some(vec!["dev".into()]), ..Default::default() }).await.unwrap();
    moved(&auth, "changed groups");
    auth.delete_user("alice").unwrap();
    moved(&auth, "a deleted user");
    // With the credential cache off, no credentials are trusted without a check.
    let off = tempfile::tempdir().unwrap();
    let auth = open(off.path(), &AuthConfig { credential_cache_ttl: Duration::ZERO, ..config() });
    assert_eq!(auth.trusted_until(&basic("admin", "first-admin-pw")), None);
}

/// Guards the delay in `Auth::authenticate` (and `Throttle::failure`'s growth) and the audit line.
/// Mutation check: without the `sleep` every failure answers at once and the waits are all 0.
#[tokio::test(start_paused = true)]
async fn repeated_failures_from_one_address_are_slowed_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &AuthConfig { login_failures_before_delay: 2, ..config() });
    let mut waits = Vec::new();
    for _ in 0..6 {
        let start = tokio::time::Instant::now();
        assert!(login(&auth, bearer("brt_not-a-token")).await.is_err());
        waits.push(start.elapsed().as_secs());
    }
    assert_eq!(waits, [0, 0, 1, 2, 4, 8]);
    // Another address is not slowed down; a success is never delayed.
    let start = tokio::time::Instant::now();
    assert!(auth.authenticate(Some(&bearer("brt_x")), "192.0.2.99".parse().unwrap()).await.is_err());
    assert!(login(&auth, basic("admin", "first-admin-pw")).await.is_ok());
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The audit line names the user tried, the client, and the delay.
    let (guard, buf) = capture_logs();
    login(&auth, basic("mallory\nforged line", "x")).await.unwrap_err();
    drop(guard);
    let log = buf.text();
    let line = log.lines().find(|l| l.contains("audit")).expect(&log);
    assert!(
        line.contains(r#"user="mallory\nforged line""#) && line.contains("client=192.0.2.7") && line.contains("action=\"login\""),
        "{line}"
    );
    assert!(line.contains("outcome=\"failed\"") && line.contains("answered after 10s"), "{line}");
}

#[tokio::test(start_paused = true)]
async fn malformed_headers_are_refused_not_panicked_on() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &config());
    for raw in ["Basic", "Basic !!!", "Basic dXNlcg==", "Digest x", "Bearer", "Bearer a.b", "Bearer ....", "basic", ""] {
        let value = HeaderValue::from_str(raw).unwrap();
        assert!(login(&auth, value).await.is_err(), "{raw:?}");
    }
    assert_eq!(auth.authenticate(None, CLIENT).await, Ok(Identity::Anonymous));
    // Scheme names are case-insensitive.
    let lower = HeaderValue::from_str(&format!("basic {}", STANDARD.encode("admin:first-admin-pw"))).unwrap();
    assert!(login(&auth, lower).await.unwrap().is_admin());
}

#[tokio::test]
async fn user_management() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &config());
    let short = NewUser { name: "eve".into(), password: Some("short".into()), ..Default::default() };
    assert!(matches!(auth.create_user(short).await, Err(UserError::Password(_))));
    let both = NewUser { name: "eve".into(), password: Some("long-enough".into()), password_hash: Some("x".into()), ..Default::default() };
    assert!(matches!(auth.create_user(both).await, Err(UserError::PasswordAndHash)));
    let bad_name = NewUser { name: "Eve".into(), password: Some("long-enough".into()), ..Default::default() };
    assert_eq!(auth.create_user(bad_name).await.unwrap_err().status(), StatusCode::BAD_REQUEST);
    let md5 = NewUser { name: "eve".into(), password_hash: Some("$apr1$a$b".into()), ..Default::default() };
    assert!(matches!(auth.create_user(md5).await, Err(UserError::Hash(_))));
    // A bcrypt hash given as is.
    let hash = bcrypt::hash("hashed-elsewhere", 4).unwrap();
    let eve = NewUser { name: "eve".into(), password_hash: Some(hash), groups: vec!["dev".into()], ..Default::default() };
    let view = auth.create_user(eve).await.unwrap();
    assert_eq!((view.name.as_str(), view.admin, view.groups.len()), ("eve", false, 1));
    assert!(login(&auth, basic("eve", "hashed-elsewhere")).await.is_ok());
    // Listings never carry hashes.
    let listed = serde_json::to_string(&auth.users()).unwrap();
    assert!(!listed.contains("$2"), "{listed}");
    assert_eq!(auth.users().iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["admin", "eve"]);
    // The last admin can be neither deleted nor demoted; with another admin it can.
    assert!(matches!(auth.delete_user("admin"), Err(UserError::LastAdmin(_))));
    assert!(matches!(
        auth.update_user("admin", UserUpdate { admin: Some(false), ..Default::default() }).await,
        Err(UserError::LastAdmin(_))
    ));
    auth.update_user("eve", UserUpdate { admin: Some(true), ..Default::default() }).await.unwrap();
    auth.delete_user("admin").unwrap();
    assert!(matches!(auth.delete_user("admin"), Err(UserError::NoSuchUser(_))));
    // Without any admin (an htpasswd-only set-up, say), other users can still be deleted.
    add_user(&auth, "frank", "frank-password").await;
    auth.update_user("frank", UserUpdate { admin: Some(false), ..Default::default() }).await.unwrap();
    auth.delete_user("frank").unwrap();
    // Persisted: a restart sees the same users and creates no admin.
    drop(auth);
    let auth = Auth::open_with(tmp.path(), &config(), None).unwrap();
    assert_eq!(auth.users().iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["eve"]);
    assert!(auth.user("eve").unwrap().admin);
}

async fn call(auth: &Auth, method: Method, query: Option<&str>, headers: HeaderMap, body: &[u8]) -> (StatusCode, serde_json::Value) {
    let (status, response_headers, body) = token_endpoint(auth, &method, query, &headers, body, CLIENT).await;
    if status == StatusCode::OK {
        assert!(response_headers.contains(&("cache-control".into(), "no-store".into())));
    }
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn token_endpoint_anonymous_basic_bad_and_post_form() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &config());
    add_user(&auth, "alice", "alice-password").await;
    let query = "service=binaryrepo&scope=repository%3Adocker-local%2Fapp%3Apull%2Cpush&scope=repository%3Aother%3Apull";

    // Anonymous: a token that authenticates as anonymous, echoing the scopes.
    let (status, body) = call(&auth, Method::GET, Some(query), HeaderMap::new(), b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let token = body["token"].as_str().unwrap();
    assert_eq!(login(&auth, bearer(token)).await, Ok(Identity::Anonymous));
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["aud"], "binaryrepo");
    assert_eq!(claims["access"][0], serde_json::json!({"type": "repository", "name": "docker-local/app", "actions": ["pull", "push"]}));
    assert_eq!(claims["access"][1]["name"], "other");

    // Basic: a token for alice.
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, basic("alice", "alice-password"));
    let (status, body) = call(&auth, Method::GET, Some(&format!("{query}&account=alice")), headers.clone(), b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(login(&auth, bearer(body["token"].as_str().unwrap())).await.unwrap().name(), "alice");
    // account naming someone else.
    let (status, _) = call(&auth, Method::GET, Some("service=x&account=bob"), headers, b"").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bad password: 401 in the registry error shape.
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, basic("alice", "wrong-password"));
    let (status, body) = call(&auth, Method::GET, Some(query), headers, b"").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // POST form, as containerd sends it (scopes space-separated).
    let mut form = HeaderMap::new();
    form.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"));
    let body = b"grant_type=password&username=alice&password=alice-password&client_id=containerd-client&service=binaryrepo&scope=repository%3Aa%3Apull+repository%3Ab%3Apull%2Cpush";
    let (status, answer) = call(&auth, Method::POST, None, form.clone(), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let token = answer["access_token"].as_str().unwrap();
    assert_eq!(login(&auth, bearer(token)).await.unwrap().name(), "alice");
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["access"].as_array().unwrap().len(), 2);
    let (status, _) = call(&auth, Method::POST, None, form.clone(), b"grant_type=password&username=alice&password=nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, answer) = call(&auth, Method::POST, None, form.clone(), b"grant_type=refresh_token&refresh_token=x").await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unsupported_grant_type")));
    let (status, _) = call(&auth, Method::POST, None, HeaderMap::new(), b"grant_type=password").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Malformed requests: 400 / 405, never a token.
    let (status, _) = call(&auth, Method::GET, Some("scope=nonsense"), HeaderMap::new(), b"").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let many: String = (0..17).map(|i| format!("scope=repository%3Ar{i}%3Apull&")).collect();
    let (status, _) = call(&auth, Method::GET, Some(&many), HeaderMap::new(), b"").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&auth, Method::PUT, None, HeaderMap::new(), b"").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn deleting_users_without_any_admin() {
    let tmp = tempfile::tempdir().unwrap();
    let y = bcrypt::hash("htpasswd-pw", 4).unwrap();
    let file = tmp.path().join("htpasswd");
    std::fs::write(&file, format!("carol:{y}\n")).unwrap();
    let auth = open(tmp.path(), &AuthConfig { htpasswd_file: Some(file), ..config() });
    add_user(&auth, "gina", "gina-password").await;
    auth.delete_user("gina").unwrap();
}

#[test]
fn shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Auth>();
    send_sync::<Identity>();
}

/// The example configuration parses, and its auth keys reach `AuthConfig`.
#[test]
fn example_config_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/binaryrepo.toml");
    let file = crate::config::FileConfig::load(&path).unwrap();
    let config = crate::config::Config::resolve(file, Default::default());
    assert_eq!(config.auth.token_ttl, Duration::from_secs(300));
    assert_eq!(config.auth.login_failures_before_delay, 5);
    assert_eq!(config.auth.credential_cache_entries, 4096);
    let file: crate::config::FileConfig = toml::from_str(
        "htpasswd_file = \"/x\"\ntoken_ttl_seconds = 60\ncredential_cache_seconds = 0\n[[users]]\nname = \"ci\"\npassword_hash = \"h\"\n",
    )
    .unwrap();
    let auth = crate::config::Config::resolve(file, Default::default()).auth;
    assert_eq!((auth.token_ttl, auth.credential_cache_ttl, auth.users[0].name.as_str()), (Duration::from_secs(60), Duration::ZERO, "ci"));
    assert!(toml::from_str::<crate::config::FileConfig>("[[users]]\nname = \"x\"\npassword_hash = \"h\"\npassword = \"p\"\n").is_err());
}

/// What a warm request with Basic credentials costs in `authenticate` (run by hand:
/// `cargo test --release -p binaryrepo warm_basic_cost -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn warm_basic_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let auth = open(tmp.path(), &config());
    let value = basic("admin", "first-admin-pw");
    login(&auth, value.clone()).await.unwrap();
    let n = 200_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        auth.authenticate(Some(&value), CLIENT).await.unwrap();
    }
    let basic_ns = start.elapsed().as_nanos() / n;
    let token = bearer(&auth.issue_token(&login(&auth, value).await.unwrap(), "svc", &[]).token);
    let start = std::time::Instant::now();
    for _ in 0..n {
        auth.authenticate(Some(&token), CLIENT).await.unwrap();
    }
    println!("warm Basic: {basic_ns} ns, signed bearer: {} ns per authenticate", start.elapsed().as_nanos() / n);
}
