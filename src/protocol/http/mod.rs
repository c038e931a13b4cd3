//! HTTP/1.1 as a sans-IO state machine: keep-alive, pipelining, bodies, limits, and a router.
//!
//! [`Http`] reads request heads (parsed by `httparse`), then the body by `Content-Length` or the
//! chunked coding (with trailers), and hands each whole [`Request`] to the [`Router`]'s
//! handler. Answers go out strictly in request order: a handler marked to run on the worker
//! pool leaves a place in the queue that later answers wait behind, so pipelining stays correct
//! when an early request is slow. At most [`Config::http_max_pipeline`] answers wait; while the
//! queue is full no more requests are read.
//!
//! The connection is kept alive by default in HTTP/1.1 and on `Connection: keep-alive` in 1.0;
//! `Connection: close` ends it after that answer. `Expect: 100-continue` gets an interim
//! `100 Continue` (in its place in the answer order) only when asked and only if the body has
//! not started arriving. `HEAD` is answered as `GET` without the body. `Date` is formatted once
//! a second, not per request.
//!
//! Limits and their answers, each followed by a close that keeps the answer intact (the driver
//! shuts the write side and drains input for a moment, nginx's lingering close):
//!
//! | limit | answer |
//! |---|---|
//! | head over [`Config::http_max_head_bytes`], more than [`Config::http_max_headers`] headers, trailers too large | 431 |
//! | body over [`Config::http_max_body_bytes`] | 413 |
//! | a malformed head or chunk, both `Content-Length` and `Transfer-Encoding`, conflicting lengths, no `Host` in 1.1 | 400 |
//! | a transfer coding other than `chunked` | 501 |
//! | the request not complete within [`Config::http_request_timeout`] of its first byte | 408 |
//!
//! A connection quiet between requests for [`Config::http_keep_alive_timeout`] is closed (both
//! timers judge the client's sending, so they stand still while the server is not reading because
//! the client is not taking its answers). On a graceful shutdown an idle connection closes at
//! once, requests already read are answered, the last with `Connection: close`, and a request
//! that has begun arriving is finished and answered with `Connection: close`.
//!
//! A request with `Upgrade: websocket` to a [`Router::websocket`] route is checked as a
//! WebSocket handshake and, if it passes, answered `101 Switching Protocols`; from then on the
//! connection speaks WebSocket ([`ws`](super::ws)), bytes right behind the request included. A
//! method no route serves on a path gets 405 with `Allow`; a plain `GET` to a path only a
//! WebSocket route serves gets 426.
//!
//! [`Config::http_max_pipeline`]: crate::Config::http_max_pipeline
//! [`Config::http_max_head_bytes`]: crate::Config::http_max_head_bytes
//! [`Config::http_max_headers`]: crate::Config::http_max_headers
//! [`Config::http_max_body_bytes`]: crate::Config::http_max_body_bytes
//! [`Config::http_request_timeout`]: crate::Config::http_request_timeout
//! [`Config::http_keep_alive_timeout`]: crate::Config::http_keep_alive_timeout

mod body;
mod forwarded;
mod message;
mod router;
pub mod trace;

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use message::{reason, with_date, write_response, Request, Response};
pub use router::{Found, Handler, Router, Runs};

use super::ws::{handshake, WebSocketConnection, WebSocketRoute};
use super::{Context, JobResult, Protocol};
use crate::config::Config;
use body::{BodyReader, Chunk, Framing};
use message::{with_date_at, write_response_dated, DATE_LENGTH};

/// The `Server` header's value. A `static`, so that every answer names it at the same address,
/// which is how a head like the last one is recognised (see `write_response_dated`).
static SERVER_NAME: &str = "socketserver";
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Header slots on the stack for one parse; `Config::http_max_headers` is at most this.
const HEADER_SLOTS: usize = 128;

/// The limits an [`Http`] connection keeps, taken from [`Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// See [`Config::http_max_head_bytes`].
    pub max_head_bytes: usize,
    /// See [`Config::http_max_headers`].
    pub max_headers: usize,
    /// See [`Config::http_max_body_bytes`].
    pub max_body_bytes: usize,
    /// See [`Config::http_request_timeout`].
    pub request_timeout: Duration,
    /// See [`Config::http_keep_alive_timeout`].
    pub keep_alive_timeout: Duration,
    /// See [`Config::http_max_pipeline`].
    pub max_pipeline: usize,
}

