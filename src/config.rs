//! One `Config` for the whole server: every limit it keeps, bounded, with its default.
//!
//! Each field documents its default and what happens when the limit is reached. There is no
//! "unlimited": a server that accepts untrusted input needs a ceiling on every resource a peer
//! can make it spend. [`Config::validate`] rejects values outside the documented ranges.

use std::time::Duration;

use crate::error::{Error, Result};

/// Every tunable limit of a server, with documented defaults (see [`Config::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most connections held at once by the whole server: the loops of
    /// [`Server::serve_reactors`](crate::Server::serve_reactors) and the worker processes of a
    /// [prefork](crate::prefork) server all count against this one number. Default 10,000;
    /// range 1..=1,000,000. A client over the cap is accepted and closed at once, so it sees a
    /// prompt end of stream rather than a hang.
    pub max_connections: usize,
    /// Close a connection after this long without input or output progress. Default 60 s;
    /// `None` disables it (then an idle connection costs no timer and no wake-up at all;
    /// under the blocking models a write the peer takes nothing of for `ws_ping_timeout`
    /// still ends the connection).
    pub idle_timeout: Option<Duration>,
    /// Listen backlog handed to `listen(2)` (Python socketserver's `request_queue_size`).
    /// Default 1,024; range 1..=65,535 (the kernel also caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Readiness events taken from the kernel per poll. Default 1,024; range 16..=65,536.
    pub events_per_poll: usize,
    /// Connections accepted per turn before other work gets a go. Default 64; range 1..=65,536.
    pub accept_budget: usize,
    /// Reads from one connection per turn before the next connection gets a go (fairness);
    /// the connection goes on the ready-again list. A datagram server takes this many datagrams
    /// per turn. Default 16; range 1..=1,024.
    pub read_budget: usize,
    /// Size of the one read buffer the reactor shares between all connections. Default 64 KiB;
    /// range 512 B..=16 MiB. Input a protocol leaves unconsumed is copied to the connection.
    pub read_chunk_bytes: usize,
    /// Most unconsumed input one connection may hold (a partial line, frame or header).
    /// Default 4 MiB; range `read_chunk_bytes`..=1 GiB. A protocol that lets it fill without
    /// consuming anything is stalled: the connection is closed (counted as a limit close).
    pub max_input_bytes: usize,
    /// Pending output above which a connection stops feeding input to its protocol
    /// (backpressure). Default 256 KiB.
    pub write_high_watermark: usize,
    /// Pending output below which a paused connection resumes reading. Default 64 KiB;
    /// must be below `write_high_watermark`.
    pub write_low_watermark: usize,
    /// Pending output above which the connection is closed outright: the peer is not reading and
    /// the protocol keeps writing anyway. Default 16 MiB; must exceed `write_high_watermark`.
    pub write_hard_limit: usize,
    /// How long accepting pauses after the process runs out of descriptors (EMFILE/ENFILE)
    /// before it tries again from a timer. Default 100 ms; range 1 ms..=60 s.
    pub accept_pause: Duration,
    /// How long a closing connection keeps reading (and discarding) after it has sent its last
    /// answer and shut its write side, so unread input does not make the kernel reset the
    /// connection and destroy that answer (nginx's lingering close). Ends early at the peer's
    /// end of stream. Default 2 s; range 0..=60 s; 0 closes at once.
    pub linger_timeout: Duration,
    /// How long a graceful shutdown may take before remaining connections are cut.
    /// Default 5 s; range 0..=1 h.
    pub shutdown_timeout: Duration,
    /// Worker threads for offloaded (CPU-bound) jobs. Default: the machine's parallelism;
    /// range 0..=1,024. With 0, [`Context::offload`](crate::protocol::Context::offload) answers
    /// [`OffloadError::Unavailable`](crate::protocol::OffloadError::Unavailable).
    pub workers: usize,
    /// Jobs queued for the workers at most; a full queue answers
    /// [`OffloadError::Busy`](crate::protocol::OffloadError::Busy) at once, never blocks the loop.
    /// Default 1,024; range 1..=1,048,576.
    pub job_queue: usize,
    /// Jobs one connection may have in flight at once. Default 64; range 1..=65,535.
    pub max_jobs_per_connection: usize,
    /// Longest line the `line` protocol accepts, newline included. Default 64 KiB;
    /// range 2..=`max_input_bytes`.
    pub max_line_bytes: usize,
    /// Largest payload the `frame` protocol accepts. Default 1 MiB;
    /// range 0..=`max_input_bytes` - 4.
    pub max_frame_bytes: usize,
    /// Largest HTTP request head (request line and headers, and a chunked body's trailers);
    /// over it the answer is 431 and the connection closes. Default 8 KiB; range
    /// 64 B..=1 MiB (and at most `max_input_bytes`).
    pub http_max_head_bytes: usize,
    /// Most headers in one HTTP request head; over it the answer is 431. Default 64; range
    /// 1..=128.
    pub http_max_headers: usize,
    /// Largest HTTP request body (Content-Length or chunked); over it the answer is 413 and the
    /// connection closes. Default 1 MiB; range 0..=1 GiB.
    pub http_max_body_bytes: usize,
    /// How long a client has to send a whole HTTP request (head and body) once its first byte
    /// arrives; past it the answer is 408 and the connection closes (defeats slow-header
    /// clients). Default 10 s; range 1 ms..=1 h.
    pub http_request_timeout: Duration,
    /// How long an HTTP keep-alive connection may wait between requests before it is closed.
    /// Default 5 s; range 1 ms..=1 h.
    pub http_keep_alive_timeout: Duration,
    /// Most HTTP answers one connection may have waiting (pipelined requests whose answers are
    /// not yet sent because an earlier one is still being computed); while full, no more
    /// requests are read. Default 32; range 1..=1,024.
    pub http_max_pipeline: usize,
    /// Largest WebSocket message (after joining its fragments, and after inflating it); a
    /// frame or message over it ends the connection with close code 1009. Default 1 MiB;
    /// range 1..=1 GiB.
    pub ws_max_message_bytes: usize,
    /// Output a WebSocket may have waiting before a message sent to it is dropped (or, as a
    /// route chooses, the connection closed with 1008): what a peer that does not read can
    /// cost. Default 1 MiB; range 1..=`write_hard_limit`.
    pub ws_max_backpressure: usize,
    /// A WebSocket quiet this long (nothing received) is pinged. Default 25 s, under the 60 s
    /// that nginx and most proxies let an upstream stay silent; `None` sends no pings. Range
    /// 1 ms..=1 h.
    pub ws_ping_interval: Option<Duration>,
    /// A pinged WebSocket from which nothing arrives for this long is closed as dead. Default
    /// 20 s; range 1 ms..=1 h.
    pub ws_ping_timeout: Duration,
    /// How long the server waits for the peer to answer its close frame before cutting the
    /// connection. Default 5 s; range 1 ms..=1 h.
    pub ws_close_timeout: Duration,
    /// How long a dialled connection's connect may take before it is abandoned. Default 20 s,
    /// the minimum connect timeout of gRPC's connection-backoff rules: long enough for a
    /// loaded server's backlog and one lost SYN (retransmitted after 1 s, then 3 s), short of
    /// the kernel's own two minutes. Range 1 ms..=1 h.
    pub connect_timeout: Duration,
    /// A TLS handshake not finished this long after the connection was accepted is cut (and
    /// counted as `timeout`): a client that connects and says nothing, or trickles its hello,
    /// holds no more than this. Default 10 s; range 1 ms..=10 min.
    pub tls_handshake_timeout: Duration,
    /// Bytes the TLS layer of one connection may hold for sending, encrypted or waiting to be
    /// (rustls' buffer limit); beyond it the connection's own output buffer, with its
    /// watermarks, takes over. Input needs no bound of its own: rustls holds at most one record
    /// (16 KiB and its overhead) and the layer reads no further until that is taken. Default
    /// 64 KiB; range 16 KiB..=16 MiB.
    pub tls_buffer_bytes: usize,
    /// Outgoing WebSocket messages over this many bytes are sent in fragments of this size, so
    /// that control frames can go between them. Default 64 KiB; range 125 B..=1 GiB.
    pub ws_fragment_bytes: usize,
    /// Handler threads of the thread-pool model. Default 64; range 1..=4,096.
    pub pool_threads: usize,
    /// Accepted connections waiting for a pool thread; over it a connection is closed at once
    /// (counted as refused over capacity). Default 1,024; range 1..=1,048,576.
    pub pool_queue: usize,
    /// Largest datagram a datagram server takes in. A bigger one is dropped whole (and counted in
    /// `datagrams_dropped`), never truncated and handed on. Default 65,507 (the largest UDP
    /// payload over IPv4); range 1..=16 MiB (Unix datagrams can be larger than UDP's).
    pub max_datagram_bytes: usize,
    /// Answers a datagram server holds while the socket cannot take them. While it is full the
    /// server stops receiving (the kernel's receive buffer absorbs, then drops, what arrives);
    /// an answer that still finds it full is dropped and counted. Default 1,024 datagrams;
    /// range 1..=1,048,576.
    pub datagram_queue: usize,
    /// Set SO_REUSEPORT on the listener, so several listeners (the reactors of one server, or
    /// several processes) can share the port and the kernel spreads connections between them.
    /// Default false: any process of the same user could otherwise bind the port too. The
    /// `reactors` model turns it on.
    pub reuse_port: bool,
    /// TCP keepalive on accepted connections: probe a silent peer after this long, so dead peers
    /// are found even without an idle timeout. Default `None` (off).
    pub tcp_keepalive: Option<Duration>,
    /// Set TCP_NODELAY on accepted connections, so small answers leave at once instead of
    /// waiting for the peer's delayed ACK (Nagle). Default true.
    pub tcp_nodelay: bool,
    /// Install SIGINT/SIGTERM handlers that start a graceful shutdown. Default true.
    pub handle_signals: bool,
    /// Longest pub/sub topic name, in bytes (names are `[A-Za-z0-9._:-]`, not starting with
    /// `.`). Default 128; range 1..=200 (a topic's name is its directory's).
    pub pubsub_max_topic_bytes: usize,
    /// Most pub/sub topics a server holds; a publish or subscribe that would create one more
    /// is refused (`too_many_topics`). Default 10,000; range 1..=1,000,000.
    pub pubsub_max_topics: usize,
    /// Most topics one connection subscribes to at once (`too_many_subscriptions` past it).
    /// Default 64; range 1..=10,000.
    pub pubsub_max_subscriptions: usize,
    /// Largest `data` of a published message, in bytes (`too_large` past it). Default 64 KiB;
    /// range 1..=16 MiB (and the WebSocket message limit bounds the whole publish).
    pub pubsub_max_data_bytes: usize,
    /// Longest publish `id`, in bytes. Default 128; range 1..=1,024.
    pub pubsub_max_id_bytes: usize,
    /// Publishes waiting for the log at most, from all connections; past it a publish is
    /// answered `overloaded` at once (the loop never waits for the disk). Default 65,536;
    /// range 1..=16,777,216.
    pub pubsub_queue: usize,
    /// A segment of a topic's log on disk is rolled at this size. Default 64 MiB; range
    /// 4 KiB..=1 GiB.
    pub pubsub_segment_bytes: u64,
    /// A topic's log on disk deletes whole old segments past this many bytes. Default 1 GiB;
    /// range 1..=2^50.
    pub pubsub_retention_bytes: u64,
    /// A topic's log deletes a whole segment once its newest message is older than this.
    /// Default 7 days; range 1 s..=10 years.
    pub pubsub_retention: Duration,
    /// A publish repeated with the same `id` within this long is acknowledged with the first
    /// one's offset and not stored again (the window survives a restart). Default 2 min; range
    /// 0..=1 day.
    pub pubsub_dedupe_window: Duration,
    /// Most publish ids remembered for the dedupe window at once, the oldest forgotten first.
    /// Default 1,000,000; range 1..=100,000,000.
    pub pubsub_dedupe_ids: usize,
    /// Messages per topic kept by the in-memory history (`--memory`, and `ws --broadcast`).
    /// Default 10,000; range 1..=100,000,000.
    pub pubsub_memory_messages: usize,
    /// Bytes of payload per topic kept by the in-memory history. Default 64 MiB; range
    /// 1..=16 GiB.
    pub pubsub_memory_bytes: usize,
    /// Most history read for a catching-up subscriber at a time; the next read waits until
    /// its output has drained below the high watermark. Default 256 KiB; range
    /// 1 KiB..=16 MiB.
    pub pubsub_fetch_bytes: usize,
    /// How long a message that reached its durability point may wait for others before it is
    /// handed to its subscribers, so several leave in one write (one packet) per subscriber:
    /// fewer system calls and packets per delivery, for up to this much more latency (the
    /// write delay of Centrifugo, a cork held on purpose). Acknowledgements never wait.
    /// Default 0 (each pass of the log delivers at once); range 0..=1 s.
    pub pubsub_delivery_delay: Duration,
    /// A subscriber whose output passes the high watermark is closed with 4008 (it resumes
    /// from its offset when it reconnects) instead of switched to catching up from the log at
    /// its own pace, the default. Default false.
    pub pubsub_close_slow_subscribers: bool,
    /// Under a Redis backplane, how long one round trip to Redis (or a connection attempt) may
    /// take before that server counts as down: its publishes are then answered
    /// `backplane_unavailable` at once and it is tried again with backoff. Default 1 s; range
    /// 10 ms..=60 s.
    pub backplane_timeout: Duration,
    /// On SIGTERM (or [`ServerHandle::drain`](crate::ServerHandle::drain)), how long the server
    /// goes on serving everything while `/readyz` answers 503, so a load balancer's health
    /// checks take it out of rotation before it stops accepting. Default 0 (stop accepting at
    /// once); range 0..=1 h.
    pub drain_delay: Duration,
    /// Peers (load balancers) whose connections start with a PROXY protocol header, version 1
    /// or 2, naming the real client: from them the header is required, read before TLS, and
    /// the client's address is what the verify hook, [`Context::peer_addr`] and the logs see.
    /// Nobody else's header is believed (it reaches the protocol as data). A `LOCAL` header
    /// (a health check) keeps the balancer's own address. Reactor drivers only. Default empty.
    ///
    /// [`Context::peer_addr`]: crate::protocol::Context::peer_addr
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// How long a trusted peer may take to send its whole PROXY header (plus, under TLS, the
    /// handshake's own timeout after it); past it the connection is closed. Default 5 s; range
    /// 10 ms..=60 s.
    pub proxy_header_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(60)),
            listen_backlog: 1024,
            events_per_poll: 1024,
            accept_budget: 64,
            read_budget: 16,
            read_chunk_bytes: 64 * 1024,
            max_input_bytes: 4 * 1024 * 1024,
            write_high_watermark: 256 * 1024,
            write_low_watermark: 64 * 1024,
            write_hard_limit: 16 * 1024 * 1024,
            accept_pause: Duration::from_millis(100),
            linger_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            job_queue: 1024,
            max_jobs_per_connection: 64,
            max_line_bytes: 64 * 1024,
            max_frame_bytes: 1024 * 1024,
            http_max_head_bytes: 8 * 1024,
            http_max_headers: 64,
            http_max_body_bytes: 1024 * 1024,
            http_request_timeout: Duration::from_secs(10),
            http_keep_alive_timeout: Duration::from_secs(5),
            http_max_pipeline: 32,
            ws_max_message_bytes: 1 << 20,
            ws_max_backpressure: 1 << 20,
            ws_ping_interval: Some(Duration::from_secs(25)),
            ws_ping_timeout: Duration::from_secs(20),
            ws_close_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(20),
            tls_handshake_timeout: Duration::from_secs(10),
            tls_buffer_bytes: 64 * 1024,
            ws_fragment_bytes: 64 * 1024,
            pool_threads: 64,
            pool_queue: 1024,
            max_datagram_bytes: 65_507,
            datagram_queue: 1024,
            reuse_port: false,
            tcp_keepalive: None,
            tcp_nodelay: true,
            handle_signals: true,
            pubsub_max_topic_bytes: 128,
            pubsub_max_topics: 10_000,
            pubsub_max_subscriptions: 64,
            pubsub_max_data_bytes: 64 * 1024,
            pubsub_max_id_bytes: 128,
            pubsub_queue: 65_536,
            pubsub_segment_bytes: 64 << 20,
            pubsub_retention_bytes: 1 << 30,
            pubsub_retention: Duration::from_secs(7 * 24 * 3600),
            pubsub_dedupe_window: Duration::from_secs(120),
            pubsub_dedupe_ids: 1_000_000,
            pubsub_memory_messages: 10_000,
            pubsub_memory_bytes: 64 << 20,
            pubsub_fetch_bytes: 256 * 1024,
            pubsub_delivery_delay: Duration::ZERO,
            pubsub_close_slow_subscribers: false,
            backplane_timeout: Duration::from_secs(1),
            drain_delay: Duration::ZERO,
            proxy_protocol_from: Vec::new(),
            proxy_header_timeout: Duration::from_secs(5),
        }
    }
}

