//! The load generator's loop: every connection on one `mio::Poll`, open-loop schedules in a
//! min-heap of due times, latencies into one HdrHistogram.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::net::{Opening, Stream};

use super::answer::Answers;
use super::{client_socket, Latency, LoadConfig, LoadProtocol, Report};
use crate::error::{interrupted, would_block, Error, Result};

/// The largest latency recorded exactly (an hour, in microseconds); longer ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    /// TLS: connected, the handshake not finished.
    Handshaking,
    /// WebSocket: connected, the upgrade sent, its `101` not yet read.
    Upgrading,
    Ready,
    Gone,
}

/// One client connection.
struct Client {
    stream: Option<Stream>,
    state: State,
    /// When each request sent and not yet answered was meant to be sent (closed loop: when it
    /// was sent), oldest first; at most `pipeline` of them.
    in_flight: VecDeque<Instant>,
    /// Bytes of the requests in flight not yet written (the tail of the last ones sent).
    unsent: usize,
    /// Where this connection's answers end.
    answers: Answers,
    /// Open loop: the index, in this connection's schedule, of its next request.
    next_index: u32,
    /// Open loop: when this connection's request 0 is due.
    first_due: Instant,
    /// Open loop: the next request is in the heap of due times.
    scheduled: bool,
    /// At least one answer was recorded on this connection (in the measured window).
    answered: bool,
    /// WebSocket: the upgrade's answer as far as it has arrived.
    handshake: Vec<u8>,
}

/// The longest `101` answer a WebSocket load client reads.
const MAX_HANDSHAKE_BYTES: usize = 8 * 1024;

/// Counters of one run.
#[derive(Default)]
struct Counts {
    connected: usize,
    failed_connects: usize,
    errors: usize,
    requests_sent: u64,
    answers: u64,
    in_flight: usize,
    /// Connections with at least one answer recorded.
    served: usize,
    /// The first reason a connection failed or was lost.
    first_failure: Option<String>,
}

impl Counts {
    fn failed(&mut self, reason: impl FnOnce() -> String) {
        if self.first_failure.is_none() {
            self.first_failure = Some(reason());
        }
    }
}

/// Where a load run is, for a caller that samples something alongside it (a server's CPU time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The warm-up is over: answers from here on are recorded.
    Measuring,
    /// The measured window is over: no more requests are sent.
    Draining,
}

/// Runs one load as `config` describes; see the [module documentation](super).
pub fn run(config: &LoadConfig) -> Result<Report> {
    run_observed(config, |_| {})
}

