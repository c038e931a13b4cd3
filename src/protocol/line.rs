//! `line`: echoes each newline-terminated line, like the handler in CPython's socketserver tests.

use super::{Context, Protocol};

/// Echoes each complete `\n`-terminated line (the newline included).
///
/// A line longer than the limit (newline included) gets the answer `error: line too long\n`
/// and the connection is closed once that is sent; the over-long line is never buffered beyond
/// the limit. A partial line at end of stream is dropped, since it is not a line.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    max_line_bytes: usize,
    /// How far the current partial line has already been searched for a newline, so input
    /// arriving a byte at a time is scanned once, not once per arrival.
    scanned: usize,
}

/// The answer to an over-long line.
pub const LINE_TOO_LONG: &[u8] = b"error: line too long\n";

impl Line {
    /// A line echo accepting lines of up to `max_line_bytes` bytes, newline included.
    pub fn new(max_line_bytes: usize) -> Self {
        Line {
            max_line_bytes: max_line_bytes.max(2),
            scanned: 0,
        }
    }
}

impl Default for Line {
    /// Lines of up to 64 KiB ([`Config::max_line_bytes`](crate::Config::max_line_bytes)'s default).
    fn default() -> Self {
        Line::new(crate::Config::default().max_line_bytes)
    }
}

impl Protocol for Line {
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            let window = &rest[..rest.len().min(self.max_line_bytes)];
            match window[self.scanned.min(window.len())..]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(at) => {
                    let end = self.scanned + at + 1;
                    ctx.write(&rest[..end]);
                    consumed += end;
                    self.scanned = 0;
                }
                None if window.len() >= self.max_line_bytes => {
                    ctx.write(LINE_TOO_LONG);
                    ctx.fail("line too long");
                    self.scanned = 0;
                    return input.len();
                }
                None => {
                    self.scanned = window.len();
                    return consumed;
                }
            }
        }
    }
}