impl HttpLimits {
    /// The HTTP limits of `config`.
    pub fn from_config(config: &Config) -> HttpLimits {
        HttpLimits {
            max_head_bytes: config.http_max_head_bytes,
            max_headers: config.http_max_headers.min(HEADER_SLOTS),
            max_body_bytes: config.http_max_body_bytes,
            request_timeout: config.http_request_timeout,
            keep_alive_timeout: config.http_keep_alive_timeout,
            max_pipeline: config.http_max_pipeline.max(1),
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::from_config(&Config::default())
    }
}

/// How an answer is to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    /// HEAD: no body.
    head_only: bool,
    /// The connection ends after this answer.
    close: bool,
    /// An HTTP/1.0 client that asked to keep the connection.
    keep_alive_1_0: bool,
}

impl Meta {
    /// `(head_only, close, keep_alive_1_0)`, as the response writer takes them.
    fn flags(self) -> (bool, bool, bool) {
        (self.head_only, self.close, self.keep_alive_1_0)
    }
}

/// An answer's place in the pipeline.
enum Answer {
    Ready(Response),
    /// `100 Continue`, sent in its place.
    Continue,
    /// Being computed on the worker pool; the job's tag.
    Pending(u64),
}

struct Slot {
    meta: Meta,
    answer: Answer,
    /// The answer rejects the request: the close counts as the client's fault.
    rejection: Option<&'static str>,
    /// The turn in which the request's first byte arrived (for its latency).
    started: Instant,
}

/// Where the connection is in reading requests.
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Reading the body of the request whose head is in.
    Body(BodyReader, Meta),
    /// No more requests are read; the connection closes after the queued answers.
    Done,
}

/// What an offloaded handler sends back: its answer, and the request it was given, whose
/// buffers the connection reuses.
struct Offloaded {
    response: Response,
    request: Request,
}

/// Which timer is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    None,
    /// Between requests.
    KeepAlive,
    /// A request has started arriving and must be complete in time.
    Request,
}

/// One HTTP/1.1 connection; see the [module documentation](self). After a WebSocket upgrade
/// the same connection speaks WebSocket ([`ws`](super::ws)).
pub struct Http {
    state: State,
}

/// What the connection speaks now. Kept small: an idle upgraded connection costs only the
/// WebSocket's few words, while HTTP's state, which an idle WebSocket no longer needs, is
/// boxed (and freed at the upgrade).
enum State {
    Requests(Box<Requests>),
    WebSocket(WebSocketConnection),
}

/// HTTP/1.1 requests and their answers on one connection.
struct Requests {
    router: Arc<Router>,
    limits: HttpLimits,
    phase: Phase,
    /// The request being read (or just read): its buffers are reused by the next one.
    request: Request,
    /// Requests given back by offloaded handlers, their buffers ready for reuse (at most
    /// `max_pipeline`).
    spare: Vec<Request>,
    /// Bytes of the current head already searched for its end.
    scanned: usize,
    queue: VecDeque<Slot>,
    next_tag: u64,
    /// The connection's peer, once asked.
    peer: Option<Option<std::net::SocketAddr>>,
    /// Requests routed on this connection so far: each one's number in the log.
    requests_seen: u64,
    timer: Timer,
    /// Bytes of an unfinished request are held.
    partial: bool,
    /// When the request being read began arriving (`None` between requests).
    request_started: Option<Instant>,
    shutting_down: bool,
}

impl Http {
    /// A connection served by `router`, with `limits`.
    pub fn new(router: Arc<Router>, limits: HttpLimits) -> Http {
        Http {
            state: State::Requests(Box::new(Requests::new(router, limits))),
        }
    }
}

impl Requests {
    fn new(router: Arc<Router>, limits: HttpLimits) -> Requests {
        Requests {
            router,
            limits,
            phase: Phase::Head,
            request: Request::default(),
            spare: Vec::new(),
            scanned: 0,
            queue: VecDeque::new(),
            next_tag: 0,
            peer: None,
            requests_seen: 0,
            timer: Timer::None,
            partial: false,
            request_started: None,
            shutting_down: false,
        }
    }

