//! The verified identity of a TLS peer, as a handler authorises by it.

/// Who the peer proved to be with its certificate (mTLS): read in a protocol callback with
/// [`Context::peer_identity`](crate::protocol::Context::peer_identity). Only a certificate that
/// verified against the configured client CA (and CRL) gets this far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's distinguished name, e.g. `CN=alice, O=Example`.
    pub subject: String,
    /// The subject's common name (CN), if it has one.
    pub common_name: Option<String>,
    /// The subject alternative names, as text: DNS names, e-mail addresses, URIs (SPIFFE IDs,
    /// say) and IP addresses.
    pub alt_names: Vec<String>,
    /// The certificate's serial number, in lowercase hex.
    pub serial: String,
    /// SHA-256 of the certificate (DER), in lowercase hex: what pins one certificate.
    pub fingerprint_sha256: String,
    /// When the certificate expires, as a Unix time in seconds.
    pub not_after: i64,
}

impl PeerIdentity {
    /// True if `name` is the common name or one of the alternative names: the check an
    /// allow-list makes.
    pub fn has_name(&self, name: &str) -> bool {
        self.common_name.as_deref() == Some(name) || self.alt_names.iter().any(|alt| alt == name)
    }

    /// Reads the identity out of a certificate (DER); `None` if it does not parse.
    #[cfg(feature = "tls")]
    pub fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        use x509_parser::extensions::GeneralName;
        let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = certificate.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .map(str::to_owned);
        let mut alt_names = Vec::new();
        if let Ok(Some(extension)) = certificate.subject_alternative_name() {
            for name in &extension.value.general_names {
                match name {
                    GeneralName::DNSName(text)
                    | GeneralName::RFC822Name(text)
                    | GeneralName::URI(text) => alt_names.push((*text).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(address) = ip_from_bytes(bytes) {
                            alt_names.push(address.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(PeerIdentity {
            subject: subject.to_string(),
            common_name,
            alt_names,
            serial: hex(certificate.raw_serial()),
            fingerprint_sha256: hex(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref()
            ),
            not_after: certificate.validity().not_after.timestamp(),
        })
    }
}

#[cfg(feature = "tls")]
fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Lowercase hex, with leading zero bytes of a serial kept as they are.
#[cfg(feature = "tls")]
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}
