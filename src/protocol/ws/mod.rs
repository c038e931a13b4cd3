//! WebSocket (RFC 6455) as a sans-IO state machine, entered from [`Http`](super::Http) when a
//! request upgrades on a [`Router::websocket`](super::http::Router::websocket) route, so a page
//! and its WebSocket share one server and one port, on every concurrency model.
//!
//! A server is a [`WebSocketHandler`] per connection: `on_open`, `on_message` (a whole text or
//! binary message: fragments are joined, text is checked to be UTF-8, compressed messages are
//! inflated), `on_drain`, `on_close`. Through its [`WebSocket`] handle it sends messages,
//! pings and closes, and sees how much output is waiting.
//!
//! ```no_run
//! use std::sync::Arc;
//! use socketserver::protocol::http::{HttpLimits, Response, Router};
//! use socketserver::protocol::ws::{Message, WebSocket, WebSocketHandler, WebSocketOptions, WebSocketRoute};
//! use socketserver::{protocol::Http, Server};
//!
//! struct Shout;
//!
//! impl WebSocketHandler for Shout {
//!     fn on_message(&mut self, message: Message<'_>, ws: &mut WebSocket<'_, '_>) {
//!         if let Message::Text(text) = message {
//!             ws.send_text(&text.to_uppercase());
//!         }
//!     }
//! }
//!
//! let server = Server::bind("127.0.0.1:8080")?;
//! let options = WebSocketOptions::from_config(server.config());
//! let router = Arc::new(
//!     Router::new()
//!         .get("/", |_| Response::text(200, "try ws://127.0.0.1:8080/shout"))
//!         .websocket("/shout", WebSocketRoute::new(options, |_request| Shout)),
//! );
//! let limits = HttpLimits::from_config(server.config());
//! server.serve(move || Http::new(router.clone(), limits))?;
//! # Ok::<(), socketserver::Error>(())
//! ```
//!
//! # The rules kept
//!
//! Every frame a client sends must be masked, every frame the server sends is not; lengths must
//! be minimal; control frames carry at most 125 bytes, are never fragmented, and may come between
//! fragments; RSV bits only with permessage-deflate (RSV1, first frame of a message); text is
//! validated as it arrives, across fragments, failing at the first bad byte. A broken rule is
//! answered with a close frame of its code and the connection ends: 1002 (protocol error), 1007
//! (not UTF-8), 1009 (a frame or message over [`WebSocketOptions::max_message_bytes`], counted
//! after inflation). A close frame from the peer is answered with one and the server ends the
//! TCP connection; a peer that does not answer the server's close within
//! [`WebSocketOptions::close_timeout`] is cut. A graceful shutdown sends 1001. A handler that
//! panics gets its connection closed with 1011 and the server's error hook told.
//!
//! # Heartbeats
//!
//! A connection quiet for [`WebSocketOptions::ping_interval`] (25 s by default, under the 60 s
//! that nginx and most proxies let an upstream stay silent) is pinged, and closed if nothing at
//! all arrives within [`WebSocketOptions::ping_timeout`] (20 s) after: any frame counts as
//! life, so a busy connection is never pinged. It costs one timer per quiet connection per
//! interval, and nothing per message. The client's pings are answered with pongs carrying the
//! same payload, even while its output is backed up: a WebSocket connection manages its own
//! backpressure ([`Context::manage_own_backpressure`](super::Context::manage_own_backpressure))
//! and keeps reading.
//!
//! # Backpressure
//!
//! [`WebSocket::send`] answers what became of a message instead of hiding a queue:
//! [`SendStatus::Sent`]; [`SendStatus::Backpressure`] (queued, and the output waiting is now
//! over the soft limit: slow down, `on_drain` follows when it drains);
//! [`SendStatus::Dropped`] (not queued: the output waiting was already over
//! [`WebSocketOptions::max_backpressure`]; with
//! [`WebSocketOptions::close_on_backpressure_limit`] the connection is closed with 1008
//! instead). Memory for a peer that does not read is so bounded by the limit.
//!
//! # Memory
//!
//! An idle WebSocket holds no buffer: a message is assembled only while it arrives, and
//! permessage-deflate, by default, keeps no context between messages (see [`deflate`] for what
//! context takeover costs).

pub mod close;
mod connection;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod utf8;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use connection::{Link, WebSocketConnection};
pub use deflate::DeflateOptions;

use super::http::{Request, Response};
use super::Context;
use crate::config::Config;
use crate::reactor::token::ConnId;

