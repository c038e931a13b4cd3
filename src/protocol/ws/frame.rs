//! The frame layer of RFC 6455 (section 5.2), for both ends of a connection: parsing a frame
//! header with every rule a peer can break, masking at memory speed, and encoding frames.
//!
//! A header is parsed from a `&[u8]` without consuming anything: an incomplete header is
//! `Ok(None)`, a header that breaks a rule is the close code to answer with. The payload is the
//! caller's business (it may arrive in pieces); [`apply_mask`] takes the position in the
//! payload at which a piece starts, so a payload unmasked piece by piece comes out the same as
//! one unmasked whole.

/// Which end of the connection this is, which decides who masks: a client masks every frame
/// it sends, a server none (RFC 6455, section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The accepting end: frames it receives must be masked, frames it sends are not.
    Server,
    /// The connecting end: frames it sends are masked, frames it receives must not be.
    Client,
}

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next fragment of a data message.
    Continuation,
    /// The first (or only) frame of a UTF-8 text message.
    Text,
    /// The first (or only) frame of a binary message.
    Binary,
    /// The closing handshake.
    Close,
    /// A heartbeat to be answered with a pong carrying the same payload.
    Ping,
    /// The answer to a ping (or an unsolicited heartbeat).
    Pong,
}

impl Opcode {
    /// The opcode of the low four bits of a frame's first byte; `None` for the reserved ones.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// The four bits this opcode is sent as.
    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented, allowed between fragments.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// The largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The longest frame header: two bytes, a 64-bit length and a masking key.
pub const MAX_HEADER_BYTES: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// This is the last frame of its message.
    pub fin: bool,
    /// RSV1: with permessage-deflate, the message is compressed (first frame only).
    pub rsv1: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The masking key, for a masked frame.
    pub mask: Option<[u8; 4]>,
    /// Payload bytes that follow the header.
    pub payload_len: u64,
    /// Bytes of the header itself.
    pub header_len: usize,
}

/// A rule the peer broke: the close code to answer with, and why (sent as the close reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The close code (1002, 1007, 1009, ...).
    pub code: u16,
    /// The reason, short enough for a close frame.
    pub reason: &'static str,
}

impl Violation {
    /// A protocol error (1002).
    pub const fn protocol(reason: &'static str) -> Violation {
        Violation {
            code: super::close::PROTOCOL_ERROR,
            reason,
        }
    }
}

/// Parses the frame header at the start of `input`, received by `role`. `rsv1_allowed` says
/// whether an extension gave RSV1 a meaning (permessage-deflate). Returns `Ok(None)` while the
/// header is incomplete, and consumes nothing; the payload length is not checked against any
/// size limit here (the caller knows its limits).
pub fn parse_header(
    input: &[u8],
    role: Role,
    rsv1_allowed: bool,
) -> Result<Option<Header>, Violation> {
    let (Some(&first), Some(&second)) = (input.first(), input.get(1)) else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    let rsv1 = first & 0x40 != 0;
    if first & 0x30 != 0 {
        return Err(Violation::protocol("RSV2 or RSV3 set"));
    }
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(Violation::protocol("reserved opcode"))?;
    let masked = second & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(Violation::protocol("unmasked client frame")),
        (Role::Client, true) => return Err(Violation::protocol("masked server frame")),
        _ => {}
    }
    if rsv1 && (!rsv1_allowed || opcode.is_control()) {
        return Err(Violation::protocol("RSV1 set without an extension for it"));
    }
    let short = second & 0x7F;
    let (payload_len, length_bytes) = match short {
        126 => {
            let Some(bytes) = input.get(2..4) else {
                return Ok(None);
            };
            let length = u64::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            if length < 126 {
                return Err(Violation::protocol("non-minimal length"));
            }
            (length, 2)
        }
        127 => {
            let Some(bytes) = input.get(2..10) else {
                return Ok(None);
            };
            let mut eight = [0u8; 8];
            eight.copy_from_slice(bytes);
            let length = u64::from_be_bytes(eight);
            if length >> 63 != 0 {
                return Err(Violation::protocol("length with its top bit set"));
            }
            if length <= 0xFFFF {
                return Err(Violation::protocol("non-minimal length"));
            }
            (length, 8)
        }
        length => (u64::from(length), 0),
    };
    if opcode.is_control() {
        if !fin {
            return Err(Violation::protocol("fragmented control frame"));
        }
        if payload_len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(Violation::protocol("control frame over 125 bytes"));
        }
    }
    let mut header_len = 2 + length_bytes;
    let mask = if masked {
        let Some(key) = input.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        rsv1,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// XORs `bytes` with the masking `key`, as the piece of a payload that starts `offset` bytes
/// into it (so a payload masked in pieces equals one masked whole). Eight bytes at a time.
pub fn apply_mask(bytes: &mut [u8], key: [u8; 4], offset: usize) {
    let rotated = u32::from_be_bytes(key).rotate_left(8 * (offset % 4) as u32);
    let key = rotated.to_be_bytes();
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(eight) ^ word).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8 into the piece, so of 4: the key starts over.
    for (index, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[index % 4];
    }
}

