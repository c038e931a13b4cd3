//! The front door: bind, configure, serve — an echo server in a handful of lines.
//!
//! ```no_run
//! use std::time::Duration;
//! use socketserver::{protocol::Echo, Server};
//!
//! fn main() -> socketserver::Result<()> {
//!     Server::bind("127.0.0.1:7000")?
//!         .max_connections(10_000)
//!         .idle_timeout(Duration::from_secs(60))
//!         .serve(|| Echo)
//! }
//! ```
//!
//! [`Server::serve`] runs the reactor on the calling thread until a graceful shutdown completes
//! (SIGINT/SIGTERM, or [`ServerHandle::shutdown`] from another thread). [`Server::spawn`] runs it
//! on a thread of its own and returns a [`RunningServer`].

mod datagram;

pub use datagram::DatagramServer;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};

use crate::admission::Admission;
use crate::blocking::{self, Model};
use crate::config::Config;
use crate::error::{Error, Result};
pub use crate::lifecycle::ErrorReport;
use crate::lifecycle::{default_error_hook, panic_message, ErrorHook, ShutdownSignal, VerifyHook};
use crate::metrics::{Stats, StatsSet, StatsSnapshot};
use crate::net::{self, ListenAddr, Listener};
use crate::protocol::Protocol;
use crate::reactor::completions::{self, Notifier};
use crate::reactor::{poll_with_waker, Parts, Reactor};
use crate::worker::WorkerPool;

/// A bound listener waiting to serve; configure it, then [`serve`](Server::serve) or
/// [`spawn`](Server::spawn).
pub struct Server {
    config: Config,
    listener: Listener,
    listen_addr: ListenAddr,
    poll: Poll,
    waker: Arc<Waker>,
    shutdown: Arc<ShutdownSignal>,
    /// Counters of every loop of this server, summed when read.
    stats: Arc<StatsSet>,
    /// The counters of the first loop (the only one unless serving with several reactors).
    first_stats: Arc<Stats>,
    verify: Option<VerifyHook>,
    on_error: ErrorHook,
    /// The count of connections held, shared by every loop (and, under prefork, every worker
    /// process) of the server.
    admission: Admission,
    /// Terminates TLS on every accepted connection.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
}

/// Controls a server from any thread: read its address and counters, ask it to shut down.
#[derive(Clone)]
pub struct ServerHandle {
    listen_addr: ListenAddr,
    shutdown: Arc<ShutdownSignal>,
    stats: Arc<StatsSet>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
}

/// A server running on its own thread.
pub struct RunningServer {
    handle: ServerHandle,
    thread: JoinHandle<Result<()>>,
}

