//! The blocking datagram driver: threads blocked in `recv_from` on one socket, each answering
//! with its own protocol instance — Python's synchronous `UDPServer` when there is one thread.
//!
//! A datagram server has no connections to give threads to, so the blocking models differ only
//! in how many receivers share the socket: [`Model::ThreadPerConnection`](super::Model) runs
//! one, [`Model::ThreadPool`](super::Model) runs [`Config::pool_threads`]. The kernel hands
//! each datagram to exactly one blocked receiver.
//!
//! * **Answers** are sent with blocking `send_to`, bounded by a send timeout of
//!   [`Config::shutdown_timeout`]; an answer that cannot leave in that time is dropped and
//!   counted (a Unix peer that never reads would otherwise hold a thread forever).
//! * **Graceful shutdown**: the calling thread waits on a `mio::Poll` (waker and signals); when
//!   asked to stop it sets a flag and shuts the socket's read side (`shutdown(SHUT_RD)`), which
//!   wakes every blocked receiver; each finishes the datagram in hand and returns.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Poll};

use crate::config::Config;
use crate::error::{interrupted, Error, Result};
use crate::lifecycle::{register_signals, shutdown_signalled, ShutdownSignal};
use crate::metrics::{self, StatsSet};
use crate::net::DatagramSocket;
use crate::protocol::datagram_handler::{DatagramHandler, Hooks};
use crate::protocol::DatagramProtocol;

/// Everything the blocking datagram driver runs with, taken from the
/// [`DatagramServer`](crate::DatagramServer).
pub(crate) struct DatagramDriver<F> {
    pub(crate) config: Config,
    pub(crate) poll: Poll,
    pub(crate) socket: DatagramSocket,
    pub(crate) receivers: usize,
    pub(crate) stats: Arc<StatsSet>,
    pub(crate) shutdown: Arc<ShutdownSignal>,
    pub(crate) hooks: Hooks,
    pub(crate) factory: F,
}

impl<F> DatagramDriver<F> {
    /// Serves until shutdown is requested (handle or signal), then joins every receiver.
    pub(crate) fn run<P>(self) -> Result<()>
    where
        P: DatagramProtocol + Send,
        F: FnMut() -> P + Clone + Send + 'static,
    {
        let DatagramDriver {
            config,
            mut poll,
            socket,
            receivers,
            stats,
            shutdown,
            hooks,
            factory,
        } = self;
        socket
            .set_nonblocking(false)
            // A zero timeout would mean "wait forever" to the socket: wait at least 1 ms.
            .and_then(|()| {
                let timeout = config.shutdown_timeout.max(Duration::from_millis(1));
                socket.set_write_timeout(Some(timeout))
            })
            .map_err(|error| Error::io("setting up the socket", error))?;
        let mut signals = register_signals(poll.registry(), &config)?;
        let socket = Arc::new(socket);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(receivers);
        for number in 0..receivers {
            let (receiver_socket, receiver_stopping) = (socket.clone(), stopping.clone());
            let part = stats.add_part();
            let handler =
                DatagramHandler::new(&config, factory.clone(), hooks.clone(), part.clone());
            let thread = std::thread::Builder::new()
                .name(format!("socketserver-receiver-{number}"))
                .spawn(move || receive(handler, &receiver_socket, &receiver_stopping))
                .map_err(|error| Error::io("spawning a receiver thread", error));
            match thread {
                Ok(thread) => {
                    metrics::add(&part.handler_threads, 1);
                    threads.push(thread);
                }
                Err(error) => {
                    stop(&socket, &stopping);
                    return Err(error);
                }
            }
        }
        let mut events = Events::with_capacity(4);
        while !shutdown.is_requested() {
            if let Err(error) = poll.poll(&mut events, None) {
                if !interrupted(&error) {
                    stop(&socket, &stopping);
                    return Err(Error::io("polling", error));
                }
            }
            if shutdown_signalled(&mut signals) {
                shutdown.drain();
            }
        }
        stop(&socket, &stopping);
        let mut result = Ok(());
        for thread in threads {
            if let Err(payload) = thread.join() {
                let message = crate::lifecycle::panic_message(payload.as_ref());
                result = Err(Error::Panicked(message));
            }
        }
        log::debug!("datagram receivers stopped");
        result
    }
}

/// Sets the stop flag, then wakes every receiver blocked on the socket.
fn stop(socket: &DatagramSocket, stopping: &AtomicBool) {
    stopping.store(true, Ordering::Release);
    // SAFETY: the descriptor is open (the `Arc` keeps the socket alive). On an unconnected
    // datagram socket shutdown(2) reports ENOTCONN but still marks the read side shut and wakes
    // its waiters, whose receive then returns at once; the result is deliberately ignored.
    unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RD) };
}

/// One receiver: receive, answer, repeat, until the stop flag is seen.
fn receive<P, F>(mut handler: DatagramHandler<P, F>, socket: &DatagramSocket, stopping: &AtomicBool)
where
    P: DatagramProtocol,
    F: FnMut() -> P,
{
    loop {
        let received = socket.recv_from(&mut handler.buffer);
        if stopping.load(Ordering::Acquire) {
            return;
        }
        match received {
            Ok((length, from)) => {
                handler.handle(length, &from);
                // Blocking sends: `WouldBlock` here means the send timeout ran out.
                while handler
                    .send_pending(|data, to| socket.send_to(data, to))
                    .is_err()
                {
                    handler.drop_oldest();
                }
            }
            Err(error) if interrupted(&error) => {}
            Err(error) => handler.receive_failed(&error),
        }
    }
}