    /// Where the request head that starts `input` ends (after its empty line), if it is in.
    fn head_end(&mut self, input: &[u8]) -> Option<usize> {
        // Resume a little before where the last search stopped: the terminator may straddle.
        let from = self.scanned.saturating_sub(3);
        for (offset, &byte) in input[from..].iter().enumerate() {
            if byte != b'\n' {
                continue;
            }
            let newline = from + offset;
            match (input.get(newline + 1), input.get(newline + 2)) {
                (Some(b'\n'), _) => return Some(newline + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(newline + 3),
                _ => {}
            }
        }
        self.scanned = input.len();
        None
    }

    /// When the request now being read began: when its first byte arrived, or now.
    fn take_started(&mut self, now: Instant) -> Instant {
        self.request_started.take().unwrap_or(now)
    }

    /// Answers `status` to a request that broke a rule, then closes.
    fn reject(&mut self, status: u16, why: &'static str, now: Instant) {
        log::debug!("http: {status} {why}");
        let started = self.take_started(now);
        self.queue.push_back(Slot {
            meta: Meta {
                head_only: false,
                close: true,
                keep_alive_1_0: false,
            },
            answer: Answer::Ready(Response::text(status, format!("{why}\n"))),
            rejection: Some(why),
            started,
        });
        self.phase = Phase::Done;
    }

    /// The request now whole in `self.request`: routes it, and writes its answer at once if
    /// nothing is owed before it, else queues the answer (or, if offloaded, its place).
    fn dispatch(&mut self, mut meta: Meta, ctx: &mut Context<'_>) {
        let started = self.take_started(ctx.now());
        // A request finished after a graceful shutdown began is the connection's last.
        meta.close |= self.shutting_down;
        self.request.set_peer_identity(ctx.identity.cloned());
        // Asked of the socket once per connection, not per request.
        let peer = *self.peer.get_or_insert_with(|| ctx.peer_addr());
        let forwarded = match peer {
            Some(peer) if !self.router.forwarders().is_empty() => {
                let client =
                    forwarded::client_ip(&self.request, peer.ip(), self.router.forwarders());
                (client != peer.ip()).then_some(client)
            }
            _ => None,
        };
        self.request.set_peer(peer, forwarded);
        self.requests_seen += 1;
        // With a log line to carry it, the request's trace is settled now: a valid incoming
        // `traceparent`'s, or a new one. Without, nothing is looked at here (the hot path);
        // `Request::trace_id` reads the header if a handler asks.
        let logged = log::log_enabled!(target: "socketserver::http::request", log::Level::Debug);
        let trace_id = logged.then(|| {
            self.request
                .incoming_trace_id()
                .unwrap_or_else(trace::TraceId::random)
        });
        self.request.set_trace_id(trace_id);
        // Taken now: an offloaded request leaves with its job.
        let described = logged.then(|| {
            (
                self.request.method().to_string(),
                self.request.path().to_string(),
            )
        });
        let request = &self.request;
        let answer = match self.router.route_for(request.method(), request.path()) {
            None => Answer::Ready(self.not_routed(request)),
            Some((Runs::Inline, handler)) => Answer::Ready(handler(request)),
            Some((Runs::Offloaded, handler)) => {
                let handler = handler.clone();
                let tag = self.next_tag;
                self.next_tag += 1;
                // The request goes with the job; its buffers come back with the answer.
                let next = self.spare.pop().unwrap_or_default();
                let request = std::mem::replace(&mut self.request, next);
                let job = move || {
                    let response = handler(&request);
                    Offloaded { response, request }
                };
                match ctx.offload(tag, job) {
                    Ok(()) => Answer::Pending(tag),
                    Err(error) => {
                        log::debug!("http: offload refused: {error}");
                        Answer::Ready(Response::text(503, "busy, try again\n"))
                    }
                }
            }
        };
        if let Some((method, path)) = described {
            let status = match &answer {
                Answer::Ready(response) => response.status.to_string(),
                Answer::Pending(_) => "offloaded".to_string(),
                Answer::Continue => "100".to_string(),
            };
            log::debug!(
                target: "socketserver::http::request",
                "conn={} request={} trace={} peer={} method={} path={:?} status={status}",
                ctx.id(),
                self.requests_seen,
                trace_id.map_or_else(String::new, |id| id.to_string()),
                peer.map_or_else(|| "-".to_string(), |peer| peer.to_string()),
                method,
                path,
            );
        }
        match answer {
            // Nothing is owed before it: written now, without taking a place in the queue.
            // (While shutting down every answer queues, so that the last can still be marked
            // as the connection's last.)
            Answer::Ready(response) if self.queue.is_empty() && !self.shutting_down => {
                let now = ctx.measurement_now();
                with_date_at(now, |date| send(&response, meta, started, date, ctx));
                if meta.close {
                    ctx.close();
                }
            }
            answer => self.queue.push_back(Slot {
                meta,
                answer,
                rejection: None,
                started,
            }),
        }
        self.phase = if meta.close { Phase::Done } else { Phase::Head };
        // The next request gets a deadline of its own.
        self.timer = Timer::None;
    }

    /// The answer to a request no route takes: 405 with the methods the path does allow, or
    /// 404 if none does.
    fn not_routed(&self, request: &Request) -> Response {
        if request.method() == "GET" && self.router.find_websocket(request.path()).is_some() {
            return Response::text(426, "this path speaks WebSocket\n")
                .header("Upgrade", "websocket")
                .header("Connection", "Upgrade");
        }
        match self.router.allowed_methods(request.path()) {
            Some(allow) => Response::text(405, "method not allowed\n").header("Allow", allow),
            None => Response::text(404, "not found\n"),
        }
    }

    /// Writes the answers at the front of the queue that are ready, in order, straight into
    /// the connection's output.
    fn flush(&mut self, ctx: &mut Context<'_>) {
        let ready = self
            .queue
            .front()
            .is_some_and(|slot| !matches!(slot.answer, Answer::Pending(_)));
        if ready {
            // One clock read serves the `Date` of every answer and their latencies.
            let now = ctx.measurement_now();
            let closed = with_date_at(now, |date| self.write_ready(date, ctx));
            if closed {
                return;
            }
        }
        if self.queue.is_empty() && matches!(self.phase, Phase::Done) {
            ctx.close();
        }
    }

    /// Writes the ready answers at the front of the queue; returns whether one of them ended
    /// the connection.
    fn write_ready(&mut self, date: &[u8; DATE_LENGTH], ctx: &mut Context<'_>) -> bool {
        while let Some(slot) = self.queue.front() {
            if matches!(slot.answer, Answer::Pending(_)) {
                break;
            }
            let Some(slot) = self.queue.pop_front() else {
                break;
            };
            let close = slot.meta.close;
            match &slot.answer {
                Answer::Continue => ctx.write(CONTINUE),
                Answer::Ready(response) => send(response, slot.meta, slot.started, date, ctx),
                Answer::Pending(_) => {}
            }
            if close {
                self.queue.clear();
                match slot.rejection {
                    Some(why) => ctx.fail(why),
                    None => ctx.close(),
                }
                return true;
            }
        }
        false
    }

    /// No more requests will be read: the last queued answer closes the connection.
    fn finish(&mut self, ctx: &mut Context<'_>) {
        self.phase = Phase::Done;
        // A `100 Continue` for a body that will not be read is owed to nobody.
        while matches!(
            self.queue.back(),
            Some(Slot {
                answer: Answer::Continue,
                ..
            })
        ) {
            self.queue.pop_back();
        }
        match self.queue.back_mut() {
            Some(last) => last.meta.close = true,
            None => ctx.close(),
        }
    }

    /// Arms the timer the connection's state calls for.
    fn update_timer(&mut self, ctx: &mut Context<'_>) {
        let waiting_for_answers = !self.queue.is_empty();
        let want = if waiting_for_answers || matches!(self.phase, Phase::Done) {
            Timer::None
        } else if self.partial {
            Timer::Request
        } else {
            Timer::KeepAlive
        };
        if want == self.timer {
            // A request's deadline runs from its first byte: more bytes do not extend it.
            return;
        }
        match want {
            Timer::None => ctx.cancel_timer(),
            // Both judge the client's input: they stand still while the server, held up by a
            // client not reading its answers, reads nothing.
            Timer::KeepAlive => ctx.set_input_timer(self.limits.keep_alive_timeout),
            Timer::Request => ctx.set_input_timer(self.limits.request_timeout),
        }
        self.timer = want;
    }

    /// Reads requests from `input`; returns the bytes used and, if a request upgraded the
    /// connection to WebSocket, the WebSocket (the bytes after that request are its).
    fn read_requests(
        &mut self,
        input: &[u8],
        ctx: &mut Context<'_>,
    ) -> (usize, Option<WebSocketConnection>) {
        let mut at = 0;
        loop {
            if self.queue.len() >= self.limits.max_pipeline {
                // Send what is ready to make room; if an answer still being computed holds the
                // queue, the rest waits, and so does the socket: the driver reads no more until
                // that job is done, then offers what it holds again.
                self.flush(ctx);
                if self.queue.len() >= self.limits.max_pipeline {
                    ctx.hold_input();
                    break;
                }
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return (input.len(), None),
                Phase::Head => {
                    self.phase = Phase::Head;
                    // Empty lines before a request are ignored (RFC 9112, section 2.2).
                    if self.scanned == 0 {
                        at += input[at..]
                            .iter()
                            .take_while(|&&byte| byte == b'\r' || byte == b'\n')
                            .count();
                    }
                    let rest = &input[at..];
                    if rest.is_empty() {
                        break;
                    }
                    self.request_started.get_or_insert(ctx.now());
                    // A head that arrives whole (the usual case) is parsed at once. One that
                    // arrives in pieces is parsed only when the search for its end, resumed
                    // where it stopped, finds it: linear, however small the pieces.
                    let parsed = if self.scanned == 0 {
                        parse_head(rest, &self.limits, &mut self.request)
                    } else {
                        match self.head_end(rest) {
                            Some(end) => parse_head(&rest[..end], &self.limits, &mut self.request),
                            None => Ok(None),
                        }
                    };
                    match parsed {
                        Err((status, why)) => {
                            self.reject(status, why, ctx.now());
                            return (input.len(), None);
                        }
                        Ok(None) => {
                            if rest.len() > self.limits.max_head_bytes {
                                self.reject(431, "request head too large", ctx.now());
                                return (input.len(), None);
                            }
                            self.scanned = self.scanned.max(rest.len());
                            break;
                        }
                        Ok(Some((_, end))) if end > self.limits.max_head_bytes => {
                            self.reject(431, "request head too large", ctx.now());
                            return (input.len(), None);
                        }
                        Ok(Some((head, end))) => {
                            self.scanned = 0;
                            if let Some(route) = self.upgrade_route() {
                                // Every answer owed goes out before the switch; one still
                                // being computed holds the upgrade (it is parsed again).
                                self.flush(ctx);
                                if !self.queue.is_empty() {
                                    ctx.hold_input();
                                    break;
                                }
                                at += end;
                                match self.upgrade(head, route, ctx) {
                                    Some(websocket) => return (at, Some(websocket)),
                                    None => continue,
                                }
                            }
                            at += end;
                            self.start_request(head, at < input.len(), ctx);
                        }
                    }
                }
                Phase::Body(mut reader, meta) => {
                    match reader.read(&input[at..], &mut self.request) {
                        Err((status, why)) => {
                            self.reject(status, why, ctx.now());
                            return (input.len(), None);
                        }
                        Ok((used, done)) => {
                            at += used;
                            if !done {
                                self.phase = Phase::Body(reader, meta);
                                break;
                            }
                            self.dispatch(meta, ctx);
                        }
                    }
                }
            }
        }
        (at, None)
    }

    /// The WebSocket route an upgrade request (`Upgrade: websocket`) is addressed to, if any.
    fn upgrade_route(&self) -> Option<Arc<WebSocketRoute>> {
        if !handshake::is_upgrade(&self.request) {
            return None;
        }
        self.router.find_websocket(self.request.path())
    }

    /// Answers an upgrade request: `101 Switching Protocols` and the open WebSocket, or the
    /// refusal the handshake check (or the route) answered, queued like any answer.
    fn upgrade(
        &mut self,
        head: Head,
        route: Arc<WebSocketRoute>,
        ctx: &mut Context<'_>,
    ) -> Option<WebSocketConnection> {
        let started = self.take_started(ctx.now());
        let request = &self.request;
        // A refusal is an ordinary answer; it ends the connection if the request asked to, if
        // the server is shutting down, or if a body follows (a body behind an upgrade request
        // is not read).
        let ends = !head.keep_alive || head.framing.is_some() || self.shutting_down;
        let refused = |requests: &mut Requests, response: Response, ctx: &mut Context<'_>| {
            requests.queue.push_back(Slot {
                meta: Meta {
                    head_only: false,
                    close: ends,
                    keep_alive_1_0: false,
                },
                answer: Answer::Ready(response),
                rejection: None,
                started,
            });
            if ends {
                requests.phase = Phase::Done;
            }
            requests.flush(ctx);
            None
        };
        if head.framing.is_some() {
            let response = Response::text(400, "an upgrade request with a body\n");
            return refused(self, response, ctx);
        }
        let options = &route.options;
        let origin_allowed = |origin: Option<&str>| route.origin_allowed(origin);
        let terms = handshake::Terms {
            subprotocols: &options.subprotocols,
            deflate: options.deflate.as_ref(),
            origin_allowed: &origin_allowed,
        };
        let accepted = match handshake::check(request, &terms) {
            Ok(accepted) => accepted,
            Err(response) => return refused(self, response, ctx),
        };
        let handler = match route.make_handler(request) {
            Ok(handler) => handler,
            Err(response) => return refused(self, response, ctx),
        };
        let subprotocol = accepted
            .subprotocol
            .and_then(|index| options.subprotocols.get(index))
            .map(String::as_str);
        ctx.write_with(|out| handshake::write_switching_protocols(out, &accepted, subprotocol));
        ctx.record_request(101, started);
        Some(WebSocketConnection::open(
            route.clone(),
            handler,
            &accepted,
            ctx,
        ))
    }

