//! The `socketserver` command: a thin layer of argument parsing over the library.
//!
//! `socketserver serve --protocol echo|line|frame|http|ws --model reactor|reactors|threads|pool|prefork
//! [--addr HOST:PORT | --unix PATH] [--udp] [--metrics-addr HOST:PORT]` prints exactly
//! `listening on <addr>` as its first line on stdout (so scripts can bind port 0 and read the
//! port; with `--metrics-addr`, `metrics at http://<addr>/metrics` follows), then serves until
//! SIGINT/SIGTERM. `RUST_LOG` sets the log level (env_logger).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use socketserver::load::{LoadConfig, LoadProtocol};
use socketserver::prefork::{self, Inherited, Supervisor};
use std::sync::Arc;

use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::ws::{self, DeflateOptions, WebSocketOptions, WebSocketRoute};
use socketserver::protocol::{Echo, Frame, Http, Line, Protocol};
use socketserver::{Config, DatagramServer, Error, Model, Server};

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
    /// Put a server under load for a bounded time and report throughput and latency.
    Load(LoadArgs),
    /// Run every concurrency model under the same load and compare them: a table,
    /// compare.svg and compare.json (or, with --idle N, idle capacity and idle.json).
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    /// The short run: 0.25 s of warm-up and 1 s measured per model and level (under a minute
    /// on two cores) instead of 1 s and 5 s.
    #[arg(long)]
    quick: bool,
    /// Measure idle capacity instead: hold this many idle connections against each model.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    idle: Option<u64>,
    /// Models to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "threads,pool,reactor,reactors,prefork"
    )]
    models: Vec<ModelName>,
    /// Concurrency levels (connections), in order.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024,4096",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connections: Vec<u64>,
    /// CPUs for the server, taken from the first of those this process may use; the load gets
    /// the rest (default: half, at least one).
    #[arg(long)]
    server_cpus: Option<usize>,
    /// Seconds measured per run (overrides --quick's).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of warm-up per run (overrides --quick's).
    #[arg(long)]
    warmup: Option<f64>,
    /// Payload bytes per request (not http's).
    #[arg(long, default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    message_bytes: u64,
    /// The protocol served and loaded: echo (the default), http (GET / answered `Hello,
    /// World!`), ws (WebSocket echo of binary messages), line or frame. With --idle: echo or
    /// ws.
    #[arg(long, value_enum, default_value = "echo")]
    protocol: LoadProtocolName,
    /// Requests each connection keeps in flight (HTTP pipelining when above 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pipeline: u64,
    /// The servers' --max-connections: a model capped below a level shows it as failed.
    #[arg(long, default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Directory for compare.svg and compare.json (or idle.json).
    #[arg(long, default_value = "target/compare")]
    out: std::path::PathBuf,
}

/// SIGINT or SIGTERM to `compare` stops the server it is measuring (and waits for it) before
/// this process exits, with the shell's status for death by that signal.
fn stop_servers_on_signal() -> socketserver::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|error| Error::io("installing signal handlers", error))?;
    std::thread::Builder::new()
        .name("socketserver-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("\nsocketserver: stopping the server under test");
                socketserver::compare::process::stop_all();
                std::process::exit(128 + signal);
            }
        })
        .map_err(|error| Error::io("starting the signal thread", error))?;
    Ok(())
}

fn compare(args: CompareArgs) -> socketserver::Result<()> {
    use socketserver::compare::{self, chart, idle, CompareConfig, ModelKind};
    stop_servers_on_signal()?;
    let program = std::env::current_exe()
        .map_err(|error| Error::io("finding this program to start servers", error))?;
    let mut config = if args.quick {
        CompareConfig::quick(program)
    } else {
        CompareConfig::new(program)
    };
    if let Some(count) = args.server_cpus {
        config.server_cpu_count(count)?;
    }
    if let Some(duration) = args.duration {
        config.duration = seconds(duration, "--duration")?;
    }
    if let Some(warmup) = args.warmup {
        config.warmup = seconds(warmup, "--warmup")?;
    }
    config.models = args
        .models
        .iter()
        .filter_map(|model| ModelKind::from_name(model.to_possible_value()?.get_name()))
        .collect();
    config.connections = args.connections.iter().map(|&n| n as usize).collect();
    config.message_bytes = args.message_bytes as usize;
    config.protocol = args.protocol.into();
    config.pipeline = args.pipeline as usize;
    config.max_connections = args.max_connections as usize;
    std::fs::create_dir_all(&args.out)
        .map_err(|error| Error::io(format!("creating {}", args.out.display()), error))?;
    let mut progress = ProgressLine::new();
    if let Some(target) = args.idle {
        let result = idle::run(&config, target as usize, |step, steps, model| {
            progress.show(&format!(
                "[{step}/{steps}] {model}: {target} idle connections"
            ));
        })?;
        progress.clear();
        println!("{result}");
        let json = args.out.join("idle.json");
        write_file(&json, &result.to_json())?;
        println!("wrote {}", json.display());
        return Ok(());
    }
    let result = compare::run(&config, |step| {
        progress.show(&format!(
            "[{}/{}] {} at {} connections",
            step.step, step.steps, step.model, step.connections
        ));
    })?;
    progress.clear();
    println!("{result}");
    let (json, svg) = (args.out.join("compare.json"), args.out.join("compare.svg"));
    write_file(&json, &result.to_json())?;
    chart::write_svg(&result, &svg)?;
    println!("wrote {} and {}", svg.display(), json.display());
    Ok(())
}

