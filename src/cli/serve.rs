//! `socketserver serve`: binds, prints `listening on <addr>` as the first line on stdout (so a
//! script can bind port 0 and read the port; with `--metrics-addr`, `metrics at
//! http://<addr>/metrics` follows), then serves a protocol under a model until SIGINT or SIGTERM.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use socketserver::prefork::{self, Inherited, Supervisor};
use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::ws::{self, DeflateOptions, WebSocketOptions, WebSocketRoute};
use socketserver::protocol::{Echo, Frame, Http, Line, Protocol};
use socketserver::pubsub::{FsyncPolicy, PubSub, Storage};
use socketserver::{Config, DatagramServer, Error, Model, Server};

use super::{seconds, ModelName};

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
    /// /metrics` without an upgrade serves the counters. With --broadcast, every message goes
    /// to every connected WebSocket instead.
    Ws,
    /// Pub/sub over WebSocket on any path (JSON messages: subscribe, unsubscribe, publish),
    /// with a durable log per topic in --data-dir; `GET /metrics` serves the counters.
    Pubsub,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientAuthName {
    /// A client without a certificate signed by the client CA is refused.
    Required,
    /// A client may come without a certificate; one that presents a certificate must present
    /// a valid one.
    Optional,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TlsVersionName {
    /// TLS 1.2 and 1.3.
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    Tls13,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FsyncName {
    /// A publish is acknowledged once its record is on the disk (group commit).
    Always,
    /// Acknowledged once written; the log is synced every --fsync-interval-ms.
    Interval,
    /// Acknowledged once written; the system syncs when it likes.
    Never,
}

/// The arguments of `serve`.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
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
    /// Also answer HAProxy's agent-check on this address (`up ready`, or `drain` while
    /// draining or while the backplane is out of reach); not with prefork.
    #[arg(long, value_name = "HOST:PORT")]
    agent_addr: Option<String>,
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
    /// Load balancers (CIDR ranges, comma-separated) whose connections start with a PROXY
    /// protocol header (v1 or v2) naming the real client; from them the header is required.
    /// Reactor models only.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    proxy_protocol_from: Vec<ipnet::IpNet>,
    /// HTTP proxies (CIDR ranges, comma-separated) whose Forwarded / X-Forwarded-For headers
    /// are believed for the client's address (nginx in front, say); nobody else's are.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    forwarded_from: Vec<ipnet::IpNet>,
    /// How long a trusted balancer may take to send its PROXY header, in seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    proxy_header_timeout: f64,
    /// On SIGTERM, serve on for this many seconds while GET /readyz answers 503 (so a load
    /// balancer's health checks take this server out of rotation), then stop accepting, close
    /// WebSockets with 1001, finish in-flight work and exit. A second SIGTERM skips the wait.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    drain_delay: f64,
    /// Ping a WebSocket quiet this many seconds (0: no pings).
    #[arg(long, default_value_t = 25.0)]
    ping_interval: f64,
    /// Close a pinged WebSocket from which nothing arrives within this many seconds.
    #[arg(long, default_value_t = 20.0)]
    ping_timeout: f64,
    /// Offer permessage-deflate to WebSocket clients that ask for it.
    #[arg(long)]
    deflate: bool,
    /// ws: send every message a client sends to every connected WebSocket (the sender too),
    /// through the pub/sub fan-out, instead of echoing it.
    #[arg(long)]
    broadcast: bool,
    /// pubsub and ws --broadcast: let a message wait up to this many milliseconds for others,
    /// so several go to each subscriber in one write (fewer packets, more latency).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    delivery_delay_ms: u64,
    /// pubsub: where the topics' logs live.
    #[arg(long, default_value = "socketserver-data")]
    data_dir: std::path::PathBuf,
    /// pubsub: when a publish counts as stored.
    #[arg(long, value_enum, default_value = "always")]
    fsync: FsyncName,
    /// pubsub: how often --fsync interval syncs, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    fsync_interval_ms: u64,
    /// pubsub: keep a bounded history per topic in memory instead of a log on disk.
    #[arg(long)]
    memory: bool,
    /// pubsub: keep the topics in Redis, shared with every node given the same list
    /// (redis://HOST:PORT,...; topics are spread over them by jump hash), so a subscriber
    /// resumes on any node. Each topic's stream keeps --memory-messages messages.
    #[arg(long, value_name = "URLS", conflicts_with = "memory", value_parser = redis_servers)]
    backplane: Option<RedisServers>,
    /// pubsub --backplane: one Redis round trip may take this many milliseconds before its
    /// server counts as down (its publishes are then refused at once until it is back).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    backplane_timeout_ms: u64,
    /// pubsub: messages each topic keeps in memory (--memory) or in its Redis stream
    /// (--backplane).
    #[arg(long, default_value_t = Config::default().pubsub_memory_messages)]
    memory_messages: usize,
    /// pubsub: delete a topic's oldest segments past this many bytes.
    #[arg(long, default_value_t = Config::default().pubsub_retention_bytes)]
    retention_bytes: u64,
    /// pubsub: delete a segment once its newest message is older than this many seconds.
    #[arg(long, default_value_t = Config::default().pubsub_retention.as_secs())]
    retention_secs: u64,
    /// pubsub: roll a topic's segment at this many bytes.
    #[arg(long, default_value_t = Config::default().pubsub_segment_bytes)]
    segment_bytes: u64,
    /// Terminate TLS with this certificate chain (PEM, leaf first), for every protocol and
    /// model; with --tls-key. SIGHUP reloads the certificate, key, client CA and CRL.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Require client certificates signed by a CA in this file (PEM): mTLS.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// With --tls-client-ca: whether a client certificate is required or optional.
    #[arg(long, value_enum, default_value = "required")]
    tls_client_auth: ClientAuthName,
    /// With --tls-client-ca: refuse client certificates revoked by the CRLs in this file (PEM).
    #[arg(long, requires = "tls_client_ca")]
    tls_crl: Option<std::path::PathBuf>,
    /// The oldest TLS version accepted.
    #[arg(long, value_enum, default_value = "1.2")]
    tls_min_version: TlsVersionName,
    /// Cut a TLS client whose handshake has not finished after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    tls_handshake_timeout: f64,
}

impl ServeArgs {
    /// The idle timeout in seconds, 0 for none: the flag, or the protocol's default.
    fn idle_timeout_secs(&self) -> u64 {
        self.idle_timeout.unwrap_or(
            if matches!(self.protocol, ProtocolName::Ws | ProtocolName::Pubsub) {
                0
            } else {
                60
            },
        )
    }
}

/// The Redis servers of `--backplane`, checked as the flag is parsed (before anything binds).
#[derive(Clone, Debug)]
pub(crate) struct RedisServers(Vec<String>);

fn redis_servers(list: &str) -> Result<RedisServers, String> {
    socketserver::pubsub::backplane::parse_urls(list).map(RedisServers)
}

/// How the bound socket is served.
#[derive(Clone, Copy)]
enum Run {
    Reactor,
    Reactors(usize),
    Blocking(Model),
}

/// Runs `serve`.
pub(crate) fn run(args: ServeArgs) -> socketserver::Result<()> {
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
        pubsub_delivery_delay: Duration::from_millis(args.delivery_delay_ms),
        pubsub_memory_messages: args.memory_messages,
        backplane_timeout: Duration::from_millis(args.backplane_timeout_ms),
        pubsub_retention_bytes: args.retention_bytes,
        pubsub_retention: Duration::from_secs(args.retention_secs),
        pubsub_segment_bytes: args.segment_bytes,
        tls_handshake_timeout: seconds(args.tls_handshake_timeout, "--tls-handshake-timeout")?,
        drain_delay: seconds(args.drain_delay, "--drain-delay")?,
        proxy_protocol_from: args.proxy_protocol_from.clone(),
        proxy_header_timeout: seconds(args.proxy_header_timeout, "--proxy-header-timeout")?,
        ..Config::default()
    };
    if args.tls_cert.is_some() && args.udp {
        return Err(Error::Config(
            "TLS is for stream sockets: --tls-cert does not combine with --udp".into(),
        ));
    }
    let fans_out = matches!(args.protocol, ProtocolName::Pubsub)
        || (matches!(args.protocol, ProtocolName::Ws) && args.broadcast);
    if fans_out && matches!(args.model, ModelName::Prefork) && args.backplane.is_none() {
        return Err(Error::Config(
            "pub/sub runs under --model prefork only with a --backplane: without one its \
             processes would share no topics; use --model reactors for several cores"
                .into(),
        ));
    }
    if args.backplane.is_some() && !matches!(args.protocol, ProtocolName::Pubsub) {
        return Err(Error::Config(
            "--backplane goes with --protocol pubsub".into(),
        ));
    }
    if args.broadcast && !matches!(args.protocol, ProtocolName::Ws) {
        return Err(Error::Config("--broadcast goes with --protocol ws".into()));
    }
    if args.agent_addr.is_some() && (matches!(args.model, ModelName::Prefork) || args.udp) {
        return Err(Error::Config(
            "--agent-addr is for one process serving a stream socket: not with --model \
             prefork (each worker drains apart) or --udp"
                .into(),
        ));
    }
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
            Inherited::Stream(server) => {
                let (server, _reload) = with_tls(server, &args)?;
                serve_stream(server, &args, Run::Reactor)
            }
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
    // The prefork supervisor only hands the socket on: its workers terminate TLS.
    let tls_here = !matches!(args.model, ModelName::Prefork);
    let mut reload = None;
    let mut stream = |server: Server| -> socketserver::Result<Bound> {
        if !tls_here {
            return Ok(Bound::Stream(server));
        }
        let (server, guard) = with_tls(server, &args)?;
        reload = guard;
        Ok(Bound::Stream(server))
    };
    let bound = match (&args.unix, args.udp) {
        (Some(path), false) => stream(Server::bind_unix_with(path, config)?)?,
        (None, false) => stream(Server::bind_with(args.addr.as_str(), config)?)?,
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
    // The agent check of a pub/sub server also says whether its backplane is reachable: it
    // starts with the service (serve_pubsub).
    let agent = match (&args.agent_addr, &bound) {
        (Some(addr), Bound::Stream(server)) if !matches!(args.protocol, ProtocolName::Pubsub) => {
            Some(start_agent_check(&server.handle(), addr, || false)?)
        }
        _ => None,
    };
    // The first line is a contract with scripts: make sure it leaves now, not at exit.
    let _ = std::io::stdout().flush();
    let served = match bound {
        Bound::Stream(server) => serve_stream(server, &args, run),
        Bound::Datagram(server) => serve_datagrams(server, run),
    };
    if let Some(agent) = agent {
        if let Err(error) = agent.shutdown() {
            log::warn!("agent-check listener: {error}");
        }
    }
    if let Some(metrics) = metrics {
        if let Err(error) = metrics.shutdown() {
            log::warn!("metrics listener: {error}");
        }
    }
    drop(reload);
    served
}

/// The TLS guard that keeps SIGHUP reloading; nothing without TLS.
#[cfg(feature = "tls")]
type Reload = Option<socketserver::tls::ReloadOnSighup>;
#[cfg(not(feature = "tls"))]
type Reload = Option<NoReload>;
/// Stands for the reload guard in a build without TLS.
#[cfg(not(feature = "tls"))]
struct NoReload;

/// Terminates TLS on `server` as the flags ask (ALPN `http/1.1` for the HTTP-based
/// protocols), reloading on SIGHUP while the returned guard lives.
#[cfg(feature = "tls")]
fn with_tls(server: Server, args: &ServeArgs) -> socketserver::Result<(Server, Reload)> {
    use socketserver::tls::{ClientAuth, TlsAcceptor, TlsSettings, TlsVersions};
    let (Some(certificate), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok((server, None));
    };
    let mut settings = TlsSettings::new(certificate, key).versions(match args.tls_min_version {
        TlsVersionName::Tls12 => TlsVersions::Tls13And12,
        TlsVersionName::Tls13 => TlsVersions::Tls13Only,
    });
    if let Some(ca) = &args.tls_client_ca {
        let auth = match args.tls_client_auth {
            ClientAuthName::Required => ClientAuth::Required,
            ClientAuthName::Optional => ClientAuth::Optional,
        };
        settings = settings.client_ca(ca, auth);
    }
    if let Some(crl) = &args.tls_crl {
        settings = settings.crl(crl);
    }
    if matches!(
        args.protocol,
        ProtocolName::Http | ProtocolName::Ws | ProtocolName::Pubsub
    ) {
        settings = settings.alpn_http1();
    }
    let acceptor = TlsAcceptor::new(settings)?;
    let reload = acceptor.reload_on_sighup()?;
    Ok((server.tls(acceptor), Some(reload)))
}

#[cfg(not(feature = "tls"))]
fn with_tls(server: Server, args: &ServeArgs) -> socketserver::Result<(Server, Reload)> {
    if args.tls_cert.is_some() {
        return Err(Error::Config(
            "this build has no TLS (built without the `tls` feature)".into(),
        ));
    }
    Ok((server, None))
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
            let router = Arc::new(with_health(
                Router::new()
                    .get("/", |_| Response::text(200, "Hello, World!"))
                    .get("/metrics", {
                        let handle = handle.clone();
                        move |_| Response::metrics(&handle.stats())
                    }),
                &args.forwarded_from,
                move || readiness(handle.is_ready(), true),
            ));
            run_stream(server, run, move || Http::new(router.clone(), limits))
        }
        ProtocolName::Ws => {
            let limits = HttpLimits::from_config(server.config());
            let mut options = WebSocketOptions::from_config(server.config());
            if args.deflate {
                options = options.with_deflate(DeflateOptions::default());
            }
            let handle = server.handle();
            if args.broadcast {
                let pubsub = PubSub::start_broadcast(server.config())?;
                return serve_pubsub(server, run, pubsub, options, limits, args);
            }
            let router = Arc::new(with_health(
                Router::new()
                    .get("/metrics", {
                        let handle = handle.clone();
                        move |_| Response::metrics(&handle.stats())
                    })
                    .websocket("/*", WebSocketRoute::new(options, |_| ws::Echo)),
                &args.forwarded_from,
                move || readiness(handle.is_ready(), true),
            ));
            run_stream(server, run, move || Http::new(router.clone(), limits))
        }
        ProtocolName::Pubsub => {
            let limits = HttpLimits::from_config(server.config());
            let mut options = WebSocketOptions::from_config(server.config());
            if args.deflate {
                options = options.with_deflate(DeflateOptions::default());
            }
            let storage = if let Some(RedisServers(servers)) = &args.backplane {
                Storage::Redis {
                    servers: servers.clone(),
                }
            } else if args.memory {
                Storage::Memory
            } else {
                Storage::Disk {
                    dir: args.data_dir.clone(),
                    fsync: match args.fsync {
                        FsyncName::Always => FsyncPolicy::Always,
                        FsyncName::Interval => {
                            FsyncPolicy::Interval(Duration::from_millis(args.fsync_interval_ms))
                        }
                        FsyncName::Never => FsyncPolicy::Never,
                    },
                }
            };
            let pubsub = PubSub::start(server.config(), storage)?;
            serve_pubsub(server, run, pubsub, options, limits, args)
        }
    }
}

