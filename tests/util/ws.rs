//! A raw WebSocket client for tests that must send what a well-behaved client will not:
//! frames built byte by byte, read back by a decoder of its own (not the crate's).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// Opcodes, as sent.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The masking key every test frame uses.
pub const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// A valid `Sec-WebSocket-Key`.
pub const NONCE: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The bytes of an upgrade request for `path`, with `extra` header lines (each ending CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {NONCE}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A frame: first byte (FIN, RSV, opcode), then the payload, masked with [`KEY`] if `masked`.
pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        length @ 0..=125 => out.push(mask_bit | length as u8),
        length @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&KEY);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A final, masked client frame with `opcode`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | opcode, payload, true)
}

/// A close frame's payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// One frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The code of a close frame (1005 for an empty one).
    pub fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, CLOSE, "not a close frame: {self:?}");
        match self.payload.as_slice() {
            [high, low, ..] => u16::from_be_bytes([*high, *low]),
            _ => 1005,
        }
    }
}

/// A raw client on an upgraded connection.
pub struct RawClient {
    pub stream: TcpStream,
    /// Bytes read and not yet decoded.
    buffer: Vec<u8>,
    /// The server's `101` answer head.
    pub response: String,
}

impl RawClient {
    /// Connects, upgrades `path` with `extra` header lines, and requires `101`.
    pub fn connect(addr: SocketAddr, path: &str, extra: &str) -> RawClient {
        let mut stream = super::connect(addr);
        stream
            .write_all(upgrade_request(path, extra).as_bytes())
            .expect("write the upgrade");
        RawClient::after_upgrade(stream)
    }

    /// Like [`RawClient::connect`], with a receive buffer of a few kilobytes, so that a server
    /// writing to a client that does not read backs up at once instead of after the megabytes
    /// loopback buffers take.
    pub fn connect_small_window(addr: SocketAddr, path: &str) -> RawClient {
        let mut stream = super::connect_with_small_window(addr);
        stream
            .write_all(upgrade_request(path, "").as_bytes())
            .expect("write the upgrade");
        RawClient::after_upgrade(stream)
    }

    /// Reads the `101` answer of an upgrade already sent on `stream`.
    pub fn after_upgrade(mut stream: TcpStream) -> RawClient {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let count = stream.read(&mut chunk).expect("read the 101");
            assert!(count > 0, "closed during the handshake");
            buffer.extend_from_slice(&chunk[..count]);
        };
        let response = String::from_utf8_lossy(&buffer[..end]).into_owned();
        assert!(
            response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{response}"
        );
        buffer.drain(..end);
        RawClient {
            stream,
            buffer,
            response,
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads the next frame; `None` at end of stream (or a reset).
    pub fn read_frame(&mut self) -> Option<ServerFrame> {
        let mut chunk = [0u8; 65536];
        loop {
            if let Some((frame, used)) = decode(&self.buffer) {
                self.buffer.drain(..used);
                return Some(frame);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(error) => panic!("read: {error}"),
            }
        }
    }

    /// Reads frames until a close frame, which it returns (failing on end of stream).
    pub fn read_until_close(&mut self) -> ServerFrame {
        loop {
            let frame = self.read_frame().expect("a close frame before the end");
            if frame.opcode == CLOSE {
                return frame;
            }
        }
    }

    /// True once the server has ended the TCP connection (reads to end of stream).
    pub fn is_ended(&mut self) -> bool {
        super::is_closed_by_server(&mut self.stream)
    }
}

/// Decodes one whole server frame at the start of `bytes`.
fn decode(bytes: &[u8]) -> Option<(ServerFrame, usize)> {
    let (first, second) = (*bytes.first()?, *bytes.get(1)?);
    assert_eq!(second & 0x80, 0, "the server masked a frame");
    let (length, at) = match second & 0x7F {
        126 => (
            u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
            4,
        ),
        127 => {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(bytes.get(2..10)?);
            (u64::from_be_bytes(eight) as usize, 10)
        }
        length => (length as usize, 2),
    };
    let payload = bytes.get(at..at + length)?.to_vec();
    let frame = ServerFrame {
        fin: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        opcode: first & 0x0F,
        payload,
    };
    Some((frame, at + length))
}

/// Inflates a permessage-deflate payload with a window of `bits`.
pub fn inflate(payload: &[u8], bits: u8) -> Vec<u8> {
    let mut decompress = flate2::Decompress::new_with_window_bits(false, bits);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
    let mut out = Vec::with_capacity(1 << 20);
    decompress
        .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("inflate");
    out
}