/// Every per-connection limit of a WebSocket route, with its default, in one place (as
/// uWebSockets' `WebSocketBehavior`). [`WebSocketOptions::from_config`] takes them from a
/// [`Config`]; `Default` is the default `Config`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketOptions {
    /// See [`Config::ws_max_message_bytes`].
    pub max_message_bytes: usize,
    /// See [`Config::ws_max_backpressure`].
    pub max_backpressure: usize,
    /// Output waiting above which `send` answers [`SendStatus::Backpressure`]: the server's
    /// [`Config::write_high_watermark`].
    pub backpressure_soft_limit: usize,
    /// Close the connection with 1008 instead of dropping a message sent past
    /// `max_backpressure`. Default false.
    pub close_on_backpressure_limit: bool,
    /// See [`Config::ws_ping_interval`].
    pub ping_interval: Option<Duration>,
    /// See [`Config::ws_ping_timeout`].
    pub ping_timeout: Duration,
    /// See [`Config::ws_close_timeout`].
    pub close_timeout: Duration,
    /// See [`Config::ws_fragment_bytes`].
    pub fragment_bytes: usize,
    /// Subprotocols the route speaks, the preferred first: the first one the client also
    /// offers is chosen (none is required). Default none.
    pub subprotocols: Vec<String>,
    /// permessage-deflate, offered when the client asks for it. Default off.
    pub deflate: Option<DeflateOptions>,
}

impl WebSocketOptions {
    /// The WebSocket limits of `config`, no subprotocols, no compression.
    pub fn from_config(config: &Config) -> WebSocketOptions {
        WebSocketOptions {
            max_message_bytes: config.ws_max_message_bytes,
            max_backpressure: config.ws_max_backpressure,
            backpressure_soft_limit: config.write_high_watermark,
            close_on_backpressure_limit: false,
            ping_interval: config.ws_ping_interval,
            ping_timeout: config.ws_ping_timeout,
            close_timeout: config.ws_close_timeout,
            fragment_bytes: config.ws_fragment_bytes,
            subprotocols: Vec::new(),
            deflate: None,
        }
    }

    /// These options with permessage-deflate offered.
    pub fn with_deflate(mut self, deflate: DeflateOptions) -> WebSocketOptions {
        self.deflate = Some(deflate);
        self
    }
}

impl Default for WebSocketOptions {
    fn default() -> Self {
        WebSocketOptions::from_config(&Config::default())
    }
}

/// A whole WebSocket message, as received or to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
        }
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A message framed once to go to many connections ([`WebSocket::send_prepared`]): the frame
/// (a single final frame, whatever the route's fragment size) is built when the message is
/// prepared, and its compressed frame, for each server window a connection agreed, the first
/// time a connection that compresses needs it. Any thread may prepare and share it.
#[derive(Debug)]
pub struct Prepared {
    text: bool,
    payload_len: usize,
    /// The uncompressed frame.
    frame: crate::protocol::SharedBytes,
    /// Compressed frames by server window bits (index `bits - 8`), made on first use: `None`
    /// inside when compressing did not make the message smaller (it then goes uncompressed).
    compressed: [std::sync::OnceLock<Option<crate::protocol::SharedBytes>>; 8],
}

impl Prepared {
    /// Frames `message` (unmasked, as a server sends).
    pub fn new(message: Message<'_>) -> Prepared {
        let (opcode, payload) = match message {
            Message::Text(text) => (frame::Opcode::Text, text.as_bytes()),
            Message::Binary(bytes) => (frame::Opcode::Binary, bytes),
        };
        let mut framed = Vec::with_capacity(payload.len() + 10);
        frame::write_frame(&mut framed, true, false, opcode, payload, None);
        Prepared {
            text: matches!(message, Message::Text(_)),
            payload_len: payload.len(),
            frame: framed.into(),
            compressed: Default::default(),
        }
    }

    /// A text message.
    pub fn text(text: &str) -> Prepared {
        Prepared::new(Message::Text(text))
    }

    /// The uncompressed frame's bytes (header and payload).
    pub fn frame(&self) -> &crate::protocol::SharedBytes {
        &self.frame
    }

    /// The payload's length in bytes.
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// The payload, as framed.
    fn payload(&self) -> &[u8] {
        &self.frame[self.frame.len() - self.payload_len..]
    }