/// The IP address of `addr`, or the unspecified address for a Unix socket.
fn tcp_addr(addr: &ListenAddr) -> SocketAddr {
    addr.socket_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Binds the first address `addr` resolves to that `bind` succeeds with; the error says which
/// address failed last.
fn bind_first<T>(
    addr: impl ToSocketAddrs,
    mut bind: impl FnMut(SocketAddr) -> std::io::Result<T>,
) -> Result<T> {
    let mut last_error = None;
    let addrs = addr
        .to_socket_addrs()
        .map_err(|error| Error::io("resolving the address", error))?;
    for addr in addrs {
        match bind(addr) {
            Ok(socket) => return Ok(socket),
            Err(error) => last_error = Some(Error::io(format!("binding {addr}"), error)),
        }
    }
    Err(last_error.unwrap_or_else(|| Error::Config("the address resolved to nothing".into())))
}

/// The sockets of loops 1..`loops` of a server bound at `listen_addr` (loop 0 has the server's
/// own), each bound by `bind` on the same address with SO_REUSEPORT, all before any client can
/// arrive so that the kernel spreads them over every loop from the start.
fn more_sockets<T>(
    config: &Config,
    listen_addr: &ListenAddr,
    loops: usize,
    bind: impl Fn(SocketAddr) -> std::io::Result<T>,
) -> Result<Vec<T>> {
    config.validate()?;
    if !(1..=1024).contains(&loops) {
        return Err(Error::Config(format!("loops {loops} is outside 1..=1024")));
    }
    if loops == 1 {
        return Ok(Vec::new());
    }
    if !config.reuse_port {
        return Err(Error::Config(
            "several loops need reuse_port set when binding".into(),
        ));
    }
    let Some(addr) = listen_addr.socket_addr() else {
        return Err(Error::Config(
            "several loops need a TCP or UDP socket (SO_REUSEPORT)".into(),
        ));
    };
    (1..loops)
        .map(|_| bind(addr).map_err(|error| Error::io(format!("binding {addr} again"), error)))
        .collect()
}

/// Joins the threads of a server's other loops; the first error (or panic) wins over `first`'s
/// success.
fn join_all(first: Result<()>, threads: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    let mut result = first;
    for thread in threads {
        let outcome = thread
            .join()
            .unwrap_or_else(|payload| Err(Error::Panicked(panic_message(payload.as_ref()))));
        result = result.and(outcome);
    }
    result
}

/// Starts the worker pool the configuration asks for (none for `workers = 0`).
fn start_pool(config: &Config, stats: &StatsSet) -> Result<Option<Arc<WorkerPool>>> {
    if config.workers == 0 {
        return Ok(None);
    }
    let pool = WorkerPool::start(config.workers, config.job_queue)
        .map_err(|error| Error::io("starting worker threads", error))?;
    stats.watch_job_queue(pool.queue_depth());
    Ok(Some(Arc::new(pool)))
}

impl Server {
    /// Binds `addr` with the default [`Config`]. Port 0 picks a free port; see
    /// [`Server::local_addr`].
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Server> {
        Server::bind_with(addr, Config::default())
    }

    /// Binds `addr` with `config` (validated first; the backlog is applied at bind time).
    pub fn bind_with(addr: impl ToSocketAddrs, config: Config) -> Result<Server> {
        config.validate()?;
        let listener = bind_first(addr, |addr| net::listen_tcp(addr, &config))?;
        Server::from_listener(listener, config)
    }

    /// Binds a Unix-domain stream socket at `path` with the default [`Config`]. A stale socket
    /// file left by a server that is gone is replaced; the file is removed when the server stops.
    pub fn bind_unix(path: impl AsRef<Path>) -> Result<Server> {
        Server::bind_unix_with(path, Config::default())
    }

    /// Binds a Unix-domain stream socket at `path` with `config`.
    pub fn bind_unix_with(path: impl AsRef<Path>, config: Config) -> Result<Server> {
        config.validate()?;
        let path = path.as_ref();
        let listener = net::listen_unix(path, &config)
            .map_err(|error| Error::io(format!("binding {}", path.display()), error))?;
        Server::from_listener(listener, config)
    }

    pub(crate) fn from_listener(listener: Listener, config: Config) -> Result<Server> {
        let listen_addr = listener
            .listen_addr()
            .map_err(|error| Error::io("reading the bound address", error))?;
        let (poll, waker) = poll_with_waker()?;
        let drain_delay = config.drain_delay;
        let stats = Arc::new(StatsSet::default());
        Ok(Server {
            config,
            listener,
            listen_addr,
            poll,
            shutdown: Arc::new(ShutdownSignal::new(waker.clone()).with_drain_delay(drain_delay)),
            waker,
            first_stats: stats.add_part(),
            stats,
            verify: None,
            on_error: Arc::new(default_error_hook),
            admission: Admission::local(0),
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// Terminates TLS on every connection this server accepts, with `acceptor`'s certificate,
    /// client authentication and ALPN: the protocol sees plaintext and hears `on_open` once the
    /// handshake is done. Every model serves through it.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, acceptor: crate::tls::TlsAcceptor) -> Self {
        self.stats.watch_tls(acceptor.counters().clone());
        self.tls = Some(acceptor);
        self
    }

    /// What wraps each accepted socket: the TLS layer, when one is configured.
    fn layer(&self) -> Option<net::Layer> {
        #[cfg(feature = "tls")]
        if let Some(acceptor) = self.tls.clone() {
            let buffer_limit = self.config.tls_buffer_bytes;
            return Some(Arc::new(move |socket| {
                acceptor.accept(socket, buffer_limit)
            }));
        }
        None
    }

    /// Counts this server's connections in a table shared with the other workers of a prefork
    /// server, so that `max_connections` holds for all of them together.
    pub(crate) fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// The TCP address actually bound (with the real port when port 0 was asked for). A Unix
    /// socket server has none and answers the unspecified address `0.0.0.0:0`; see
    /// [`Server::listen_addr`].
    pub fn local_addr(&self) -> SocketAddr {
        tcp_addr(&self.listen_addr)
    }

    /// Where this server listens, for either transport.
    pub fn listen_addr(&self) -> &ListenAddr {
        &self.listen_addr
    }

    /// The configuration this server will run with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the configuration (except the listen backlog, which was applied at bind).
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Most connections held at once; see [`Config::max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Closes connections idle for `timeout`; see [`Config::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = Some(timeout);
        self
    }

    /// Keeps idle connections open forever (no idle timer at all).
    pub fn no_idle_timeout(mut self) -> Self {
        self.config.idle_timeout = None;
        self
    }

    /// Worker threads for offloaded jobs; see [`Config::workers`].
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// Whether SIGINT/SIGTERM start a graceful shutdown; see [`Config::handle_signals`].
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.config.handle_signals = handle;
        self
    }

    /// Rejects peers before any protocol runs: `verify(peer)` returning `false` closes the new
    /// connection at once (Python socketserver's `verify_request`).
    pub fn verify(mut self, verify: impl Fn(SocketAddr) -> bool + Send + Sync + 'static) -> Self {
        self.verify = Some(Arc::new(verify));
        self
    }

    /// Called when a protocol callback panics; the connection is closed and the server goes on
    /// (Python socketserver's `handle_error`). The default logs the report at error level.
    pub fn on_error(mut self, hook: impl Fn(&ErrorReport) + Send + Sync + 'static) -> Self {
        self.on_error = Arc::new(hook);
        self
    }

    /// A handle for shutting the server down and reading its counters from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            listen_addr: self.listen_addr.clone(),
            shutdown: self.shutdown.clone(),
            stats: self.stats.clone(),
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
        }
    }

    /// Serves on the calling thread, with a fresh protocol from `factory` per connection, until
    /// a graceful shutdown completes.
    pub fn serve<P, F>(self, factory: F) -> Result<()>
    where
        P: Protocol,
        F: FnMut() -> P,
    {
        self.config.validate()?;
        let pool = start_pool(&self.config, &self.stats)?;
        Reactor::new(self.into_first_reactor(pool, factory))?.run()
    }

    /// The parts of the loop that runs on this server's own poll and listener.
    fn into_first_reactor<F>(self, pool: Option<Arc<WorkerPool>>, factory: F) -> Parts<F> {
        let notifier = Notifier::new(self.waker.clone());
        let layer = self.layer();
        Parts {
            admission: self.admission.with_max(self.config.max_connections),
            config: self.config,
            poll: self.poll,
            listener: Some(self.listener),
            stats: self.first_stats,
            pool,
            completions: completions::channel(notifier),
            shutdown: self.shutdown,
            verify: self.verify,
            on_error: self.on_error,
            layer,
            factory,
        }
    }

    /// Serves with `reactors` event loops on as many threads (the calling thread runs the first),
    /// each with its own listener on the same port (SO_REUSEPORT: the kernel spreads new
    /// connections between them) and its own connections; they share the worker pool, the
    /// counters (summed) and shutdown. Needs [`Config::reuse_port`] set when binding.
    pub fn serve_reactors<P, F>(self, reactors: usize, factory: F) -> Result<()>
    where
        P: Protocol,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        let listeners = self.bind_more_listeners(reactors)?;
        self.run_reactors(listeners, factory)
    }

    /// Binds the listeners of reactors 1.. (reactor 0 has the server's own), all before any
    /// client can connect, so the kernel spreads connections over every one from the start.
    fn bind_more_listeners(&self, reactors: usize) -> Result<Vec<Listener>> {
        more_sockets(&self.config, &self.listen_addr, reactors, |addr| {
            net::listen_tcp(addr, &self.config)
        })
    }

    fn run_reactors<P, F>(self, listeners: Vec<Listener>, factory: F) -> Result<()>
    where
        P: Protocol,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        let pool = start_pool(&self.config, &self.stats)?;
        let (config, stats, shutdown) = (
            self.config.clone(),
            self.stats.clone(),
            self.shutdown.clone(),
        );
        let (verify, on_error, layer) = (self.verify.clone(), self.on_error.clone(), self.layer());
        // Every loop counts against the one limit of the server.
        let admission = self.admission.clone().with_max(config.max_connections);
        // The first loop takes the signals: it registers them before any other loop can serve
        // a client, so no signal finds the process without its handler.
        let first = Reactor::new(self.into_first_reactor(pool.clone(), factory.clone()))?;
        let mut threads = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let number = index + 1;
            let (poll, waker) = poll_with_waker()?;
            shutdown.add_waker(waker.clone());
            let parts = Parts {
                // The first reactor passes a signal's shutdown on to all.
                config: Config {
                    handle_signals: false,
                    ..config.clone()
                },
                poll,
                listener: Some(listener),
                stats: stats.add_part(),
                pool: pool.clone(),
                completions: completions::channel(Notifier::new(waker)),
                shutdown: shutdown.clone(),
                verify: verify.clone(),
                on_error: on_error.clone(),
                admission: admission.clone(),
                layer: layer.clone(),
                factory: factory.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("socketserver-reactor-{number}"))
                .spawn(move || Reactor::new(parts)?.run())
                .map_err(|error| Error::io("spawning a reactor thread", error))?;
            threads.push(thread);
        }
        let first = first.run();
        // Whatever ended the first loop, the others must end too before this returns.
        shutdown.trigger();
        join_all(first, threads)
    }

    /// Like [`Server::serve_reactors`], on new threads.
    pub fn spawn_reactors<P, F>(self, reactors: usize, factory: F) -> Result<RunningServer>
    where
        P: Protocol,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        let listeners = self.bind_more_listeners(reactors)?;
        let handle = self.handle();
        RunningServer::start(handle, "socketserver-reactor-0", move || {
            self.run_reactors(listeners, factory)
        })
    }

    /// Serves on the calling thread with a blocking [`Model`] instead of the reactor: the same
    /// protocols, limits, hooks and counters, one thread per connection at a time. Offloaded jobs
    /// run inline on the connection's thread.
    pub fn serve_blocking<P, F>(self, model: Model, factory: F) -> Result<()>
    where
        P: Protocol + Send,
        F: FnMut() -> P,
    {
        self.config.validate()?;
        if !self.config.proxy_protocol_from.is_empty() {
            return Err(Error::Config(
                "the PROXY protocol is read by the event-loop models (reactor, reactors); the \
                 blocking models do not read it"
                    .into(),
            ));
        }
        let layer = self.layer();
        let shared = blocking::Shared::new(self.config, self.first_stats, self.on_error);
        let acceptor = blocking::Acceptor {
            poll: self.poll,
            listener: self.listener,
            shutdown: self.shutdown,
            verify: self.verify,
            layer,
        };
        match model {
            Model::ThreadPerConnection { block_on_close } => {
                blocking::threads::run(acceptor, shared, factory, block_on_close)
            }
            Model::ThreadPool => blocking::pool::run(acceptor, shared, factory),
        }
    }

    /// Like [`Server::serve_blocking`], on a new thread.
    pub fn spawn_blocking<P, F>(self, model: Model, factory: F) -> Result<RunningServer>
    where
        P: Protocol + Send,
        F: FnMut() -> P + Send + 'static,
    {
        self.config.validate()?;
        let handle = self.handle();
        RunningServer::start(handle, "socketserver-acceptor", move || {
            self.serve_blocking(model, factory)
        })
    }

    /// Serves on a new thread; the returned [`RunningServer`] can shut it down and join it.
    pub fn spawn<P, F>(self, factory: F) -> Result<RunningServer>
    where
        P: Protocol,
        F: FnMut() -> P + Send + 'static,
    {
        self.config.validate()?;
        let handle = self.handle();
        RunningServer::start(handle, "socketserver-reactor", move || self.serve(factory))
    }
}