/// [`run`], calling `observe` as the measured window opens and closes, from the load loop's
/// thread, so a caller can sample the server over exactly the window the report covers.
pub fn run_observed(config: &LoadConfig, mut observe: impl FnMut(Phase)) -> Result<Report> {
    validate(config)?;
    let request = config.request();
    // `pipeline` copies back to back: whatever is owed is a suffix of this, written at once.
    let requests = request.repeat(config.pipeline);
    let mut poll = Poll::new().map_err(|error| Error::io("creating a poll", error))?;
    let histogram = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|error| Error::Config(format!("latency histogram: {error}")))?;
    let start = Instant::now();
    let record_from = start + config.warmup;
    let stop_at = record_from + config.duration;
    let connect_deadline = start + config.connect_timeout;
    // Open loop: each connection sends every `interval`, the connections evenly staggered.
    let interval = config
        .rate
        .map(|rate| Duration::from_secs_f64(config.connections as f64 / rate));
    let mut counts = Counts::default();
    let mut clients = Vec::with_capacity(config.connections);
    for index in 0..config.connections {
        let first_due = interval.map_or(start, |interval| {
            start + interval.mul_f64(index as f64 / config.connections as f64)
        });
        let mut client = Client {
            stream: None,
            state: State::Gone,
            in_flight: VecDeque::with_capacity(config.pipeline),
            unsent: 0,
            answers: match config.protocol {
                LoadProtocol::Http => Answers::http(),
                LoadProtocol::Ws | LoadProtocol::Pubsub => Answers::websocket(),
                _ => Answers::fixed(request.len()),
            },
            next_index: 0,
            first_due,
            scheduled: false,
            answered: false,
            handshake: Vec::new(),
        };
        match open(config.addr, index, config.connections) {
            Ok(mut stream) => {
                poll.registry()
                    .register(
                        &mut stream,
                        Token(index),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|error| Error::io("registering a connection", error))?;
                client.stream = Some(Stream::Tcp(stream));
                client.state = State::Connecting;
            }
            Err(error) => {
                log::debug!("connection {index}: {error}");
                counts.failed_connects += 1;
                counts.failed(|| format!("connect: {error}"));
            }
        }
        clients.push(client);
    }
    let mut connecting = clients
        .iter()
        .filter(|client| client.state == State::Connecting)
        .count();

    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut draining: Option<Instant> = None;
    let mut measuring = false;
    let upgrade = config
        .protocol
        .upgrades()
        .then(|| super::ws_upgrade(&config.addr.to_string(), &config.http_path));
    let mut run = Run {
        requests: &requests,
        request_bytes: request.len(),
        pipeline: config.pipeline,
        interval,
        record_from,
        counts,
        histogram,
    };
    loop {
        let now = Instant::now();
        if !measuring && now >= record_from {
            measuring = true;
            observe(Phase::Measuring);
        }
        if draining.is_none() && now >= stop_at {
            draining = Some(now + config.drain_timeout);
            due.clear();
            observe(Phase::Draining);
        }
        if let Some(deadline) = draining {
            if run.counts.in_flight == 0 || now >= deadline {
                break;
            }
        }
        if connecting > 0 && now >= connect_deadline {
            for client in clients.iter_mut().filter(|c| {
                matches!(
                    c.state,
                    State::Connecting | State::Handshaking | State::Upgrading
                )
            }) {
                run.drop_client(client, &poll, None);
                run.counts.failed_connects += 1;
                run.counts.failed(|| "connect: timed out".into());
            }
            connecting = 0;
        }
        let wake_at = [
            due.peek().map(|Reverse((at, _))| *at),
            (!measuring).then_some(record_from),
            Some(draining.unwrap_or(stop_at)),
            (connecting > 0).then_some(connect_deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        // The poll's timeout has millisecond granularity and rounds up, which would send
        // open-loop requests up to a millisecond late and charge that to the server: sleep
        // through all but the last millisecond, then poll without sleeping until it is due.
        let timeout = wake_at.map(|at| {
            at.saturating_duration_since(now)
                .saturating_sub(Duration::from_millis(1))
        });
        if let Err(error) = poll.poll(&mut events, timeout) {
            if !interrupted(&error) {
                return Err(Error::io("polling", error));
            }
        }
        let now = Instant::now();
        let sending = draining.is_none();
        for event in events.iter() {
            let index = event.token().0;
            let Some(client) = clients.get_mut(index) else {
                continue;
            };
            // What the connection does once it is open, if this event opens it.
            let opened = Opened {
                index,
                now,
                sending,
                upgrade: upgrade.as_deref(),
            };
            match client.state {
                State::Connecting
                    if event.is_writable() || event.is_error() || event.is_write_closed() =>
                {
                    match connected(client) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(reason) => {
                            connecting -= 1;
                            run.drop_client(client, &poll, None);
                            run.counts.failed_connects += 1;
                            run.counts.failed(|| format!("connect: {reason}"));
                            continue;
                        }
                    }
                    #[cfg(feature = "tls")]
                    if let Some(connector) = &config.tls {
                        client.state = State::Handshaking;
                        if let Err(reason) = start_tls(client, connector, config.addr) {
                            connecting -= 1;
                            run.drop_client(client, &poll, None);
                            run.counts.failed_connects += 1;
                            run.counts.failed(|| format!("TLS: {reason}"));
                            continue;
                        }
                    }
                    if client.state == State::Handshaking {
                        continue;
                    }
                    run.opened(client, opened, &mut connecting, &mut due, &poll);
                }
                State::Handshaking => match handshake(client) {
                    Ok(Opening::Blocked) => continue,
                    Ok(Opening::Done) => {
                        run.opened(client, opened, &mut connecting, &mut due, &poll)
                    }
                    Err(reason) => {
                        connecting -= 1;
                        run.drop_client(client, &poll, None);
                        run.counts.failed_connects += 1;
                        run.counts.failed(|| format!("TLS: {reason}"));
                    }
                },
                State::Upgrading => match read_upgrade(client, &mut scratch) {
                    Ok(None) => continue,
                    Ok(Some(rest)) => {
                        connecting -= 1;
                        client.state = State::Ready;
                        run.counts.connected += 1;
                        if !rest.is_empty() {
                            log::debug!("{} bytes before any request", rest.len());
                        }
                        if sending {
                            run.fill(client, index, now, &mut due, &poll);
                        }
                    }
                    Err(reason) => {
                        connecting -= 1;
                        run.drop_client(client, &poll, None);
                        run.counts.failed_connects += 1;
                        run.counts.failed(|| format!("upgrade: {reason}"));
                    }
                },
                State::Ready => {
                    let holds = client.stream.as_ref().is_some_and(Stream::holds_output);
                    if event.is_writable() && (client.unsent > 0 || holds) {
                        run.write(client, &poll);
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        run.read(client, index, &mut scratch, sending, &mut due, &poll);
                    }
                }
                _ => {}
            }
        }
        while let Some(Reverse((at, index))) = due.peek().copied() {
            if at > now || !sending {
                break;
            }
            due.pop();
            let client = &mut clients[index];
            client.scheduled = false;
            if client.state == State::Ready {
                run.fill(client, index, now, &mut due, &poll);
            }
        }
    }
    if !measuring {
        observe(Phase::Measuring);
    }
    let Run {
        counts, histogram, ..
    } = run;
    let seconds = config.duration.as_secs_f64();
    let recorded = histogram.len();
    let quantile = |q: f64| histogram.value_at_quantile(q) as f64;
    Ok(Report {
        connections: config.connections,
        connected: counts.connected,
        served: counts.served,
        failed_connects: counts.failed_connects,
        errors: counts.errors,
        first_failure: counts.first_failure,
        requests_sent: counts.requests_sent,
        answers: counts.answers,
        recorded,
        rate: recorded as f64 / seconds,
        target_rate: config.rate,
        seconds,
        latency: if recorded == 0 {
            Latency::default()
        } else {
            Latency {
                p50_us: quantile(0.50),
                p90_us: quantile(0.90),
                p99_us: quantile(0.99),
                p999_us: quantile(0.999),
                max_us: histogram.max() as f64,
            }
        },
    })
}

