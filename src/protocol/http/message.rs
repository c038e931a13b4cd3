//! Requests as handlers see them, responses as handlers build them, and how a response is
//! written on the wire (status line, `Date`, `Server`, framing headers, body).

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a piece of a request lies in its storage: `start..end`. Heads and trailers are
/// bounded by [`Config::http_max_head_bytes`](crate::Config::http_max_head_bytes), so 32 bits
/// hold any offset (a larger one saturates, and reads as empty rather than panicking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(range: std::ops::Range<usize>) -> Span {
        let offset = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
        Span {
            start: offset(range.start),
            end: offset(range.end),
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A header or trailer field: its name (in the text storage) and its value (in the value
/// storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    name: Span,
    value: Span,
}

/// An HTTP request, head and body, as a handler sees it.
///
/// The head is kept once, in buffers the connection reuses from request to request (one for
/// the text: method, path, query and field names; one for field values): every piece is a
/// range into them, read through the accessors below, so a request costs no allocation once
/// the connection's buffers have grown to fit. Those buffers hold at most a head's limit and
/// its trailers; a body's is freed after the request when it grew past 64 KiB. Names compare
/// case-insensitively without being copied.
///
/// ```
/// use socketserver::protocol::http::Request;
///
/// let request = Request::new("POST", "/items?sort=name")
///     .with_header("Content-Type", "text/plain")
///     .with_body("milk");
/// assert_eq!(request.method(), "POST");
/// assert_eq!(request.path(), "/items");
/// assert_eq!(request.query(), Some("sort=name"));
/// assert_eq!(request.header("content-type"), Some(&b"text/plain"[..]));
/// assert_eq!(request.body(), b"milk");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// Method, path, query and every field's name, back to back: text, so reading a piece
    /// needs no UTF-8 check.
    text: String,
    /// Every field's value, back to back (values may hold any byte but CR and LF).
    values: Vec<u8>,
    method: Span,
    path: Span,
    query: Option<Span>,
    minor_version: u8,
    /// Header fields in the order sent.
    headers: Vec<Field>,
    /// Trailer fields of a chunked body, in the order sent.
    trailers: Vec<Field>,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// Who the client proved to be with a TLS client certificate, set as the request is
    /// routed.
    peer_identity: Option<std::sync::Arc<crate::tls::PeerIdentity>>,
    /// The connection's peer (after any PROXY header), set as the request is routed.
    peer: Option<std::net::SocketAddr>,
    /// The client behind trusted HTTP proxies, when it differs from the peer.
    forwarded_client: Option<std::net::IpAddr>,
    /// The trace it belongs to, set as it is routed.
    trace_id: Option<super::trace::TraceId>,
}

/// Past this capacity a request's body buffer is freed after the request instead of kept for
/// the next: a connection that once received a large body does not hold its size for good.
const KEPT_BODY_CAPACITY: usize = 64 * 1024;

