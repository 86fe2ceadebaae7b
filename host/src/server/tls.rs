//! TLS on the listeners: one certificate chain and key (PEM files) for the main listener and every
//! repository port, HTTP/2 or HTTP/1.1 by ALPN.
//!
//! The files are re-read when they change (polled) or on SIGHUP. A reload swaps the certificate
//! that the next handshake is given; connections already open keep the session they have, so a
//! renewal drops nothing. A file that does not load (half written, a key that does not match the
//! certificate) leaves the previous certificate in place and is logged.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// A PEM chain and key are a few KiB; a larger file is not one.
pub(crate) const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// What is wrong with the configured certificate or key: the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls_cert is set but tls_key is not (both or neither)")]
    NoKey,
    #[error("tls_key is set but tls_cert is not (both or neither)")]
    NoCert,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {MAX_PEM_BYTES} bytes: not a PEM certificate or key")]
    TooLarge { path: PathBuf },
    #[error("tls_cert {path}: no certificate in it ({detail})")]
    NoCertificate { path: PathBuf, detail: String },
    #[error("tls_key {path}: no private key in it ({detail})")]
    NoPrivateKey { path: PathBuf, detail: String },
    #[error("tls_cert {cert} with tls_key {key}: {source}")]
    Unusable { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

/// The two configured files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both paths or neither: one without the other is a configuration error, not plain HTTP.
    pub fn from_config(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::NoKey),
            (None, Some(_)) => Err(TlsError::NoCert),
        }
    }
}

/// The certificate each new handshake gets.
struct Current(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Current")
    }
}

impl Current {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// TLS for every listener of the server.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Loads the files; an error here stops the server from starting.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        // ring, as the upstream client uses: one crypto library in the binary, chosen here rather
        // than by whichever dependency installs a process-wide default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = Arc::new(load_pair(&files, &provider)?);
        tracing::info!(cert = %files.cert.display(), sha256 = %fingerprint(&key), "TLS certificate loaded");
        let current = Arc::new(Current(RwLock::new(key)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Unusable { cert: files.cert.clone(), key: files.key.clone(), source })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { files, provider, current, acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the files; new handshakes get the new certificate. On error the previous one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(load_pair(&self.files, &self.provider)?);
        let sha256 = fingerprint(&key);
        if fingerprint(&self.current.get()) != sha256 {
            tracing::info!(cert = %self.files.cert.display(), %sha256, "TLS certificate reloaded");
        }
        self.current.set(key);
        Ok(())
    }

    /// Reloads on SIGHUP, and when either file changes, checked every `poll` (None: never).
    pub async fn watch(self: Arc<Self>, poll: Option<Duration>) {
        let mut hangup = hangup_signal();
        let mut tick = poll.map(tokio::time::interval);
        if let Some(t) = &mut tick {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut seen = Stamps::of(&self.files);
        loop {
            let forced = tokio::select! {
                _ = next_tick(&mut tick) => false,
                _ = recv(&mut hangup) => true,
            };
            let now = Stamps::of(&self.files);
            if !forced && now == seen {
                continue;
            }
            // Remembered even when the reload fails: a broken file is reported once, and tried
            // again when it changes.
            seen = now;
            if let Err(e) = self.reload() {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
            }
        }
    }
}

/// Whether the client's first byte starts a TLS handshake record (content type 22). Anything else
/// is most likely plain HTTP sent to a TLS port.
pub async fn starts_with_handshake(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    // A client that closes at once is left to the handshake to report.
    Ok(n == 0 || first[0] == 0x16)
}

/// Answers plain HTTP on a TLS port with a 400 the client can read, rather than a TLS alert that
/// HTTP clients show as garbage; then closes.
pub async fn refuse_plain_http(mut stream: TcpStream) {
    const BODY: &str = "This server speaks HTTPS on this port: use an https:// URL.\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    // Best effort: the client may already be gone.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Closing with the request still unread would send a reset, which can destroy the answer
    // before the client reads it: take in what the client sends, a little and briefly.
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_pem_file(path)
        .map_err(|source| TlsError::Read { path: path.into(), source })?
        .ok_or_else(|| TlsError::TooLarge { path: path.into() })
}

/// A certificate or key file, never read past `MAX_PEM_BYTES`; None when it is larger (then
/// it is not one). For the listeners' files and the PostgreSQL client's.
pub(crate) fn read_pem_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_PEM_BYTES + 1), &mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_PEM_BYTES).then_some(bytes))
}

fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_pem(&files.cert)?;
    let key_pem = read_pem(&files.key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate { path: files.cert.clone(), detail: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: files.cert.clone(), detail: "no CERTIFICATE block".into() });
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoPrivateKey { path: files.key.clone(), detail: e.to_string() })?;
    // Also checks that the key is the certificate's: a renewal caught between writing the two
    // files is refused rather than served.
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Unusable {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// The SHA-256 of the leaf certificate, as `openssl x509 -fingerprint -sha256` shows it (without colons).
fn fingerprint(key: &CertifiedKey) -> String {
    key.cert.first().map(|c| hex::encode(ring::digest::digest(&ring::digest::SHA256, c.as_ref()))).unwrap_or_default()
}

/// What tells a file changed: replaced (inode), rewritten (size, modification time), or gone.
#[derive(PartialEq, Eq)]
struct Stamps([Option<(u64, u64, SystemTime)>; 2]);

impl Stamps {
    fn of(files: &TlsFiles) -> Stamps {
        let stamp = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).ok().map(|m| (m.ino(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        };
        Stamps([stamp(&files.cert), stamp(&files.key)])
    }
}

async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

type Hangup = Option<tokio::signal::unix::Signal>;

fn hangup_signal() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: TLS files are reloaded only when they change");
            None
        }
    }
}

async fn recv(hangup: &mut Hangup) {
    let delivered = match hangup.as_mut() {
        Some(s) => s.recv().await.is_some(),
        None => std::future::pending().await,
    };
    if !delivered {
        *hangup = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_files_or_neither() {
        assert!(matches!(TlsFiles::from_config(None, None), Ok(None)));
        assert!(matches!(TlsFiles::from_config(Some("c".into()), Some("k".into())), Ok(Some(_))));
        assert!(matches!(TlsFiles::from_config(Some("c".into()), None), Err(TlsError::NoKey)));
        assert!(matches!(TlsFiles::from_config(None, Some("k".into())), Err(TlsError::NoCert)));
    }

    #[test]
    fn files_that_are_not_a_certificate_and_key_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let files = TlsFiles { cert: cert.clone(), key: key.clone() };
        let provider = rustls::crypto::ring::default_provider();
        assert!(matches!(load_pair(&files, &provider), Err(TlsError::Read { path, .. }) if path == cert));
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        assert!(matches!(load_pair(&files, &provider), Err(TlsError::NoCertificate { path, .. }) if path == cert));
        std::fs::write(&cert, vec![b'-'; MAX_PEM_BYTES as usize + 1]).unwrap();
        assert!(matches!(load_pair(&files, &provider), Err(TlsError::TooLarge { path }) if path == cert));
    }
}