    /// A head is in: reads its body next, or dispatches it at once.
    fn start_request(&mut self, head: Head, body_arriving: bool, ctx: &mut Context<'_>) {
        let Head {
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let meta = Meta {
            head_only: self.request.method() == "HEAD",
            close: !keep_alive || self.shutting_down,
            keep_alive_1_0: keep_alive && self.request.minor_version() == 0,
        };
        let Some(framing) = framing else {
            return self.dispatch(meta, ctx);
        };
        if expect_continue && !body_arriving {
            self.queue.push_back(Slot {
                meta: Meta {
                    close: false,
                    ..meta
                },
                answer: Answer::Continue,
                rejection: None,
                started: ctx.now(),
            });
        }
        let max_trailer_bytes = self.limits.max_head_bytes;
        let reader = BodyReader::new(
            framing,
            self.limits.max_body_bytes,
            max_trailer_bytes,
            &mut self.request,
        );
        self.phase = Phase::Body(reader, meta);
    }
}

impl Requests {
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        self.update_timer(ctx);
    }

    fn on_read(
        &mut self,
        input: &[u8],
        ctx: &mut Context<'_>,
    ) -> (usize, Option<WebSocketConnection>) {
        let (used, upgraded) = self.read_requests(input, ctx);
        if upgraded.is_some() {
            return (used, upgraded);
        }
        self.partial = used < input.len() || matches!(self.phase, Phase::Body(..));
        if self.shutting_down && !self.partial {
            // Shutting down, and no request is under way any more: this is the end.
            self.finish(ctx);
        }
        self.flush(ctx);
        self.update_timer(ctx);
        (used, None)
    }

