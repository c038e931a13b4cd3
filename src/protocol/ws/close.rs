//! Close codes (RFC 6455, section 7.4) and the close frame's payload: which codes a peer may
//! send, and how a close frame is read and written.

use super::frame::Violation;

/// 1000: the purpose of the connection is fulfilled.
pub const NORMAL: u16 = 1000;
/// 1001: the endpoint is going away (the server shuts down, the browser leaves the page).
pub const GOING_AWAY: u16 = 1001;
/// 1002: the peer broke the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: a kind of data the endpoint cannot accept.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1005: no status code was present (never sent; reported for an empty close frame).
pub const NO_STATUS: u16 = 1005;
/// 1006: the connection ended without a close frame (never sent; reported locally).
pub const ABNORMAL: u16 = 1006;
/// 1007: a text message that is not UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// 1008: a policy was violated (here: the peer does not read what it is sent).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: a frame or message over the size limit.
pub const TOO_BIG: u16 = 1009;
/// 1011: the server met an unexpected condition.
pub const INTERNAL_ERROR: u16 = 1011;

/// The most bytes of a close reason (a control frame holds 125 bytes, two are the code).
pub const MAX_REASON_BYTES: usize = 123;

/// Whether a peer may send `code` in a close frame: the defined codes (1000–1003, 1007–1014)
/// and those for libraries and applications (3000–4999). 1004–1006 and 1015 are reserved, and
/// 0–999 and 1016–2999 are not to be used.
pub fn is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The code and reason of a received close frame's payload (`None`: no code, an empty
/// payload). A one-byte payload or a code a peer may not send is a protocol error; a reason
/// that is not UTF-8 is invalid data.
pub fn parse(payload: &[u8]) -> Result<Option<(u16, &str)>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::protocol("a one-byte close payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid(code) {
                return Err(Violation::protocol("a close code that may not be sent"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Violation {
                code: INVALID_DATA,
                reason: "a close reason that is not UTF-8",
            })?;
            Ok(Some((code, reason)))
        }
    }
}

/// The payload of a close frame with `code` and as much of `reason` as fits, cut at a
/// character boundary.
pub fn payload(code: u16, reason: &str, out: &mut [u8; 2 + MAX_REASON_BYTES]) -> usize {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[..2].copy_from_slice(&code.to_be_bytes());
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_codes_a_peer_may_send_are_accepted() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid(code), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid(code), "{code}");
        }
    }

    #[test]
    fn close_payloads_are_read_with_their_faults() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(&[0x03]).map_err(|v| v.code), Err(1002));
        assert_eq!(parse(&[0x03, 0xE8]), Ok(Some((1000, ""))));
        assert_eq!(parse(b"\x03\xe8bye"), Ok(Some((1000, "bye"))));
        assert_eq!(parse(&[0x03, 0xED]).map_err(|v| v.code), Err(1002), "1005");
        assert_eq!(parse(b"\x03\xe8\xff").map_err(|v| v.code), Err(1007));
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let mut out = [0u8; 2 + MAX_REASON_BYTES];
        let reason = "é".repeat(100);
        let length = payload(GOING_AWAY, &reason, &mut out);
        assert!(length <= 125);
        assert_eq!(
            parse(&out[..length]).map(|c| c.map(|c| c.0)),
            Ok(Some(1001))
        );
    }
}