fn check(ok: bool, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Config(message()))
    }
}

impl Config {
    /// Checks every field against its documented range and the fields against each other.
    pub fn validate(&self) -> Result<()> {
        check((1..=1_000_000).contains(&self.max_connections), || {
            format!(
                "max_connections {} is outside 1..=1000000",
                self.max_connections
            )
        })?;
        if let Some(idle) = self.idle_timeout {
            check(!idle.is_zero(), || {
                "idle_timeout must be positive (or None)".into()
            })?;
        }
        check((1..=65_535).contains(&self.listen_backlog), || {
            format!(
                "listen_backlog {} is outside 1..=65535",
                self.listen_backlog
            )
        })?;
        check((16..=65_536).contains(&self.events_per_poll), || {
            format!(
                "events_per_poll {} is outside 16..=65536",
                self.events_per_poll
            )
        })?;
        check((1..=65_536).contains(&self.accept_budget), || {
            format!("accept_budget {} is outside 1..=65536", self.accept_budget)
        })?;
        check((1..=1024).contains(&self.read_budget), || {
            format!("read_budget {} is outside 1..=1024", self.read_budget)
        })?;
        check((512..=16 << 20).contains(&self.read_chunk_bytes), || {
            format!(
                "read_chunk_bytes {} is outside 512..=16MiB",
                self.read_chunk_bytes
            )
        })?;
        check(
            (self.read_chunk_bytes..=1 << 30).contains(&self.max_input_bytes),
            || {
                format!(
                    "max_input_bytes {} is outside read_chunk_bytes..=1GiB",
                    self.max_input_bytes
                )
            },
        )?;
        check(
            (64..=(1 << 20).min(self.max_input_bytes)).contains(&self.http_max_head_bytes),
            || "http_max_head_bytes is outside 64..=min(1MiB, max_input_bytes)".into(),
        )?;
        check((1..=128).contains(&self.http_max_headers), || {
            "http_max_headers is outside 1..=128".into()
        })?;
        check(self.http_max_body_bytes <= 1 << 30, || {
            "http_max_body_bytes is over 1GiB".into()
        })?;
        let timeout_ok = |timeout: Duration| {
            (Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&timeout)
        };
        check(timeout_ok(self.http_request_timeout), || {
            "http_request_timeout is outside 1ms..=1h".into()
        })?;
        check(timeout_ok(self.http_keep_alive_timeout), || {
            "http_keep_alive_timeout is outside 1ms..=1h".into()
        })?;
        check((1..=1024).contains(&self.http_max_pipeline), || {
            "http_max_pipeline is outside 1..=1024".into()
        })?;
        check((1..=1 << 30).contains(&self.ws_max_message_bytes), || {
            "ws_max_message_bytes is outside 1..=1GiB".into()
        })?;
        check(
            (1..=self.write_hard_limit).contains(&self.ws_max_backpressure),
            || "ws_max_backpressure is outside 1..=write_hard_limit".into(),
        )?;
        check(self.ws_ping_interval.is_none_or(timeout_ok), || {
            "ws_ping_interval is outside 1ms..=1h".into()
        })?;
        check(timeout_ok(self.ws_ping_timeout), || {
            "ws_ping_timeout is outside 1ms..=1h".into()
        })?;
        check(timeout_ok(self.ws_close_timeout), || {
            "ws_close_timeout is outside 1ms..=1h".into()
        })?;
        check(timeout_ok(self.connect_timeout), || {
            "connect_timeout is outside 1ms..=1h".into()
        })?;
        check(
            (Duration::from_millis(1)..=Duration::from_secs(600))
                .contains(&self.tls_handshake_timeout),
            || "tls_handshake_timeout is outside 1ms..=10min".into(),
        )?;
        check(
            (16 * 1024..=16 << 20).contains(&self.tls_buffer_bytes),
            || "tls_buffer_bytes is outside 16KiB..=16MiB".into(),
        )?;
        check((125..=1 << 30).contains(&self.ws_fragment_bytes), || {
            "ws_fragment_bytes is outside 125..=1GiB".into()
        })?;
        check(self.write_low_watermark < self.write_high_watermark, || {
            "write_low_watermark must be below write_high_watermark".into()
        })?;
        check(self.write_high_watermark < self.write_hard_limit, || {
            "write_high_watermark must be below write_hard_limit".into()
        })?;
        check(self.write_hard_limit <= 1 << 30, || {
            "write_hard_limit is over 1GiB".into()
        })?;
        check(
            self.accept_pause >= Duration::from_millis(1)
                && self.accept_pause <= Duration::from_secs(60),
            || "accept_pause is outside 1ms..=60s".into(),
        )?;
        check(self.linger_timeout <= Duration::from_secs(60), || {
            "linger_timeout is over 60s".into()
        })?;
        check(
            (Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.backplane_timeout),
            || "backplane_timeout is not within 10 ms..=60 s".into(),
        )?;
        check(
            (Duration::from_millis(10)..=Duration::from_secs(60))
                .contains(&self.proxy_header_timeout),
            || "proxy_header_timeout is not within 10 ms..=60 s".into(),
        )?;
        check(self.proxy_protocol_from.len() <= 1024, || {
            "proxy_protocol_from names more than 1,024 ranges".into()
        })?;
        check(self.drain_delay <= Duration::from_secs(3600), || {
            "drain_delay is over 1h".into()
        })?;
        check(self.shutdown_timeout <= Duration::from_secs(3600), || {
            "shutdown_timeout is over 1h".into()
        })?;
        check(self.workers <= 1024, || {
            format!("workers {} is over 1024", self.workers)
        })?;
        check((1..=1 << 20).contains(&self.job_queue), || {
            format!("job_queue {} is outside 1..=1048576", self.job_queue)
        })?;
        check((1..=65_535).contains(&self.max_jobs_per_connection), || {
            "max_jobs_per_connection is outside 1..=65535".into()
        })?;
        check(
            (2..=self.max_input_bytes).contains(&self.max_line_bytes),
            || "max_line_bytes is outside 2..=max_input_bytes".into(),
        )?;
        check(self.max_frame_bytes + 4 <= self.max_input_bytes, || {
            "max_frame_bytes must leave room for its 4-byte header within max_input_bytes".into()
        })?;
        check((1..=16 << 20).contains(&self.max_datagram_bytes), || {
            format!(
                "max_datagram_bytes {} is outside 1..=16777216",
                self.max_datagram_bytes
            )
        })?;
        check((1..=1 << 20).contains(&self.datagram_queue), || {
            format!(
                "datagram_queue {} is outside 1..=1048576",
                self.datagram_queue
            )
        })?;
        self.validate_pubsub()
    }

