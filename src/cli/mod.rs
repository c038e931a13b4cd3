//! The command line: the commands' arguments (clap) and what they share. One file per
//! command (`serve`, `load`, `compare`; `subscribe` and `publish` share `client`), each a thin layer over the library; `main.rs` only
//! parses and dispatches.

pub(crate) mod client;
pub(crate) mod compare;
pub(crate) mod load;
pub(crate) mod serve;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use socketserver::load::LoadProtocol;
use socketserver::Error;

/// `socketserver COMMAND [ARGS]`.
#[derive(Parser)]
#[command(
    name = "socketserver",
    version,
    about = "A reactor-based socket server, and the tools to measure it"
)]
pub(crate) struct Cli {
    /// How log lines are written to stderr: text, or one JSON object per line (ts, level,
    /// target, msg) for a log collector.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// env_logger's text lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run a server until SIGINT or SIGTERM.
    Serve(Box<serve::ServeArgs>),
    /// Put a server under load for a bounded time and report throughput and latency.
    Load(load::LoadArgs),
    /// Run every concurrency model under the same load and compare them: a table,
    /// compare.svg and compare.json (or, with --idle N, idle capacity and idle.json).
    Compare(compare::CompareArgs),
    /// Print each message of a pub/sub topic as OFFSET<TAB>DATA, resuming across reconnects
    /// and server restarts without a gap or a duplicate.
    Subscribe(client::SubscribeArgs),
    /// Publish each line of stdin to a pub/sub topic and print its offset once acknowledged,
    /// re-sending across reconnects what was not acknowledged.
    Publish(client::PublishArgs),
}

/// A number of seconds from the command line, within 0..=3600.
pub(crate) fn seconds(value: f64, name: &str) -> socketserver::Result<Duration> {
    if value.is_finite() && (0.0..=3600.0).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Error::Config(format!(
            "{name} must be within 0..=3600 seconds"
        )))
    }
}

/// The request formats the load generator sends.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LoadProtocolName {
    /// Bytes that come back as they are.
    Echo,
    /// Newline-terminated lines.
    Line,
    /// u32 big-endian length-prefixed frames.
    Frame,
    /// HTTP/1.1 GET requests on kept-alive connections.
    Http,
    /// WebSocket: each connection upgrades, then sends binary messages to be echoed.
    Ws,
    /// Pub/sub: each connection upgrades, then publishes and waits for each ack.
    Pubsub,
}

impl From<LoadProtocolName> for LoadProtocol {
    fn from(name: LoadProtocolName) -> LoadProtocol {
        match name {
            LoadProtocolName::Echo => LoadProtocol::Echo,
            LoadProtocolName::Line => LoadProtocol::Line,
            LoadProtocolName::Frame => LoadProtocol::Frame,
            LoadProtocolName::Http => LoadProtocol::Http,
            LoadProtocolName::Ws => LoadProtocol::Ws,
            LoadProtocolName::Pubsub => LoadProtocol::Pubsub,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModelName {
    /// One thread, one event loop, every connection (the default).
    Reactor,
    /// One event loop per thread (--threads of them), each with its own SO_REUSEPORT listener.
    Reactors,
    /// A thread per connection.
    Threads,
    /// A fixed pool of threads fed by a bounded queue of connections.
    Pool,
    /// A supervisor and --processes worker processes, each one reactor on the shared socket;
    /// a worker that dies is replaced.
    Prefork,
}

/// Raises the soft limit on open descriptors to the hard limit (see
/// [`socketserver::net::raise_descriptor_limit`]); a failure only means fewer connections.
pub(crate) fn raise_descriptor_limit() {
    if let Err(error) = socketserver::net::raise_descriptor_limit() {
        log::debug!("could not raise the descriptor limit: {error}");
    }
}
