//! `socketserver subscribe` and `socketserver publish`: the pub/sub client on the command
//! line, reconnecting with backoff and resuming where it left off, so a pipe through them
//! survives server restarts without a lost or repeated message.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use socketserver::client::pubsub::{Event, PubSubClient};
use socketserver::client::ws::ClientOptions;
use socketserver::client::{Backoff, Jitter};
use socketserver::protocol::ws::WebSocketOptions;
use socketserver::{Error, Result};

/// Publishes sent and not yet acknowledged, at most (the rest of stdin waits).
const PUBLISH_WINDOW: usize = 64;
/// How long the publisher serves the connection before it looks at stdin again.
const INPUT_POLL: Duration = Duration::from_millis(20);

/// The reconnect policies on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum BackoffName {
    /// The same delay (--backoff-min-ms) every time.
    Fixed,
    /// Doubling from --backoff-min-ms to --backoff-max-ms, with full jitter.
    Exponential,
}

/// What both client commands take.
#[derive(Args)]
pub(crate) struct ClientArgs {
    /// The server, as ws://HOST:PORT/ or wss://HOST:PORT/ (any path the server's pub/sub
    /// route answers on).
    url: String,
    /// The topic.
    topic: String,
    /// How to wait between reconnects.
    #[arg(long, value_enum, default_value = "exponential")]
    backoff: BackoffName,
    /// The first (or, with --backoff fixed, every) delay before a reconnect, in milliseconds.
    #[arg(long, default_value_t = 100)]
    backoff_min_ms: u64,
    /// The longest delay before a reconnect, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    backoff_max_ms: u64,
    /// Seconds a connection may be quiet before it is pinged; a server silent for this plus
    /// --ping-timeout is declared dead and the client reconnects.
    #[arg(long, default_value_t = 25.0)]
    ping_interval: f64,
    /// Seconds to wait for any sign of life after a ping.
    #[arg(long, default_value_t = 20.0)]
    ping_timeout: f64,
    /// For wss://: the CA that signed the server's certificate (PEM).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// For wss:// with mTLS: this client's certificate (PEM; with --tls-key).
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

impl ClientArgs {
    fn options(&self) -> Result<ClientOptions> {
        let within = |ms: u64, name: &str| {
            if (1..=3_600_000).contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(Error::Config(format!("{name} must be within 1..=3600000")))
            }
        };
        let min = within(self.backoff_min_ms, "--backoff-min-ms")?;
        let max = within(self.backoff_max_ms, "--backoff-max-ms")?;
        if max < min {
            return Err(Error::Config(
                "--backoff-max-ms must be at least --backoff-min-ms".into(),
            ));
        }
        let backoff = match self.backoff {
            BackoffName::Fixed => Backoff::fixed(min),
            BackoffName::Exponential => Backoff::exponential(min, max).with_jitter(Jitter::Full),
        };
        let ping_interval = super::seconds(self.ping_interval, "--ping-interval")?;
        let ping_timeout = super::seconds(self.ping_timeout, "--ping-timeout")?;
        if ping_interval.is_zero() || ping_timeout.is_zero() {
            return Err(Error::Config(
                "--ping-interval and --ping-timeout must be positive".into(),
            ));
        }
        Ok(ClientOptions {
            websocket: WebSocketOptions {
                ping_interval: Some(ping_interval),
                ping_timeout,
                ..WebSocketOptions::default()
            },
            backoff: Some(backoff),
            #[cfg(feature = "tls")]
            tls: match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
                (None, _, _) => None,
                (Some(ca), Some(certificate), Some(key)) => Some(
                    socketserver::tls::TlsConnector::with_client_certificate(ca, certificate, key)?,
                ),
                (Some(ca), _, _) => Some(socketserver::tls::TlsConnector::trusting(ca)?),
            },
            ..ClientOptions::default()
        })
    }
}

