//! `socketserver load`: puts a server under load for a bounded time and reports throughput and
//! latency (closed loop, or open loop at a fixed rate).

use socketserver::load::LoadConfig;

use super::{seconds, LoadProtocolName};

/// The arguments of `load`.
#[derive(clap::Args)]
pub(crate) struct LoadArgs {
    /// The server to load.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: std::net::SocketAddr,
    /// The request format (echo, line, frame: each answer is the request itself; http: GET of
    /// --path, answered by a 2xx with a Content-Length body; ws: an upgrade of --path, then
    /// binary messages echoed).
    #[arg(long, value_enum, default_value = "echo")]
    protocol: LoadProtocolName,
    /// Requests each connection keeps in flight: 1 waits for every answer; more pipelines them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pipeline: u64,
    /// The path an http load requests (or a ws load upgrades).
    #[arg(long, default_value = "/")]
    path: String,
    /// Connections to open.
    #[arg(long, default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connections: u64,
    /// Seconds of measurement, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Payload bytes per request.
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
    /// Open loop at this many requests per second in all (latency from each request's intended
    /// send time); without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `load`.
pub(crate) fn run(args: LoadArgs) -> socketserver::Result<()> {
    let config = LoadConfig {
        addr: args.addr,
        protocol: args.protocol.into(),
        pipeline: args.pipeline as usize,
        http_path: args.path,
        connections: args.connections as usize,
        duration: seconds(args.duration, "--duration")?,
        warmup: seconds(args.warmup, "--warmup")?,
        message_bytes: args.message_bytes,
        rate: args.rate,
        ..LoadConfig::default()
    };
    let report = socketserver::load::run(&config)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(())
}
