//! Requests as handlers see them, responses as handlers build them, and how a response is
//! written on the wire (status line, `Date`, `Server`, framing headers, body).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// An HTTP request, head and body, as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The method, as sent (`GET`, `POST`, …).
    pub method: String,
    /// The path of the request target, without the query.
    pub path: String,
    /// The query (after `?`), if any.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in the order sent, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }
}

/// An HTTP response, built by a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields (`Content-Length`, `Connection`, `Transfer-Encoding`, `Date` and `Server`
    /// are written by the server and dropped from here).
    pub headers: Vec<(String, String)>,
    /// The body (not sent in answer to HEAD, nor with 1xx, 204 and 304).
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body.into().into_bytes())
    }

    /// An `application/json` response; `json` must already be JSON text.
    pub fn json(status: u16, json: impl Into<String>) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(json.into().into_bytes())
    }

    /// The server's counters in Prometheus text format (version 0.0.4), as `/metrics` serves
    /// them; see [`crate::metrics::prometheus`].
    pub fn metrics(stats: &crate::StatsSnapshot) -> Response {
        Response::new(200)
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(crate::metrics::prometheus(stats))
    }

    /// Adds a header field.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }
}

/// The reason phrase for the statuses this server sends itself, and the common ones.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Header names the server writes itself; a handler's copies are dropped.
const SERVER_HEADERS: [&str; 5] = [
    "content-length",
    "connection",
    "transfer-encoding",
    "date",
    "server",
];

/// Appends `response` as HTTP/1.1 to `out`. `head_only` leaves the body out (HEAD), keeping
/// its `Content-Length`; `close` adds `Connection: close`; `keep_alive_1_0` adds
/// `Connection: keep-alive`, which an HTTP/1.0 client needs to keep the connection.
pub fn write_response(
    out: &mut Vec<u8>,
    response: &Response,
    server: &str,
    head_only: bool,
    close: bool,
    keep_alive_1_0: bool,
) {
    let status = response.status;
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_number(out, status as usize);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    with_date(|date| out.extend_from_slice(date));
    out.extend_from_slice(b"\r\nServer: ");
    out.extend_from_slice(server.as_bytes());
    if !bodiless {
        out.extend_from_slice(b"\r\nContent-Length: ");
        push_number(out, response.body.len());
    }
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    } else if keep_alive_1_0 {
        out.extend_from_slice(b"\r\nConnection: keep-alive");
    }
    for (name, value) in &response.headers {
        if SERVER_HEADERS
            .iter()
            .any(|own| own.eq_ignore_ascii_case(name))
            || has_line_break(name)
            || has_line_break(value)
        {
            // Ours, or a value that would split the response (header injection): dropped.
            continue;
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(&response.body);
    }
}

fn has_line_break(text: &str) -> bool {
    text.bytes().any(|byte| byte == b'\r' || byte == b'\n')
}

fn push_number(out: &mut Vec<u8>, mut value: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

thread_local! {
    /// The current second and its IMF-fixdate text: formatted once a second per thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Calls `write` with the current `Date` value, formatting it only when the second changed.
pub fn with_date<R>(write: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        write(cached.1.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_has_status_date_server_and_length() {
        let mut out = Vec::new();
        let response = Response::text(200, "Hello, World!");
        write_response(&mut out, &response, "socketserver", false, false, false);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{text}");
        assert!(text.contains("\r\nServer: socketserver\r\nContent-Length: 13\r\n"));
        assert!(text.ends_with("\r\n\r\nHello, World!"), "{text}");
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &Response::text(200, "abc"),
            "s",
            true,
            true,
            false,
        );
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.contains("Content-Length: 3\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn handler_headers_cannot_split_the_response_or_repeat_framing() {
        let response = Response::new(200)
            .header("X-Evil", "a\r\nSet-Cookie: b")
            .header("content-length", "99")
            .header("X-Fine", "yes");
        let mut out = Vec::new();
        write_response(&mut out, &response, "s", false, false, false);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            !text.contains("Set-Cookie") && !text.contains("99"),
            "{text}"
        );
        assert!(text.contains("X-Fine: yes"));
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let date = with_date(|date| String::from_utf8(date.to_vec()).expect("ascii"));
        assert_eq!(date.len(), 29, "{date}");
        assert!(date.ends_with(" GMT"), "{date}");
    }
}
