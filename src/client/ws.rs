//! The WebSocket client: the opening handshake from this end, then the codec in its client
//! role (every frame masked with a fresh key, masked frames from the server refused), the same
//! heartbeats, limits and closing handshake as the server's, and reconnects with backoff.
//!
//! [`WsClient`] is the sans-IO protocol: it runs on a [`Clients`](super::Clients) loop (many
//! clients on one thread) or under [`Blocking`]. [`Client`] is the blocking API
//! for scripts and tests: connect, send, receive with a timeout, close.
//!
//! # The handshake
//!
//! The client sends `GET` with `Upgrade: websocket`, `Connection: Upgrade`, version 13 and a
//! fresh random 16-byte `Sec-WebSocket-Key`; the server's answer must be `101` with the same
//! upgrade headers and `Sec-WebSocket-Accept` equal to the key's SHA-1 digest (RFC 6455,
//! section 4.1), or the connection is closed. The answer's head is bounded (16 KiB) and must
//! come within the ping timeout. No extension is offered.
//!
//! # Heartbeats
//!
//! As on the server, a connection quiet for `ping_interval` is pinged, and one that stays
//! silent for `ping_timeout` more is declared dead and cut: a server that stopped answering
//! (a crash without a reset, a lost link, a stopped process) is noticed within
//! `ping_interval + ping_timeout`, and the client reconnects.
//!
//! # Reconnects
//!
//! With a [`Backoff`], every end this side did not ask for (a reset, a dead heartbeat, a
//! refused connect, a close the server started) is followed by a new dial after the policy's
//! next delay; a close this side started is final. The handler is kept across reconnects, and
//! hears `on_open` on each connection and `on_close` at each end.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use super::backoff::{random_unit, Backoff, Retry};
use super::Blocking;
use crate::error::{Error, Result};
use crate::protocol::ws::handshake::accept_key;
use crate::protocol::ws::{
    Message, SendStatus, WebSocket, WebSocketConnection, WebSocketHandler, WebSocketOptions,
    WebSocketRoute,
};
use crate::protocol::{Context, JobResult, Notice, Protocol};

/// The longest handshake answer read.
const MAX_ANSWER_HEAD: usize = 16 * 1024;
/// Headers of the handshake answer parsed at most.
const MAX_ANSWER_HEADERS: usize = 32;
/// Messages the blocking [`Client`] holds for its caller before it stops reading (the
/// kernel's buffers then push back on the server) until the caller takes some with
/// [`Client::recv`], so a caller that only sends costs bounded memory: at most this many plus
/// what one 64 KiB read carries.
pub const MAX_QUEUED_MESSAGES: usize = 4096;

/// Dials `url` (resolved to `addr`) with `protocol` on this end: over TLS for `wss://`, which
/// needs [`ClientOptions::tls`].
pub(crate) fn dial<P: Protocol>(
    url: &Url,
    addr: SocketAddr,
    options: &ClientOptions,
    protocol: P,
) -> Result<Blocking<P>> {
    if !url.secure {
        return Ok(Blocking::dial(addr, options.connect_timeout, protocol));
    }
    #[cfg(feature = "tls")]
    if let Some(connector) = &options.tls {
        return Ok(Blocking::dial_tls(
            addr,
            options.connect_timeout,
            protocol,
            connector.clone(),
            url.host.clone(),
        ));
    }
    Err(Error::Config(format!(
        "wss://{}{}: a TLS client needs the CA to trust (ClientOptions::tls)",
        url.authority, url.path
    )))
}

/// Where a client connects: parsed from `ws://host:port/path` or `wss://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port` as written, for the `Host` header.
    pub authority: String,
    /// The request target: path and query, `/` at least.
    pub path: String,
    /// `wss://`: over TLS, the server's certificate checked against `host`.
    pub secure: bool,
    /// The host alone (no port, no brackets): the name a TLS server's certificate must carry.
    pub host: String,
}

