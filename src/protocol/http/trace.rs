//! W3C Trace Context (`traceparent`): the trace a request belongs to, so its log lines can be
//! found beside those of the services it passed through. A valid incoming trace id is kept; a
//! missing or malformed one is replaced by a new one when there is a log line to carry it.

use std::fmt;

/// A trace id: 16 bytes, never all zero, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// A new random trace id (from the thread's CSPRNG, so ids do not collide across servers).
    pub fn random() -> TraceId {
        loop {
            let bytes: [u8; 16] = rand::random();
            if bytes != [0; 16] {
                return TraceId(bytes);
            }
        }
    }

    /// The 16 bytes.
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The trace id of a `traceparent` value, if it is valid: `version-traceid-parentid-flags`
/// in lowercase hex (2-32-16-2 digits), version not `ff`, neither id all zeros; a version
/// other than `00` may carry more after a `-`, as the specification lets later versions.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceId> {
    fn hex(digits: &[u8]) -> Option<Vec<u8>> {
        if !digits.len().is_multiple_of(2)
            || !digits
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let nibble = |b: u8| {
            if b.is_ascii_digit() {
                b - b'0'
            } else {
                b - b'a' + 10
            }
        };
        Some(
            digits
                .chunks(2)
                .map(|pair| nibble(pair[0]) << 4 | nibble(pair[1]))
                .collect(),
        )
    }
    let value = value.trim_ascii();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex(&value[..2])?;
    match (version[0], value.len()) {
        (0xff, _) => return None,
        (0x00, 55) => {}
        (0x00, _) => return None,
        // A later version: what follows the flags must start with a '-'.
        (_, 55) => {}
        (_, _) if value[55] == b'-' => {}
        _ => return None,
    }
    let trace: [u8; 16] = hex(&value[3..35])?.try_into().ok()?;
    let parent = hex(&value[36..52])?;
    hex(&value[53..55])?;
    if trace == [0; 16] || parent.iter().all(|&b| b == 0) {
        return None;
    }
    Some(TraceId(trace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_traceparents_give_their_trace_id_and_invalid_ones_none() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(good).map(|id| id.to_string()).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may carry more; version 00 may not.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        assert!(
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_none()
        );
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            b"",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Every cut of a good one is refused.
        for end in 0..good.len() {
            assert!(parse_traceparent(&good[..end]).is_none());
        }
        let made = TraceId::random();
        assert_ne!(made, TraceId::random());
        assert_eq!(made.to_string().len(), 32);
    }
}
