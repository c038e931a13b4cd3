//! The record: how one message is framed in a segment file, and how a run of records is read
//! back and checked.
//!
//! ```text
//! length     u32 LE   bytes of the body below
//! crc        u32 LE   CRC-32C (Castagnoli) of the body
//! body:
//!   offset     u64 LE   the message's offset in its topic (1, 2, 3, ...)
//!   timestamp  u64 LE   milliseconds since the Unix epoch, when it was appended
//!   id_length  u16 LE   bytes of the publisher's message id (0: none); the top bit set
//!                       marks a binary payload (`ws --broadcast` keeps the message's kind)
//!   id         id_length bytes of UTF-8
//!   data       the rest: the message's payload
//! ```
//!
//! A reader trusts nothing: a length past the end of what it holds is a *torn* record (a write
//! cut short), a length outside the limits or a CRC that does not match is a *corrupt* one.

/// Bytes before the body: its length and its CRC.
pub(crate) const HEADER_BYTES: usize = 8;
/// Bytes of the body before the id: offset, timestamp, id length.
const BODY_FIXED_BYTES: usize = 8 + 8 + 2;

/// One message as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the topic: contiguous, from 1.
    pub offset: u64,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The publisher's id for it, if it gave one (for dropping repeated publishes).
    pub id: Option<Box<str>>,
    /// The payload.
    pub data: Box<[u8]>,
    /// The payload is binary rather than text.
    pub binary: bool,
}

/// The top bit of the id length: a binary payload.
const BINARY_FLAG: u16 = 0x8000;

impl Record {
    /// Bytes this record takes in a segment.
    pub(crate) fn framed_len(&self) -> usize {
        HEADER_BYTES + BODY_FIXED_BYTES + self.id.as_deref().map_or(0, str::len) + self.data.len()
    }

    /// Appends the framed record to `out`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        let id = self.id.as_deref().unwrap_or("").as_bytes();
        let body_len = BODY_FIXED_BYTES + id.len() + self.data.len();
        let start = out.len();
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        let binary = if self.binary { BINARY_FLAG } else { 0 };
        out.extend_from_slice(&(id.len() as u16 | binary).to_le_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&self.data);
        let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// What reading one record from the front of some bytes found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole, intact record of this many bytes.
    Record(Record, usize),
    /// The bytes end inside a record (or hold none): a torn write, or simply the end.
    Incomplete,
    /// A record that is whole but wrong: its length is impossible or its CRC does not match.
    Corrupt(&'static str),
}

/// Reads the record at the front of `bytes`; `max_body` bounds the length believed.
pub(crate) fn parse(bytes: &[u8], max_body: usize) -> Parsed {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Parsed::Incomplete;
    };
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(BODY_FIXED_BYTES..=max_body).contains(&body_len) {
        // A zero length is what a file preallocated or extended with zeros shows.
        return if body_len == 0 && crc == 0 {
            Parsed::Incomplete
        } else {
            Parsed::Corrupt("a record length outside the limits")
        };
    }
    let Some(body) = bytes.get(HEADER_BYTES..HEADER_BYTES + body_len) else {
        return Parsed::Incomplete;
    };
    if crc32c::crc32c(body) != crc {
        return Parsed::Corrupt("a record whose CRC does not match");
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
    let timestamp_ms = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
    let id_field = u16::from_le_bytes([body[16], body[17]]);
    let id_len = usize::from(id_field & !BINARY_FLAG);
    let Some(id) = body.get(BODY_FIXED_BYTES..BODY_FIXED_BYTES + id_len) else {
        return Parsed::Corrupt("a record id longer than its record");
    };
    let Ok(id) = std::str::from_utf8(id) else {
        return Parsed::Corrupt("a record id that is not UTF-8");
    };
    let record = Record {
        offset,
        timestamp_ms,
        id: (!id.is_empty()).then(|| id.into()),
        data: body[BODY_FIXED_BYTES + id_len..].into(),
        binary: id_field & BINARY_FLAG != 0,
    };
    Parsed::Record(record, HEADER_BYTES + body_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            offset: 42,
            timestamp_ms: 1_700_000_000_000,
            id: Some("client-7".into()),
            data: b"hello".to_vec().into(),
            binary: false,
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_only_when_whole() {
        let mut bytes = Vec::new();
        sample().write_to(&mut bytes);
        assert_eq!(bytes.len(), sample().framed_len());
        assert_eq!(
            parse(&bytes, 1 << 20),
            Parsed::Record(sample(), bytes.len())
        );
        for cut in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut], 1 << 20),
                Parsed::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let mut bytes = Vec::new();
        sample().write_to(&mut bytes);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            match parse(&damaged, 1 << 20) {
                Parsed::Record(..) => panic!("a flip at {at} went unnoticed"),
                // A flipped length bit may make the record look longer than the bytes held.
                Parsed::Incomplete => assert!(at < 4, "a flip at {at} read as torn"),
                Parsed::Corrupt(_) => {}
            }
        }
    }
}