impl Request {
    /// An HTTP/1.1 request for `target` (a path, optionally with `?query`), with no headers
    /// and no body: for calling handlers directly, in tests or in code that routes by itself.
    pub fn new(method: &str, target: &str) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let mut request = Request {
            minor_version: 1,
            ..Request::default()
        };
        request.set_line(method, path, query, 1);
        request
    }

    /// The same request with the header field `name: value` added after the others.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.push_header(name, value.as_ref());
        self
    }

    /// The same request with `body`.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// The same request as if from a client that proved to be `identity` with a TLS client
    /// certificate: for calling handlers that authorise by identity in tests.
    pub fn with_peer_identity(mut self, identity: crate::tls::PeerIdentity) -> Request {
        self.peer_identity = Some(std::sync::Arc::new(identity));
        self
    }

    /// Who the client proved to be with a TLS client certificate (mTLS); `None` without one.
    /// What a handler authorises by: see
    /// [`PeerIdentity::has_name`](crate::tls::PeerIdentity::has_name).
    pub fn peer_identity(&self) -> Option<&crate::tls::PeerIdentity> {
        self.peer_identity.as_deref()
    }

    pub(super) fn set_peer_identity(
        &mut self,
        identity: Option<std::sync::Arc<crate::tls::PeerIdentity>>,
    ) {
        self.peer_identity = identity;
    }

    /// The same request as if from `peer`: for calling handlers directly in tests.
    pub fn with_peer_addr(mut self, peer: std::net::SocketAddr) -> Request {
        self.peer = Some(peer);
        self
    }

    /// The address of the connection's peer: the client itself, or the proxy it came through
    /// (a PROXY protocol header from a trusted balancer already named the client here).
    /// `None` for a Unix-domain peer or where the driver does not know it.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }

    /// The client's address: what `Forwarded` or `X-Forwarded-For` says when the peer is a
    /// proxy the router trusts ([`Router::trust_forwarded_from`](super::Router::trust_forwarded_from)),
    /// walked back past every trusted proxy; otherwise the peer's own.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.forwarded_client
            .or_else(|| self.peer.map(|peer| peer.ip()))
    }

    pub(super) fn set_peer(
        &mut self,
        peer: Option<std::net::SocketAddr>,
        forwarded_client: Option<std::net::IpAddr>,
    ) {
        self.peer = peer;
        self.forwarded_client = forwarded_client;
    }

    /// The W3C trace this request belongs to: the trace id of its `traceparent` header if that
    /// is valid (exactly one, well-formed); otherwise a new one when request logging is on
    /// (`socketserver::http::request` at debug), so its log line and the handler agree; else
    /// `None`.
    pub fn trace_id(&self) -> Option<super::trace::TraceId> {
        self.trace_id.or_else(|| self.incoming_trace_id())
    }

    /// The trace id of the `traceparent` header, if there is exactly one and it is valid (two
    /// are as good as none, the specification says).
    pub(super) fn incoming_trace_id(&self) -> Option<super::trace::TraceId> {
        let mut traceparents = self.header_values("traceparent");
        match (traceparents.next(), traceparents.next()) {
            (Some(value), None) => super::trace::parse_traceparent(value),
            _ => None,
        }
    }

    pub(super) fn set_trace_id(&mut self, trace_id: Option<super::trace::TraceId>) {
        self.trace_id = trace_id;
    }

    /// The method, as sent (`GET`, `POST`, …).
    pub fn method(&self) -> &str {
        self.text(self.method)
    }

    /// The path of the request target, without the query.
    pub fn path(&self) -> &str {
        self.text(self.path)
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.query.map(|span| self.text(span))
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_values(name).next()
    }

    /// Every value of header `name` (case-insensitive), in the order sent.
    pub fn header_values<'r, 'n>(
        &'r self,
        name: &'n str,
    ) -> impl Iterator<Item = &'r [u8]> + use<'r, 'n> {
        self.fields(&self.headers)
            .filter(move |(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// Header fields in the order sent, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields(&self.headers)
    }

    /// Trailer fields of a chunked body, in the order sent.
    pub fn trailers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields(&self.trailers)
    }

    /// The body, de-chunked.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    fn fields<'r>(&'r self, fields: &'r [Field]) -> impl Iterator<Item = (&'r str, &'r [u8])> {
        fields.iter().map(move |field| {
            let value = self.values.get(field.value.range()).unwrap_or_default();
            (self.text(field.name), value)
        })
    }

    /// The text at `span` (every text span ends on a character boundary, being the span of a
    /// whole `&str` stored; `get` keeps even a broken one from panicking).
    fn text(&self, span: Span) -> &str {
        self.text.get(span.range()).unwrap_or_default()
    }

    /// Appends `text` to the text storage; its span.
    fn store(&mut self, text: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(text);
        Span::of(start..self.text.len())
    }

    /// Appends `value` to the value storage; its span.
    fn store_value(&mut self, value: &[u8]) -> Span {
        let start = self.values.len();
        self.values.extend_from_slice(value);
        Span::of(start..self.values.len())
    }

    /// Empties the request for the next one, keeping its buffers (a large body's excepted).
    pub(super) fn clear(&mut self) {
        self.text.clear();
        self.values.clear();
        self.headers.clear();
        self.trailers.clear();
        if self.body.capacity() > KEPT_BODY_CAPACITY {
            self.body = Vec::new();
        } else {
            self.body.clear();
        }
        self.method = Span::default();
        self.path = Span::default();
        self.query = None;
        self.minor_version = 1;
    }

    /// Sets the request line: method, path, query and version.
    pub(super) fn set_line(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        minor_version: u8,
    ) {
        self.method = self.store(method);
        self.path = self.store(path);
        self.query = query.map(|query| self.store(query));
        self.minor_version = minor_version;
    }

    /// Adds a header field.
    pub(super) fn push_header(&mut self, name: &str, value: &[u8]) {
        let field = Field {
            name: self.store(name),
            value: self.store_value(value),
        };
        self.headers.push(field);
    }

    /// Adds a trailer field.
    pub(super) fn push_trailer(&mut self, name: &str, value: &[u8]) {
        let field = Field {
            name: self.store(name),
            value: self.store_value(value),
        };
        self.trailers.push(field);
    }

    /// The body buffer, for the body reader to fill.
    pub(super) fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }
}

