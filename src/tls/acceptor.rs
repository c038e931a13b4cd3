//! What the layer is configured with: the server's certificate and key, client authentication,
//! revocation, protocol versions and ALPN (from PEM files, reloadable), and the client side's
//! trust, for the tools and the tests that dial a TLS server.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::identity::PeerIdentity;
use super::stream::TlsStream;
use crate::error::{Error, Result};
use crate::metrics::TlsCounters;
use crate::net::Stream;

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A client without a certificate signed by the client CA is refused.
    #[default]
    Required,
    /// A client may come without a certificate (its context then shows no identity); one that
    /// presents a certificate must still present a valid one.
    Optional,
}

/// Which TLS versions are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersions {
    /// TLS 1.3 and 1.2 (1.3 preferred): what clients of the last decade speak.
    #[default]
    Tls13And12,
    /// TLS 1.3 only.
    Tls13Only,
}

/// Where the server's TLS configuration comes from (PEM files, read again on reload) and what
/// it offers.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The certificate chain, leaf first (PEM).
    pub certificate: PathBuf,
    /// The private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// Clients must present a certificate signed by one of these CAs (PEM); `None`: no client
    /// authentication.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required or optional (with `client_ca`).
    pub client_auth: ClientAuth,
    /// Certificate revocation lists (PEM); a client certificate on one is refused.
    pub crl: Option<PathBuf>,
    /// Application protocols offered with ALPN, most preferred first (`http/1.1` for HTTP and
    /// WebSocket). A client that offers ALPN and none of these is refused; empty: no ALPN.
    pub alpn: Vec<Vec<u8>>,
    /// The TLS versions offered.
    pub versions: TlsVersions,
    /// Sessions kept in the server-side cache for resumption by session id (TLS 1.2) and
    /// stateful tickets; each entry is a few hundred bytes. TLS 1.3 resumption uses stateless
    /// tickets and needs no entry. Default 4,096; range 0..=1,000,000 (0: no cache).
    pub session_cache_entries: usize,
}

impl TlsSettings {
    /// A certificate chain and its key, no client authentication, TLS 1.3 and 1.2, no ALPN.
    pub fn new(certificate: impl Into<PathBuf>, private_key: impl Into<PathBuf>) -> TlsSettings {
        TlsSettings {
            certificate: certificate.into(),
            private_key: private_key.into(),
            client_ca: None,
            client_auth: ClientAuth::Required,
            crl: None,
            alpn: Vec::new(),
            versions: TlsVersions::default(),
            session_cache_entries: 4096,
        }
    }

    /// Authenticates clients against the CAs in `client_ca` (mTLS).
    pub fn client_ca(mut self, client_ca: impl Into<PathBuf>, auth: ClientAuth) -> Self {
        self.client_ca = Some(client_ca.into());
        self.client_auth = auth;
        self
    }

    /// Refuses client certificates revoked by the CRLs in `crl`.
    pub fn crl(mut self, crl: impl Into<PathBuf>) -> Self {
        self.crl = Some(crl.into());
        self
    }

    /// Offers ALPN `http/1.1` (for HTTP and WebSocket servers).
    pub fn alpn_http1(mut self) -> Self {
        self.alpn = vec![b"http/1.1".to_vec()];
        self
    }

    /// Offers only the given versions.
    pub fn versions(mut self, versions: TlsVersions) -> Self {
        self.versions = versions;
        self
    }
}

/// The provider every configuration here is built with (see Cargo.toml for why aws-lc-rs).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

static TLS13_AND_12: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(versions: TlsVersions) -> &'static [&'static SupportedProtocolVersion] {
    match versions {
        TlsVersions::Tls13And12 => &TLS13_AND_12,
        TlsVersions::Tls13Only => &TLS13_ONLY,
    }
}

fn file_error(what: &str, path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Config(format!("TLS {what} {}: {error}", path.display()))
}

/// Every certificate in a PEM file; a file with none is an error.
pub(crate) fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(what, path, error))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| file_error(what, path, error))?;
    if certificates.is_empty() {
        return Err(file_error(what, path, "no certificate in the file"));
    }
    Ok(certificates)
}

fn roots(path: &Path, what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path, what)? {
        roots
            .add(certificate)
            .map_err(|error| file_error(what, path, error))?;
    }
    Ok(roots)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| file_error("private key", path, error))
}