    fn on_eof(&mut self, ctx: &mut Context<'_>) {
        // Answer what was read; an unfinished request is dropped with the input.
        self.finish(ctx);
        self.flush(ctx);
    }

    fn on_timer(&mut self, ctx: &mut Context<'_>) {
        match self.timer {
            Timer::KeepAlive => ctx.close(),
            Timer::Request => {
                self.reject(408, "request not complete in time", ctx.now());
                self.flush(ctx);
            }
            Timer::None => {}
        }
        self.timer = Timer::None;
    }

    fn on_job_done(&mut self, tag: u64, result: JobResult, ctx: &mut Context<'_>) {
        let response = match result {
            Ok(output) => match output.downcast::<Offloaded>() {
                Ok(offloaded) => {
                    let Offloaded {
                        response,
                        mut request,
                    } = *offloaded;
                    if self.spare.len() < self.limits.max_pipeline {
                        request.clear();
                        self.spare.push(request);
                    }
                    response
                }
                Err(_) => Response::text(500, "internal error\n"),
            },
            Err(failure) => {
                log::warn!("http handler panicked: {}", failure.message);
                Response::text(500, "internal error\n")
            }
        };
        if let Some(slot) = self
            .queue
            .iter_mut()
            .find(|slot| matches!(slot.answer, Answer::Pending(pending) if pending == tag))
        {
            slot.answer = Answer::Ready(response);
        }
        self.flush(ctx);
        self.update_timer(ctx);
    }

