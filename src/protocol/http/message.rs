//! Requests as handlers see them, responses as handlers build them, and how a response is
//! written on the wire (status line, `Date`, `Server`, framing headers, body).

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// An HTTP response, built by a handler. Static text (header names, a fixed body) is borrowed,
/// not copied, so a constant answer costs no allocation beyond its header list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields (`Content-Length`, `Connection`, `Transfer-Encoding`, `Date` and `Server`
    /// are written by the server and dropped from here).
    pub headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    /// The body (not sent in answer to HEAD, nor with 1xx, 204 and 304).
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// A response with `status`, no headers and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
        }
    }

    /// A `text/plain; charset=utf-8` response (a `&'static str` body is not copied).
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Response {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(text_bytes(body.into()))
    }

    /// An `application/json` response; `json` must already be JSON text.
    pub fn json(status: u16, json: impl Into<Cow<'static, str>>) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(text_bytes(json.into()))
    }

    /// The server's counters in Prometheus text format (version 0.0.4), as `/metrics` serves
    /// them; see [`crate::metrics::prometheus`].
    pub fn metrics(stats: &crate::StatsSnapshot) -> Response {
        Response::new(200)
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(crate::metrics::prometheus(stats).into_bytes())
    }

    /// Adds a header field.
    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (a `&'static [u8]` is not copied).
    pub fn body(mut self, body: impl Into<Cow<'static, [u8]>>) -> Response {
        self.body = body.into();
        self
    }
}

/// Text as bytes, borrowed if it was borrowed.
fn text_bytes(text: Cow<'static, str>) -> Cow<'static, [u8]> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
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
        426 => "Upgrade Required",
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
    with_date(|date| {
        write_response_dated(
            out,
            response,
            server,
            (head_only, close, keep_alive_1_0),
            date,
        )
    });
}

/// [`write_response`] with the `Date` value given; `flags` are `(head_only, close,
/// keep_alive_1_0)`.
pub(crate) fn write_response_dated(
    out: &mut Vec<u8>,
    response: &Response,
    server: &str,
    (head_only, close, keep_alive_1_0): (bool, bool, bool),
    date: &[u8],
) {
    let status = response.status;
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_number(out, status as usize);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
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

/// The `Date` text of the current second, and until when it holds.
struct DateCache {
    /// The moment (monotonic) from which the text may be a second old: refresh then.
    valid_until: Option<Instant>,
    /// The IMF-fixdate text.
    text: String,
}

thread_local! {
    /// Formatted once a second per thread.
    static DATE: RefCell<DateCache> = const {
        RefCell::new(DateCache { valid_until: None, text: String::new() })
    };
}

/// Calls `write` with the current `Date` value, formatting it only when the second changed.
pub fn with_date<R>(write: impl FnOnce(&[u8]) -> R) -> R {
    with_date_at(Instant::now(), write)
}

/// [`with_date`] at `now`, a monotonic time the caller already read (the turn's or the
/// callback's): while `now` is inside the second last formatted, no clock is read at all.
pub(crate) fn with_date_at<R>(now: Instant, write: impl FnOnce(&[u8]) -> R) -> R {
    DATE.with(|cell| {
        let mut cache = cell.borrow_mut();
        if cache.valid_until.is_none_or(|until| now >= until) {
            let wall = SystemTime::now();
            let into_second = wall
                .duration_since(UNIX_EPOCH)
                .map_or(Duration::ZERO, |since| {
                    Duration::from_nanos(since.subsec_nanos().into())
                });
            cache.text = httpdate::fmt_http_date(wall);
            // `now` is no later than `wall`, so this ends at or before the second's end.
            cache.valid_until = Some(now + (Duration::from_secs(1) - into_second));
        }
        write(cache.text.as_bytes())
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
