//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends first on
//! a connection it opened for a client, naming that client's address. Sans-IO: [`parse`] looks
//! at the bytes received so far and says whether a whole header is there, how long it is, and
//! what it says; the driver reads exactly that many bytes off the socket (so what follows, a
//! TLS handshake or the protocol's first bytes, is left untouched).
//!
//! Only peers the server trusts (`Config::proxy_protocol_from`) are read this way, and from
//! them a header is required: anyone else could name any address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 header, `\r\n` included (the specification's bound).
pub const V1_MAX_BYTES: usize = 107;
/// The longest version 2 header accepted: the 16 fixed bytes and up to 2,048 of addresses and
/// TLVs (HAProxy sends well under 300; a longer one is refused rather than buffered).
pub const V2_MAX_BYTES: usize = 16 + 2048;
/// How many bytes a driver must be able to look at to parse any header accepted.
pub const MAX_HEADER_BYTES: usize = V2_MAX_BYTES;

/// The 12 bytes a version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The connection carries a client's traffic: `source` is the client, `destination` the
    /// address it connected to.
    Proxied {
        /// The client's address.
        source: SocketAddr,
        /// The address the client connected to (the balancer's frontend).
        destination: SocketAddr,
    },
    /// The balancer's own connection (a health check, version 2 `LOCAL`): the socket's peer
    /// address is the one to use.
    Local,
    /// A proxied connection whose addresses the balancer does not say (`UNKNOWN`, a Unix or
    /// unspecified family).
    Unknown,
}

impl ProxyHeader {
    /// The client's address, when the header names one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            ProxyHeader::Proxied { source, .. } => Some(*source),
            ProxyHeader::Local | ProxyHeader::Unknown => None,
        }
    }
}

/// What [`parse`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header: look again once more bytes came.
    Incomplete,
    /// A whole header of `length` bytes.
    Done {
        /// Bytes the header takes (what to consume from the socket).
        length: usize,
        /// What it says.
        header: ProxyHeader,
    },
    /// Not a PROXY protocol header, or a malformed one: close the connection.
    Invalid(&'static str),
}

/// Parses the start of a connection's input as a PROXY protocol header, version 1 or 2.
pub fn parse(input: &[u8]) -> Parsed {
    let v2_prefix = input.len().min(V2_SIGNATURE.len());
    if input[..v2_prefix] == V2_SIGNATURE[..v2_prefix] {
        return if input.len() < V2_SIGNATURE.len() {
            Parsed::Incomplete
        } else {
            parse_v2(input)
        };
    }
    let v1_prefix = input.len().min(V1_PREFIX.len());
    if input[..v1_prefix] == V1_PREFIX[..v1_prefix] {
        return if input.len() < V1_PREFIX.len() {
            Parsed::Incomplete
        } else {
            parse_v1(input)
        };
    }
    Parsed::Invalid("not a PROXY protocol header")
}

fn parse_v1(input: &[u8]) -> Parsed {
    let window = &input[..input.len().min(V1_MAX_BYTES)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if input.len() >= V1_MAX_BYTES {
            Parsed::Invalid("a version 1 header longer than 107 bytes")
        } else if window.contains(&b'\n') {
            Parsed::Invalid("a version 1 header ends with CRLF")
        } else {
            Parsed::Incomplete
        };
    };
    let length = end + 2;
    let Ok(line) = std::str::from_utf8(&input[V1_PREFIX.len()..end]) else {
        return Parsed::Invalid("a version 1 header is ASCII");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["UNKNOWN", ..] => ProxyHeader::Unknown,
        [family @ ("TCP4" | "TCP6"), source, destination, source_port, destination_port] => {
            let v6 = *family == "TCP6";
            let (Some(source), Some(destination)) = (
                v1_address(source, source_port, v6),
                v1_address(destination, destination_port, v6),
            ) else {
                return Parsed::Invalid("a version 1 header with a bad address or port");
            };
            ProxyHeader::Proxied {
                source,
                destination,
            }
        }
        _ => return Parsed::Invalid("a version 1 header is TCP4, TCP6 or UNKNOWN with 4 fields"),
    };
    Parsed::Done { length, header }
}