impl std::os::fd::AsFd for Server {
    /// The listening socket (for handing to a [`Supervisor`](crate::prefork::Supervisor)).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl ServerHandle {
    /// The TCP address the server is bound to (`0.0.0.0:0` for a Unix socket server).
    pub fn local_addr(&self) -> SocketAddr {
        tcp_addr(&self.listen_addr)
    }

    /// Where the server listens, for either transport.
    pub fn listen_addr(&self) -> &ListenAddr {
        &self.listen_addr
    }

    /// Starts a graceful shutdown: stop accepting, let protocols finish, close, exit by the
    /// configured deadline. Returns at once; calling it again does nothing more.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Starts a drain, as SIGTERM does: [`ServerHandle::is_ready`] turns false at once, the
    /// server goes on serving everything for [`Config::drain_delay`], then shuts down as
    /// [`ServerHandle::shutdown`] does (at once without a delay, or if a drain had begun).
    pub fn drain(&self) {
        self.shutdown.drain();
    }

    /// True until a drain or a shutdown begins: what `/readyz` answers.
    pub fn is_ready(&self) -> bool {
        self.shutdown.is_ready()
    }

    /// A copy of the server's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Reloads the TLS certificate, key, client CA and CRL from their files, as SIGHUP does
    /// (see [`TlsAcceptor::reload`](crate::tls::TlsAcceptor::reload)): new handshakes use
    /// them, open connections keep theirs, and a broken file is refused with the configuration
    /// in use kept. An error too for a server without TLS.
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self) -> Result<()> {
        match &self.tls {
            Some(acceptor) => acceptor.reload(),
            None => Err(Error::Config("this server has no TLS to reload".into())),
        }
    }

    /// Serves this server's counters as Prometheus text at `GET /metrics` on `addr`, with
    /// `GET /livez` (200) and `GET /readyz` (200, or 503 once a drain or shutdown began), from a
    /// reactor of its own on a new thread: the way to scrape a server whose protocol is not
    /// HTTP. At most [`METRICS_MAX_CONNECTIONS`] scrapers are served at once (more are
    /// refused); the listener's own traffic is not counted in this server's counters. Stop it
    /// with [`RunningServer::shutdown`].
    pub fn serve_metrics(&self, addr: impl ToSocketAddrs) -> Result<RunningServer> {
        use crate::protocol::http::{Http, HttpLimits, Response, Router};
        let config = side_listener_config();
        let limits = HttpLimits::from_config(&config);
        let handle = self.clone();
        let ready = handle.clone();
        let router = Arc::new(
            Router::new()
                .get("/metrics", move |_| Response::metrics(&handle.stats()))
                .get("/livez", |_| Response::text(200, "live\n"))
                .get("/readyz", move |_| {
                    if ready.is_ready() {
                        Response::text(200, "ready\n")
                    } else {
                        Response::text(503, "draining\n")
                    }
                }),
        );
        Server::bind_with(addr, config)?.spawn(move || Http::new(router.clone(), limits))
    }
}

