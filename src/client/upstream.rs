//! A keep-alive pool of connections to upstream HTTP servers, with failover: the proxy's
//! oldest win, reusing a connection instead of paying a connect (and the upstream an accept)
//! per request.
//!
//! The pool is blocking and thread-safe: it is meant for the handlers that run on the worker
//! pool ([`Router::route_offloaded`](crate::protocol::http::Router::route_offloaded)), so the
//! event loop never waits on an upstream. See `examples/http_upstream.rs`.
//!
//! # Bounds and rules
//!
//! * Per upstream at most [`PoolOptions::max_idle`] idle connections are kept and at most
//!   [`PoolOptions::max_connections`] are open (idle or in use); an idle one older than
//!   [`PoolOptions::idle_timeout`] is closed rather than reused.
//! * **A connection the upstream closed is never handed out**: before reuse, a non-blocking
//!   peek must find it silent (end of stream or stray bytes mean it is dropped). A reused
//!   connection can still die in the instant between that check and the request; an
//!   idempotent request (GET, HEAD, PUT, DELETE, OPTIONS) that fails so, before any answer
//!   byte, is sent once more on a new connection, as nginx's `proxy_next_upstream` does.
//! * **Failover**: upstreams are tried in their order. One that refuses or does not connect
//!   within [`PoolOptions::connect_timeout`] is skipped for [`PoolOptions::retry_down_after`],
//!   and the next is tried; when every upstream fails the error names each one's reason.
//! * An answer is read whole (Content-Length, chunked, or until the upstream closes), its head
//!   bounded by 64 KiB and its body by [`PoolOptions::max_body_bytes`]; every read and write
//!   waits at most [`PoolOptions::io_timeout`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::protocol::http::{Request, Response};

/// The longest answer head read.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers of an answer parsed at most.
const MAX_HEADERS: usize = 64;

/// The pool's limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Idle connections kept per upstream. Default 32 (nginx's `keepalive` is typically set to
    /// a few dozen).
    pub max_idle: usize,
    /// Connections open per upstream, idle or in use; a request finding every upstream at its
    /// limit is refused as busy. Default 256.
    pub max_connections: usize,
    /// An idle connection older than this is closed instead of reused. Default 60 s, under the
    /// 75 s nginx and most servers give an idle keep-alive connection, so the pool lets go
    /// before the upstream does.
    pub idle_timeout: Duration,
    /// How long a connect may take before the next upstream is tried. Default 1 s: on a LAN a
    /// connect takes well under a millisecond, so a second is a dead or overloaded host.
    pub connect_timeout: Duration,
    /// How long a request's write, or each read of its answer, may wait. Default 30 s.
    pub io_timeout: Duration,
    /// How long an upstream that failed to connect is skipped. Default 5 s.
    pub retry_down_after: Duration,
    /// The largest answer body read. Default 16 MiB.
    pub max_body_bytes: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_idle: 32,
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(30),
            retry_down_after: Duration::from_secs(5),
            max_body_bytes: 16 << 20,
        }
    }
}