/// A server configuration read from the files `settings` names, and the leaf certificate's
/// expiry.
fn load(
    settings: &TlsSettings,
    ticketer: &Arc<dyn ProducesTickets>,
    cache: &Option<Arc<ServerSessionMemoryCache>>,
) -> Result<(ServerConfig, i64)> {
    let chain = certificates(&settings.certificate, "certificate")?;
    let key = private_key(&settings.private_key)?;
    let not_after = PeerIdentity::from_der(&chain[0])
        .map(|identity| identity.not_after)
        .ok_or_else(|| {
            file_error(
                "certificate",
                &settings.certificate,
                "the first certificate does not parse",
            )
        })?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(settings.versions))
        .map_err(|error| Error::Config(format!("TLS versions: {error}")))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, "client CA")?),
                provider,
            );
            if let Some(crl) = &settings.crl {
                let crls = CertificateRevocationListDer::pem_file_iter(crl)
                    .map_err(|error| file_error("CRL", crl, error))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|error| file_error("CRL", crl, error))?;
                if crls.is_empty() {
                    return Err(file_error("CRL", crl, "no CRL in the file"));
                }
                verifier = verifier.with_crls(crls);
            }
            if settings.client_auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|error| file_error("client CA", ca, error))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Refuses a key that does not belong to the certificate.
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| file_error("certificate and key", &settings.certificate, error))?;
    config.alpn_protocols = settings.alpn.clone();
    config.ticketer = ticketer.clone();
    if let Some(cache) = cache {
        config.session_storage = cache.clone();
    }
    Ok((config, not_after))
}

/// The server side of the layer: the configuration new handshakes use (swapped whole by a
/// reload), the session tickets' keys and the session cache (kept across reloads), and the
/// counters. Cheap to clone; every clone is the same acceptor.
#[derive(Clone)]
pub struct TlsAcceptor {
    shared: Arc<Shared>,
}

struct Shared {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    ticketer: Arc<dyn ProducesTickets>,
    cache: Option<Arc<ServerSessionMemoryCache>>,
    counters: Arc<TlsCounters>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Reads the files `settings` names and builds the configuration; any file missing or
    /// broken, or a key that does not match the certificate, is an error naming the file.
    pub fn new(settings: TlsSettings) -> Result<TlsAcceptor> {
        if settings.session_cache_entries > 1_000_000 {
            return Err(Error::Config(
                "session_cache_entries is outside 0..=1000000".into(),
            ));
        }
        // Ticket keys rotate every six hours, each valid for twelve: a stolen key exposes at
        // most half a day of resumed sessions.
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|error| Error::Config(format!("TLS session tickets: {error}")))?;
        let cache = (settings.session_cache_entries > 0)
            .then(|| ServerSessionMemoryCache::new(settings.session_cache_entries));
        let (config, not_after) = load(&settings, &ticketer, &cache)?;
        let counters = Arc::new(TlsCounters::default());
        counters
            .certificate_not_after
            .store(not_after.max(0) as u64, Ordering::Relaxed);
        Ok(TlsAcceptor {
            shared: Arc::new(Shared {
                settings,
                current: RwLock::new(Arc::new(config)),
                ticketer,
                cache,
                counters,
            }),
        })
    }

    /// Reads the certificate, key, client CA and CRL again. New handshakes use them from now
    /// on; connections already open are not touched. If anything is missing or broken the
    /// reload is refused (logged at error level, counted) and the configuration in use stays.
    pub fn reload(&self) -> Result<()> {
        let shared = &self.shared;
        match load(&shared.settings, &shared.ticketer, &shared.cache) {
            Ok((config, not_after)) => {
                *shared
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
                shared
                    .counters
                    .certificate_not_after
                    .store(not_after.max(0) as u64, Ordering::Relaxed);
                shared.counters.reloads.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "TLS configuration reloaded from {}",
                    shared.settings.certificate.display()
                );
                Ok(())
            }
            Err(error) => {
                shared
                    .counters
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                log::error!("TLS reload refused, the configuration in use stays: {error}");
                Err(error)
            }
        }
    }

    /// Reloads on every SIGHUP, on a thread of its own, until the returned guard is dropped.
    pub fn reload_on_sighup(&self) -> Result<ReloadOnSighup> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .map_err(|error| Error::io("installing the SIGHUP handler", error))?;
        let handle = signals.handle();
        let acceptor = self.clone();
        std::thread::Builder::new()
            .name("socketserver-tls-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    log::info!("SIGHUP: reloading the TLS configuration");
                    // A refused reload is logged and counted; the old configuration serves on.
                    let _ = acceptor.reload();
                }
            })
            .map_err(|error| Error::io("spawning the TLS reload thread", error))?;
        Ok(ReloadOnSighup { handle })
    }

    /// The settings this acceptor reads its files by.
    pub fn settings(&self) -> &TlsSettings {
        &self.shared.settings
    }

    pub(crate) fn counters(&self) -> &Arc<TlsCounters> {
        &self.shared.counters
    }

    /// Wraps an accepted socket: the handshake runs as the connection is driven.
    pub(crate) fn accept(&self, socket: Stream, buffer_limit: usize) -> std::io::Result<Stream> {
        let config = self
            .shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut connection =
            rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        connection.set_buffer_limit(Some(buffer_limit));
        Ok(Stream::Tls(Box::new(TlsStream::server(
            socket,
            connection,
            self.shared.counters.clone(),
        ))))
    }
}