impl Url {
    /// Parses `ws://host[:port][/path]` (port 80 by default) or `wss://…` (port 443; refused
    /// by a build without the `tls` feature).
    pub fn parse(url: &str) -> Result<Url> {
        let bad = |why: &str| Error::Config(format!("{url}: {why}"));
        let (rest, secure) = if let Some(rest) = url.strip_prefix("ws://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            if cfg!(not(feature = "tls")) {
                return Err(bad("wss:// needs TLS: this build has no `tls` feature"));
            }
            (rest, true)
        } else {
            return Err(bad("a WebSocket URL starts with ws:// or wss://"));
        };
        let default_port = if secure { 443 } else { 80 };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        // The port follows the last colon, or the `]` of an IPv6 literal; 80 if none is given.
        let port = match authority.strip_prefix('[') {
            Some(literal) => match literal.split_once(']') {
                Some((_, "")) => None,
                Some((_, rest)) => Some(
                    rest.strip_prefix(':')
                        .ok_or_else(|| bad("junk after the address"))?,
                ),
                None => return Err(bad("an unclosed [")),
            },
            None => authority.rsplit_once(':').map(|(_, port)| port),
        };
        let host = match authority.strip_prefix('[') {
            Some(literal) => literal.split(']').next().unwrap_or_default(),
            None => authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host),
        }
        .to_string();
        let authority = match port {
            None => format!("{authority}:{default_port}"),
            Some(port) if port.parse::<u16>().is_ok() => authority.to_string(),
            Some(_) => return Err(bad("the port is not a number")),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Url {
            authority,
            path,
            secure,
            host,
        })
    }

    /// The first address the host resolves to.
    pub fn resolve(&self) -> Result<SocketAddr> {
        self.authority
            .to_socket_addrs()
            .map_err(|error| Error::io(format!("resolving {}", self.authority), error))?
            .next()
            .ok_or_else(|| Error::Config(format!("{} resolves to no address", self.authority)))
    }
}

/// What a WebSocket client is: where, with which limits and heartbeats, and how it reconnects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The per-connection limits and heartbeats (the same options as a server's route).
    pub websocket: WebSocketOptions,
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// How to reconnect after an end this side did not ask for; `None`: never.
    pub backoff: Option<Backoff>,
    /// For `wss://`: which CAs to trust (and a client certificate, for mTLS). A `wss://` URL
    /// without it is refused.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConnector>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            websocket: WebSocketOptions::default(),
            connect_timeout: crate::Config::default().connect_timeout,
            backoff: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// What is the same for every connection of one client.
struct Target {
    url: Url,
    /// Holds the options the codec reads (no handler is ever made from it).
    route: Arc<WebSocketRoute>,
}

/// Where the client stands.
enum State {
    /// Between connections (and before the first).
    Down(Box<dyn WebSocketHandler>),
    /// The request is sent; waiting for the server's 101.
    Handshake {
        key: String,
        handler: Box<dyn WebSocketHandler>,
    },
    /// Upgraded: the codec in its client role.
    Open(WebSocketConnection),
    /// Only while moving between the others.
    Moving,
}

/// A WebSocket client connection as a sans-IO protocol, kept across reconnects.
pub struct WsClient {
    target: Arc<Target>,
    state: State,
    retry: Option<Retry>,
    /// An end this side asked for happened: no more reconnects.
    finished: bool,
}

impl WsClient {
    /// A client of `url` with `handler` on this end.
    pub fn new(url: Url, options: &ClientOptions, handler: impl WebSocketHandler) -> WsClient {
        let route = WebSocketRoute::accepting(options.websocket.clone(), |_| {
            Err::<crate::protocol::ws::Echo, _>(crate::protocol::http::Response::text(404, ""))
        });
        WsClient {
            target: Arc::new(Target {
                url,
                route: Arc::new(route),
            }),
            state: State::Down(Box::new(handler)),
            retry: options.backoff.clone().map(Retry::new),
            finished: false,
        }
    }

    /// True while upgraded and not closing.
    pub fn is_open(&self) -> bool {
        matches!(&self.state, State::Open(connection) if !connection.closed_here())
    }

