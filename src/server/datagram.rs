//! Datagram servers: UDP and Unix-domain datagram sockets answered by a
//! [`DatagramProtocol`](crate::protocol::DatagramProtocol), on the datagram loop, on several of
//! them (UDP with SO_REUSEPORT), or on blocking receivers.
//!
//! ```no_run
//! use socketserver::{protocol::Echo, DatagramServer};
//!
//! fn main() -> socketserver::Result<()> {
//!     DatagramServer::bind("127.0.0.1:7000")?.serve(|| Echo)
//! }
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use mio::Poll;

use super::{bind_first, more_sockets, ErrorReport, RunningServer, ServerHandle};
use crate::blocking::datagram::DatagramDriver;
use crate::blocking::Model;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lifecycle::{default_error_hook, ErrorHook, ShutdownSignal, VerifyHook};
use crate::metrics::StatsSet;
use crate::net::{self, DatagramSocket, ListenAddr};
use crate::protocol::datagram_handler::Hooks;
use crate::protocol::DatagramProtocol;
use crate::reactor::datagram::{DatagramLoop, DatagramParts};
use crate::reactor::poll_with_waker;

/// A bound datagram socket waiting to serve; configure it, then [`serve`](DatagramServer::serve)
/// or [`spawn`](DatagramServer::spawn). One protocol instance answers every datagram of a loop
/// (or of a blocking receiver), so it may keep state across datagrams.
pub struct DatagramServer {
    config: Config,
    socket: DatagramSocket,
    listen_addr: ListenAddr,
    poll: Poll,
    /// Holds the waker of the first loop's poll.
    shutdown: Arc<ShutdownSignal>,
    /// Counters of every loop or receiver of this server, summed when read.
    stats: Arc<StatsSet>,
    verify: Option<VerifyHook>,
    on_error: ErrorHook,
}

impl DatagramServer {
    /// Binds a UDP socket at `addr` with the default [`Config`]. Port 0 picks a free port; see
    /// [`DatagramServer::local_addr`].
    pub fn bind(addr: impl ToSocketAddrs) -> Result<DatagramServer> {
        DatagramServer::bind_with(addr, Config::default())
    }

    /// Binds a UDP socket at `addr` with `config` (validated first).
    pub fn bind_with(addr: impl ToSocketAddrs, config: Config) -> Result<DatagramServer> {
        config.validate()?;
        let socket = bind_first(addr, |addr| net::bind_udp(addr, &config))?;
        DatagramServer::from_socket(socket, config)
    }

    /// Binds a Unix-domain datagram socket at `path` with the default [`Config`]. A stale socket
    /// file is replaced; the file is removed when the server stops.
    pub fn bind_unix(path: impl AsRef<Path>) -> Result<DatagramServer> {
        DatagramServer::bind_unix_with(path, Config::default())
    }

    /// Binds a Unix-domain datagram socket at `path` with `config`.
    pub fn bind_unix_with(path: impl AsRef<Path>, config: Config) -> Result<DatagramServer> {
        config.validate()?;
        let path = path.as_ref();
        let socket = net::bind_unix_datagram(path)
            .map_err(|error| Error::io(format!("binding {}", path.display()), error))?;
        DatagramServer::from_socket(socket, config)
    }

    pub(crate) fn from_socket(socket: DatagramSocket, config: Config) -> Result<DatagramServer> {
        let listen_addr = socket
            .listen_addr()
            .map_err(|error| Error::io("reading the bound address", error))?;
        let (poll, waker) = poll_with_waker()?;
        let drain_delay = config.drain_delay;
        Ok(DatagramServer {
            config,
            socket,
            listen_addr,
            poll,
            shutdown: Arc::new(ShutdownSignal::new(waker).with_drain_delay(drain_delay)),
            stats: Arc::new(StatsSet::default()),
            verify: None,
            on_error: Arc::new(default_error_hook),
        })
    }

    /// The UDP address actually bound (`0.0.0.0:0` for a Unix socket; see
    /// [`DatagramServer::listen_addr`]).
    pub fn local_addr(&self) -> SocketAddr {
        super::tcp_addr(&self.listen_addr)
    }

    /// Where this server receives, for either transport.
    pub fn listen_addr(&self) -> &ListenAddr {
        &self.listen_addr
    }