/// Keeps SIGHUP reloading the TLS configuration; dropping it stops that (the reload thread
/// ends, and SIGHUP is handled no more by it).
pub struct ReloadOnSighup {
    handle: signal_hook::iterator::Handle,
}

impl Drop for ReloadOnSighup {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// The client side: which CAs to trust, an optional client certificate, and whether to resume
/// sessions. For the load generator, the WebSocket and pub/sub clients, and tests.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Trusts the CAs in `ca` (PEM), offers ALPN `http/1.1`, and resumes sessions.
    pub fn trusting(ca: &Path) -> Result<TlsConnector> {
        TlsConnector::build(ca, None, true)
    }

    /// Like [`TlsConnector::trusting`], presenting the client certificate in `certificate`
    /// with its key (mTLS).
    pub fn with_client_certificate(
        ca: &Path,
        certificate: &Path,
        key: &Path,
    ) -> Result<TlsConnector> {
        TlsConnector::build(ca, Some((certificate, key)), true)
    }

    /// The same trust without session resumption: every connect is a full handshake.
    pub fn without_resumption(&self) -> TlsConnector {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector {
            config: Arc::new(config),
        }
    }

    /// A connector over a rustls configuration made elsewhere.
    pub fn from_config(config: Arc<ClientConfig>) -> TlsConnector {
        TlsConnector { config }
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    fn build(ca: &Path, client: Option<(&Path, &Path)>, resume: bool) -> Result<TlsConnector> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(TlsVersions::Tls13And12))
            .map_err(|error| Error::Config(format!("TLS versions: {error}")))?
            .with_root_certificates(roots(ca, "CA")?);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((certificate, key)) => builder
                .with_client_auth_cert(
                    certificates(certificate, "client certificate")?,
                    private_key(key)?,
                )
                .map_err(|error| file_error("client certificate", certificate, error))?,
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(TlsConnector {
            config: Arc::new(config),
        })
    }

    /// Wraps a connected (or connecting) socket for `server_name` (the name the server's
    /// certificate must carry: a DNS name or an IP address).
    pub(crate) fn connect(&self, socket: Stream, server_name: &str) -> std::io::Result<Stream> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
        let connection = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(std::io::Error::other)?;
        Ok(Stream::Tls(Box::new(TlsStream::client(socket, connection))))
    }
}

impl TlsConnector {
    /// Runs a client handshake on a connected blocking socket, each read waiting at most
    /// `timeout`: the blocking WebSocket and pub/sub clients' `wss://`.
    pub(crate) fn handshake_blocking(
        &self,
        socket: std::net::TcpStream,
        server_name: &str,
        timeout: std::time::Duration,
    ) -> std::io::Result<ClientTls> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
        let connection = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(std::io::Error::other)?;
        socket.set_read_timeout(Some(timeout))?;
        let mut stream = rustls::StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(ClientTls(stream))
    }
}

/// A blocking TLS client connection over TCP: reads and writes plaintext, waiting as the
/// socket's timeouts allow.
pub(crate) struct ClientTls(rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>);

impl ClientTls {
    /// The socket under the layer (for its timeouts and shutdown).
    pub(crate) fn socket(&self) -> &std::net::TcpStream {
        &self.0.sock
    }
}

impl std::io::Read for ClientTls {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf) {
            // The server closed without close_notify: an end of stream like any other.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }
}

impl std::io::Write for ClientTls {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