/// Appends `masked` to `out`, unmasked with `key` as the piece starting `offset` bytes into
/// its payload.
pub fn unmask_into(out: &mut Vec<u8>, masked: &[u8], key: Option<[u8; 4]>, offset: usize) {
    let start = out.len();
    out.extend_from_slice(masked);
    if let Some(key) = key {
        apply_mask(&mut out[start..], key, offset);
    }
}

/// Appends a frame header to `out`.
pub fn write_header(
    out: &mut Vec<u8>,
    fin: bool,
    rsv1: bool,
    opcode: Opcode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) {
    let mut first = opcode.bits();
    if fin {
        first |= 0x80;
    }
    if rsv1 {
        first |= 0x40;
    }
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(first);
    if payload_len < 126 {
        out.push(mask_bit | payload_len as u8);
    } else if payload_len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Appends one whole frame, header and payload (masked with `mask` if given), to `out`.
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    rsv1: bool,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    write_header(out, fin, rsv1, opcode, payload.len(), mask);
    unmask_into(out, payload, mask, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn parse(bytes: &[u8], role: Role) -> Result<Option<Header>, u16> {
        parse_header(bytes, role, true).map_err(|violation| violation.code)
    }

    #[test]
    fn headers_round_trip_at_every_length_encoding_and_wait_for_every_byte() {
        for length in [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 5_000_000] {
            for (role, mask) in [(Role::Server, Some(KEY)), (Role::Client, None)] {
                let mut out = Vec::new();
                write_header(&mut out, true, false, Opcode::Binary, length, mask);
                let header = parse(&out, role).expect("valid").expect("complete");
                assert_eq!(header.payload_len, length as u64);
                assert_eq!(header.header_len, out.len());
                assert_eq!(header.mask, mask);
                for cut in 0..out.len() {
                    assert_eq!(parse(&out[..cut], role), Ok(None), "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn every_broken_rule_has_its_close_code() {
        let masked = |first: u8, second: u8| vec![first, second | 0x80, 1, 2, 3, 4];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (masked(0x81 | 0x20, 0), "RSV2"),
            (masked(0x81 | 0x10, 0), "RSV3"),
            (masked(0x83, 0), "reserved data opcode"),
            (masked(0x8B, 0), "reserved control opcode"),
            (vec![0x81, 0x00], "unmasked client frame"),
            (masked(0x09, 0), "fragmented ping"),
            (masked(0x89, 126), "ping over 125"),
            (masked(0xC9, 0), "RSV1 on a control frame"),
            (
                vec![0x82, 0xFE, 0x00, 0x7D, 1, 2, 3, 4],
                "16-bit length under 126",
            ),
            (
                vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4],
                "64-bit length under 65536",
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                "64-bit length with the top bit",
            ),
        ];
        for (bytes, what) in cases {
            assert_eq!(parse(&bytes, Role::Server), Err(1002), "{what}");
        }
        assert_eq!(
            parse_header(&masked(0xC1, 0), Role::Server, false).map_err(|v| v.code),
            Err(1002),
            "RSV1 with no extension"
        );
        assert_eq!(parse(&[0x81, 0x80, 1, 2, 3, 4], Role::Client), Err(1002));
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = payload.clone();
        apply_mask(&mut whole, KEY, 0);
        for (index, byte) in whole.iter().enumerate() {
            assert_eq!(*byte, payload[index] ^ KEY[index % 4]);
        }
        for split in 0..payload.len() {
            let mut out = Vec::new();
            unmask_into(&mut out, &whole[..split], Some(KEY), 0);
            unmask_into(&mut out, &whole[split..], Some(KEY), split);
            assert_eq!(out, payload, "split at {split}");
        }
    }

    #[test]
    fn a_client_frame_reads_back_unmasked() {
        let mut frame = Vec::new();
        write_frame(&mut frame, true, false, Opcode::Text, b"hello", Some(KEY));
        let header = parse(&frame, Role::Server).expect("valid").expect("whole");
        let mut payload = Vec::new();
        unmask_into(&mut payload, &frame[header.header_len..], header.mask, 0);
        assert_eq!(payload, b"hello");
        assert!(header.fin && header.opcode == Opcode::Text);
    }
}