    fn on_shutdown(&mut self, ctx: &mut Context<'_>) {
        self.shutting_down = true;
        if self.partial && self.queue.is_empty() && !matches!(self.phase, Phase::Done) {
            // A request has begun arriving and nothing else is owed: read the rest and answer
            // it with `Connection: close` (bounded by the request timeout and the shutdown
            // deadline), so the client learns that this connection ends.
            return;
        }
        // Requests already read are answered (the last with `Connection: close`); an idle
        // connection closes now.
        self.finish(ctx);
        self.flush(ctx);
        self.update_timer(ctx);
    }
}

impl Protocol for Http {
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        if let State::Requests(requests) = &mut self.state {
            requests.on_open(ctx);
        }
    }

    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        let requests = match &mut self.state {
            State::WebSocket(websocket) => return websocket.on_read(input, ctx),
            State::Requests(requests) => requests,
        };
        let (used, upgraded) = requests.on_read(input, ctx);
        let Some(mut websocket) = upgraded else {
            return used;
        };
        // The bytes right behind the upgrade request are the first frames: not one is lost.
        let framed = websocket.on_read(&input[used..], ctx);
        self.state = State::WebSocket(websocket);
        used + framed
    }

    fn on_eof(&mut self, ctx: &mut Context<'_>) {
        match &mut self.state {
            State::Requests(requests) => requests.on_eof(ctx),
            State::WebSocket(websocket) => websocket.on_eof(ctx),
        }
    }

    fn on_timer(&mut self, ctx: &mut Context<'_>) {
        match &mut self.state {
            State::Requests(requests) => requests.on_timer(ctx),
            State::WebSocket(websocket) => websocket.on_timer(ctx),
        }
    }

    fn on_job_done(&mut self, tag: u64, result: JobResult, ctx: &mut Context<'_>) {
        match &mut self.state {
            State::Requests(requests) => requests.on_job_done(tag, result, ctx),
            State::WebSocket(websocket) => websocket.on_job_done(tag, result, ctx),
        }
    }

    fn on_shutdown(&mut self, ctx: &mut Context<'_>) {
        match &mut self.state {
            State::Requests(requests) => requests.on_shutdown(ctx),
            State::WebSocket(websocket) => websocket.on_shutdown(ctx),
        }
    }

    fn on_drain(&mut self, ctx: &mut Context<'_>) {
        if let State::WebSocket(websocket) = &mut self.state {
            websocket.on_drain(ctx);
        }
    }

    fn on_notice(&mut self, notice: &crate::protocol::Notice, ctx: &mut Context<'_>) {
        if let State::WebSocket(websocket) = &mut self.state {
            websocket.on_notice(notice, ctx);
        }
    }

    fn on_closed(&mut self, ctx: &mut Context<'_>) {
        if let State::WebSocket(websocket) = &mut self.state {
            websocket.on_closed(ctx);
        }
    }
}