fn write_file(path: &std::path::Path, text: &str) -> socketserver::Result<()> {
    std::fs::write(path, text)
        .map_err(|error| Error::io(format!("writing {}", path.display()), error))
}

/// A progress line on stderr: rewritten in place on a terminal, one line per step otherwise.
struct ProgressLine {
    terminal: bool,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        use std::io::IsTerminal;
        ProgressLine {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, text: &str) {
        if self.terminal {
            eprint!("\r\x1b[K{text}");
        } else {
            eprintln!("{text}");
        }
    }

    fn clear(&mut self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}

/// A number of seconds from the command line, within 0..=3600.
fn seconds(value: f64, name: &str) -> socketserver::Result<Duration> {
    if value.is_finite() && (0.0..=3600.0).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Error::Config(format!(
            "{name} must be within 0..=3600 seconds"
        )))
    }
}

#[derive(clap::Args)]
struct LoadArgs {
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

fn load(args: LoadArgs) -> socketserver::Result<()> {
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

/// The request formats the load generator sends.
#[derive(Clone, Copy, ValueEnum)]
enum LoadProtocolName {
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
}

impl From<LoadProtocolName> for LoadProtocol {
    fn from(name: LoadProtocolName) -> LoadProtocol {
        match name {
            LoadProtocolName::Echo => LoadProtocol::Echo,
            LoadProtocolName::Line => LoadProtocol::Line,
            LoadProtocolName::Frame => LoadProtocol::Frame,
            LoadProtocolName::Http => LoadProtocol::Http,
            LoadProtocolName::Ws => LoadProtocol::Ws,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolName {
    /// Every byte back as it comes.
    Echo,
    /// Each newline-terminated line back.
    Line,
    /// Each u32 big-endian length-prefixed frame back.
    Frame,
    /// HTTP/1.1: `GET /` answers `Hello, World!`, `GET /metrics` the server's counters in
    /// Prometheus text format.
    Http,
    /// WebSocket echo: every text or binary message comes back unchanged, on any path; `GET
    /// /metrics` without an upgrade serves the counters.
    Ws,
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
    /// A supervisor and --processes worker processes, each one reactor on the shared socket;
    /// a worker that dies is replaced.
    Prefork,
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
    /// Worker processes of the prefork model (default: the machine's parallelism).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    processes: Option<u64>,
    /// Serve datagrams: UDP on --addr, or a Unix datagram socket with --unix (echo only).
    #[arg(long)]
    udp: bool,
    /// The protocol to serve.
    #[arg(long, value_enum, default_value = "echo")]
    protocol: ProtocolName,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Listen on a Unix-domain socket at this path instead of TCP (or UDP).
    #[arg(long, conflicts_with = "addr")]
    unix: Option<std::path::PathBuf>,
    /// Also serve the server's counters as Prometheus text at `GET /metrics` on this address
    /// (for protocols other than http, which serves /metrics itself; not with prefork, whose
    /// workers count apart).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Most connections held at once by the whole server (all loops, all prefork workers);
    /// clients over the cap are closed at once.
    #[arg(long, default_value_t = Config::default().max_connections as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Close connections idle this many seconds (0 disables the idle timeout). Default 60, but
    /// off for ws, whose heartbeats find dead peers.
    #[arg(long)]
    idle_timeout: Option<u64>,
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
    /// Largest WebSocket message, in bytes (after inflating it).
    #[arg(long, default_value_t = Config::default().ws_max_message_bytes)]
    max_message_bytes: usize,
    /// Ping a WebSocket quiet this many seconds (0: no pings).
    #[arg(long, default_value_t = 25.0)]
    ping_interval: f64,
    /// Close a pinged WebSocket from which nothing arrives within this many seconds.
    #[arg(long, default_value_t = 20.0)]
    ping_timeout: f64,
    /// Offer permessage-deflate to WebSocket clients that ask for it.
    #[arg(long)]
    deflate: bool,
}

impl ServeArgs {
    /// The idle timeout in seconds, 0 for none: the flag, or the protocol's default.
    fn idle_timeout_secs(&self) -> u64 {
        self.idle_timeout
            .unwrap_or(if matches!(self.protocol, ProtocolName::Ws) {
                0
            } else {
                60
            })
    }
}

/// How the bound socket is served.
#[derive(Clone, Copy)]
enum Run {
    Reactor,
    Reactors(usize),
    Blocking(Model),
}

fn serve(args: ServeArgs) -> socketserver::Result<()> {
    let idle_timeout = args.idle_timeout_secs();
    let config = Config {
        max_connections: args.max_connections as usize,
        idle_timeout: (idle_timeout > 0).then(|| Duration::from_secs(idle_timeout)),
        workers: args.workers as usize,
        max_line_bytes: args.max_line_bytes,
        max_frame_bytes: args.max_frame_bytes,
        ws_max_message_bytes: args.max_message_bytes,
        ws_ping_interval: match seconds(args.ping_interval, "--ping-interval")? {
            interval if interval.is_zero() => None,
            interval => Some(interval),
        },
        ws_ping_timeout: seconds(args.ping_timeout, "--ping-timeout")?,
        pool_threads: args
            .threads
            .map_or(Config::default().pool_threads, |n| n as usize),
        reuse_port: matches!(args.model, ModelName::Reactors),
        ..Config::default()
    };
    if args.metrics_addr.is_some() && matches!(args.model, ModelName::Prefork) {
        return Err(Error::Config(
            "--metrics-addr does not combine with --model prefork: each worker process keeps \
             its own counters (serve --protocol http to scrape a worker at /metrics)"
                .into(),
        ));
    }
    if args.udp && !matches!(args.protocol, ProtocolName::Echo) {
        return Err(Error::Config(
            "datagram servers (--udp) serve the echo protocol only".into(),
        ));
    }
    // A prefork worker serves the socket its supervisor handed over, on one reactor.
    if let Some(inherited) = prefork::inherited(config.clone())? {
        return match inherited {
            Inherited::Stream(server) => serve_stream(server, &args, Run::Reactor),
            Inherited::Datagram(server) => serve_datagrams(server, Run::Reactor),
        };
    }
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = match args.model {
        ModelName::Reactor | ModelName::Prefork => Run::Reactor,
        ModelName::Reactors => Run::Reactors(args.threads.map_or(parallelism, |n| n as usize)),
        ModelName::Threads => Run::Blocking(Model::ThreadPerConnection {
            block_on_close: true,
        }),
        ModelName::Pool => Run::Blocking(Model::ThreadPool),
    };
    let bound = match (&args.unix, args.udp) {
        (Some(path), false) => Bound::Stream(Server::bind_unix_with(path, config)?),
        (None, false) => Bound::Stream(Server::bind_with(args.addr.as_str(), config)?),
        (Some(path), true) => Bound::Datagram(DatagramServer::bind_unix_with(path, config)?),
        (None, true) => Bound::Datagram(DatagramServer::bind_with(args.addr.as_str(), config)?),
    };
    let listen_addr = match &bound {
        Bound::Stream(server) => server.listen_addr().clone(),
        Bound::Datagram(server) => server.listen_addr().clone(),
    };
    println!("listening on {listen_addr}");
    if matches!(args.model, ModelName::Prefork) {
        let _ = std::io::stdout().flush();
        let processes = args.processes.map_or(parallelism, |n| n as usize);
        return supervise(&bound, processes, &args);
    }
    let metrics = match &args.metrics_addr {
        Some(addr) => {
            let handle = match &bound {
                Bound::Stream(server) => server.handle(),
                Bound::Datagram(server) => server.handle(),
            };
            let metrics = handle.serve_metrics(addr.as_str())?;
            // Not println!: a reader that took only the first line must not make this panic.
            let _ = writeln!(
                std::io::stdout(),
                "metrics at http://{}/metrics",
                metrics.local_addr()
            );
            Some(metrics)
        }
        None => None,
    };
    // The first line is a contract with scripts: make sure it leaves now, not at exit.
    let _ = std::io::stdout().flush();
    let served = match bound {
        Bound::Stream(server) => serve_stream(server, &args, run),
        Bound::Datagram(server) => serve_datagrams(server, run),
    };
    if let Some(metrics) = metrics {
        if let Err(error) = metrics.shutdown() {
            log::warn!("metrics listener: {error}");
        }
    }
    served
}

/// A bound socket of either kind.
enum Bound {
    Stream(Server),
    Datagram(DatagramServer),
}

fn serve_stream(server: Server, args: &ServeArgs, run: Run) -> socketserver::Result<()> {
    let (max_line, max_frame) = (
        server.config().max_line_bytes,
        server.config().max_frame_bytes,
    );
    match args.protocol {
        ProtocolName::Echo => run_stream(server, run, || Echo),
        ProtocolName::Line => run_stream(server, run, move || Line::new(max_line)),
        ProtocolName::Frame => run_stream(server, run, move || Frame::new(max_frame)),
        ProtocolName::Http => {
            let limits = HttpLimits::from_config(server.config());
            let handle = server.handle();
            let router = Arc::new(
                Router::new()
                    .get("/", |_| Response::text(200, "Hello, World!"))
                    .get("/metrics", move |_| Response::metrics(&handle.stats())),
            );
            run_stream(server, run, move || Http::new(router.clone(), limits))
        }
        ProtocolName::Ws => {
            let limits = HttpLimits::from_config(server.config());
            let mut options = WebSocketOptions::from_config(server.config());
            if args.deflate {
                options = options.with_deflate(DeflateOptions::default());
            }
            let handle = server.handle();
            let router = Arc::new(
                Router::new()
                    .get("/metrics", move |_| Response::metrics(&handle.stats()))
                    .websocket("/*", WebSocketRoute::new(options, |_| ws::Echo)),
            );
            run_stream(server, run, move || Http::new(router.clone(), limits))
        }
    }
}

fn run_stream<P, F>(server: Server, run: Run, factory: F) -> socketserver::Result<()>
where
    P: Protocol + Send,
    F: FnMut() -> P + Clone + Send + 'static,
{
    match run {
        Run::Reactor => server.serve(factory),
        Run::Reactors(loops) => server.serve_reactors(loops, factory),
        Run::Blocking(model) => server.serve_blocking(model, factory),
    }
}

fn serve_datagrams(server: DatagramServer, run: Run) -> socketserver::Result<()> {
    match run {
        Run::Reactor => server.serve(|| Echo),
        Run::Reactors(loops) => server.serve_reactors(loops, || Echo),
        Run::Blocking(model) => server.serve_blocking(model, || Echo),
    }
}

/// Runs `processes` copies of this program as prefork workers on the bound socket.
fn supervise(bound: &Bound, processes: usize, args: &ServeArgs) -> socketserver::Result<()> {
    let program = std::env::current_exe()
        .map_err(|error| Error::io("finding this program to start workers", error))?;
    let protocol = args
        .protocol
        .to_possible_value()
        .map(|value| value.get_name().to_string())
        .unwrap_or_default();
    let mut worker_args = vec![
        "serve".to_string(),
        "--model=reactor".into(),
        format!("--protocol={protocol}"),
        format!("--max-connections={}", args.max_connections),
        format!("--idle-timeout={}", args.idle_timeout_secs()),
        format!("--workers={}", args.workers),
        format!("--max-line-bytes={}", args.max_line_bytes),
        format!("--max-frame-bytes={}", args.max_frame_bytes),
        format!("--max-message-bytes={}", args.max_message_bytes),
        format!("--ping-interval={}", args.ping_interval),
        format!("--ping-timeout={}", args.ping_timeout),
    ];
    if args.deflate {
        worker_args.push("--deflate".into());
    }
    if args.udp {
        worker_args.push("--udp".into());
    }
    let supervisor = Supervisor::new(processes)?;
    let command = |_index| {
        let mut command = std::process::Command::new(&program);
        command.args(&worker_args);
        command
    };
    match bound {
        Bound::Stream(server) => supervisor.run(server, command),
        Bound::Datagram(server) => supervisor.run(server, command),
    }
}

/// Raises the soft limit on open descriptors to the hard limit, as servers and load generators
/// holding many connections need (the soft limit is often 1,024; the hard limit much higher).
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit from a live local; raising the soft limit up to
        // the hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            log::debug!(
                "could not raise the descriptor limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    raise_descriptor_limit();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Load(args) => load(args),
        Command::Compare(args) => compare(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("socketserver: {error}");
            ExitCode::FAILURE
        }
    }
}