/// An HTTP response, built by a handler. Static text (the content type, header names, a fixed
/// body) is borrowed, not copied, so a constant answer such as `Response::text(200, "Hello")`
/// costs no allocation at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`, written before the other headers (set by [`Response::text`],
    /// [`Response::json`], or a `Content-Type` given to [`Response::header`]).
    pub content_type: Option<Cow<'static, str>>,
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
            content_type: None,
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
        }
    }

    /// A `text/plain; charset=utf-8` response (a `&'static str` body is not copied).
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Response {
        Response::new(status)
            .content_type("text/plain; charset=utf-8")
            .body(text_bytes(body.into()))
    }

    /// An `application/json` response; `json` must already be JSON text.
    pub fn json(status: u16, json: impl Into<Cow<'static, str>>) -> Response {
        Response::new(status)
            .content_type("application/json")
            .body(text_bytes(json.into()))
    }

    /// The server's counters in Prometheus text format (version 0.0.4), then the process's
    /// own, as `/metrics` serves them; see [`crate::metrics::prometheus`] and
    /// [`crate::metrics::process_metrics`].
    pub fn metrics(stats: &crate::StatsSnapshot) -> Response {
        let mut text = crate::metrics::prometheus(stats);
        text.push_str(&crate::metrics::process_metrics());
        Response::new(200)
            .content_type("text/plain; version=0.0.4")
            .body(text.into_bytes())
    }

    /// Sets the `Content-Type`.
    pub fn content_type(mut self, value: impl Into<Cow<'static, str>>) -> Response {
        self.content_type = Some(value.into());
        self
    }

    /// Adds a header field (a `Content-Type` replaces the content type).
    pub fn header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        let name = name.into();
        if name.eq_ignore_ascii_case("content-type") {
            return self.content_type(value);
        }
        self.headers.push((name, value.into()));
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
    let flags = (head_only, close, keep_alive_1_0);
    with_date_at(Instant::now(), |date| {
        write_head(out, response, server, flags, date);
        write_body(out, response, flags);
    });
}

/// [`write_response`] with the `Date` value given; `flags` are `(head_only, close,
/// keep_alive_1_0)`. A head like the last one this thread wrote (the same status, content type,
/// length, flags and server, no other headers: what a server answering one route over and over
/// sends) is copied whole from the thread's last head, its `Date` patched when the second
/// changed, instead of being put together from a dozen pieces.
pub(crate) fn write_response_dated(
    out: &mut Vec<u8>,
    response: &Response,
    server: &'static str,
    flags: (bool, bool, bool),
    date: &[u8; DATE_LENGTH],
) {
    match HeadKey::of(response, server, flags) {
        Some(key) => LAST_HEAD.with(|cell| {
            // Borrowed only here, never across a call out: the borrow cannot nest.
            let mut last = cell.borrow_mut();
            let last = &mut *last;
            if last.key != Some(key) {
                last.head.clear();
                last.date_at = write_head(&mut last.head, response, server, flags, date);
                last.key = Some(key);
            }
            let at = last.date_at;
            if last.head[at..at + DATE_LENGTH] != date[..] {
                last.head[at..at + DATE_LENGTH].copy_from_slice(date);
            }
            out.extend_from_slice(&last.head);
        }),
        None => {
            write_head(out, response, server, flags, date);
        }
    }
    write_body(out, response, flags);
}