    /// The message itself (its payload, read from the frame).
    pub(crate) fn message(&self) -> Message<'_> {
        match (self.text, std::str::from_utf8(self.payload())) {
            // Text was a `&str` when it was prepared: it is UTF-8.
            (true, Ok(text)) => Message::Text(text),
            _ => Message::Binary(self.payload()),
        }
    }

    /// The frame compressed with a fresh context and `window_bits`, made once; `None` when
    /// compression gains nothing.
    pub(crate) fn compressed(
        &self,
        level: u32,
        window_bits: u8,
    ) -> Option<&crate::protocol::SharedBytes> {
        let slot = self
            .compressed
            .get(usize::from(window_bits.saturating_sub(8)))?;
        slot.get_or_init(|| {
            let mut compressed = Vec::new();
            deflate::compress(self.payload(), &mut compressed, None, level, window_bits);
            (compressed.len() < self.payload_len).then(|| {
                let opcode = if self.text {
                    frame::Opcode::Text
                } else {
                    frame::Opcode::Binary
                };
                let mut framed = Vec::with_capacity(compressed.len() + 10);
                frame::write_frame(&mut framed, true, true, opcode, &compressed, None);
                framed.into()
            })
        })
        .as_ref()
    }
}

/// What became of a message handed to [`WebSocket::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Queued (or already written), with the output waiting under the soft limit.
    Sent,
    /// Queued, but the output waiting is now over the soft limit: the peer is slower than the
    /// sender. [`WebSocketHandler::on_drain`] follows when it has drained.
    Backpressure,
    /// Not queued: the output waiting was over [`WebSocketOptions::max_backpressure`].
    Dropped,
    /// Not queued: the connection is closing (a close frame was sent).
    Closed,
}

/// A WebSocket server's code for one connection. Every method runs on the connection's thread
/// (the event loop: keep it quick, or offload through the context's worker pool).
pub trait WebSocketHandler: Send + 'static {
    /// The handshake is done: the connection is open.
    fn on_open(&mut self, ws: &mut WebSocket<'_, '_>) {
        let _ = ws;
    }

    /// A whole message arrived.
    fn on_message(&mut self, message: Message<'_>, ws: &mut WebSocket<'_, '_>);

    /// A [`Notice`](crate::protocol::Notice) another thread sent to this connection (see
    /// [`Context::mailbox`](crate::protocol::Context::mailbox)): a pub/sub hub's delivery.
    fn on_notice(&mut self, notice: &crate::protocol::Notice, ws: &mut WebSocket<'_, '_>) {
        let _ = (notice, ws);
    }

    /// A job offloaded through [`WebSocket::context`] (`Context::offload`) finished.
    fn on_job_done(&mut self, tag: u64, result: super::JobResult, ws: &mut WebSocket<'_, '_>) {
        let _ = (tag, result, ws);
    }

    /// Output that passed the soft limit has drained back to the low watermark: sending may
    /// resume.
    fn on_drain(&mut self, ws: &mut WebSocket<'_, '_>) {
        let _ = ws;
    }

    /// The connection is over: the close handshake finished (`code` and `reason` as sent by
    /// whichever end closed), a rule was broken (the code the server sent), or the peer
    /// vanished or missed its heartbeat ([`close::ABNORMAL`], 1006). Called once.
    fn on_close(&mut self, code: u16, reason: &str) {
        let _ = (code, reason);
    }
}

/// Sends every message back as it came: `serve --protocol ws`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl WebSocketHandler for Echo {
    fn on_message(&mut self, message: Message<'_>, ws: &mut WebSocket<'_, '_>) {
        ws.send(message);
    }
}

/// A handler's view of its connection during one call: send, ping, close, and what the
/// connection is.
pub struct WebSocket<'a, 'ctx> {
    pub(crate) ctx: &'a mut Context<'ctx>,
    pub(crate) link: &'a mut Link,
}

