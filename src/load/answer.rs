//! How a load client knows where an answer ends: after as many bytes as the request for the
//! echoing protocols, after the head and its `Content-Length` body for HTTP. Answers are
//! counted, not kept: only an HTTP head is buffered (up to [`MAX_HEAD_BYTES`]) to be parsed.

/// The longest HTTP answer head accepted; a longer one is a broken server.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Header slots for parsing one HTTP answer head.
const HEADER_SLOTS: usize = 64;

/// Where the answers on one connection are cut.
#[derive(Debug)]
pub(crate) enum Answers {
    /// Every answer is exactly this many bytes (the request, echoed).
    Fixed {
        length: usize,
        /// Bytes of the current answer received so far.
        received: usize,
    },
    /// WebSocket frames from a server: each final data frame ends an answer; control frames
    /// (a ping) are passed over.
    WebSocket {
        /// The header of the frame now arriving, as far as it has.
        header: [u8; 10],
        header_len: usize,
        /// Payload bytes of the current frame still to come, once its header is in; and
        /// whether it ends an answer.
        payload_left: Option<(u64, bool)>,
    },
    /// HTTP/1.1 responses framed by `Content-Length`.
    Http {
        /// The head of the current answer, as far as it has arrived.
        head: Vec<u8>,
        /// Body bytes of the current answer still to come (once its head is in).
        body_left: Option<usize>,
    },
}

impl Answers {
    /// Answers of exactly `length` bytes.
    pub(crate) fn fixed(length: usize) -> Answers {
        Answers::Fixed {
            length,
            received: 0,
        }
    }

    /// WebSocket answers.
    pub(crate) fn websocket() -> Answers {
        Answers::WebSocket {
            header: [0; 10],
            header_len: 0,
            payload_left: None,
        }
    }

    /// HTTP answers.
    pub(crate) fn http() -> Answers {
        Answers::Http {
            head: Vec::new(),
            body_left: None,
        }
    }

    /// Takes `bytes` received while `outstanding` requests await answers, and returns how many
    /// answers they complete. More answers than requests, an answer that is not a 2xx, or one
    /// that cannot be framed is an error with a reason.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], outstanding: usize) -> Result<usize, String> {
        let mut completed = 0;
        match self {
            Answers::Fixed { length, received } => {
                let total = *received + bytes.len();
                completed = total / *length;
                *received = total % *length;
                if completed > outstanding || (completed == outstanding && *received > 0) {
                    return Err("an answer longer than its request".into());
                }
            }
            Answers::WebSocket {
                header,
                header_len,
                payload_left,
            } => {
                use crate::protocol::ws::frame::{self, Opcode, Role};
                while !bytes.is_empty() {
                    if let Some((left, ends_answer)) = payload_left {
                        let taken = (*left).min(bytes.len() as u64);
                        *left -= taken;
                        bytes = &bytes[taken as usize..];
                        if *left == 0 {
                            let ends_answer = *ends_answer;
                            *payload_left = None;
                            if ends_answer {
                                if completed >= outstanding {
                                    return Err("a WebSocket message to no request".into());
                                }
                                completed += 1;
                            }
                        }
                        continue;
                    }
                    // A server frame's header is at most ten bytes (it is not masked): take one
                    // byte at a time into it until the codec, in the client's role, parses it.
                    header[*header_len] = bytes[0];
                    *header_len += 1;
                    bytes = &bytes[1..];
                    let parsed = frame::parse_header(&header[..*header_len], Role::Client, false)
                        .map_err(|violation| {
                        format!("a broken server frame: {}", violation.reason)
                    })?;
                    let Some(parsed) = parsed else {
                        continue;
                    };
                    *header_len = 0;
                    if parsed.opcode == Opcode::Close {
                        return Err("closed by the server (a WebSocket close frame)".into());
                    }
                    // A final data frame ends an answer; control frames do not.
                    let ends_answer = parsed.fin && !parsed.opcode.is_control();
                    *payload_left = Some((parsed.payload_len, ends_answer));
                    if parsed.payload_len == 0 {
                        // Whole already: settle it before the next header.
                        *payload_left = None;
                        if ends_answer {
                            if completed >= outstanding {
                                return Err("a WebSocket message to no request".into());
                            }
                            completed += 1;
                        }
                    }
                }
            }
            Answers::Http { head, body_left } => {
                while !bytes.is_empty() {
                    if completed >= outstanding {
                        return Err("an answer to no request".into());
                    }
                    if let Some(left) = body_left {
                        let taken = (*left).min(bytes.len());
                        *left -= taken;
                        bytes = &bytes[taken..];
                        if *left == 0 {
                            *body_left = None;
                            completed += 1;
                        }
                        continue;
                    }
                    // The head's end may straddle reads: look again a little before the new bytes.
                    let searched_from = head.len().saturating_sub(3);
                    let room = MAX_HEAD_BYTES + 1 - head.len();
                    let taken = bytes.len().min(room);
                    head.extend_from_slice(&bytes[..taken]);
                    let Some(end) =
                        find_head_end(&head[searched_from..]).map(|e| e + searched_from)
                    else {
                        if head.len() > MAX_HEAD_BYTES {
                            return Err("an answer head over 64 KiB".into());
                        }
                        bytes = &bytes[taken..];
                        continue;
                    };
                    let body = parse_head(&head[..end])?;
                    // Bytes past the head's end belong to the body or the next answer.
                    let past_end = head.len() - end;
                    bytes = &bytes[taken - past_end..];
                    head.clear();
                    match body {
                        // An interim answer (100 Continue): the real one follows.
                        None => {}
                        Some(0) => completed += 1,
                        Some(length) => *body_left = Some(length),
                    }
                }
            }
        }
        Ok(completed)
    }
}

