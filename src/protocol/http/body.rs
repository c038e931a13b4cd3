//! Request body framing: a `Content-Length` count, or the chunked transfer coding (sizes in
//! hex, chunk extensions ignored, trailers kept), decoded incrementally from whatever input has
//! arrived. Every limit is checked before the bytes it would cost are kept.

use super::message::Request;

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

/// Where the body being received has got, and the limits it is held to. The body and its
/// trailers go into the [`Request`] the head was parsed into.
pub(super) struct BodyReader {
    pub(super) framing: Framing,
    trailer_bytes: usize,
    max_body: usize,
    max_trailer_bytes: usize,
}

impl BodyReader {
    /// A reader of a body framed by `framing`, into `request`.
    pub(super) fn new(
        framing: Framing,
        max_body: usize,
        max_trailer_bytes: usize,
        request: &mut Request,
    ) -> BodyReader {
        if let Framing::Length(length) = framing {
            // Room for what was announced (already checked against the limit), up front.
            request.body_mut().reserve(length);
        }
        BodyReader {
            framing,
            trailer_bytes: 0,
            max_body,
            max_trailer_bytes,
        }
    }

    /// Takes what it can of `input` into `request`; returns the bytes used and whether the body
    /// is complete.
    pub(super) fn read(
        &mut self,
        input: &[u8],
        request: &mut Request,
    ) -> Result<(usize, bool), Rejection> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match &mut self.framing {
                Framing::Length(remaining) => {
                    let take = (*remaining).min(rest.len());
                    request.body_mut().extend_from_slice(&rest[..take]);
                    *remaining -= take;
                    return Ok((used + take, *remaining == 0));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(line) = line(rest, MAX_CHUNK_LINE, "chunk size line too long")? else {
                        return Ok((used, false));
                    };
                    let size = chunk_size(&rest[..line.content])?;
                    if size > self.max_body.saturating_sub(request.body().len()) {
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
                    request.body_mut().extend_from_slice(&rest[..take]);
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
                    // `line` keeps every accepted line within `room`, so the sum never passes
                    // the limit; saturating all the same, since an unsigned wrap here would
                    // lift the limit altogether.
                    let room = self.max_trailer_bytes.saturating_sub(self.trailer_bytes);
                    let Some(line) = line(rest, room, "trailers too large")? else {
                        return Ok((used, false));
                    };
                    used += line.total;
                    self.trailer_bytes += line.total;
                    if line.content == 0 {
                        return Ok((used, true));
                    }
                    let (name, value) = parse_field(&rest[..line.content])?;
                    request.push_trailer(name, value);
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

/// The first CRLF-terminated line of `input`, `None` if it is not complete yet. A line may
/// take at most `limit` bytes, its CRLF included; one that is longer (or the part seen so far,
/// once it fills `limit` without a newline) is rejected with 431 or 400 and `why`.
fn line(input: &[u8], limit: usize, why: &'static str) -> Result<Option<Line>, Rejection> {
    let status = if why.starts_with("trailers") {
        431
    } else {
        400
    };
    // A newline at index `limit - 1` ends a line of exactly `limit` bytes: the last allowed.
    let window = &input[..input.len().min(limit)];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(newline) => {
            if newline == 0 || input[newline - 1] != b'\r' {
                return Err((400, "line not terminated by CRLF"));
            }
            Ok(Some(Line {
                content: newline - 1,
                total: newline + 1,
            }))
        }
        None if window.len() >= limit => Err((status, why)),
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

/// `name: value` of a trailer field; the name is a token.
fn parse_field(line: &[u8]) -> Result<(&str, &[u8]), Rejection> {
    let colon = line
        .iter()
        .position(|&byte| byte == b':')
        .ok_or((400, "malformed trailer field"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&byte| is_token(byte)) {
        return Err((400, "malformed trailer field"));
    }
    // Token characters are ASCII: the check cannot fail.
    let name = std::str::from_utf8(name).map_err(|_| (400, "malformed trailer field"))?;
    let value = line[colon + 1..].trim_ascii();
    Ok((name, value))
}

/// A `tchar` of RFC 9110's `token`.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(String, Vec<u8>)>;

    /// A body reader with the request it fills.
    struct Reader {
        reader: BodyReader,
        request: Request,
    }

    impl Reader {
        fn new(framing: Framing, max_body: usize, max_trailer_bytes: usize) -> Reader {
            let mut request = Request::default();
            let reader = BodyReader::new(framing, max_body, max_trailer_bytes, &mut request);
            Reader { reader, request }
        }

        fn read(&mut self, input: &[u8]) -> Result<(usize, bool), Rejection> {
            self.reader.read(input, &mut self.request)
        }

        fn body(&self) -> &[u8] {
            self.request.body()
        }

        fn trailers(&self) -> Fields {
            self.request
                .trailers()
                .map(|(name, value)| (name.to_string(), value.to_vec()))
                .collect()
        }
    }

    fn decode_whole(input: &[u8]) -> Result<(Vec<u8>, Fields), Rejection> {
        let mut reader = Reader::new(Framing::Chunked(Chunk::Size), 1 << 20, 1024);
        let (used, done) = reader.read(input)?;
        assert!(done, "incomplete after {used} of {}", input.len());
        assert_eq!(used, input.len());
        Ok((reader.body().to_vec(), reader.trailers()))
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
            let mut reader = Reader::new(Framing::Chunked(Chunk::Size), 1 << 20, 1024);
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
            assert_eq!(reader.body(), b"abc0123456789");
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
            let mut reader = Reader::new(Framing::Chunked(Chunk::Size), 1 << 20, 1024);
            assert_eq!(reader.read(bad).map_err(|e| e.0), Err(400), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_checked_before_bytes_are_kept() {
        let mut reader = Reader::new(Framing::Chunked(Chunk::Size), 10, 1024);
        assert_eq!(reader.read(b"b\r\n").map_err(|e| e.0), Err(413));
        let mut reader = Reader::new(Framing::Chunked(Chunk::Trailers), 10, 16);
        let long = b"X-Long-Trailer: 0123456789\r\n";
        assert_eq!(reader.read(long).map_err(|e| e.0), Err(431));
        let mut reader = Reader::new(Framing::Chunked(Chunk::Size), 10, 16);
        assert_eq!(reader.read(&[b'1'; 2000]).map_err(|e| e.0), Err(400));
    }

    /// Trailers `X: aaa…` CRLF, then the empty line, taking exactly `total` bytes in all.
    fn trailers_of(total: usize) -> Vec<u8> {
        let mut trailers = b"X:".to_vec();
        trailers.resize(total - 4, b'a');
        trailers.extend_from_slice(b"\r\n\r\n");
        trailers
    }

    /// Feeds `input` to a reader split at every byte (as the driver would, keeping what was not
    /// used); the answer must not depend on the split.
    fn read_split(mut make: impl FnMut() -> Reader, input: &[u8]) -> Result<bool, u16> {
        let mut outcome = None;
        for split in 0..=input.len() {
            let mut reader = make();
            let result = reader.read(&input[..split]).and_then(|(first, done)| {
                if done {
                    return Ok(true);
                }
                reader.read(&input[first..]).map(|(_, done)| done)
            });
            let result = result.map_err(|rejection| rejection.0);
            assert!(
                outcome.is_none_or(|seen| seen == result),
                "split at {split} gave {result:?}"
            );
            outcome = Some(result);
        }
        outcome.expect("at least one split")
    }

    #[test]
    fn trailers_are_held_to_their_limit_at_the_boundary() {
        let limit = 64;
        let trailers = |max| move || Reader::new(Framing::Chunked(Chunk::Trailers), 10, max);
        assert_eq!(
            read_split(trailers(limit), &trailers_of(limit - 1)),
            Ok(true)
        );
        assert_eq!(read_split(trailers(limit), &trailers_of(limit)), Ok(true));
        assert_eq!(
            read_split(trailers(limit), &trailers_of(limit + 1)),
            Err(431)
        );
    }

    /// The reproduction of a limit that could be passed: one trailer line whose newline sat
    /// exactly at the limit was accepted, the room left wrapped below zero, and every later
    /// trailer line was kept without bound. Such a line leaves no room for the empty line that
    /// ends the trailers, so it is refused at once, as is anything after it.
    #[test]
    fn a_trailer_line_of_exactly_the_limit_leaves_no_room() {
        let limit = 8192;
        let mut line = b"X:".to_vec();
        line.resize(limit - 2, b'a');
        line.extend_from_slice(b"\r\n");
        let mut reader = Reader::new(Framing::Chunked(Chunk::Trailers), 10, limit);
        assert_eq!(reader.read(&line).map_err(|e| e.0), Err(431));
        let mut flood = line.clone();
        for _ in 0..100 {
            flood.extend_from_slice(&line);
        }
        let mut reader = Reader::new(Framing::Chunked(Chunk::Trailers), 10, limit);
        assert_eq!(reader.read(&flood).map_err(|e| e.0), Err(431));
        assert_eq!(reader.trailers().len(), 1, "nothing past the limit is kept");
    }

    #[test]
    fn chunk_size_lines_are_held_to_their_limit_at_the_boundary() {
        let size_line = |total: usize| {
            let mut line = b"1;".to_vec();
            line.resize(total - 2, b'x');
            line.extend_from_slice(b"\r\n");
            line.extend_from_slice(b"a\r\n0\r\n\r\n");
            line
        };
        let reader = || Reader::new(Framing::Chunked(Chunk::Size), 10, 1024);
        assert_eq!(read_split(reader, &size_line(MAX_CHUNK_LINE - 1)), Ok(true));
        assert_eq!(read_split(reader, &size_line(MAX_CHUNK_LINE)), Ok(true));
        assert_eq!(read_split(reader, &size_line(MAX_CHUNK_LINE + 1)), Err(400));
    }

    #[test]
    fn chunked_bodies_are_held_to_their_limit_at_the_boundary() {
        let limit = 20;
        let body = |length: usize| {
            // Two chunks, so the limit is checked against the sum, not one chunk.
            let first = length / 2;
            let mut coded = format!("{first:x}\r\n").into_bytes();
            coded.resize(coded.len() + first, b'a');
            coded.extend_from_slice(format!("\r\n{:x}\r\n", length - first).as_bytes());
            coded.resize(coded.len() + length - first, b'b');
            coded.extend_from_slice(b"\r\n0\r\n\r\n");
            coded
        };
        let reader = || Reader::new(Framing::Chunked(Chunk::Size), limit, 1024);
        assert_eq!(read_split(reader, &body(limit - 1)), Ok(true));
        assert_eq!(read_split(reader, &body(limit)), Ok(true));
        assert_eq!(read_split(reader, &body(limit + 1)), Err(413));
    }
}
