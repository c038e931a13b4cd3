//! Request body framing: a `Content-Length` count, or the chunked transfer coding (sizes in
//! hex, chunk extensions ignored, trailers kept), decoded incrementally from whatever input has
//! arrived. Every limit is checked before the bytes it would cost are kept.

/// Longest chunk-size line (size, extensions, CRLF) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// How the body of the request being read is framed, and how far it has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes are still to come.
    Length(usize),
    /// Chunked: where in the coding the decoder is.
    Chunked(Chunk),
}

/// A position in the chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
}

/// A body that breaks the framing or a limit: the status to answer and why.
pub(super) type Rejection = (u16, &'static str);

/// The body being received, with the limits it is held to.
pub(super) struct BodyReader {
    pub(super) framing: Framing,
    pub(super) body: Vec<u8>,
    pub(super) trailers: Vec<(String, Vec<u8>)>,
    trailer_bytes: usize,
    max_body: usize,
    max_trailer_bytes: usize,
}

impl BodyReader {
    pub(super) fn new(framing: Framing, max_body: usize, max_trailer_bytes: usize) -> BodyReader {
        let expected = match framing {
            // Allocate what was announced (already checked against the limit) up front.
            Framing::Length(length) => length,
            Framing::Chunked(_) => 0,
        };
        BodyReader {
            framing,
            body: Vec::with_capacity(expected),
            trailers: Vec::new(),
            trailer_bytes: 0,
            max_body,
            max_trailer_bytes,
        }
    }

    /// Takes what it can of `input`; returns the bytes used and whether the body is complete.
    pub(super) fn read(&mut self, input: &[u8]) -> Result<(usize, bool), Rejection> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match &mut self.framing {
                Framing::Length(remaining) => {
                    let take = (*remaining).min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    *remaining -= take;
                    return Ok((used + take, *remaining == 0));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(line) = line(rest, MAX_CHUNK_LINE, "chunk size line too long")? else {
                        return Ok((used, false));
                    };
                    let size = chunk_size(&rest[..line.content])?;
                    if size > self.max_body.saturating_sub(self.body.len()) {
                        return Err((413, "request body too large"));
                    }
                    used += line.total;
                    self.framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Framing::Chunked(Chunk::Data(remaining)) => {
                    let take = (*remaining).min(rest.len());
                    if take == 0 {
                        return Ok((used, false));
                    }
                    self.body.extend_from_slice(&rest[..take]);
                    *remaining -= take;
                    used += take;
                    if *remaining == 0 {
                        self.framing = Framing::Chunked(Chunk::DataEnd);
                    }
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if rest.len() < 2 {
                        return Ok((used, false));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err((400, "chunk data not followed by CRLF"));
                    }
                    used += 2;
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let room = self.max_trailer_bytes - self.trailer_bytes;
                    let Some(line) = line(rest, room, "trailers too large")? else {
                        return Ok((used, false));
                    };
                    used += line.total;
                    self.trailer_bytes += line.total;
                    if line.content == 0 {
                        return Ok((used, true));
                    }
                    let field = parse_field(&rest[..line.content])?;
                    self.trailers.push(field);
                }
            }
        }
    }
}

/// A CRLF-terminated line at the start of some input.
struct Line {
    /// Bytes before the CRLF.
    content: usize,
    /// Bytes including the CRLF.
    total: usize,
}

/// The first CRLF-terminated line of `input`, `None` if it is not complete yet; a line (or
/// the part seen so far) longer than `limit` is rejected with 431 or 400 and `why`.
fn line(input: &[u8], limit: usize, why: &'static str) -> Result<Option<Line>, Rejection> {
    let status = if why.starts_with("trailers") {
        431
    } else {
        400
    };
    let window = &input[..input.len().min(limit.saturating_add(1))];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(newline) if newline > limit => Err((status, why)),
        Some(newline) => {
            if newline == 0 || input[newline - 1] != b'\r' {
                return Err((400, "line not terminated by CRLF"));
            }
            Ok(Some(Line {
                content: newline - 1,
                total: newline + 1,
            }))
        }
        None if window.len() > limit => Err((status, why)),
        None => Ok(None),
    }
}