/// Serves `pubsub` on every path, its counters and the server's at `GET /metrics`; once the
/// server has stopped, lets the hub make every write durable.
fn serve_pubsub(
    server: Server,
    run: Run,
    pubsub: PubSub,
    options: WebSocketOptions,
    limits: HttpLimits,
    args: &ServeArgs,
) -> socketserver::Result<()> {
    let forwarders = &args.forwarded_from;
    let handle = server.handle();
    let stats = pubsub.stats();
    let ready = {
        let (handle, stats) = (handle.clone(), stats.clone());
        move || readiness(handle.is_ready(), stats.backplane_ready())
    };
    let router = Arc::new(with_health(
        Router::new()
            .get("/metrics", move |_| {
                let mut text = socketserver::metrics::prometheus(&handle.stats());
                text.push_str(&stats.prometheus());
                text.push_str(&socketserver::metrics::process_metrics());
                Response::new(200)
                    .content_type("text/plain; version=0.0.4")
                    .body(text.into_bytes())
            })
            .websocket("/*", pubsub.route(options)),
        forwarders,
        ready,
    ));
    let agent = match &args.agent_addr {
        Some(addr) => {
            let stats = pubsub.stats();
            Some(start_agent_check(&server.handle(), addr, move || {
                !stats.backplane_ready()
            })?)
        }
        None => None,
    };
    let _ = std::io::stdout().flush();
    let served = run_stream(server, run, move || Http::new(router.clone(), limits));
    if let Some(agent) = agent {
        if let Err(error) = agent.shutdown() {
            log::warn!("agent-check listener: {error}");
        }
    }
    pubsub.shutdown();
    served
}