    fn validate_pubsub(&self) -> Result<()> {
        let within = |value: u64, low: u64, high: u64, name: &str| {
            check((low..=high).contains(&value), || {
                format!("{name} {value} is outside {low}..={high}")
            })
        };
        within(
            self.pubsub_max_topic_bytes as u64,
            1,
            200,
            "pubsub_max_topic_bytes",
        )?;
        within(
            self.pubsub_max_topics as u64,
            1,
            1_000_000,
            "pubsub_max_topics",
        )?;
        within(
            self.pubsub_max_subscriptions as u64,
            1,
            10_000,
            "pubsub_max_subscriptions",
        )?;
        within(
            self.pubsub_max_data_bytes as u64,
            1,
            16 << 20,
            "pubsub_max_data_bytes",
        )?;
        within(
            self.pubsub_max_id_bytes as u64,
            1,
            1024,
            "pubsub_max_id_bytes",
        )?;
        within(self.pubsub_queue as u64, 1, 1 << 24, "pubsub_queue")?;
        within(
            self.pubsub_segment_bytes,
            4096,
            1 << 30,
            "pubsub_segment_bytes",
        )?;
        within(
            self.pubsub_retention_bytes,
            1,
            1 << 50,
            "pubsub_retention_bytes",
        )?;
        within(
            self.pubsub_retention.as_secs(),
            1,
            10 * 365 * 24 * 3600,
            "pubsub_retention (s)",
        )?;
        within(
            self.pubsub_dedupe_window.as_secs(),
            0,
            24 * 3600,
            "pubsub_dedupe_window (s)",
        )?;
        within(
            self.pubsub_dedupe_ids as u64,
            1,
            100_000_000,
            "pubsub_dedupe_ids",
        )?;
        within(
            self.pubsub_memory_messages as u64,
            1,
            100_000_000,
            "pubsub_memory_messages",
        )?;
        within(
            self.pubsub_memory_bytes as u64,
            1,
            16 << 30,
            "pubsub_memory_bytes",
        )?;
        within(
            self.pubsub_fetch_bytes as u64,
            1024,
            16 << 20,
            "pubsub_fetch_bytes",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn watermarks_must_be_ordered() {
        let config = Config {
            write_low_watermark: 1 << 20,
            ..Config::default()
        };
        assert!(config.validate().is_err());
        let config = Config {
            write_hard_limit: 1024,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn zero_connections_is_rejected() {
        let config = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn pubsub_limits_are_checked() {
        for config in [
            Config {
                pubsub_max_topic_bytes: 0,
                ..Config::default()
            },
            Config {
                pubsub_segment_bytes: 100,
                ..Config::default()
            },
            Config {
                pubsub_fetch_bytes: 0,
                ..Config::default()
            },
        ] {
            assert!(config.validate().is_err());
        }
    }
}
