//! The opening handshake (RFC 6455, section 4): is an HTTP request a valid upgrade, and the
//! `101 Switching Protocols` answer with its accept key, subprotocol and extensions.

use super::deflate::{self, Agreed, DeflateOptions};
use crate::protocol::http::{Request, Response};

/// The GUID every accept key is derived with (RFC 6455, section 1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64 of the SHA-1 of the key
/// and the protocol's GUID.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// Whether the comma-separated token lists of header `name` contain `token`.
fn has_token(request: &Request, name: &str, token: &str) -> bool {
    request.header_values(name).any(|value| {
        value
            .split(|&byte| byte == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether `request` asks to become a WebSocket (`Upgrade: websocket`); a request that does
/// not is plain HTTP, however it is addressed.
pub fn is_upgrade(request: &Request) -> bool {
    has_token(request, "upgrade", "websocket")
}

/// A handshake the server accepts: what goes into the `101` answer.
#[derive(Debug)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
    /// The index, in the route's list, of the subprotocol chosen.
    pub subprotocol: Option<usize>,
    /// permessage-deflate as agreed, and the response header's value.
    pub deflate: Option<(Agreed, String)>,
}

/// What the route configures for the handshake.
pub struct Terms<'a> {
    /// Subprotocols the route speaks, the preferred first.
    pub subprotocols: &'a [String],
    /// permessage-deflate, if the route offers it.
    pub deflate: Option<&'a DeflateOptions>,
    /// The origin check: `false` refuses the handshake with 403.
    pub origin_allowed: &'a dyn Fn(Option<&str>) -> bool,
}

/// Checks an upgrade request against RFC 6455 (section 4.2.1) and the route's terms. A refusal
/// is the HTTP answer to send instead: 405 (not GET), 400 (not HTTP/1.1, no `Connection:
/// upgrade`, a key that is not base64 of 16 bytes), 426 with `Sec-WebSocket-Version: 13` (any
/// other version), 403 (the origin check said no).
pub fn check(request: &Request, terms: &Terms<'_>) -> Result<Accepted, Response> {
    if request.method() != "GET" {
        return Err(Response::text(405, "a WebSocket opens with GET\n").header("Allow", "GET"));
    }
    if request.minor_version() < 1 {
        return Err(Response::text(400, "a WebSocket needs HTTP/1.1\n"));
    }
    if !has_token(request, "connection", "upgrade") {
        return Err(Response::text(
            400,
            "an upgrade without Connection: upgrade\n",
        ));
    }
    let mut versions = request.header_values("sec-websocket-version");
    let version_ok = versions.next().is_some_and(|v| v.trim_ascii() == b"13");
    if !version_ok || versions.next().is_some() {
        return Err(
            Response::text(426, "this server speaks WebSocket version 13\n")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    let mut keys = request.header_values("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.trim_ascii(),
        _ => return Err(Response::text(400, "one Sec-WebSocket-Key is needed\n")),
    };
    if !is_nonce(key) {
        return Err(Response::text(
            400,
            "Sec-WebSocket-Key is not base64 of 16 bytes\n",
        ));
    }
    let origin = request
        .header("origin")
        .and_then(|origin| std::str::from_utf8(origin).ok());
    if !(terms.origin_allowed)(origin) {
        return Err(Response::text(403, "origin not allowed\n"));
    }
    let subprotocol = terms
        .subprotocols
        .iter()
        .position(|ours| has_token(request, "sec-websocket-protocol", ours));
    let deflate = terms.deflate.and_then(|options| {
        deflate::negotiate(request.header_values("sec-websocket-extensions"), options)
    });
    Ok(Accepted {
        accept: accept_key(key),
        subprotocol,
        deflate,
    })
}

/// A key is the base64 encoding of 16 bytes: 24 characters, the last two `==`.
fn is_nonce(key: &[u8]) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
}

/// Appends the `101 Switching Protocols` answer to `out`.
pub fn write_switching_protocols(
    out: &mut Vec<u8>,
    accepted: &Accepted,
    subprotocol: Option<&str>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accepted.accept.as_bytes());
    if let Some(protocol) = subprotocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(protocol.as_bytes());
    }
    if let Some((_, extensions)) = &accepted.deflate {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(extensions.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_of_the_rfc_example() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn keys_must_be_base64_of_sixteen_bytes() {
        assert!(is_nonce(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_nonce(b"dGhlIHNhbXBsZSBub25jZQ"), "unpadded");
        assert!(!is_nonce(b"dGhlIHNhbXBsZSBub25jZXg="), "17 bytes");
        assert!(!is_nonce(b"!!!!!!!!!!!!!!!!!!!!!!=="));
    }
}