/// Starts the agent-check listener and says where it is.
fn start_agent_check(
    handle: &socketserver::ServerHandle,
    addr: &str,
    degraded: impl Fn() -> bool + Send + Sync + 'static,
) -> socketserver::Result<socketserver::RunningServer> {
    let agent = handle.serve_agent_check(addr, degraded)?;
    // Not println!: a reader that took only the first line must not make this panic.
    let _ = writeln!(std::io::stdout(), "agent check at {}", agent.local_addr());
    Ok(agent)
}

/// What `/readyz` answers: 200 `ready`; 503 `draining` once a drain or shutdown began; 503
/// `degraded` while the backplane cannot reach a Redis server (this node can neither store
/// nor fetch its topics, so the balancer should send clients to another).
fn readiness(serving: bool, backplane_up: bool) -> Response {
    match (serving, backplane_up) {
        (false, _) => Response::text(503, "draining\n"),
        (true, false) => Response::text(503, "degraded: the backplane is unreachable\n"),
        (true, true) => Response::text(200, "ready\n"),
    }
}

/// `router` with the health checks a load balancer or an orchestrator asks for: `GET /livez`
/// (200 while the process serves at all) and `GET /readyz` (what `ready` answers), believing
/// the forwarding headers of `forwarders`.
fn with_health(
    router: Router,
    forwarders: &[ipnet::IpNet],
    ready: impl Fn() -> Response + Send + Sync + 'static,
) -> Router {
    router
        .trust_forwarded_from(forwarders.iter().copied())
        .get("/livez", |_| Response::text(200, "live\n"))
        .get("/readyz", move |_| ready())
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
    worker_args.push(format!("--drain-delay={}", args.drain_delay));
    // CIDR ranges as the flag takes them: comma-separated.
    let ranges = |ranges: &[ipnet::IpNet]| {
        ranges
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !args.forwarded_from.is_empty() {
        worker_args.push(format!("--forwarded-from={}", ranges(&args.forwarded_from)));
    }
    if !args.proxy_protocol_from.is_empty() {
        worker_args.push(format!(
            "--proxy-protocol-from={}",
            ranges(&args.proxy_protocol_from)
        ));
        worker_args.push(format!(
            "--proxy-header-timeout={}",
            args.proxy_header_timeout
        ));
    }
    if let Some(backplane) = &args.backplane {
        worker_args.extend([
            format!("--backplane={}", backplane.0.join(",")),
            format!("--backplane-timeout-ms={}", args.backplane_timeout_ms),
            format!("--memory-messages={}", args.memory_messages),
            format!("--delivery-delay-ms={}", args.delivery_delay_ms),
        ]);
    }
    if args.udp {
        worker_args.push("--udp".into());
    }
    let paths = [
        ("--tls-cert", &args.tls_cert),
        ("--tls-key", &args.tls_key),
        ("--tls-client-ca", &args.tls_client_ca),
        ("--tls-crl", &args.tls_crl),
    ];
    for (flag, path) in paths {
        if let Some(path) = path {
            worker_args.push(format!("{flag}={}", path.display()));
        }
    }
    if args.tls_cert.is_some() {
        let name = |value: Option<clap::builder::PossibleValue>| {
            value
                .map(|value| value.get_name().to_string())
                .unwrap_or_default()
        };
        worker_args.extend([
            format!(
                "--tls-client-auth={}",
                name(args.tls_client_auth.to_possible_value())
            ),
            format!(
                "--tls-min-version={}",
                name(args.tls_min_version.to_possible_value())
            ),
            format!("--tls-handshake-timeout={}", args.tls_handshake_timeout),
        ]);
    }
    // Workers reload their TLS configuration on SIGHUP: the supervisor passes it on.
    // The workers drain before they shut down: the supervisor waits for both.
    let supervisor = Supervisor::new(processes)?
        .forward_sighup(args.tls_cert.is_some())
        .shutdown_timeout(
            Config::default().shutdown_timeout + seconds(args.drain_delay, "--drain-delay")?,
        );
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