fn validate(config: &LoadConfig) -> Result<()> {
    let check = |ok: bool, message: &str| {
        if ok {
            Ok(())
        } else {
            Err(Error::Config(message.into()))
        }
    };
    check(
        (1..=100_000).contains(&config.connections),
        "connections must be within 1..=100000",
    )?;
    check(
        (1..=1 << 20).contains(&config.message_bytes),
        "message_bytes must be within 1..=1048576",
    )?;
    check(
        (1..=1024).contains(&config.pipeline),
        "pipeline must be within 1..=1024",
    )?;
    check(
        config.http_path.starts_with('/')
            && config.http_path.len() <= 4096
            && config.http_path.bytes().all(|byte| byte.is_ascii_graphic()),
        "the HTTP path must start with / and be at most 4096 printable characters",
    )?;
    check(
        config.duration > Duration::ZERO && config.duration <= Duration::from_secs(3600),
        "duration must be within (0, 1h]",
    )?;
    check(
        config.warmup <= Duration::from_secs(3600),
        "warmup must be at most 1h",
    )?;
    check(
        config
            .rate
            .is_none_or(|rate| rate.is_finite() && (1.0..=10_000_000.0).contains(&rate)),
        "rate must be within 1..=10000000 requests per second",
    )?;
    check(
        config.connect_timeout > Duration::ZERO && config.drain_timeout <= Duration::from_secs(60),
        "connect_timeout must be positive and drain_timeout at most 60s",
    )
}

/// Starts a non-blocking connect; past `PER_SOURCE` connections to a loopback IPv4 address,
/// from 127.0.0.2, 127.0.0.3, … so that each source has its own ephemeral ports.
fn open(addr: SocketAddr, index: usize, connections: usize) -> io::Result<TcpStream> {
    let socket = client_socket(addr, index, connections)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) || would_block(&error) => {}
        Err(error) => return Err(error),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Whether a connect that reported writable succeeded (`Ok(false)`: not finished yet), and if
/// not, why.
fn connected(client: &Client) -> std::result::Result<bool, String> {
    let Some(stream) = &client.stream else {
        return Err("no socket".into());
    };
    stream.connect_outcome().map_err(|error| error.to_string())
}