/// The size in a chunk-size line: hex digits, then optional whitespace and `;extensions`.
fn chunk_size(line: &[u8]) -> Result<usize, Rejection> {
    let digits = line
        .iter()
        .take_while(|byte| byte.is_ascii_hexdigit())
        .count();
    let after = &line[digits..];
    let after_ok = after
        .iter()
        .position(|&byte| byte == b';')
        .map_or(after, |semicolon| &after[..semicolon])
        .iter()
        .all(|&byte| byte == b' ' || byte == b'\t');
    if digits == 0 || !after_ok {
        return Err((400, "malformed chunk size"));
    }
    let mut size: usize = 0;
    for &byte in &line[..digits] {
        let digit = (byte as char).to_digit(16).unwrap_or(0) as usize;
        size = size
            .checked_mul(16)
            .and_then(|size| size.checked_add(digit))
            .ok_or((400, "chunk size overflows"))?;
    }
    Ok(size)
}

/// `name: value` of a trailer field.
fn parse_field(line: &[u8]) -> Result<(String, Vec<u8>), Rejection> {
    let colon = line
        .iter()
        .position(|&byte| byte == b':')
        .ok_or((400, "malformed trailer field"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&byte| is_token(byte)) {
        return Err((400, "malformed trailer field"));
    }
    let value = line[colon + 1..].trim_ascii();
    Ok((String::from_utf8_lossy(name).into_owned(), value.to_vec()))
}

/// A `tchar` of RFC 9110's `token`.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(String, Vec<u8>)>;

    fn decode_whole(input: &[u8]) -> Result<(Vec<u8>, Fields), Rejection> {
        let mut reader = BodyReader::new(Framing::Chunked(Chunk::Size), 1 << 20, 1024);
        let (used, done) = reader.read(input)?;
        assert!(done, "incomplete after {used} of {}", input.len());
        assert_eq!(used, input.len());
        Ok((reader.body, reader.trailers))
    }

    #[test]
    fn chunks_with_extensions_and_trailers() {
        let input = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nExpires: never\r\n\r\n";
        let (body, trailers) = decode_whole(input).expect("valid");
        assert_eq!(body, b"hello world");
        assert_eq!(trailers, vec![("Expires".to_string(), b"never".to_vec())]);
    }

    #[test]
    fn every_split_decodes_the_same() {
        let input = b"3\r\nabc\r\na\r\n0123456789\r\n0\r\nT: v\r\n\r\n";
        for split in 0..=input.len() {
            let mut reader = BodyReader::new(Framing::Chunked(Chunk::Size), 1 << 20, 1024);
            let (first, done) = reader.read(&input[..split]).expect("valid");
            assert_eq!(done, split == input.len(), "split at {split}");
            // The driver keeps what was not used and offers it again with what follows.
            let (second, done) = if done {
                (0, true)
            } else {
                reader.read(&input[first..]).expect("valid")
            };
            assert!(done, "split at {split}");
            assert_eq!(first + second, input.len());
            assert_eq!(reader.body, b"abc0123456789");
        }
    }

    #[test]
    fn malformed_codings_are_rejected() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5 junk\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\nhello",
        ] {
            let mut reader = BodyReader::new(Framing::Chunked(Chunk::Size), 1 << 20, 1024);
            assert_eq!(reader.read(bad).map_err(|e| e.0), Err(400), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_checked_before_bytes_are_kept() {
        let mut reader = BodyReader::new(Framing::Chunked(Chunk::Size), 10, 1024);
        assert_eq!(reader.read(b"b\r\n").map_err(|e| e.0), Err(413));
        let mut reader = BodyReader::new(Framing::Chunked(Chunk::Trailers), 10, 16);
        let long = b"X-Long-Trailer: 0123456789\r\n";
        assert_eq!(reader.read(long).map_err(|e| e.0), Err(431));
        let mut reader = BodyReader::new(Framing::Chunked(Chunk::Size), 10, 16);
        assert_eq!(reader.read(&[b'1'; 2000]).map_err(|e| e.0), Err(400));
    }
}