/// Writes `response` to the connection's output, as `meta` says, and counts it with the
/// latency since `started`.
fn send(
    response: &Response,
    meta: Meta,
    started: Instant,
    date: &[u8; DATE_LENGTH],
    ctx: &mut Context<'_>,
) {
    ctx.write_with(|out| write_response_dated(out, response, SERVER_NAME, meta.flags(), date));
    ctx.record_request(response.status, started);
}

/// What a parsed request head says about the body and the connection.
struct Head {
    framing: Option<Framing>,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses the head that starts `bytes` into `request` (emptied first): `None` while it is
/// incomplete, else what the head says and its length (through its empty line).
fn parse_head(
    bytes: &[u8],
    limits: &HttpLimits,
    request: &mut Request,
) -> Result<Option<(Head, usize)>, body::Rejection> {
    // Left uninitialised: httparse writes each slot it uses, and zeroing 128 slots (4 KiB) on
    // every request cost more than parsing the request itself.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(bytes, &mut slots[..limits.max_headers]) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err((431, "too many header fields")),
        Err(_) => return Err((400, "malformed request head")),
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err((400, "malformed request line"));
    };
    let (path, query) = split_target(target).ok_or((400, "malformed request target"))?;
    request.clear();
    request.set_line(method, path, query, minor_version);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut hosts = 0;
    let mut expect_continue = false;
    for header in parsed.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|&byte| byte == b',') {
                let length =
                    parse_length(part.trim_ascii()).ok_or((400, "malformed Content-Length"))?;
                if content_length.is_some_and(|seen| seen != length) {
                    return Err((400, "conflicting Content-Length"));
                }
                content_length = Some(length);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in value.split(|&byte| byte == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if !coding.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err((501, "unsupported transfer coding"));
                }
                chunked = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&byte| byte == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if !valid_host(value) {
                return Err((400, "invalid Host header"));
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        request.push_header(name, value);
    }
    if transfer_encoding && content_length.is_some() {
        // Two framings: a request smuggling attempt, or a broken client (RFC 9112, 6.3).
        return Err((400, "both Content-Length and Transfer-Encoding"));
    }
    if transfer_encoding && !chunked {
        return Err((501, "unsupported transfer coding"));
    }
    if hosts > 1 {
        return Err((400, "more than one Host header"));
    }
    if minor_version >= 1 && hosts == 0 {
        return Err((400, "no Host header"));
    }
    let framing = match content_length {
        _ if chunked => Some(Framing::Chunked(Chunk::Size)),
        Some(length) if length > limits.max_body_bytes => {
            return Err((413, "request body too large"))
        }
        Some(0) | None => None,
        Some(length) => Some(Framing::Length(length)),
    };
    let head = Head {
        framing,
        keep_alive: if minor_version >= 1 {
            !close
        } else {
            // An HTTP/1.0 message with Transfer-Encoding has framing a 1.0 peer may not share:
            // answer it, then close (RFC 9112, section 6.1).
            keep_alive_token && !close && !transfer_encoding
        },
        expect_continue: expect_continue && minor_version >= 1,
    };
    Ok(Some((head, length)))
}