/// Why a request found no answer.
#[derive(Debug)]
pub enum UpstreamError {
    /// No upstream could be reached: each one's address and why.
    AllDown(Vec<(SocketAddr, io::Error)>),
    /// Every reachable upstream has `max_connections` open.
    Busy,
    /// The request was sent but the answer failed (or broke the limits).
    Failed(SocketAddr, io::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::AllDown(reasons) => {
                f.write_str("every upstream is down:")?;
                for (addr, error) in reasons {
                    write!(f, " {addr} ({error})")?;
                }
                Ok(())
            }
            UpstreamError::Busy => f.write_str("every upstream is at its connection limit"),
            UpstreamError::Failed(addr, error) => write!(f, "{addr} failed: {error}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// An upstream's answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, except those about this hop's framing and connection.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, decoded from its transfer coding.
    pub body: Vec<u8>,
}

impl UpstreamAnswer {
    /// The answer as a response to the client (with its own framing).
    pub fn into_response(self) -> Response {
        let mut response = Response::new(self.status).body(self.body);
        for (name, value) in self.headers {
            // Header values are ASCII in practice; anything else goes as UTF-8, lossily.
            response = response.header(name, String::from_utf8_lossy(&value).into_owned());
        }
        response
    }
}

/// What the pool has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// New connections made.
    pub connects: AtomicU64,
    /// Requests sent on a connection taken from the pool.
    pub reuses: AtomicU64,
    /// Idle connections dropped because the upstream had closed them or they were too old.
    pub discarded: AtomicU64,
    /// Requests that went to a later upstream because an earlier one was down.
    pub failovers: AtomicU64,
    /// Idempotent requests sent again after a reused connection died under them.
    pub retries: AtomicU64,
}

/// One upstream's connections.
struct Upstream {
    addr: SocketAddr,
    /// Idle connections with the time each was put back, oldest first.
    idle: Vec<(TcpStream, Instant)>,
    /// Open connections, idle or in use.
    open: usize,
    /// Skipped until then, after failing to connect.
    down_until: Option<Instant>,
}

/// A keep-alive pool over an ordered list of upstreams.
pub struct UpstreamPool {
    upstreams: Mutex<Vec<Upstream>>,
    options: PoolOptions,
    stats: PoolStats,
}

/// A connection on loan, and whether it came from the pool.
struct Loan {
    index: usize,
    stream: TcpStream,
    reused: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True if the idle connection is still usable: nothing to read and not closed.
fn is_silent(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let silent = matches!(stream.peek(&mut [0u8; 1]), Err(error) if error.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && silent
}

impl UpstreamPool {
    /// A pool over `upstreams`, tried in this order.
    pub fn new(upstreams: Vec<SocketAddr>, options: PoolOptions) -> UpstreamPool {
        UpstreamPool {
            upstreams: Mutex::new(
                upstreams
                    .into_iter()
                    .map(|addr| Upstream {
                        addr,
                        idle: Vec::new(),
                        open: 0,
                        down_until: None,
                    })
                    .collect(),
            ),
            options,
            stats: PoolStats::default(),
        }
    }

    /// What the pool has done so far.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Idle connections held now, over all upstreams.
    pub fn idle(&self) -> usize {
        lock(&self.upstreams).iter().map(|up| up.idle.len()).sum()
    }

    /// Sends `request` to the first upstream that takes it and reads its answer.
    pub fn send(&self, request: &Request) -> Result<UpstreamAnswer, UpstreamError> {
        let bytes = encode(request);
        let idempotent = matches!(
            request.method(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
        );
        let loan = self.borrow()?;
        let addr = self.addr_of(loan.index);
        let reused = loan.reused;
        match self.exchange(loan, &bytes, request.method() == "HEAD") {
            Ok(answer) => Ok(answer),
            Err((error, answered)) if reused && !answered && idempotent => {
                // The upstream closed it just as it was reused: once more on a new connection.
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                log::debug!("upstream {addr}: reused connection failed ({error}); retrying");
                let loan = self.borrow_new()?;
                let addr = self.addr_of(loan.index);
                self.exchange(loan, &bytes, request.method() == "HEAD")
                    .map_err(|(error, _)| UpstreamError::Failed(addr, error))
            }
            Err((error, _)) => Err(UpstreamError::Failed(addr, error)),
        }
    }

    fn addr_of(&self, index: usize) -> SocketAddr {
        lock(&self.upstreams)[index].addr
    }

    /// An idle connection that passes the health check, or a new one.
    fn borrow(&self) -> Result<Loan, UpstreamError> {
        let now = Instant::now();
        {
            let mut upstreams = lock(&self.upstreams);
            for (index, upstream) in upstreams.iter_mut().enumerate() {
                if upstream.down_until.is_some_and(|until| until > now) {
                    continue;
                }
                while let Some((stream, since)) = upstream.idle.pop() {
                    if now.duration_since(since) < self.options.idle_timeout && is_silent(&stream) {
                        self.stats.reuses.fetch_add(1, Ordering::Relaxed);
                        return Ok(Loan {
                            index,
                            stream,
                            reused: true,
                        });
                    }
                    upstream.open -= 1;
                    self.stats.discarded.fetch_add(1, Ordering::Relaxed);
                }
                // The first upstream that is up has nothing idle: connect to it.
                break;
            }
        }
        self.borrow_new()
    }

    /// A new connection to the first upstream that is up, has room and connects.
    fn borrow_new(&self) -> Result<Loan, UpstreamError> {
        let count = lock(&self.upstreams).len();
        let mut reasons = Vec::new();
        let mut busy = false;
        // Upstreams marked down are tried last, not never: they may be back.
        let now = Instant::now();
        let mut order: Vec<usize> = (0..count).collect();
        {
            let upstreams = lock(&self.upstreams);
            order
                .sort_by_key(|&index| upstreams[index].down_until.is_some_and(|until| until > now));
        }
        for (tried, index) in order.into_iter().enumerate() {
            let addr = {
                let mut upstreams = lock(&self.upstreams);
                let upstream = &mut upstreams[index];
                if upstream.open >= self.options.max_connections {
                    busy = true;
                    continue;
                }
                upstream.open += 1;
                upstream.addr
            };
            match TcpStream::connect_timeout(&addr, self.options.connect_timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    lock(&self.upstreams)[index].down_until = None;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    if tried > 0 {
                        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(Loan {
                        index,
                        stream,
                        reused: false,
                    });
                }
                Err(error) => {
                    log::warn!("upstream {addr}: {error}; trying the next");
                    let mut upstreams = lock(&self.upstreams);
                    upstreams[index].open -= 1;
                    upstreams[index].down_until =
                        Some(Instant::now() + self.options.retry_down_after);
                    reasons.push((addr, error));
                }
            }
        }
        if busy && reasons.len() < count {
            Err(UpstreamError::Busy)
        } else {
            Err(UpstreamError::AllDown(reasons))
        }
    }

    /// Sends and reads one exchange; gives the connection back if it may be reused. The error
    /// says whether any of the answer had arrived.
    fn exchange(
        &self,
        loan: Loan,
        request: &[u8],
        head_only: bool,
    ) -> Result<UpstreamAnswer, (io::Error, bool)> {
        let Loan { index, stream, .. } = loan;
        let outcome = (|| {
            stream
                .set_write_timeout(Some(self.options.io_timeout))
                .map_err(|e| (e, false))?;
            stream
                .set_read_timeout(Some(self.options.io_timeout))
                .map_err(|e| (e, false))?;
            (&stream).write_all(request).map_err(|e| (e, false))?;
            read_answer(&stream, head_only, self.options.max_body_bytes)
        })();
        let mut upstreams = lock(&self.upstreams);
        let upstream = &mut upstreams[index];
        match outcome {
            Ok((answer, reusable)) if reusable && upstream.idle.len() < self.options.max_idle => {
                upstream.idle.push((stream, Instant::now()));
                Ok(answer)
            }
            Ok((answer, _)) => {
                upstream.open -= 1;
                Ok(answer)
            }
            Err(error) => {
                upstream.open -= 1;
                Err(error)
            }
        }
    }
}

/// The request as this hop sends it: HTTP/1.1, kept alive, with its body's length.
fn encode(request: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + request.body().len());
    let target = match request.query() {
        Some(query) => format!("{}?{query}", request.path()),
        None => request.path().to_string(),
    };
    out.extend_from_slice(format!("{} {target} HTTP/1.1\r\n", request.method()).as_bytes());
    for (name, value) in request.headers() {
        if is_hop_by_hop(name) || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !request.body().is_empty() || matches!(request.method(), "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", request.body().len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(request.body());
    out
}

/// Headers about one hop (RFC 9110, section 7.6.1), never forwarded.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|hop| name.eq_ignore_ascii_case(hop))
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Reads one whole answer; says whether the connection may carry another. The error says
/// whether any of the answer had arrived.
fn read_answer(
    stream: &TcpStream,
    head_only: bool,
    max_body: usize,
) -> Result<(UpstreamAnswer, bool), (io::Error, bool)> {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let read = reader
            .by_ref()
            .take((MAX_HEAD_BYTES - head.len()) as u64)
            .read_until(b'\n', &mut head)
            .map_err(|error| (error, before > 0))?;
        if read == 0 {
            let why = if head.is_empty() {
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering")
            } else {
                invalid("closed in the middle of the answer's head")
            };
            return Err((why, !head.is_empty()));
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
        if head.len() >= MAX_HEAD_BYTES {
            return Err((invalid("the answer's head is too long"), true));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err((invalid("an incomplete answer head"), true)),
        Err(error) => return Err((invalid(format!("not an HTTP answer: {error}")), true)),
    }
    let status = parsed.code.unwrap_or(0);
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| {
                String::from_utf8_lossy(header.value)
                    .trim()
                    .to_ascii_lowercase()
            })
    };
    let keep_alive = parsed.version == Some(1)
        && !header("connection")
            .is_some_and(|value| value.split(',').any(|token| token.trim() == "close"));
    let chunked = header("transfer-encoding").is_some_and(|value| value.ends_with("chunked"));
    let length = header("content-length").map(|value| value.parse::<usize>());
    let no_body = head_only || status / 100 == 1 || status == 204 || status == 304;
    let mut body = Vec::new();
    let mut reusable = keep_alive;
    let failed = |error: io::Error| (error, true);
    if no_body {
    } else if chunked {
        read_chunked(&mut reader, &mut body, max_body).map_err(failed)?;
    } else if let Some(length) = length {
        let length = length.map_err(|_| (invalid("a bad Content-Length"), true))?;
        if length > max_body {
            return Err((invalid("the answer's body is over the limit"), true));
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).map_err(failed)?;
    } else {
        // Framed by the end of the connection: read to it, and do not reuse.
        reusable = false;
        reader
            .by_ref()
            .take(max_body as u64 + 1)
            .read_to_end(&mut body)
            .map_err(failed)?;
        if body.len() > max_body {
            return Err((invalid("the answer's body is over the limit"), true));
        }
    }
    // Bytes past the answer would be a second answer nobody asked for: not reusable.
    if !reader.buffer().is_empty() {
        reusable = false;
    }
    let headers = parsed
        .headers
        .iter()
        .filter(|header| {
            !is_hop_by_hop(header.name)
                && !header.name.eq_ignore_ascii_case("content-length")
                && !header.name.eq_ignore_ascii_case("date")
        })
        .map(|header| (header.name.to_string(), header.value.to_vec()))
        .collect();
    Ok((
        UpstreamAnswer {
            status,
            headers,
            body,
        },
        reusable,
    ))
}

/// Decodes a chunked body (extensions ignored, trailers dropped).
fn read_chunked(reader: &mut impl BufRead, body: &mut Vec<u8>, max_body: usize) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        reader.by_ref().take(1024).read_until(b'\n', &mut line)?;
        let text = std::str::from_utf8(&line).map_err(|_| invalid("a bad chunk size"))?;
        let size = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("a bad chunk size"))?;
        if size == 0 {
            // Trailers, until the empty line.
            loop {
                line.clear();
                if reader.by_ref().take(8192).read_until(b'\n', &mut line)? == 0 || line == b"\r\n"
                {
                    return Ok(());
                }
            }
        }
        if body.len() + size > max_body {
            return Err(invalid("the answer's body is over the limit"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if crlf != *b"\r\n" {
            return Err(invalid("a chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: &[u8]) -> (UpstreamAnswer, bool) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut writer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (reader, _) = listener.accept().expect("accept");
        writer.write_all(bytes).expect("write");
        drop(writer);
        read_answer(&reader, false, 1024)
            .map_err(|(error, _)| error)
            .expect("an answer")
    }

    #[test]
    fn answers_are_read_by_length_chunks_or_close() {
        let (by_length, reusable) =
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nhi");
        assert_eq!(
            (by_length.status, &by_length.body[..], reusable),
            (200, &b"hi"[..], true)
        );
        assert_eq!(by_length.headers, vec![("X-A".to_string(), b"1".to_vec())]);
        let (chunked, reusable) = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        );
        assert_eq!((&chunked.body[..], reusable), (&b"abcde"[..], true));
        let (closed, reusable) = answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
        assert_eq!((&closed.body[..], reusable), (&b"until the end"[..], false));
        let (_, reusable) =
            answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!reusable);
    }
}