    /// The configuration this server will run with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the configuration (except SO_REUSEPORT, which was applied at bind).
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Whether SIGINT/SIGTERM start a graceful shutdown; see [`Config::handle_signals`].
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.config.handle_signals = handle;
        self
    }

    /// Drops datagrams from UDP peers for which `verify(peer)` returns `false` before any
    /// protocol sees them (Python socketserver's `verify_request`); counted in
    /// `refused_by_verify`. Unix datagram peers are not checked.
    pub fn verify(mut self, verify: impl Fn(SocketAddr) -> bool + Send + Sync + 'static) -> Self {
        self.verify = Some(Arc::new(verify));
        self
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            verify: self.verify.clone(),
            on_error: self.on_error.clone(),
        }
    }

    /// Called when the protocol panics on a datagram; its answers are discarded, a fresh
    /// protocol instance takes over, and the server goes on. The default logs at error level.
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
            tls: None,
        }
    }

    /// Serves on the calling thread with one datagram loop until a graceful shutdown completes.
    pub fn serve<P, F>(self, factory: F) -> Result<()>
    where
        P: DatagramProtocol,
        F: FnMut() -> P,
    {
        self.into_first_loop(factory)?.run()
    }

    /// The first loop, on this server's own poll and socket, registered and ready to run.
    fn into_first_loop<F>(self, factory: F) -> Result<DatagramLoop<F>> {
        self.config.validate()?;
        DatagramLoop::new(DatagramParts {
            stats: self.stats.add_part(),
            hooks: self.hooks(),
            config: self.config,
            poll: self.poll,
            socket: self.socket,
            shutdown: self.shutdown,
            factory,
        })
    }

    /// Like [`DatagramServer::serve`], on a new thread.
    pub fn spawn<P, F>(self, factory: F) -> Result<RunningServer>
    where
        P: DatagramProtocol,
        F: FnMut() -> P + Send + 'static,
    {
        self.config.validate()?;
        let handle = self.handle();
        RunningServer::start(handle, "socketserver-datagrams", move || {
            self.serve(factory)
        })
    }

    /// Serves with `loops` datagram loops on as many threads (the calling thread runs the
    /// first), each with its own UDP socket on the same port: SO_REUSEPORT makes the kernel
    /// spread peers between them by address hash. UDP only; needs [`Config::reuse_port`] set
    /// when binding.
    pub fn serve_reactors<P, F>(self, loops: usize, factory: F) -> Result<()>
    where
        P: DatagramProtocol,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        let sockets = self.bind_more_sockets(loops)?;
        self.run_loops(sockets, factory)
    }

    /// Like [`DatagramServer::serve_reactors`], on new threads.
    pub fn spawn_reactors<P, F>(self, loops: usize, factory: F) -> Result<RunningServer>
    where
        P: DatagramProtocol,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        let sockets = self.bind_more_sockets(loops)?;
        let handle = self.handle();
        RunningServer::start(handle, "socketserver-datagrams-0", move || {
            self.run_loops(sockets, factory)
        })
    }

    /// Binds the sockets of loops 1.. before any datagram can arrive.
    fn bind_more_sockets(&self, loops: usize) -> Result<Vec<DatagramSocket>> {
        more_sockets(&self.config, &self.listen_addr, loops, |addr| {
            net::bind_udp(addr, &self.config)
        })
    }

    fn run_loops<P, F>(self, sockets: Vec<DatagramSocket>, factory: F) -> Result<()>
    where
        P: DatagramProtocol,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        let (config, stats, shutdown, hooks) = (
            self.config.clone(),
            self.stats.clone(),
            self.shutdown.clone(),
            self.hooks(),
        );
        // The first loop takes the signals: it registers them before any other loop can answer
        // a datagram, so no signal finds the process without its handler.
        let first = self.into_first_loop(factory.clone())?;
        let mut threads = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            let (poll, waker) = poll_with_waker()?;
            shutdown.add_waker(waker);
            let parts = DatagramParts {
                // The first loop passes a signal's shutdown on to all.
                config: Config {
                    handle_signals: false,
                    ..config.clone()
                },
                poll,
                socket,
                stats: stats.add_part(),
                shutdown: shutdown.clone(),
                hooks: hooks.clone(),
                factory: factory.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("socketserver-datagrams-{}", index + 1))
                .spawn(move || DatagramLoop::new(parts)?.run())
                .map_err(|error| Error::io("spawning a datagram loop thread", error))?;
            threads.push(thread);
        }
        let first = first.run();
        // Whatever ended the first loop, the others must end too before this returns.
        shutdown.trigger();
        super::join_all(first, threads)
    }

    /// Serves on the calling thread with blocking receivers instead of a loop: one for
    /// [`Model::ThreadPerConnection`], [`Config::pool_threads`] for [`Model::ThreadPool`] (see
    /// the blocking datagram driver). Each receiver has its own protocol instance.
    pub fn serve_blocking<P, F>(self, model: Model, factory: F) -> Result<()>
    where
        P: DatagramProtocol + Send,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        self.config.validate()?;
        let receivers = match model {
            Model::ThreadPerConnection { .. } => 1,
            Model::ThreadPool => self.config.pool_threads,
        };
        DatagramDriver {
            hooks: self.hooks(),
            config: self.config,
            poll: self.poll,
            socket: self.socket,
            receivers,
            stats: self.stats,
            shutdown: self.shutdown,
            factory,
        }
        .run()
    }

    /// Like [`DatagramServer::serve_blocking`], on a new thread.
    pub fn spawn_blocking<P, F>(self, model: Model, factory: F) -> Result<RunningServer>
    where
        P: DatagramProtocol + Send,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        self.config.validate()?;
        let handle = self.handle();
        RunningServer::start(handle, "socketserver-receivers", move || {
            self.serve_blocking(model, factory)
        })
    }
}

impl std::os::fd::AsFd for DatagramServer {
    /// The socket (for handing to a [`Supervisor`](crate::prefork::Supervisor)).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
