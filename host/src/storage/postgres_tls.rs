//! TLS to the shared metadata store (PostgreSQL), with libpq's option names and meanings, which
//! operators already know: `sslmode`, `sslrootcert`, `sslcert`, `sslkey` in the connection string.
//!
//! The client library parses `sslmode` itself but knows only `disable`, `prefer` and `require`, and
//! none of the file options; so they are taken out of the string here, and the verification the
//! mode asks for is done by the certificate verifier given to rustls:
//! - `disable`: clear text only.
//! - `prefer` (the default, as libpq's): TLS when the server offers it, clear text when it does not;
//!   the certificate is not checked (it protects against a listener, not against an impostor).
//! - `require`: TLS or no connection; the certificate is not checked, except that with an
//!   `sslrootcert` it is checked as `verify-ca` (libpq does the same, for compatibility).
//! - `verify-ca`: TLS, and the server's chain must lead to `sslrootcert`.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the operating system's store
//! (as libpq 16 reads it). There is no implicit `~/.postgresql/root.crt`: a verifying mode without
//! `sslrootcert` is refused at start-up rather than verified against something unstated.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::Socket;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// libpq's `sslmode`, less `allow` (clear text first, TLS only if the server insists), which the
/// client library cannot do and no operator who asks for TLS wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, PgTlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(PgTlsError::BadMode(other.to_owned())),
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What the client library is told: whether it asks the server for TLS, and whether it may go
    /// on in clear text when the server has none.
    fn wire(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => postgres::config::SslMode::Require,
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's CA store.
    System,
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::File(p) => write!(f, "sslrootcert {}", p.display()),
            Roots::System => f.write_str("the system's CA store (sslrootcert=system)"),
        }
    }
}

/// Everything wrong with TLS to the shared store that start-up reports: what is wrong, and
/// whose it is to fix. No variant holds the connection string (it usually holds a password).
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    BadMode(String),
    #[error("sslmode={0} verifies the server's certificate and needs sslrootcert=/path/to/ca.pem (or sslrootcert=system)")]
    NoRootCert(SslMode),
    #[error("sslcert and sslkey go together: the connection string names only {0}")]
    HalfClientCert(&'static str),
    #[error("{what} {path}: {detail}")]
    File { what: &'static str, path: PathBuf, detail: String },
    #[error("client certificate {cert} with key {key}: {source}")]
    ClientCert { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS set-up: {0}")]
    Setup(String),
    #[error(
        "the PostgreSQL server {server} does not offer TLS, and sslmode={mode} requires it: turn `ssl` on in the server's \
         postgresql.conf, or (on a trusted network only) set sslmode=prefer or disable"
    )]
    ServerWithoutTls { server: String, mode: SslMode },
    #[error(
        "the PostgreSQL server {server} presented a certificate that does not verify against {roots} (sslmode={mode}): {detail}; \
         the server's certificate or the CA file is not the right one"
    )]
    Certificate { server: String, roots: String, mode: SslMode, detail: String },
    #[error("TLS with the PostgreSQL server {server} failed (sslmode={mode}): {detail}")]
    Handshake { server: String, mode: SslMode, detail: String },
}

/// The TLS options of a connection string, taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    roots: Option<Roots>,
    client: Option<(PathBuf, PathBuf)>,
}