/// The most scrapers a [`ServerHandle::serve_metrics`] listener serves at once.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// The configuration of a listener beside the server (metrics, agent check): no signals of
/// its own (the server's decide), no workers, few connections.
fn side_listener_config() -> Config {
    Config {
        handle_signals: false,
        workers: 0,
        max_connections: METRICS_MAX_CONNECTIONS,
        ..Config::default()
    }
}

impl ServerHandle {
    /// Answers HAProxy's `agent-check` on `addr`, from a reactor of its own on a new thread:
    /// each connection is told one line and closed. `up ready` while this server is ready;
    /// `drain` once a drain or shutdown began, or while `degraded()` says so (a backplane out
    /// of reach): HAProxy then sends it no new clients and leaves it those it has, which the
    /// drain closes itself (1001). At most [`METRICS_MAX_CONNECTIONS`] checks at once.
    pub fn serve_agent_check(
        &self,
        addr: impl ToSocketAddrs,
        degraded: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<RunningServer> {
        let config = side_listener_config();
        let handle = self.clone();
        let degraded: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(degraded);
        Server::bind_with(addr, config)?.spawn(move || AgentCheck {
            handle: handle.clone(),
            degraded: degraded.clone(),
        })
    }
}

/// One answer to HAProxy's agent check, as its connection opens.
struct AgentCheck {
    handle: ServerHandle,
    degraded: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl crate::protocol::Protocol for AgentCheck {
    fn on_open(&mut self, ctx: &mut crate::protocol::Context<'_>) {
        let answer: &[u8] = if self.handle.is_ready() && !(self.degraded)() {
            b"up ready\n"
        } else {
            b"drain\n"
        };
        ctx.write(answer);
        ctx.close();
    }

    fn on_read(&mut self, input: &[u8], _ctx: &mut crate::protocol::Context<'_>) -> usize {
        // The agent sends nothing that matters here.
        input.len()
    }
}

impl RunningServer {
    /// Runs `serve` on a new thread named `name`.
    fn start(
        handle: ServerHandle,
        name: &str,
        serve: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<RunningServer> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(serve)
            .map_err(|error| Error::io(format!("spawning the thread {name}"), error))?;
        Ok(RunningServer { handle, thread })
    }

