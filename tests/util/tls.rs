//! A throwaway PKI for the TLS tests, made fresh each time (nothing checked in to expire): a CA,
//! a server certificate for `localhost` and 127.0.0.1, client certificates (good, expired,
//! revoked, from another CA) and a CRL, written as PEM files; and rustls clients with
//! timeouts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The serial of the server certificate a fresh [`Pki`] writes.
pub const SERVER_SERIAL: u64 = 0x1001;
/// The serial of the revoked client certificate.
pub const REVOKED_SERIAL: u64 = 0x2003;

/// A CA and the certificates it issued, as PEM files in a directory of their own.
pub struct Pki {
    pub dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    other_ca: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    (params, KeyPair::generate().expect("CA key"))
}

impl Pki {
    /// Makes the CA, the server certificate (serial [`SERVER_SERIAL`]), the client
    /// certificates `alice` (good), `bob` (good), `expired`, `revoked` (on the CRL) and
    /// `stranger` (from another CA), and the CRL, in a new directory.
    pub fn new() -> Pki {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "socketserver-pki-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("PKI dir");
        let (ca_params, ca_key) = ca("Test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write CA");
        let (other_params, other_key) = ca("Other CA");
        let other_cert = other_params.self_signed(&other_key).expect("other CA cert");
        std::fs::write(dir.join("other-ca.pem"), other_cert.pem()).expect("write other CA");
        let pki = Pki {
            dir,
            ca: Issuer::new(ca_params, ca_key),
            other_ca: Issuer::new(other_params, other_key),
        };
        pki.server_certificate("server", SERVER_SERIAL);
        pki.client("alice", 0x2001, false, false);
        pki.client("bob", 0x2002, false, false);
        pki.client("revoked", REVOKED_SERIAL, false, false);
        pki.client("expired", 0x2004, true, false);
        pki.client("stranger", 0x2005, false, true);
        pki.crl(&[REVOKED_SERIAL]);
        pki
    }

    /// The path of `name` in the PKI's directory (`ca.pem`, `server.pem`, `alice.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `NAME.pem` and `NAME.key`: a server certificate for localhost and 127.0.0.1.
    pub fn server_certificate(&self, name: &str, serial: u64) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // A real validity period: Chromium refuses the handshake with a certificate valid
        // until rcgen's default of the year 4096.
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        self.issue(name, params, false);
    }

    fn client(&self, name: &str, serial: u64, expired: bool, stranger: bool) {
        let mut params =
            CertificateParams::new(vec![format!("{name}.example")]).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        self.issue(name, params, stranger);
    }

    fn issue(&self, name: &str, params: CertificateParams, stranger: bool) {
        let key = KeyPair::generate().expect("key");
        let issuer = if stranger { &self.other_ca } else { &self.ca };
        let cert = params.signed_by(&key, issuer).expect("sign");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
    }

    /// Writes `crl.pem`, revoking `serials`.
    pub fn crl(&self, serials: &[u64]) {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).expect("sign CRL");
        std::fs::write(self.path("crl.pem"), crl.pem().expect("CRL PEM")).expect("write CRL");
    }

    /// Server settings with this PKI's server certificate.
    pub fn settings(&self) -> socketserver::tls::TlsSettings {
        socketserver::tls::TlsSettings::new(self.path("server.pem"), self.path("server.key"))
    }

    /// A client configuration trusting this CA, presenting `client`'s certificate if given,
    /// offering `alpn`, and speaking `versions`.
    pub fn client_config(
        &self,
        client: Option<&str>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("CA") {
            roots.add(cert.expect("CA cert")).expect("add root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => builder
                .with_client_auth_cert(
                    chain(&self.path(&format!("{name}.pem"))),
                    PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).expect("key"),
                )
                .expect("client auth"),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("chain")
        .map(|cert| cert.expect("cert"))
        .collect()
}

/// Every version rustls speaks.
pub const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS client over TCP with timeouts.
pub type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `addr` and completes the handshake (as `localhost`); the error is what rustls
/// said, for the tests of refusals.
pub fn try_connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Result<Client, std::io::Error> {
    let socket = super::connect(addr);
    let name = ServerName::try_from("localhost").expect("name");
    let connection = rustls::ClientConnection::new(config.clone(), name).expect("client");
    let mut client = rustls::StreamOwned::new(connection, socket);
    while client.conn.is_handshaking() {
        client.conn.complete_io(&mut client.sock)?;
    }
    Ok(client)
}

/// Connects and completes the handshake, failing the test if it does not.
pub fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Client {
    try_connect(addr, config).expect("TLS handshake")
}

/// Sends one HTTP GET for `path` and reads its answer (the body by Content-Length).
pub fn get(client: &mut Client, path: &str) -> (u16, String) {
    write!(client, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("write request");
    client.flush().expect("flush");
    read_answer(client)
}

/// Reads one HTTP answer framed by Content-Length.
pub fn read_answer(client: &mut Client) -> (u16, String) {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1];
    while !buffer.ends_with(b"\r\n\r\n") {
        let count = client.read(&mut byte).expect("read answer head");
        assert!(count == 1, "end of stream in an answer head");
        buffer.push(byte[0]);
    }
    let head = String::from_utf8(buffer).expect("UTF-8 head");
    let status = head[9..12].parse().expect("status");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    client.read_exact(&mut body).expect("read answer body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What a client that completed its side of the handshake hears next: the server's alert,
/// if it refused the client's certificate (TLS 1.3 sends it after the client thinks it is
/// done), as rustls reports it.
pub fn refusal(result: Result<Client, std::io::Error>) -> Option<rustls::Error> {
    let error = match result {
        Err(error) => error,
        Ok(mut client) => {
            let _ = write!(client, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
            let _ = client.flush();
            let mut buffer = [0u8; 256];
            match client.read(&mut buffer) {
                Ok(count) => {
                    assert!(count > 0, "closed without an alert");
                    return None;
                }
                Err(error) => error,
            }
        }
    };
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}