const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits the TLS options out of a connection string (a `postgresql://` URL or libpq's
/// `key=value` form): the rest, for the client library, and the options.
pub fn split(conn: &str) -> Result<(String, TlsOptions), PgTlsError> {
    let mut found: Vec<(String, String)> = Vec::new();
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        match conn.split_once('?') {
            None => conn.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let k = percent_decode(k);
                    if OURS.contains(&k.as_str()) {
                        found.push((k, percent_decode(v)));
                    } else if !pair.is_empty() {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v, raw) in key_values(conn) {
            if OURS.contains(&k.as_str()) {
                found.push((k, v));
            } else {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    let mut mode = None;
    let (mut root, mut cert, mut key) = (None, None, None);
    for (k, v) in found {
        // the last of a repeated option wins, as in libpq
        match k.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&v)?),
            "sslrootcert" => root = Some(if v == "system" { Roots::System } else { Roots::File(PathBuf::from(v)) }),
            "sslcert" => cert = Some(PathBuf::from(v)),
            _ => key = Some(PathBuf::from(v)),
        }
    }
    let mut mode = mode.unwrap_or(SslMode::Prefer);
    if mode == SslMode::Require && root.is_some() {
        mode = SslMode::VerifyCa;
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root.is_none() {
        return Err(PgTlsError::NoRootCert(mode));
    }
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => return Err(PgTlsError::HalfClientCert("sslcert")),
        (None, Some(_)) => return Err(PgTlsError::HalfClientCert("sslkey")),
    };
    Ok((rest, TlsOptions { mode, roots: root, client }))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `key = value` pairs (a value may be 'quoted', with \' and \\ inside): (key, value,
/// the pair as written). What is not a pair is passed on as written, for the client library to
/// report.
fn key_values(s: &str) -> Vec<(String, String, &str)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= b.len() {
            return out;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_owned();
        i = skip_ws(i);
        if i >= b.len() || b[i] != b'=' {
            out.push((key, String::new(), &s[start..i]));
            continue;
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        out.push((key, String::from_utf8_lossy(&value).into_owned(), &s[start..i]));
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, PgTlsError> {
    let file_err = |detail: String| PgTlsError::File { what, path: path.to_owned(), detail };
    crate::server::tls::read_pem_file(path)
        .map_err(|e| file_err(format!("cannot read: {e}")))?
        .ok_or_else(|| file_err(format!("larger than {} bytes: not a PEM file", crate::server::tls::MAX_PEM_BYTES)))
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PgTlsError> {
    let pem = read_pem(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| PgTlsError::File {
        what,
        path: path.to_owned(),
        detail: format!("not PEM: {e}"),
    })?;
    if certs.is_empty() {
        return Err(PgTlsError::File { what, path: path.to_owned(), detail: "no CERTIFICATE block".into() });
    }
    Ok(certs)
}

impl TlsOptions {
    /// The connector for these options; reads the certificate files, so that a file that is
    /// missing or wrong stops the start before any connection is tried.
    pub fn connector(&self) -> Result<PgTls, PgTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.roots, self.mode) {
            (Some(roots), SslMode::VerifyCa | SslMode::VerifyFull) => {
                let mut store = RootCertStore::empty();
                match roots {
                    Roots::File(path) => {
                        for cert in read_certs("sslrootcert", path)? {
                            store.add(cert).map_err(|e| PgTlsError::File {
                                what: "sslrootcert",
                                path: path.clone(),
                                detail: format!("not a usable CA certificate: {e}"),
                            })?;
                        }
                    }
                    Roots::System => {
                        let found = rustls_native_certs::load_native_certs();
                        let (added, _) = store.add_parsable_certificates(found.certs);
                        if added == 0 {
                            let detail = found.errors.first().map_or_else(|| "no certificates".to_owned(), |e| e.to_string());
                            return Err(PgTlsError::Setup(format!("sslrootcert=system: the system's CA store: {detail}")));
                        }
                    }
                }
                let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| PgTlsError::Setup(e.to_string()))?;
                if self.mode == SslMode::VerifyFull { chain } else { Arc::new(ChainOnly(chain)) }
            }
            _ => Arc::new(Unverified(provider.clone())),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgTlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs("sslcert", cert)?;
                let key_pem = read_pem("sslkey", key)?;
                let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| PgTlsError::File {
                    what: "sslkey",
                    path: key.clone(),
                    detail: format!("no private key: {e}"),
                })?;
                builder.with_client_auth_cert(chain, private).map_err(|source| PgTlsError::ClientCert {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?
            }
        };
        Ok(PgTls { config: Arc::new(config) })
    }

    /// Sets the client library's side of the mode.
    pub fn apply(&self, config: &mut postgres::Config) {
        config.ssl_mode(self.mode.wire());
    }

    /// What a failed first connection means for TLS, when it was TLS that failed.
    pub fn explain(&self, e: &postgres::Error, config: &postgres::Config) -> Option<PgTlsError> {
        let cause = std::error::Error::source(e)?;
        let server = server_of(config);
        if let Some(h) = cause.downcast_ref::<HandshakeError>() {
            return Some(match h {
                HandshakeError::Tls(rustls::Error::InvalidCertificate(c)) => PgTlsError::Certificate {
                    server,
                    roots: self.roots.as_ref().map_or_else(String::new, Roots::to_string),
                    mode: self.mode,
                    detail: certificate_problem(c),
                },
                other => PgTlsError::Handshake { server, mode: self.mode, detail: other.to_string() },
            });
        }
        // The client library's own words when the server answers the TLS request with "no";
        // only a TLS-kind error carries them.
        if e.to_string() == "error performing TLS handshake" && cause.to_string() == "server does not support TLS" {
            return Some(PgTlsError::ServerWithoutTls { server, mode: self.mode });
        }
        None
    }
}

fn certificate_problem(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => "it is not signed by a CA in that file".into(),
        CertificateError::NotValidForName => "it does not name the host connected to".into(),
        CertificateError::NotValidForNameContext { expected, presented } => {
            format!("it does not name the host connected to ({}; it names {})", expected.to_str(), presented.join(", "))
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "it has expired".into(),
        other => format!("{other:?}"),
    }
}

fn server_of(config: &postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                postgres::config::Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            }
        })
        .collect();
    if hosts.is_empty() { "(default host)".into() } else { hosts.join(",") }
}