impl<'ctx> WebSocket<'_, 'ctx> {
    /// Sends a message (fragmented past [`WebSocketOptions::fragment_bytes`], compressed if
    /// permessage-deflate was agreed and it is over the threshold) and says what became of it.
    pub fn send(&mut self, message: Message<'_>) -> SendStatus {
        self.link.send(self.ctx, message)
    }

    /// Sends a message encoded once for many connections: its frame's bytes are shared with
    /// every other connection it goes to (no copy), and with permessage-deflate agreed without
    /// server context takeover, its compressed frame is made once and shared too.
    pub fn send_prepared(&mut self, message: &Prepared) -> SendStatus {
        self.link.send_prepared(self.ctx, message)
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.send(Message::Text(text))
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, bytes: &[u8]) -> SendStatus {
        self.send(Message::Binary(bytes))
    }

    /// Sends a ping with `payload` (at most 125 bytes: a longer one is not sent, `Dropped`).
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        self.link.ping(self.ctx, payload)
    }

    /// Starts the closing handshake with `code` (1000, or 3000–4999 for an application's own)
    /// and `reason` (cut to 123 bytes). Nothing more can be sent; the connection ends when the
    /// peer answers, or after the close timeout.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.link.start_close(self.ctx, code, reason);
    }

    /// Bytes written to this connection and not yet taken by the socket.
    pub fn buffered_amount(&self) -> usize {
        self.ctx.pending_output()
    }

    /// Asks for [`WebSocketHandler::on_drain`] once the output waiting is at or below the
    /// low watermark (soon, if it already is): for a handler that stopped sending and must
    /// learn when to go on.
    pub fn notify_when_drained(&mut self) {
        self.ctx.notify_when_drained();
    }

    /// The output waiting above which [`WebSocket::send`] answers
    /// [`SendStatus::Backpressure`] ([`WebSocketOptions::backpressure_soft_limit`]).
    pub fn backpressure_soft_limit(&self) -> usize {
        self.link.options().backpressure_soft_limit
    }

    /// The peer's address (TCP peers).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.ctx.peer_addr()
    }

    /// Who the peer proved to be with a TLS client certificate; see
    /// [`Context::peer_identity`](crate::protocol::Context::peer_identity).
    pub fn peer_identity(&self) -> Option<&crate::tls::PeerIdentity> {
        self.ctx.peer_identity()
    }

    /// This connection's identity.
    pub fn id(&self) -> ConnId {
        self.ctx.id()
    }

    /// The subprotocol agreed in the handshake, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.link.subprotocol()
    }

    /// True once a close frame was sent: nothing more will be.
    pub fn is_closing(&self) -> bool {
        self.link.is_closing()
    }

    /// The connection's context, for what a handler may need beyond messages (offloading a
    /// job, the turn's clock).
    pub fn context(&mut self) -> &mut Context<'ctx> {
        self.ctx
    }
}

/// Builds a connection's handler from its upgrade request, or refuses it with an HTTP answer.
type Accept =
    dyn Fn(&Request) -> Result<Box<dyn WebSocketHandler>, Response> + Send + Sync + 'static;

/// Says whether an upgrade's `Origin` (if it has one) may connect.
type OriginCheck = dyn Fn(Option<&str>) -> bool + Send + Sync + 'static;

/// A WebSocket route: its options, how a handler is made for each connection, and who may
/// connect (the origin check).
pub struct WebSocketRoute {
    pub(crate) options: WebSocketOptions,
    accept: Box<Accept>,
    origin: Box<OriginCheck>,
}

impl std::fmt::Debug for WebSocketRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketRoute")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl WebSocketRoute {
    /// A route whose every upgrade gets the handler `make` builds from the request.
    pub fn new<H: WebSocketHandler>(
        options: WebSocketOptions,
        make: impl Fn(&Request) -> H + Send + Sync + 'static,
    ) -> WebSocketRoute {
        WebSocketRoute::accepting(options, move |request| Ok(make(request)))
    }

    /// A route that may refuse an upgrade: `accept` answers a handler, or the HTTP answer to
    /// send instead (a 401, a 404 for an unknown room, ...).
    pub fn accepting<H: WebSocketHandler>(
        options: WebSocketOptions,
        accept: impl Fn(&Request) -> Result<H, Response> + Send + Sync + 'static,
    ) -> WebSocketRoute {
        WebSocketRoute {
            options,
            accept: Box::new(move |request| {
                accept(request).map(|handler| Box::new(handler) as Box<dyn WebSocketHandler>)
            }),
            origin: Box::new(|_| true),
        }
    }

    /// Refuses (with 403) every upgrade whose `Origin` header `allowed` rejects (`None`: no
    /// `Origin`, as from a client that is not a browser). By default every origin is allowed.
    pub fn check_origin(
        mut self,
        allowed: impl Fn(Option<&str>) -> bool + Send + Sync + 'static,
    ) -> WebSocketRoute {
        self.origin = Box::new(allowed);
        self
    }

    /// The route's options.
    pub fn options(&self) -> &WebSocketOptions {
        &self.options
    }

    pub(crate) fn origin_allowed(&self, origin: Option<&str>) -> bool {
        (self.origin)(origin)
    }

    pub(crate) fn make_handler(
        &self,
        request: &Request,
    ) -> Result<Box<dyn WebSocketHandler>, Response> {
        (self.accept)(request)
    }
}

/// Shared ownership of a route, as connections hold it.
pub(crate) type SharedRoute = Arc<WebSocketRoute>;