/// Appends the body, unless the answer is to a HEAD request or carries none.
fn write_body(out: &mut Vec<u8>, response: &Response, (head_only, _, _): (bool, bool, bool)) {
    if !head_only && !is_bodiless(response.status) {
        out.extend_from_slice(&response.body);
    }
}

/// 1xx, 204 and 304 answers carry no body, nor a `Content-Length`.
fn is_bodiless(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Appends the head of `response` (through its empty line) to `out`; returns where in what it
/// appended the `Date` value begins.
fn write_head(
    out: &mut Vec<u8>,
    response: &Response,
    server: &str,
    (_head_only, close, keep_alive_1_0): (bool, bool, bool),
    date: &[u8; DATE_LENGTH],
) -> usize {
    let start = out.len();
    let status = response.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_number(out, status as usize);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    let date_at = out.len() - start;
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nServer: ");
    out.extend_from_slice(server.as_bytes());
    if !is_bodiless(status) {
        out.extend_from_slice(b"\r\nContent-Length: ");
        push_number(out, response.body.len());
    }
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    } else if keep_alive_1_0 {
        out.extend_from_slice(b"\r\nConnection: keep-alive");
    }
    if let Some(content_type) = response
        .content_type
        .as_deref()
        .filter(|value| !has_line_break(value))
    {
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
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
    date_at
}

/// What makes two response heads the same but for their `Date`. Only a head without headers of
/// its own and with a borrowed (static) content type and server name has one: static text is
/// known by where it lies, so comparing keys compares no text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeadKey {
    status: u16,
    flags: (bool, bool, bool),
    body_length: usize,
    /// Address and length of the static content type (0, 0 for none).
    content_type: (usize, usize),
    /// Address and length of the server name.
    server: (usize, usize),
}

impl HeadKey {
    fn of(response: &Response, server: &'static str, flags: (bool, bool, bool)) -> Option<HeadKey> {
        if !response.headers.is_empty() {
            return None;
        }
        let content_type = match &response.content_type {
            None => (0, 0),
            Some(Cow::Borrowed(text)) => (text.as_ptr() as usize, text.len()),
            Some(Cow::Owned(_)) => return None,
        };
        Some(HeadKey {
            status: response.status,
            flags,
            body_length: response.body.len(),
            content_type,
            server: (server.as_ptr() as usize, server.len()),
        })
    }
}

/// The last cacheable head this thread wrote.
struct LastHead {
    key: Option<HeadKey>,
    /// The whole head, `Date` included.
    head: Vec<u8>,
    /// Where the `Date` value begins in `head`.
    date_at: usize,
}

thread_local! {
    static LAST_HEAD: RefCell<LastHead> = const {
        RefCell::new(LastHead { key: None, head: Vec::new(), date_at: 0 })
    };
}

/// Whether `text` holds a CR or an LF. Eight bytes at a time, since a content type is checked
/// on every response.
fn has_line_break(text: &str) -> bool {
    let mut words = text.as_bytes().chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let word = u64::from_le_bytes(eight);
        if has_byte(word, b'\r') || has_byte(word, b'\n') {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&byte| byte == b'\r' || byte == b'\n')
}

/// Whether one of the eight bytes of `word` is `byte` (the zero-byte test of "Bit Twiddling
/// Hacks", on `word` with `byte` cancelled out).
const fn has_byte(word: u64, byte: u8) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let cancelled = word ^ (ONES * byte as u64);
    cancelled.wrapping_sub(ONES) & !cancelled & HIGHS != 0
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
    /// The IMF-fixdate text (always 29 bytes).
    text: [u8; DATE_LENGTH],
}

