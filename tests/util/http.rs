//! Reading HTTP answers off a raw stream, for tests that speak HTTP by hand.

use std::io::Read;
use std::net::TcpStream;

/// One response read off a stream: status, headers (names lower-cased), body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Reads one response (head, then a Content-Length body unless `head_only`), keeping bytes of
/// the next response in `buffer`. Fails the test at end of stream or on the stream's timeout.
pub fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>, head_only: bool) -> Answer {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(answer) = parse_answer(buffer, head_only) {
            return answer;
        }
        let count = stream.read(&mut chunk).expect("read head");
        assert!(count > 0, "closed before a response: {buffer:?}");
        buffer.extend_from_slice(&chunk[..count]);
    }
}

/// The first whole response in `buffer`, removed from it; `None` while it is incomplete.
pub fn parse_answer(buffer: &mut Vec<u8>, head_only: bool) -> Option<Answer> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut slots);
    let Ok(httparse::Status::Complete(head_len)) = response.parse(buffer) else {
        return None;
    };
    let status = response.code.expect("status");
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|header| {
            let value = String::from_utf8_lossy(header.value).into_owned();
            (header.name.to_ascii_lowercase(), value)
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().expect("length"));
    let length = if head_only || status == 100 || status == 101 {
        0
    } else {
        length
    };
    if buffer.len() < head_len + length {
        return None;
    }
    let body = buffer[head_len..head_len + length].to_vec();
    buffer.drain(..head_len + length);
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// A GET request for `path` (HTTP/1.1, kept alive).
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}