/// An address and port of a version 1 header, of the family it says.
fn v1_address(address: &str, port: &str, v6: bool) -> Option<SocketAddr> {
    let ip: IpAddr = if v6 {
        IpAddr::V6(address.parse::<Ipv6Addr>().ok()?)
    } else {
        IpAddr::V4(address.parse::<Ipv4Addr>().ok()?)
    };
    // Decimal without a sign or leading zeros, as the specification writes ports.
    if port.is_empty() || port.len() > 5 || (port.len() > 1 && port.starts_with('0')) {
        return None;
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(SocketAddr::new(ip, port.parse().ok()?))
}

fn parse_v2(input: &[u8]) -> Parsed {
    if input.len() < 16 {
        return Parsed::Incomplete;
    }
    let version_command = input[12];
    if version_command >> 4 != 2 {
        return Parsed::Invalid("a version 2 header says another version");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("a version 2 header's command is LOCAL or PROXY"),
    };
    let family = input[13];
    let body = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let length = 16 + body;
    if length > V2_MAX_BYTES {
        return Parsed::Invalid("a version 2 header longer than this server accepts");
    }
    if input.len() < length {
        return Parsed::Incomplete;
    }
    if local {
        return Parsed::Done {
            length,
            header: ProxyHeader::Local,
        };
    }
    let addresses = &input[16..length];
    let header = match family {
        // TCP (or UDP) over IPv4: source, destination, source port, destination port.
        0x11 | 0x12 => {
            let Some(bytes) = addresses.get(..12) else {
                return Parsed::Invalid("a version 2 IPv4 header too short for its addresses");
            };
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    bytes[at],
                    bytes[at + 1],
                    bytes[at + 2],
                    bytes[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        0x21 | 0x22 => {
            let Some(bytes) = addresses.get(..36) else {
                return Parsed::Invalid("a version 2 IPv6 header too short for its addresses");
            };
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // Unspecified, or Unix sockets: nothing to name the client by.
        0x00 | 0x31 | 0x32 => ProxyHeader::Unknown,
        _ => return Parsed::Invalid("a version 2 header of an unknown address family"),
    };
    Parsed::Done { length, header }
}

/// Builds a version 2 header for `source` connecting to `destination` (for tests and for a
/// client that stands in for a balancer).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(source), SocketAddr::V4(destination)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&source.ip().octets());
            out.extend_from_slice(&destination.ip().octets());
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
        (source, destination) => {
            let v6 = |addr: SocketAddr| match addr.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(source).octets());
            out.extend_from_slice(&v6(destination).octets());
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    /// Every proper prefix of `header` is incomplete, the whole is `expected`, and bytes after
    /// it (what the connection carries next) change nothing.
    fn check_every_split(header: &[u8], expected: ProxyHeader) {
        for end in 0..header.len() {
            assert_eq!(
                parse(&header[..end]),
                Parsed::Incomplete,
                "prefix of {end} bytes of {header:?}"
            );
        }
        let done = Parsed::Done {
            length: header.len(),
            header: expected,
        };
        assert_eq!(parse(header), done);
        let mut followed = header.to_vec();
        followed.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&followed), done);
    }

    #[test]
    fn version_1_headers_parse_at_every_split() {
        check_every_split(
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            ProxyHeader::Proxied {
                source: addr("192.0.2.1:56324"),
                destination: addr("198.51.100.2:443"),
            },
        );
        check_every_split(
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
            ProxyHeader::Proxied {
                source: addr("[2001:db8::1]:1"),
                destination: addr("[2001:db8::2]:65535"),
            },
        );
        check_every_split(b"PROXY UNKNOWN\r\n", ProxyHeader::Unknown);
        check_every_split(
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
            ProxyHeader::Unknown,
        );
    }

    #[test]
    fn version_2_headers_parse_at_every_split() {
        check_every_split(
            &v2_header(addr("203.0.113.7:40000"), addr("10.0.0.1:8080")),
            ProxyHeader::Proxied {
                source: addr("203.0.113.7:40000"),
                destination: addr("10.0.0.1:8080"),
            },
        );
        check_every_split(
            &v2_header(addr("[2001:db8::7]:40000"), addr("[2001:db8::1]:443")),
            ProxyHeader::Proxied {
                source: addr("[2001:db8::7]:40000"),
                destination: addr("[2001:db8::1]:443"),
            },
        );
        // LOCAL, with a TLV after the addresses' place as HAProxy's health checks may send.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x03, 0x04, 0x00, 0x00]);
        check_every_split(&local, ProxyHeader::Local);
        // PROXY with TLVs after IPv4 addresses: the length covers them.
        let mut with_tlvs = v2_header(addr("192.0.2.9:1234"), addr("192.0.2.1:80"));
        with_tlvs[15] = 12 + 5;
        with_tlvs.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        check_every_split(
            &with_tlvs,
            ProxyHeader::Proxied {
                source: addr("192.0.2.9:1234"),
                destination: addr("192.0.2.1:80"),
            },
        );
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0x00, 0xd8]);
        unix.extend_from_slice(&[0u8; 216]);
        check_every_split(&unix, ProxyHeader::Unknown);
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let refused = |input: &[u8]| matches!(parse(input), Parsed::Invalid(_));
        assert!(refused(b"GET / HTTP/1.1\r\n\r\n"), "no header at all");
        assert!(
            refused(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"),
            "a field missing"
        );
        assert!(refused(
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 x\r\n"
        ));
        assert!(
            refused(b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n"),
            "v6 in TCP4"
        );
        assert!(
            refused(b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n"),
            "v4 in TCP6"
        );
        assert!(
            refused(b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n"),
            "port range"
        );
        assert!(
            refused(b"PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n"),
            "leading zero"
        );
        assert!(
            refused(b"PROXY TCP4 192.0.2.1 198.51.100.2 +44 443\r\n"),
            "a sign"
        );
        assert!(
            refused(b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n"),
            "LF without CR"
        );
        assert!(
            refused(b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n"),
            "not TCP"
        );
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_BYTES, b'x');
        assert!(refused(&long), "no CRLF within 107 bytes");
        assert_eq!(parse(&long[..V1_MAX_BYTES - 1]), Parsed::Incomplete);

        let good = v2_header(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        let mut version = good.clone();
        version[12] = 0x11;
        assert!(refused(&version), "version 1 in a version 2 header");
        let mut command = good.clone();
        command[12] = 0x22;
        assert!(refused(&command), "command 2");
        let mut family = good.clone();
        family[13] = 0x41;
        assert!(refused(&family), "unknown family");
        let mut short = good.clone();
        short[15] = 4;
        short.truncate(20);
        assert!(refused(&short), "IPv4 addresses need 12 bytes");
        let mut huge = good;
        huge[14] = 0xff;
        assert!(
            refused(&huge),
            "longer than accepted, refused before it all came"
        );
    }
}