/// `prefer` and `require` without a CA: the connection is encrypted, the peer unchecked (libpq's
/// meaning). The handshake's signatures are still checked, so the key exchange is with the holder
/// of the certificate's key, whoever that is.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not compared
/// with the host. The inner verifier checks the name last, after the chain, so a name mismatch
/// is only ever reported for a chain that verified.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The client library's TLS hook (one per pool; cloned per connection).
#[derive(Clone)]
pub struct PgTls {
    config: Arc<ClientConfig>,
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = HandshakeError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, HandshakeError> {
        // Called for every connection, also over a Unix socket (domain ""), where TLS is never
        // negotiated: a name that is not one only fails if a handshake is attempted.
        Ok(PgTlsConnect { config: self.config.clone(), name: ServerName::try_from(domain.to_owned()).ok() })
    }
}

pub struct PgTlsConnect {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

/// Why a TLS handshake with the server failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Tls(rustls::Error),
    #[error("{0}")]
    Io(io::Error),
    #[error("the host is not a name or address a certificate can be checked against")]
    NoName,
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> HandshakeError {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            if let Some(inner) = e.into_inner()
                && let Ok(tls) = inner.downcast::<rustls::Error>()
            {
                return HandshakeError::Tls(*tls);
            }
            return HandshakeError::Io(io::Error::other("TLS error"));
        }
        HandshakeError::Io(e)
    }
}

type Handshake = Pin<Box<dyn Future<Output = Result<PgTlsStream, HandshakeError>> + Send>>;

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = HandshakeError;
    type Future = Handshake;

    fn connect(self, stream: Socket) -> Handshake {
        Box::pin(async move {
            let name = self.name.ok_or(HandshakeError::NoName)?;
            let tls = tokio_rustls::TlsConnector::from(self.config).connect(name, stream).await?;
            Ok(PgTlsStream(tls))
        })
    }
}

pub struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for PgTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl TlsStream for PgTlsStream {
    /// `tls-server-end-point` (RFC 5929): the server certificate's hash, which SCRAM-SHA-256-PLUS
    /// binds the password exchange to, so that a man in the middle cannot relay it.
    fn channel_binding(&self) -> ChannelBinding {
        let leaf = self.0.get_ref().1.peer_certificates().and_then(|c| c.first());
        match leaf.and_then(|c| end_point_hash(c.as_ref())) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// The certificate hashed with its signature's hash function (SHA-256 for MD5 and SHA-1, per
/// RFC 5929); None where that is not defined (Ed25519, RSA-PSS) or the DER does not parse.
fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, .. }, .. }
    let (_, cert) = der_element(der, 0x30)?;
    let (after_tbs, _) = der_element(cert, 0x30)?;
    let (_, algorithm) = der_element(after_tbs, 0x30)?;
    let (_, oid) = der_element(algorithm, 0x06)?;
    const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    const SHA1_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
    const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    let algorithm = match oid {
        SHA256_WITH_RSA | SHA1_WITH_RSA | ECDSA_SHA256 => &ring::digest::SHA256,
        SHA384_WITH_RSA | ECDSA_SHA384 => &ring::digest::SHA384,
        SHA512_WITH_RSA | ECDSA_SHA512 => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(algorithm, der).as_ref().to_vec())
}

