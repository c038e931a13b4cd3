//! The `socketserver` command: a thin layer of argument parsing over the library.
//!
//! `socketserver serve --protocol echo|line|frame --model reactor|reactors|threads|pool --addr HOST:PORT`
//! prints exactly
//! `listening on <addr>` as its first line on stdout (so scripts can bind port 0 and read the
//! port), then serves until SIGINT/SIGTERM. `RUST_LOG` sets the log level (env_logger).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use socketserver::protocol::{Echo, Frame, Line};
use socketserver::{Config, Model, Server};

#[derive(Parser)]
#[command(
    name = "socketserver",
    version,
    about = "A reactor-based socket server, and the tools to measure it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server until SIGINT or SIGTERM.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolName {
    /// Every byte back as it comes.
    Echo,
    /// Each newline-terminated line back.
    Line,
    /// Each u32 big-endian length-prefixed frame back.
    Frame,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelName {
    /// One thread, one event loop, every connection (the default).
    Reactor,
    /// One event loop per thread (--threads of them), each with its own SO_REUSEPORT listener.
    Reactors,
    /// A thread per connection.
    Threads,
    /// A fixed pool of threads fed by a bounded queue of connections.
    Pool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The concurrency model.
    #[arg(long, value_enum, default_value = "reactor")]
    model: ModelName,
    /// Threads of the pool model (default 64), or event loops of the reactors model (default:
    /// the machine's parallelism).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    threads: Option<u64>,
    /// The protocol to serve.
    #[arg(long, value_enum, default_value = "echo")]
    protocol: ProtocolName,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Listen on a Unix-domain stream socket at this path instead of TCP.
    #[arg(long, conflicts_with = "addr")]
    unix: Option<std::path::PathBuf>,
    /// Most connections held at once; clients over the cap are closed at once.
    #[arg(long, default_value_t = Config::default().max_connections as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Close connections idle this many seconds (0 disables the idle timeout).
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Worker threads for offloaded jobs.
    #[arg(long, default_value_t = Config::default().workers as u64,
          value_parser = clap::value_parser!(u64).range(0..=1024))]
    workers: u64,
    /// Longest line the line protocol accepts, in bytes.
    #[arg(long, default_value_t = Config::default().max_line_bytes)]
    max_line_bytes: usize,
    /// Largest frame payload the frame protocol accepts, in bytes.
    #[arg(long, default_value_t = Config::default().max_frame_bytes)]
    max_frame_bytes: usize,
}

fn serve(args: ServeArgs) -> socketserver::Result<()> {
    let config = Config {
        max_connections: args.max_connections as usize,
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        workers: args.workers as usize,
        max_line_bytes: args.max_line_bytes,
        max_frame_bytes: args.max_frame_bytes,
        pool_threads: args
            .threads
            .map_or(Config::default().pool_threads, |n| n as usize),
        reuse_port: matches!(args.model, ModelName::Reactors),
        ..Config::default()
    };
    let reactors = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| (n as usize).min(1024),
    );
    let server = match &args.unix {
        Some(path) => Server::bind_unix_with(path, config.clone())?,
        None => Server::bind_with(args.addr.as_str(), config.clone())?,
    };
    println!("listening on {}", server.listen_addr());
    // The first line is a contract with scripts: make sure it leaves now, not at exit.
    let _ = std::io::stdout().flush();
    let (max_line, max_frame) = (config.max_line_bytes, config.max_frame_bytes);
    if matches!(args.model, ModelName::Reactors) {
        return match args.protocol {
            ProtocolName::Echo => server.serve_reactors(reactors, || Echo),
            ProtocolName::Line => server.serve_reactors(reactors, move || Line::new(max_line)),
            ProtocolName::Frame => server.serve_reactors(reactors, move || Frame::new(max_frame)),
        };
    }
    let model = match args.model {
        ModelName::Reactor | ModelName::Reactors => None,
        ModelName::Threads => Some(Model::ThreadPerConnection {
            block_on_close: true,
        }),
        ModelName::Pool => Some(Model::ThreadPool),
    };
    match (args.protocol, model) {
        (ProtocolName::Echo, None) => server.serve(|| Echo),
        (ProtocolName::Line, None) => server.serve(move || Line::new(max_line)),
        (ProtocolName::Frame, None) => server.serve(move || Frame::new(max_frame)),
        (ProtocolName::Echo, Some(model)) => server.serve_blocking(model, || Echo),
        (ProtocolName::Line, Some(model)) => {
            server.serve_blocking(model, move || Line::new(max_line))
        }
        (ProtocolName::Frame, Some(model)) => {
            server.serve_blocking(model, move || Frame::new(max_frame))
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("socketserver: {error}");
            ExitCode::FAILURE
        }
    }
}