    /// Runs `act` with the connection's [`WebSocket`] handle (to send, ping or close), if it
    /// is open. From a driver's callback: [`Blocking::with_protocol`], or a notice's handler.
    pub fn act<R>(
        &mut self,
        ctx: &mut Context<'_>,
        act: impl FnOnce(&mut WebSocket<'_, '_>) -> R,
    ) -> Option<R> {
        match &mut self.state {
            State::Open(connection) => connection.act(ctx, act),
            _ => None,
        }
    }

    /// Stops reconnecting: the current connection (if any) is the last.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    fn take_handler(&mut self) -> Option<Box<dyn WebSocketHandler>> {
        match std::mem::replace(&mut self.state, State::Moving) {
            State::Down(handler) | State::Handshake { handler, .. } => Some(handler),
            State::Open(connection) => Some(connection.into_handler()),
            State::Moving => None,
        }
    }

    /// Checks the server's answer to the handshake. `Ok(None)`: not all here yet.
    fn answer(&self, input: &[u8], key: &str) -> std::result::Result<Option<usize>, String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
        let mut answer = httparse::Response::new(&mut headers);
        let length = match answer.parse(input) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if input.len() > MAX_ANSWER_HEAD => {
                return Err("the handshake answer is too long".into())
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(format!("the handshake answer is not HTTP: {error}")),
        };
        if answer.code != Some(101) {
            return Err(format!(
                "the server answered {} instead of 101",
                answer.code.unwrap_or(0)
            ));
        }
        let header = |name: &str| {
            answer
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case(name))
                .map(|header| String::from_utf8_lossy(header.value).trim().to_string())
        };
        let has_token = |name: &str, token: &str| {
            header(name).is_some_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        };
        if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
            return Err("the answer does not upgrade to websocket".into());
        }
        if header("sec-websocket-accept").as_deref() != Some(accept_key(key.as_bytes()).as_str()) {
            return Err("Sec-WebSocket-Accept does not match the key".into());
        }
        if header("sec-websocket-extensions").is_some() {
            return Err("the server agreed an extension this client did not offer".into());
        }
        Ok(Some(length))
    }
}

impl Protocol for WsClient {
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        let Some(handler) = self.take_handler() else {
            return;
        };
        if let Some(retry) = &mut self.retry {
            retry.connected(ctx.now());
        }
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let url = &self.target.url;
        ctx.write(
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                url.path, url.authority
            )
            .as_bytes(),
        );
        ctx.set_input_timer(self.target.route.options().ping_timeout);
        self.state = State::Handshake { key, handler };
    }

    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        match &mut self.state {
            State::Open(connection) => connection.on_read(input, ctx),
            State::Handshake { key, .. } => {
                let key = key.clone();
                match self.answer(input, &key) {
                    Ok(None) => 0,
                    Ok(Some(length)) => {
                        let Some(handler) = self.take_handler() else {
                            return input.len();
                        };
                        let route = self.target.route.clone();
                        let mut connection = WebSocketConnection::open_client(route, handler, ctx);
                        let used = connection.on_read(&input[length..], ctx);
                        self.state = State::Open(connection);
                        length + used
                    }
                    Err(why) => {
                        log::warn!(
                            "ws://{}{}: {why}",
                            self.target.url.authority,
                            self.target.url.path
                        );
                        ctx.abort();
                        input.len()
                    }
                }
            }
            State::Down(_) | State::Moving => input.len(),
        }
    }

    fn on_eof(&mut self, ctx: &mut Context<'_>) {
        match &mut self.state {
            State::Open(connection) => connection.on_eof(ctx),
            _ => ctx.close(),
        }
    }

    fn on_timer(&mut self, ctx: &mut Context<'_>) {
        match &mut self.state {
            State::Open(connection) => connection.on_timer(ctx),
            // No answer to the handshake in time.
            _ => ctx.abort(),
        }
    }

    fn on_job_done(&mut self, tag: u64, result: JobResult, ctx: &mut Context<'_>) {
        if let State::Open(connection) = &mut self.state {
            connection.on_job_done(tag, result, ctx);
        }
    }

    fn on_shutdown(&mut self, ctx: &mut Context<'_>) {
        self.finished = true;
        match &mut self.state {
            State::Open(connection) => connection.on_shutdown(ctx),
            _ => ctx.close(),
        }
    }

    fn on_drain(&mut self, ctx: &mut Context<'_>) {
        if let State::Open(connection) = &mut self.state {
            connection.on_drain(ctx);
        }
    }

    fn on_notice(&mut self, notice: &Notice, ctx: &mut Context<'_>) {
        if let State::Open(connection) = &mut self.state {
            connection.on_notice(notice, ctx);
        }
    }

    fn on_closed(&mut self, ctx: &mut Context<'_>) {
        if let State::Open(connection) = &mut self.state {
            connection.on_closed(ctx);
            self.finished |= connection.closed_here();
        }
        if let Some(handler) = self.take_handler() {
            self.state = State::Down(handler);
        }
        if self.finished {
            return;
        }
        let Some(retry) = &mut self.retry else {
            return;
        };
        retry.disconnected(ctx.now());
        match retry.next_delay(random_unit()) {
            Some(delay) => {
                log::info!(
                    "ws://{}{}: disconnected; reconnecting in {delay:.1?} (attempt {})",
                    self.target.url.authority,
                    self.target.url.path,
                    retry.attempts()
                );
                ctx.reconnect_after(delay);
            }
            None => log::warn!(
                "ws://{}{}: giving up after {} attempts",
                self.target.url.authority,
                self.target.url.path,
                retry.attempts()
            ),
        }
    }
}

