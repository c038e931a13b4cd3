//! # socketserver
//!
//! Small, fast socket servers built on a **single-threaded reactor**, and the tools to see how
//! they work.
//!
//! One thread owns a `mio::Poll` and a slab of connections. The kernel reports readiness; the
//! reactor reads, hands the bytes to a **sans-IO protocol** (a state machine that never touches a
//! socket), and writes what the protocol answers. CPU-bound work goes to **worker threads** over a
//! bounded crossbeam channel and comes back through a `mio::Waker`.
//!
//! ```text
//!             +------------------------- reactor thread -------------------------+
//!  clients -->| Poll --events--> accept / read / write --bytes--> Protocol (sans-IO) |
//!             |   ^                        |                        |   offload    |
//!             |   | Waker        timers, watermarks, limits          v              |
//!             +---|--------------------------------------------- job queue --------+
//!                 +------------------ results ------------------ worker threads
//! ```
//!
//! The protocols ([`protocol`]) are echo, lines, length-prefixed frames, HTTP/1.1 with a router,
//! and WebSocket ([`protocol::ws`]), entered from HTTP by an upgrade: heartbeats, backpressure
//! that `send` reports, permessage-deflate. Any of them can be served over TLS and mTLS
//! ([`tls`]), under every model. On WebSocket, [`pubsub`] keeps topics with a durable
//! log per topic: acknowledged publishes survive a crash, and a subscriber that comes back
//! resumes from its offset with nothing lost or repeated.
//!
//! Beside the reactor, [`blocking`] drives the same protocols over blocking sockets (a thread per
//! connection, or a bounded pool), so the two designs can be compared on identical code. The
//! rest of the family serves the same protocols too: several reactors on one port
//! ([`Server::serve_reactors`]), pre-forked worker processes ([`prefork`]), and Unix-domain
//! sockets. UDP and Unix datagram sockets are served by [`DatagramServer`] with a
//! [`DatagramProtocol`](protocol::DatagramProtocol), on a datagram loop or blocking receivers.
//!
//! To see the designs side by side, [`load`] is a load generator on one event loop (closed or
//! open loop, latency in HdrHistogram), and [`compare`] runs every model as a child process
//! under the same load and reports throughput, latency percentiles, CPU per request and memory.
//!
//! ## The rooms
//!
//! Imports run one way, down this list; `tests/rooms.rs` fails the build if one runs back up.
//!
//! | room | what it holds | uses |
//! |---|---|---|
//! | [`server`], [`prefork`] | the front door: binding, models, handles, worker processes | everything below |
//! | [`client`] | dialled connections: a loop with no listener, a blocking driver, backoff, the WebSocket and pub/sub clients, the upstream pool | the reactor, the protocols, lifecycle, `config`, `metrics` |
//! | [`pubsub`] | topics over WebSocket: the hub thread, the durable log, the wire protocol | the protocols, `config`, `metrics` |
//! | [`blocking`] | thread per connection, a bounded pool, blocking datagram receivers | protocols, lifecycle, `net`, the reactor's parts, mailboxes |
//! | [`reactor`] | the event loop and nothing else | the protocol trait, lifecycle, `net`, `worker`, its parts |
//! | [`net`] | transports: TCP and Unix, stream and datagram, socket options, the TLS layer over a stream | `config`, [`tls`], the protocols' peer types |
//! | [`tls`] | TLS and mTLS: rustls driven sans-IO over a socket, the acceptor (reloadable) and connector, the verified [`PeerIdentity`](tls::PeerIdentity) protocols read | `net`, `config`, `metrics` |
//! | [`protocol`] | sans-IO state machines (echo, line, frame, HTTP, WebSocket), [`Session`](protocol::Session) and the datagram handler, the socket-less cores of every driver | lifecycle, `worker`, the reactor's parts |
//! | `worker` | the worker pool for offloaded jobs; notices and the mailboxes they go through | lifecycle, the reactor's parts |
//! | `lifecycle` | what every driver shares: hooks and [`ErrorReport`], signals and the shutdown signal, close reasons | `config`, `metrics`, `reactor::token` |
//! | [`reactor::buffer`], [`reactor::token`], [`reactor::timer`], [`reactor::completions`] | the reactor's parts, which protocols and every driver use: buffers, connection ids, timers, the completion channel | nothing in the crate |
//! | [`config`], [`error`], [`metrics`] | one `Config`, the error type, counters | — |
//!
//! The reactor's parts stay under [`reactor`] (their public paths are the ones users know);
//! they import nothing from the crate, so the loop can lend them to everyone without anyone
//! depending on the loop. [`load`] and [`compare`] are tools on top, and the command line
//! (`src/cli/`, one file per command) is a thin layer over all of it.
//!
//! ## The loop's phases
//!
//! Each turn: poll (sleep until news), read the clock once, dispatch the events (accept, drive
//! connections, drain worker results, signals), revisit connections that stopped on a fairness
//! budget, run due timers, and remove the connections closed during the turn. See [`reactor`].
//!
//! ## What is guaranteed
//!
//! * Stale events, timers and worker results — for a connection since closed, whose slot may hold
//!   a new connection — are dropped: every identity carries a generation ([`ConnId`]).
//! * Every resource is bounded by a documented [`Config`] limit: connections, unconsumed input,
//!   pending output (watermarks pause reading; a hard limit closes), jobs in flight.
//! * Running out of file descriptors pauses accepting and resumes from a timer: no spin, no exit.
//! * A panic in a protocol closes that connection only and is reported to the error hook.
//! * Graceful shutdown answers what is in flight before closing, within a deadline.
//!
//! ## What is not
//!
//! * Time-slicing: a slow protocol callback delays every connection on the loop; offload it.
//! * Delivery of output the peer never reads: it is held up to the hard limit, then dropped
//!   with the connection.
//!
//! ## A server in a few lines
//!
//! ```no_run
//! use socketserver::{protocol::Echo, Server};
//!
//! let server = Server::bind("127.0.0.1:0")?.max_connections(10_000);
//! println!("listening on {}", server.local_addr());
//! server.serve(|| Echo)?;
//! # Ok::<(), socketserver::Error>(())
//! ```

#![warn(missing_docs)]

pub(crate) mod admission;
pub mod blocking;
pub mod client;
pub mod compare;
pub mod config;
pub mod error;
pub(crate) mod lifecycle;
pub mod load;
pub mod metrics;
pub mod net;
pub mod prefork;
pub mod protocol;
pub mod pubsub;
pub mod reactor;
pub mod server;
pub mod tls;
pub(crate) mod worker;

pub use blocking::Model;
pub use config::Config;
pub use error::{Error, Result};
pub use metrics::{Stats, StatsSnapshot};
pub use reactor::token::ConnId;
pub use server::{DatagramServer, ErrorReport, RunningServer, Server, ServerHandle};