/// The length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) const DATE_LENGTH: usize = 29;

thread_local! {
    /// Formatted once a second per thread.
    static DATE: RefCell<DateCache> = const {
        RefCell::new(DateCache { valid_until: None, text: [b' '; DATE_LENGTH] })
    };
}

/// Calls `write` with the current `Date` value, formatting it only when the second changed.
pub fn with_date<R>(write: impl FnOnce(&[u8]) -> R) -> R {
    with_date_at(Instant::now(), |date| write(date))
}

/// [`with_date`] at `now`, a monotonic time the caller already read (the turn's or the
/// callback's): while `now` is inside the second last formatted, no clock is read at all.
pub(crate) fn with_date_at<R>(now: Instant, write: impl FnOnce(&[u8; DATE_LENGTH]) -> R) -> R {
    DATE.with(|cell| {
        let mut cache = cell.borrow_mut();
        if cache.valid_until.is_none_or(|until| now >= until) {
            let wall = SystemTime::now();
            let into_second = wall
                .duration_since(UNIX_EPOCH)
                .map_or(Duration::ZERO, |since| {
                    Duration::from_nanos(since.subsec_nanos().into())
                });
            // Formatted in place: not even the once-a-second refresh allocates.
            let mut text: &mut [u8] = &mut cache.text;
            if let Err(error) = write!(text, "{}", httpdate::HttpDate::from(wall)) {
                log::warn!("formatting the Date header: {error}");
            }
            // `now` is no later than `wall`, so this ends at or before the second's end.
            cache.valid_until = Some(now + (Duration::from_secs(1) - into_second));
        }
        write(&cache.text)
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

    /// The head copied from the thread's last one is byte for byte the head it stands for,
    /// whatever came between, and carries the `Date` it is given.
    #[test]
    fn a_reused_head_is_the_head_it_stands_for() {
        // Neighbours differ in one thing each: status, length, content type, headers.
        let responses = [
            Response::text(200, "Hello, World!"),
            Response::text(201, "Hello, World!"),
            Response::json(201, "Hello, World!"),
            Response::text(200, "Hello, World?!"),
            Response::text(404, "not found\n"),
            Response::text(200, "Hello, World!").header("X-Extra", "1"),
            Response::new(204),
            Response::new(200).content_type(String::from("text/html")),
            Response::json(200, "{}"),
        ];
        let flags = [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ];
        let dates = [
            *b"Sun, 06 Nov 1994 08:49:37 GMT",
            *b"Sun, 06 Nov 1994 08:49:38 GMT",
        ];
        // Each answer twice in a row, then once more a second later (the head is reused, then
        // patched), then the next answer, which differs from it in one thing (rebuilt).
        for flag in flags {
            for response in &responses {
                for date in [&dates[0], &dates[0], &dates[1]] {
                    let mut reused = Vec::new();
                    write_response_dated(&mut reused, response, "socketserver", flag, date);
                    let mut built = Vec::new();
                    write_head(&mut built, response, "socketserver", flag, date);
                    write_body(&mut built, response, flag);
                    assert_eq!(
                        String::from_utf8_lossy(&reused),
                        String::from_utf8_lossy(&built),
                        "{response:?} {flag:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_line_break_is_found_at_any_place() {
        for length in 0..40 {
            let clean = "a".repeat(length);
            assert!(!has_line_break(&clean), "{length}");
            for at in 0..length {
                for breaking in ['\r', '\n'] {
                    let mut text: Vec<char> = clean.chars().collect();
                    text[at] = breaking;
                    let text: String = text.into_iter().collect();
                    assert!(has_line_break(&text), "{text:?}");
                }
            }
        }
        // Bytes next to CR and LF, and high bytes, are no line break.
        assert!(!has_line_break("\u{b}\u{c}\u{e}\t é ü \u{8d}\u{8a}"));
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let date = with_date(|date| String::from_utf8(date.to_vec()).expect("ascii"));
        assert_eq!(date.len(), 29, "{date}");
        assert!(date.ends_with(" GMT"), "{date}");
    }
}