/// Puts the TLS layer over a connected socket and starts the handshake.
#[cfg(feature = "tls")]
fn start_tls(
    client: &mut Client,
    connector: &crate::tls::TlsConnector,
    addr: SocketAddr,
) -> std::result::Result<(), String> {
    let Some(socket) = client.stream.take() else {
        return Err("no socket".into());
    };
    let stream = connector
        .connect(socket, &addr.ip().to_string())
        .map_err(|error| error.to_string())?;
    client.stream = Some(stream);
    handshake(client).map(drop)
}

/// Drives a TLS handshake as far as the socket allows.
fn handshake(client: &mut Client) -> std::result::Result<Opening, String> {
    let Some(stream) = client.stream.as_mut() else {
        return Err("no socket".into());
    };
    stream.open().map_err(|error| error.to_string())
}

/// Writes a WebSocket upgrade request on a socket just connected (a few hundred bytes: the
/// socket's buffer takes them whole).
fn send_upgrade(client: &mut Client, upgrade: &[u8]) -> std::result::Result<(), String> {
    let Some(stream) = client.stream.as_mut() else {
        return Err("no socket".into());
    };
    match stream.write(upgrade) {
        Ok(count) if count == upgrade.len() => Ok(()),
        Ok(_) => Err("the upgrade request did not fit the socket".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// Reads the upgrade's answer: `Ok(None)` while its head is incomplete, the bytes after it once
/// a `101` is in, or why it failed.
fn read_upgrade(
    client: &mut Client,
    scratch: &mut [u8],
) -> std::result::Result<Option<Vec<u8>>, String> {
    let Some(stream) = client.stream.as_mut() else {
        return Err("no socket".into());
    };
    loop {
        match stream.read(scratch) {
            Ok(0) => return Err("closed by the server".into()),
            Ok(count) => client.handshake.extend_from_slice(&scratch[..count]),
            Err(error) if would_block(&error) => break,
            Err(error) if interrupted(&error) => {}
            Err(error) => return Err(error.to_string()),
        }
        if client.handshake.len() > MAX_HANDSHAKE_BYTES {
            return Err("an upgrade answer over 8 KiB".into());
        }
    }
    let Some(end) = client
        .handshake
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
    else {
        return Ok(None);
    };
    if !client.handshake.starts_with(b"HTTP/1.1 101 ") {
        let line = client
            .handshake
            .split(|&b| b == b'\r')
            .next()
            .unwrap_or(&[]);
        return Err(format!("answered {:?}", String::from_utf8_lossy(line)));
    }
    let rest = client.handshake[end + 4..].to_vec();
    client.handshake = Vec::new();
    Ok(Some(rest))
}

/// What the per-connection steps share.
struct Run<'a> {
    /// `pipeline` copies of the request, back to back.
    requests: &'a [u8],
    request_bytes: usize,
    /// Requests a connection keeps in flight at most.
    pipeline: usize,
    interval: Option<Duration>,
    record_from: Instant,
    counts: Counts,
    histogram: Histogram<u64>,
}

/// What [`Run::opened`] needs to know of the moment a connection opened.
struct Opened<'a> {
    index: usize,
    now: Instant,
    sending: bool,
    /// The WebSocket upgrade to send first, if the load is WebSocket.
    upgrade: Option<&'a [u8]>,
}

impl Run<'_> {
    /// A connection is open (connected, and past its TLS handshake if any): it sends the
    /// WebSocket upgrade and waits for its answer, or is ready and starts sending requests.
    fn opened(
        &mut self,
        client: &mut Client,
        opened: Opened<'_>,
        connecting: &mut usize,
        due: &mut BinaryHeap<Reverse<(Instant, usize)>>,
        poll: &Poll,
    ) {
        if let Some(upgrade) = opened.upgrade {
            // Still connecting until the upgrade is answered.
            client.state = State::Upgrading;
            if let Err(reason) = send_upgrade(client, upgrade) {
                *connecting -= 1;
                self.drop_client(client, poll, None);
                self.counts.failed_connects += 1;
                self.counts.failed(|| format!("upgrade: {reason}"));
            }
            return;
        }
        *connecting -= 1;
        client.state = State::Ready;
        self.counts.connected += 1;
        if opened.sending {
            self.fill(client, opened.index, opened.now, due, poll);
        }
    }

    /// Sends what this connection may send now, up to `pipeline` requests in flight, in one
    /// write: in closed loop at once; in open loop each at its due time, which may already
    /// have passed (then it leaves now, charged from that time), and the next one not yet due
    /// goes into the heap of due times.
    fn fill(
        &mut self,
        client: &mut Client,
        index: usize,
        now: Instant,
        due: &mut BinaryHeap<Reverse<(Instant, usize)>>,
        poll: &Poll,
    ) {
        while client.in_flight.len() < self.pipeline {
            let intended = match self.interval {
                None => now,
                Some(interval) => {
                    let at = client.first_due + interval * client.next_index;
                    if at > now {
                        if !client.scheduled {
                            client.scheduled = true;
                            due.push(Reverse((at, index)));
                        }
                        break;
                    }
                    at
                }
            };
            client.in_flight.push_back(intended);
            client.next_index = client.next_index.saturating_add(1);
            client.unsent += self.request_bytes;
            self.counts.requests_sent += 1;
            self.counts.in_flight += 1;
        }
        if client.unsent > 0 {
            self.write(client, poll);
        }
    }

    /// Writes what is owed of the requests in flight; the rest waits for the next writable
    /// event.
    fn write(&mut self, client: &mut Client, poll: &Poll) {
        let Some(stream) = client.stream.as_mut() else {
            return;
        };
        while client.unsent > 0 {
            let owed = &self.requests[self.requests.len() - client.unsent..];
            match stream.write(owed) {
                Ok(count) => client.unsent -= count,
                Err(error) if would_block(&error) => return,
                Err(error) if interrupted(&error) => {}
                Err(error) => {
                    log::debug!("write: {error}");
                    self.drop_client(client, poll, Some(&|| format!("write: {error}")));
                    return;
                }
            }
        }
        // TLS: records the socket did not take wait in the layer for the next writable event.
        if let Err(error) = stream.flush() {
            if !would_block(&error) {
                self.drop_client(client, poll, Some(&|| format!("write: {error}")));
            }
        }
    }

    /// Reads until `WouldBlock`, completing answers and sending the next requests; a
    /// connection closed by the server, or an answer that does not fit a request, is lost.
    fn read(
        &mut self,
        client: &mut Client,
        index: usize,
        scratch: &mut [u8],
        sending: bool,
        due: &mut BinaryHeap<Reverse<(Instant, usize)>>,
        poll: &Poll,
    ) {
        let mut completed_any = false;
        loop {
            let Some(stream) = client.stream.as_mut() else {
                return;
            };
            let count = match stream.read(scratch) {
                Ok(0) => {
                    self.drop_client(client, poll, Some(&|| "closed by the server".into()));
                    return;
                }
                Ok(count) => count,
                Err(error) if would_block(&error) => break,
                Err(error) if interrupted(&error) => continue,
                Err(error) => {
                    log::debug!("read: {error}");
                    self.drop_client(client, poll, Some(&|| format!("read: {error}")));
                    return;
                }
            };
            let completed = match client
                .answers
                .feed(&scratch[..count], client.in_flight.len())
            {
                Ok(completed) => completed,
                Err(reason) => {
                    log::debug!("{reason}");
                    self.drop_client(client, poll, Some(&|| reason.clone()));
                    return;
                }
            };
            if completed > 0 {
                completed_any = true;
                self.record(client, completed, Instant::now());
            }
        }
        if sending && completed_any {
            self.fill(client, index, Instant::now(), due, poll);
        }
    }

    /// The oldest `completed` requests in flight were answered at `now`.
    fn record(&mut self, client: &mut Client, completed: usize, now: Instant) {
        for intended in client.in_flight.drain(..completed) {
            self.counts.in_flight -= 1;
            self.counts.answers += 1;
            if intended >= self.record_from {
                if !client.answered {
                    client.answered = true;
                    self.counts.served += 1;
                }
                let micros = now.saturating_duration_since(intended).as_micros();
                self.histogram
                    .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
            }
        }
    }

    /// Closes a connection; a `lost` reason counts it as an error (it had been established).
    fn drop_client(&mut self, client: &mut Client, poll: &Poll, lost: Option<&dyn Fn() -> String>) {
        if let Some(mut stream) = client.stream.take() {
            let _ = poll.registry().deregister(&mut stream);
        }
        self.counts.in_flight -= client.in_flight.len();
        client.in_flight.clear();
        client.unsent = 0;
        client.state = State::Gone;
        if let Some(reason) = lost {
            self.counts.errors += 1;
            self.counts.failed(reason);
        }
    }
}