/// Where a head ends (after its empty line), if it does within `bytes`.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// The body length of a whole answer head, `None` for an interim (1xx) answer.
fn parse_head(head: &[u8]) -> Result<Option<usize>, String> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut response = httparse::Response::new(&mut slots);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => return Err("a malformed answer head".into()),
    }
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) {
        return Ok(None);
    }
    if !(200..300).contains(&status) {
        return Err(format!("an answer with status {status}"));
    }
    let mut length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked answer (only Content-Length is read)".into());
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(header.value)
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .ok_or("a malformed Content-Length")?;
            length = Some(parsed);
        }
    }
    length
        .map(Some)
        .ok_or_else(|| "an answer without Content-Length".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 13\r\n\r\nHello, World!";

    /// Feeds `stream` split into pieces of `piece` bytes; returns answers counted.
    fn count(answers: &mut Answers, stream: &[u8], piece: usize, outstanding: usize) -> usize {
        let mut total = 0;
        for chunk in stream.chunks(piece) {
            total += answers
                .feed(chunk, outstanding - total)
                .expect("well-formed answers");
        }
        total
    }

    #[test]
    fn pipelined_http_answers_are_counted_at_every_split() {
        let mut stream = OK.repeat(3);
        stream.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.extend_from_slice(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        for piece in 1..=stream.len() {
            assert_eq!(count(&mut Answers::http(), &stream, piece, 4), 4, "{piece}");
        }
    }

    #[test]
    fn websocket_answers_are_counted_at_every_split_and_pings_pass_over() {
        use crate::protocol::ws::frame::{write_frame, Opcode};
        let mut stream = Vec::new();
        write_frame(&mut stream, true, false, Opcode::Binary, &[1; 64], None);
        write_frame(&mut stream, true, false, Opcode::Ping, b"", None);
        write_frame(&mut stream, false, false, Opcode::Binary, &[2; 200], None);
        write_frame(
            &mut stream,
            true,
            false,
            Opcode::Continuation,
            &[3; 70_000],
            None,
        );
        write_frame(&mut stream, true, false, Opcode::Text, b"", None);
        for piece in [1, 2, 3, 7, 64, 1000, stream.len()] {
            assert_eq!(
                count(&mut Answers::websocket(), &stream, piece, 3),
                3,
                "{piece}"
            );
        }
        let mut close = Vec::new();
        write_frame(&mut close, true, false, Opcode::Close, &[3, 232], None);
        assert!(
            Answers::websocket().feed(&close, 1).is_err(),
            "a close ends it"
        );
        let masked = [0x82, 0x80, 1, 2, 3, 4];
        assert!(
            Answers::websocket().feed(&masked, 1).is_err(),
            "a masked server frame"
        );
    }

    #[test]
    fn fixed_answers_are_counted_at_every_split() {
        let stream = vec![7u8; 5 * 3];
        for piece in 1..=stream.len() {
            assert_eq!(count(&mut Answers::fixed(5), &stream, piece, 3), 3);
        }
        let mut answers = Answers::fixed(5);
        assert!(
            answers.feed(&[0; 6], 1).is_err(),
            "one byte more than asked"
        );
    }

    #[test]
    fn broken_answers_are_errors_with_a_reason() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                "status 404",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "chunked",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", "without Content-Length"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "Content-Length",
            ),
            (b"SMTP ready\r\n\r\n", "malformed"),
        ];
        for (answer, reason) in cases {
            let error = Answers::http().feed(answer, 1).expect_err("an error");
            assert!(error.contains(reason), "{error}");
        }
        let error = Answers::http()
            .feed(&OK.repeat(2), 1)
            .expect_err("one too many");
        assert!(error.contains("no request"), "{error}");
        let endless = vec![b'a'; MAX_HEAD_BYTES + 10];
        let mut answers = Answers::http();
        let error = answers.feed(&endless, 1).expect_err("too long");
        assert!(error.contains("64 KiB"), "{error}");
    }
}