/// `socketserver subscribe URL TOPIC [--from-offset N]`.
#[derive(Args)]
pub(crate) struct SubscribeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Start at this offset (1 is the first message) instead of with new messages only.
    #[arg(long)]
    from_offset: Option<u64>,
    /// Exit after printing this many messages (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

/// `socketserver publish URL TOPIC`.
#[derive(Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Give up on a message not acknowledged within this many seconds, across reconnects.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

/// Prints `OFFSET<TAB>DATA` per message, resuming across reconnects.
pub(crate) fn subscribe(args: SubscribeArgs) -> Result<()> {
    let options = args.client.options()?;
    let mut client = PubSubClient::connect(&args.client.url, options)?;
    // The server resumes *after* an offset; history before --from-offset is skipped here.
    let first = args.from_offset.map(|offset| offset.max(1));
    client.subscribe(&args.client.topic, first.map(|_| 0));
    let stdout = std::io::stdout();
    let mut printed = 0;
    loop {
        let Some(event) = client.next_event(Duration::from_secs(1))? else {
            continue;
        };
        match event {
            Event::Message { offset, data, .. } => {
                if first.is_some_and(|first| offset < first) {
                    continue;
                }
                let mut out = stdout.lock();
                writeln!(out, "{offset}\t{data}")
                    .and_then(|()| out.flush())
                    .map_err(|error| Error::io("writing to stdout", error))?;
                printed += 1;
                if args.count.is_some_and(|count| printed >= count) {
                    return Ok(());
                }
            }
            Event::Subscribed {
                recovered: false,
                topic,
                last,
                ..
            } => log::warn!(
                "{topic}: could not resume; messages may be missing; going on after {last}"
            ),
            Event::Gap { topic, from, to } => {
                log::warn!("{topic}: messages {from}..={to} are no longer held and were skipped")
            }
            Event::Refused { code, message, .. } => {
                return Err(Error::Tool(format!(
                    "the server refused: {code}: {message}"
                )))
            }
            Event::Connected => log::info!("connected to {}", args.client.url),
            _ => {}
        }
    }
}

/// Publishes each line of stdin; prints its offset once acknowledged, in order.
pub(crate) fn publish(args: PublishArgs) -> Result<()> {
    let timeout = super::seconds(args.timeout, "--timeout")?;
    let options = args.client.options()?;
    let mut client = PubSubClient::connect(&args.client.url, options)?;
    // Stdin is read on a thread of its own, so that waiting for a line never stops the
    // connection from being served (acknowledgements, heartbeats, reconnects).
    let (lines, incoming) = crossbeam_channel::bounded::<std::io::Result<String>>(PUBLISH_WINDOW);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let stdout = std::io::stdout();
    let mut waiting: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut input_over = false;
    loop {
        while !input_over && waiting.len() < PUBLISH_WINDOW {
            match incoming.try_recv() {
                Ok(line) => {
                    let line = line.map_err(|error| Error::io("reading stdin", error))?;
                    let sequence = client.start_publish(&args.client.topic, &line);
                    waiting.push_back((sequence, Instant::now()));
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => input_over = true,
            }
        }
        let Some(&(sequence, sent)) = waiting.front() else {
            if input_over {
                return Ok(());
            }
            // Nothing to wait for but stdin: serve the connection meanwhile.
            client.serve_for(INPUT_POLL)?;
            continue;
        };
        match client.wait_published(sequence, INPUT_POLL)? {
            Some(offset) => {
                waiting.pop_front();
                let mut out = stdout.lock();
                writeln!(out, "{offset}")
                    .and_then(|()| out.flush())
                    .map_err(|error| Error::io("writing to stdout", error))?;
            }
            None if sent.elapsed() > timeout => {
                return Err(Error::Tool(format!(
                    "no acknowledgement within {timeout:?}"
                )));
            }
            None => {}
        }
        // Events other than acknowledgements (connects, ends) matter only to the log.
        while client.next_event(Duration::ZERO)?.is_some() {}
    }
}