/// The path and query of a request target. An origin-form target (`/path?query`) is split at
/// its `?`; an absolute-form one (`http://host/path?query`, scheme in any case) gives its path
/// (`/` when it has none) and query; `*` (for OPTIONS) stays as it is.
fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    let origin = if target.starts_with('/') || target == "*" {
        target
    } else {
        let after_scheme = strip_prefix_ignore_case(target, "http://")
            .or_else(|| strip_prefix_ignore_case(target, "https://"))?;
        let authority_end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
        let rest = &after_scheme[authority_end..];
        if !rest.starts_with('/') {
            return Some(("/", rest.strip_prefix('?')));
        }
        rest
    };
    // A byte search: paths are short, shorter than a `str` pattern search takes to set up.
    Some(match origin.bytes().position(|byte| byte == b'?') {
        Some(mark) => (&origin[..mark], Some(&origin[mark + 1..])),
        None => (origin, None),
    })
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// A Host value as RFC 9110 (section 7.2) has it: `uri-host [ ":" port ]`, the host an IP
/// literal in brackets or a reg-name (unreserved characters, percent-encodings, sub-delims);
/// empty is allowed (a target without an authority).
fn valid_host(value: &[u8]) -> bool {
    let (host_ok, after_host) = match value.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&byte| byte == b']') {
            Some(close) => {
                let inside = &literal[..close];
                let ok = !inside.is_empty()
                    && inside.iter().all(|&byte| IP_LITERAL_BYTES[byte as usize]);
                (ok, &literal[close + 1..])
            }
            None => (false, &b""[..]),
        },
        None => {
            let end = value
                .iter()
                .position(|&byte| byte == b':')
                .unwrap_or(value.len());
            (reg_name(&value[..end]), &value[end..])
        }
    };
    let port_ok = match after_host.strip_prefix(b":") {
        Some(port) => port.iter().all(u8::is_ascii_digit),
        None => after_host.is_empty(),
    };
    host_ok && port_ok
}

/// A reg-name of RFC 3986: unreserved characters, `%XX` and sub-delims.
fn reg_name(name: &[u8]) -> bool {
    // The usual name has no escapes: one pass over the table settles it.
    if name.iter().all(|&byte| REG_NAME_BYTES[byte as usize]) {
        return true;
    }
    let mut at = 0;
    while at < name.len() {
        let byte = name[at];
        if byte == b'%' {
            let escaped = name.get(at + 1..at + 3);
            if !escaped.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            at += 3;
            continue;
        }
        if !REG_NAME_BYTES[byte as usize] {
            return false;
        }
        at += 1;
    }
    true
}

/// Bytes a reg-name holds as they are: unreserved characters and sub-delims (RFC 3986). A
/// table, since every request's Host is checked byte by byte.
const REG_NAME_BYTES: [bool; 256] = alphanumeric_and(b"-._~!$&'()*+,;=");
/// Bytes an IP literal (`[…]`) may hold: what a reg-name may, and colons.
const IP_LITERAL_BYTES: [bool; 256] = alphanumeric_and(b":-._~!$&'()*+,;=");

/// The set of ASCII letters, digits and `extra`, as a table indexed by byte.
const fn alphanumeric_and(extra: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        set[byte] = (byte as u8).is_ascii_alphanumeric();
        byte += 1;
    }
    let mut at = 0;
    while at < extra.len() {
        set[extra[at] as usize] = true;
        at += 1;
    }
    set
}

/// A Content-Length value: decimal digits only, no sign, no overflow.
fn parse_length(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
