//! Load generation: many client connections on one mio loop, and what they measured.
//!
//! [`run`] opens [`LoadConfig::connections`] connections to a server and sends requests of the
//! chosen protocol for a bounded time: echo, line and frame (each answer is the request itself)
//! or HTTP/1.1 (`GET` of [`LoadConfig::http_path`]; an answer is a 2xx head and its
//! `Content-Length` body). Each connection keeps up to [`LoadConfig::pipeline`] requests in
//! flight (1: wait for each answer; more: HTTP pipelining, or several echoes outstanding).
//!
//! * **Closed loop** (no rate): each connection sends its next request as soon as an answer is
//!   in. Throughput is whatever the server sustains; latency is send-to-answer.
//! * **Open loop** (`rate` requests per second in all): each connection has a schedule of
//!   intended send times, spread evenly. Latency is measured from the *intended* time, so a
//!   server that stalls is charged for every request that should have been sent during the stall
//!   (coordinated omission, corrected the way wrk2 does it). A connection still waiting for an
//!   answer sends the overdue requests, one at a time, as soon as it can.
//!
//! Answers to requests sent during the warm-up are not recorded. At the end no new request is
//! sent, the answers in flight are awaited (up to [`LoadConfig::drain_timeout`]), then every
//! connection closes, so the counts of requests sent and answered match what the server saw.
//! Past about 25,000 connections to a loopback address, connections are spread over several
//! 127.0.0.x source addresses, each with its own ephemeral port range.

mod answer;
mod generator;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use generator::{run, run_observed, Phase};

/// Connections per loopback source address: well inside the usual ephemeral port range.
const PER_SOURCE: usize = 25_000;

/// The local address connection `index` of `connections` to `addr` binds before connecting:
/// past [`PER_SOURCE`] connections to a loopback IPv4 address, each block of them gets its own
/// source address (127.0.0.2, 127.0.0.3, …) and so its own ephemeral port range. `None` means
/// the kernel picks.
pub(crate) fn source_address(
    addr: SocketAddr,
    index: usize,
    connections: usize,
) -> Option<SocketAddr> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && connections > PER_SOURCE => {
            let host = u8::try_from(1 + index / PER_SOURCE).unwrap_or(u8::MAX);
            Some(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))
        }
        _ => None,
    }
}

/// A TCP client socket for connection `index` of `connections` to `addr`: TCP_NODELAY set,
/// bound to its [`source_address`] if it has one, not yet connected.
pub(crate) fn client_socket(
    addr: SocketAddr,
    index: usize,
    connections: usize,
) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source_address(addr, index, connections) {
        socket.bind(&source.into())?;
    }
    Ok(socket)
}

/// The request format a load run sends; every protocol here answers with the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadProtocol {
    /// The message bytes as they are.
    Echo,
    /// The message as one line (its last byte replaced by a newline).
    Line,
    /// The message behind a u32 big-endian length.
    Frame,
    /// An HTTP/1.1 `GET` (of `/` here; of [`LoadConfig::http_path`] in a run), answered by a
    /// 2xx response with a `Content-Length` body.
    Http,
    /// A WebSocket echo: each connection upgrades (`GET` of [`LoadConfig::http_path`]) and
    /// sends the message as a masked binary frame; the answer is the server's frame carrying
    /// it back (control frames between are passed over).
    Ws,
    /// Pub/sub publishes: each connection upgrades and sends `publish` messages (JSON text,
    /// topic `load`, `data` of the message size); the answer is the server's `ack`, so with
    /// a pipeline of 1 every connection is a publisher waiting for each acknowledgement.
    Pubsub,
}

/// An HTTP/1.1 `GET` of `path` from `host`, keeping the connection.
fn http_get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

impl LoadProtocol {
    /// One request carrying `message_bytes` bytes of payload (at least one byte); HTTP sends
    /// no payload.
    pub fn request(self, message_bytes: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..message_bytes.max(1))
            .map(|index| b'a' + (index % 26) as u8)
            .collect();
        match self {
            LoadProtocol::Echo => payload,
            LoadProtocol::Line => {
                let mut line = payload;
                if let Some(last) = line.last_mut() {
                    *last = b'\n';
                }
                line
            }
            LoadProtocol::Frame => {
                let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&payload);
                frame
            }
            LoadProtocol::Http => http_get("localhost", "/"),
            LoadProtocol::Pubsub => {
                let data = String::from_utf8_lossy(&payload);
                let publish = format!(r#"{{"type":"publish","topic":"load","data":"{data}"}}"#);
                masked_frame(crate::protocol::ws::frame::Opcode::Text, publish.as_bytes())
            }
            LoadProtocol::Ws => masked_frame(crate::protocol::ws::frame::Opcode::Binary, &payload),
        }
    }

    /// True for the protocols whose connections upgrade to WebSocket first.
    pub fn upgrades(self) -> bool {
        matches!(self, LoadProtocol::Ws | LoadProtocol::Pubsub)
    }
}

/// A masked client frame carrying `payload`.
fn masked_frame(opcode: crate::protocol::ws::frame::Opcode, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    // A load tool's frames need no unpredictable key (that guards browsers' proxies against
    // cache poisoning): one key, so one encoded frame serves all.
    let key = [0x5a, 0x3c, 0x96, 0xe1];
    crate::protocol::ws::frame::write_frame(&mut frame, true, false, opcode, payload, Some(key));
    frame
}