/// A message received, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

/// What the blocking client's handler hands over to its caller.
#[derive(Default)]
struct Inbox {
    messages: VecDeque<Received>,
    /// Whether a connection is upgraded now.
    open: bool,
    /// The last connection's close code and reason.
    closed: Option<(u16, String)>,
}

/// True once the caller has [`MAX_QUEUED_MESSAGES`] to take.
fn is_full(inbox: &Mutex<Inbox>) -> bool {
    lock(inbox).messages.len() >= MAX_QUEUED_MESSAGES
}

/// The handler of the blocking [`Client`]: queues what arrives.
struct Queue(Arc<Mutex<Inbox>>);

fn lock(inbox: &Mutex<Inbox>) -> std::sync::MutexGuard<'_, Inbox> {
    inbox
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WebSocketHandler for Queue {
    fn on_open(&mut self, _ws: &mut WebSocket<'_, '_>) {
        let mut inbox = lock(&self.0);
        inbox.open = true;
        inbox.closed = None;
    }

    fn on_message(&mut self, message: Message<'_>, _ws: &mut WebSocket<'_, '_>) {
        let received = match message {
            Message::Text(text) => Received::Text(text.to_string()),
            Message::Binary(bytes) => Received::Binary(bytes.to_vec()),
        };
        lock(&self.0).messages.push_back(received);
    }

    fn on_close(&mut self, code: u16, reason: &str) {
        let mut inbox = lock(&self.0);
        inbox.open = false;
        inbox.closed = Some((code, reason.to_string()));
    }
}

/// A blocking WebSocket client, for scripts and tests.
///
/// ```no_run
/// use std::time::Duration;
/// use socketserver::client::ws::{Client, ClientOptions, Received};
///
/// let mut client = Client::connect("ws://127.0.0.1:8080/echo", ClientOptions::default())?;
/// client.send_text("hello")?;
/// assert_eq!(client.recv(Duration::from_secs(5))?, Some(Received::Text("hello".into())));
/// client.close(1000, "done")?;
/// # Ok::<(), socketserver::Error>(())
/// ```
pub struct Client {
    connection: Blocking<WsClient>,
    inbox: Arc<Mutex<Inbox>>,
}