    /// A handle to this server.
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// The TCP address the server is bound to (`0.0.0.0:0` for a Unix socket server).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Where the server listens, for either transport.
    pub fn listen_addr(&self) -> &ListenAddr {
        &self.handle.listen_addr
    }

    /// A copy of the server's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.handle.stats()
    }

    /// Asks for a graceful shutdown and waits for the server to finish.
    pub fn shutdown(self) -> Result<()> {
        self.handle.shutdown();
        self.join()
    }

    /// Waits for the server thread to finish (after a shutdown from anywhere).
    pub fn join(self) -> Result<()> {
        match self.thread.join() {
            Ok(result) => result,
            Err(payload) => Err(Error::Panicked(panic_message(payload.as_ref()))),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Sizes of the reactor's records with the protocols this crate ships: here, where the
    //! server assembles the two, since the reactor knows no protocol.
    use crate::net::Stream;
    use crate::reactor::connection::Connection;

    /// A reactor holds one record per connection, so its size is the floor of what an idle
    /// connection costs: every field is paid ten thousand times over at ten thousand clients.
    #[test]
    fn an_idle_connection_record_stays_small() {
        let record = std::mem::size_of::<Connection<crate::protocol::Echo>>();
        // The socket's size depends on the build (mio adds a field in debug builds).
        let besides_the_socket = record - std::mem::size_of::<Stream>();
        assert!(
            besides_the_socket <= 56,
            "{besides_the_socket} bytes besides the socket"
        );
        // An idle WebSocket is an HTTP connection upgraded: its record, all it costs but a
        // timer entry, must stay within the 160 bytes an idle WebSocket may cost in all.
        let websocket = std::mem::size_of::<Connection<crate::protocol::Http>>()
            - std::mem::size_of::<Stream>();
        assert!(websocket <= 96, "{websocket} bytes besides the socket");
    }
}