/// The upgrade request a WebSocket load client sends for `path` on `host`.
pub(crate) fn ws_upgrade(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: c29ja2V0c2VydmVybG9hZA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// What a load run does. Every run is bounded by `warmup + duration + drain_timeout` plus the
/// connect timeout.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server.
    pub addr: SocketAddr,
    /// The request format.
    pub protocol: LoadProtocol,
    /// Connections opened at the start (1..=100,000).
    pub connections: usize,
    /// How long answers are recorded, after the warm-up.
    pub duration: Duration,
    /// How long the load runs before answers are recorded.
    pub warmup: Duration,
    /// Payload bytes per request (1..=1 MiB; HTTP requests carry none).
    pub message_bytes: usize,
    /// Requests each connection keeps in flight (1..=1024): 1 waits for every answer; more
    /// pipelines them, sent together in one write.
    pub pipeline: usize,
    /// HTTP: the path requested; WebSocket: the path upgraded (printable, starting with `/`).
    pub http_path: String,
    /// Open loop at this many requests per second in all; `None` for closed loop.
    pub rate: Option<f64>,
    /// How long a connection may take to be established before it counts as failed.
    pub connect_timeout: Duration,
    /// How long to wait at the end for answers still in flight.
    pub drain_timeout: Duration,
    /// Speak TLS with this client configuration (the server is named by its IP address, which
    /// its certificate must carry); the handshake counts as part of connecting.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConnector>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            protocol: LoadProtocol::Echo,
            connections: 16,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            message_bytes: 64,
            pipeline: 1,
            http_path: "/".to_string(),
            rate: None,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(1),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl LoadConfig {
    /// The request every connection sends.
    pub fn request(&self) -> Vec<u8> {
        match self.protocol {
            LoadProtocol::Http => http_get(&self.addr.to_string(), &self.http_path),
            protocol => protocol.request(self.message_bytes),
        }
    }
}

/// Latency percentiles of the recorded answers, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest answer.
    pub max_us: f64,
}

/// What a load run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Connections asked for.
    pub connections: usize,
    /// Connections established.
    pub connected: usize,
    /// Connections with at least one answer in the measured window (fewer than `connected`
    /// when a server holds connections it does not serve, as a full thread pool does, or is
    /// still accepting them).
    pub served: usize,
    /// Connections that could not be established (refused, reset, timed out).
    pub failed_connects: usize,
    /// Connections lost during the run (closed or reset by the server, or a wrong answer).
    pub errors: usize,
    /// Why the first failed or lost connection failed, if one did.
    pub first_failure: Option<String>,
    /// Requests sent, warm-up included.
    pub requests_sent: u64,
    /// Answers received in full, warm-up included.
    pub answers: u64,
    /// Answers recorded (after the warm-up).
    pub recorded: u64,
    /// Recorded answers per second of the measured window.
    pub rate: f64,
    /// The open-loop rate asked for, if any.
    pub target_rate: Option<f64>,
    /// The measured window, in seconds.
    pub seconds: f64,
    /// Latency of the recorded answers.
    pub latency: Latency,
}

impl Report {
    /// The report as one JSON object (field names as in this struct).
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialising it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for Report {
    /// A small table for people.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let latency = &self.latency;
        let mode = match self.target_rate {
            Some(rate) => format!("open loop at {rate:.0}/s"),
            None => "closed loop".to_string(),
        };
        writeln!(
            f,
            "{} connections ({} connected, {} answered, {} failed, {} lost), {mode}, {:.1} s measured",
            self.connections,
            self.connected,
            self.served,
            self.failed_connects,
            self.errors,
            self.seconds
        )?;
        if let Some(reason) = &self.first_failure {
            writeln!(f, "first failure: {reason}")?;
        }
        writeln!(
            f,
            "{:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "requests/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
        )?;
        write!(
            f,
            "{:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            self.rate,
            latency.p50_us,
            latency.p90_us,
            latency.p99_us,
            latency.p999_us,
            latency.max_us
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_loopback_connections_spread_over_source_addresses() {
        let server = SocketAddr::from(([127, 0, 0, 1], 7000));
        // Few enough for one ephemeral port range: the kernel picks.
        assert_eq!(source_address(server, 0, PER_SOURCE), None);
        // More: each block of PER_SOURCE connections gets its own source address.
        let source = |index| source_address(server, index, 3 * PER_SOURCE).map(|a| a.ip());
        assert_eq!(source(0), Some(Ipv4Addr::new(127, 0, 0, 1).into()));
        assert_eq!(
            source(PER_SOURCE - 1),
            Some(Ipv4Addr::new(127, 0, 0, 1).into())
        );
        assert_eq!(source(PER_SOURCE), Some(Ipv4Addr::new(127, 0, 0, 2).into()));
        assert_eq!(
            source(3 * PER_SOURCE - 1),
            Some(Ipv4Addr::new(127, 0, 0, 3).into())
        );
        // Not loopback: one source, the kernel's choice.
        let remote = SocketAddr::from(([192, 0, 2, 1], 7000));
        assert_eq!(source_address(remote, PER_SOURCE * 2, 3 * PER_SOURCE), None);
    }
}