/// One DER element with tag `tag` at the start of `b`: (what follows it, its contents).
fn der_element(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *b.first()? != tag {
        return None;
    }
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = b.get(2..2 + n)?.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((b.get(end..)?, b.get(header..end)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(conn: &str) -> (String, TlsOptions) {
        split(conn).unwrap()
    }

    #[test]
    fn url_options_are_taken_out_and_the_rest_kept_as_written() {
        let (rest, o) = opts(
            "postgresql://u:p%40ss@db:5432/meta?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=a+b",
        );
        assert_eq!(rest, "postgresql://u:p%40ss@db:5432/meta?connect_timeout=3&application_name=a+b");
        assert_eq!(o.mode, SslMode::VerifyFull);
        assert_eq!(o.roots, Some(Roots::File("/etc/ca.pem".into())));
        let (rest, o) = opts("postgres://db/meta?sslmode=disable");
        assert_eq!((rest.as_str(), o.mode), ("postgres://db/meta", SslMode::Disable));
        rest.parse::<postgres::Config>().unwrap();
    }

    #[test]
    fn key_value_options_are_taken_out() {
        let (rest, o) = opts("host=db  user=u password='a \\' b' sslmode = verify-ca sslrootcert='/a b/ca.pem' dbname=m");
        assert_eq!(o.mode, SslMode::VerifyCa);
        assert_eq!(o.roots, Some(Roots::File("/a b/ca.pem".into())));
        assert_eq!(rest, "host=db user=u password='a \\' b' dbname=m");
        assert_eq!(key_values(&rest)[2].1, "a ' b");
    }

    #[test]
    fn the_default_is_prefer_and_require_with_a_ca_verifies_the_chain() {
        assert_eq!(opts("postgresql://db/m").1.mode, SslMode::Prefer);
        assert_eq!(opts("host=db").1.mode, SslMode::Prefer);
        assert_eq!(opts("postgresql://db/m?sslmode=require").1.mode, SslMode::Require);
        assert_eq!(opts("postgresql://db/m?sslmode=require&sslrootcert=/ca.pem").1.mode, SslMode::VerifyCa);
    }

    #[test]
    fn what_cannot_work_is_refused_before_connecting() {
        assert!(matches!(split("postgresql://db/m?sslmode=verify-full"), Err(PgTlsError::NoRootCert(SslMode::VerifyFull))));
        assert!(matches!(split("postgresql://db/m?sslmode=allow"), Err(PgTlsError::BadMode(m)) if m == "allow"));
        assert!(matches!(split("postgresql://db/m?sslcert=/c.pem"), Err(PgTlsError::HalfClientCert("sslcert"))));
        let (_, o) = opts("postgresql://db/m?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        let e = o.connector().err().unwrap().to_string();
        assert!(e.starts_with("sslrootcert /nonexistent/ca.pem: cannot read"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let (_, o) = opts(&format!("postgresql://db/m?sslmode=verify-ca&sslrootcert={}", bad.display()));
        assert!(o.connector().err().unwrap().to_string().contains("no CERTIFICATE block"));
    }

    #[test]
    fn der_lengths_that_run_past_the_input_are_refused() {
        assert_eq!(der_element(&[0x30, 0x03, 1, 2], 0x30), None);
        assert_eq!(der_element(&[0x30, 0x82, 0xff], 0x30), None);
        assert_eq!(der_element(&[0x30, 0x01, 7, 9], 0x30), Some((&[9u8][..], &[7u8][..])));
        assert_eq!(end_point_hash(b"\x30\x00"), None);
    }
}
