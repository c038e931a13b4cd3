//! `frame`: echoes each length-prefixed frame (a u32 big-endian length, then that many bytes).

use super::{Context, Protocol};

/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 4;

/// Echoes each complete frame, header included.
///
/// A header announcing more than the limit closes the connection once earlier answers are sent
/// (there is no frame in which to say so); nothing of the announced payload is buffered.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    max_frame_bytes: usize,
}

impl Frame {
    /// A frame echo accepting payloads of up to `max_frame_bytes` bytes.
    pub fn new(max_frame_bytes: usize) -> Self {
        Frame { max_frame_bytes }
    }
}

impl Default for Frame {
    /// Payloads of up to 1 MiB ([`Config::max_frame_bytes`](crate::Config::max_frame_bytes)'s
    /// default).
    fn default() -> Self {
        Frame::new(crate::Config::default().max_frame_bytes)
    }
}

impl Protocol for Frame {
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        let mut consumed = 0;
        while let Some(header) = input.get(consumed..consumed + HEADER_BYTES) {
            let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if length > self.max_frame_bytes {
                ctx.fail("frame over the size limit");
                return input.len();
            }
            let end = consumed + HEADER_BYTES + length;
            if input.len() < end {
                break;
            }
            ctx.write(&input[consumed..end]);
            consumed = end;
        }
        consumed
    }
}