impl Client {
    /// Connects and completes the handshake, waiting at most the connect timeout for each.
    pub fn connect(url: &str, options: ClientOptions) -> Result<Client> {
        let url = Url::parse(url)?;
        let addr = url.resolve()?;
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let protocol = WsClient::new(url.clone(), &options, Queue(inbox.clone()));
        let mut client = Client {
            connection: dial(&url, addr, &options, protocol)?,
            inbox,
        };
        let deadline = Instant::now() + options.connect_timeout + options.websocket.ping_timeout;
        let open = client
            .connection
            .run_until(deadline, |protocol| protocol.is_open())
            .map_err(|error| Error::io(format!("connecting to {}", url.authority), error))?;
        if !open {
            return Err(Error::io(
                format!("connecting to {}", url.authority),
                std::io::ErrorKind::TimedOut.into(),
            ));
        }
        Ok(client)
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<SendStatus> {
        self.send(Message::Text(text))
    }

    /// Sends a message; `Closed` if the connection is not open.
    pub fn send(&mut self, message: Message<'_>) -> Result<SendStatus> {
        let status = self
            .connection
            .with_protocol(|protocol, ctx| protocol.act(ctx, |ws| ws.send(message)))
            .flatten();
        Ok(status.unwrap_or(SendStatus::Closed))
    }

    /// The next message, waiting at most `timeout`; `None` if none came in time. An error
    /// once the connection is over (and will not reconnect) with nothing left to read.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Received>> {
        let deadline = Instant::now() + timeout;
        let inbox = self.inbox.clone();
        let outcome = self
            .connection
            .run_until(deadline, |_| !lock(&inbox).messages.is_empty());
        if let Some(message) = lock(&self.inbox).messages.pop_front() {
            return Ok(Some(message));
        }
        match outcome {
            Ok(_) => Ok(None),
            Err(error) => Err(Error::io("receiving", error)),
        }
    }

    /// Messages received and not yet taken with [`Client::recv`].
    pub fn queued(&self) -> usize {
        lock(&self.inbox).messages.len()
    }

    /// True while the connection is upgraded.
    pub fn is_open(&self) -> bool {
        lock(&self.inbox).open
    }

    /// The code and reason the last connection ended with, once it has.
    pub fn close_status(&self) -> Option<(u16, String)> {
        lock(&self.inbox).closed.clone()
    }

    /// Starts the closing handshake and waits (at most the close timeout) for it to finish.
    pub fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        let timeout = self
            .connection
            .protocol()
            .target
            .route
            .options()
            .close_timeout;
        self.connection.with_protocol(|protocol, ctx| {
            protocol.finish();
            protocol.act(ctx, |ws| ws.close(code, reason))
        });
        let deadline = Instant::now() + timeout;
        let inbox = self.inbox.clone();
        let _ = self.connection.run_until(deadline, |_| is_full(&inbox));
        Ok(())
    }

    /// Serves the connection (answers pings, reconnects) for `duration` without waiting for
    /// anything in particular; sooner if [`MAX_QUEUED_MESSAGES`] wait to be taken.
    pub fn serve_for(&mut self, duration: Duration) -> Result<()> {
        let inbox = self.inbox.clone();
        self.connection
            .run_until(Instant::now() + duration, |_| is_full(&inbox))
            .map(|_| ())
            .map_err(|error| Error::io("serving", error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_defaults() {
        let url = Url::parse("ws://127.0.0.1:9000/chat?room=1").expect("valid");
        assert_eq!(url.authority, "127.0.0.1:9000");
        assert_eq!(url.path, "/chat?room=1");
        let url = Url::parse("ws://example.test").expect("valid");
        assert_eq!(url.authority, "example.test:80");
        assert_eq!(url.path, "/");
        let url = Url::parse("ws://[::1]:81?x").expect("valid");
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("[::1]:81", "/?x")
        );
        let url = Url::parse("ws://[::1]/").expect("valid");
        assert_eq!(
            (url.authority.as_str(), url.host.as_str()),
            ("[::1]:80", "::1")
        );
        assert!(!url.secure);
        #[cfg(feature = "tls")]
        {
            let url = Url::parse("wss://example.test/feed").expect("valid");
            assert_eq!(url.authority, "example.test:443");
            assert_eq!((url.host.as_str(), url.secure), ("example.test", true));
            let url = Url::parse("wss://localhost:7443").expect("valid");
            assert_eq!((url.host.as_str(), url.path.as_str()), ("localhost", "/"));
        }
        for bad in [
            "http://host/",
            "ws://",
            "ws://host:port/",
            "ws://[::1/",
            "ws://[::1]x/",
            "wss://",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
