//! The socket-less core of every datagram driver, as [`Session`](super::Session) is for
//! streams: it takes a datagram the driver received, hands it to the [`DatagramProtocol`]
//! (catching a panic, which replaces the protocol instance and is reported to the error hook),
//! and sends the answers through whatever socket call the driver gives it. The datagram loop
//! and the blocking receivers both run on it, so they differ only in how they wait.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::{DatagramProtocol, Outbox, Peer};
use crate::config::Config;
use crate::error::{interrupted, would_block};
use crate::lifecycle::{panic_message, ErrorHook, ErrorReport, VerifyHook};
use crate::metrics::{self, Stats};

/// Runs a protocol over datagrams, whatever drives the socket: takes a received datagram, calls
/// the protocol (catching panics), sends the answers. Used by this loop and by the blocking
/// datagram driver; its counters are written by its own thread only.
pub(crate) struct DatagramHandler<P, F> {
    protocol: P,
    factory: F,
    pub(crate) outbox: Outbox,
    /// Receive buffer: one byte more than the largest datagram taken in.
    pub(crate) buffer: Vec<u8>,
    max_datagram_bytes: usize,
    stats: Arc<Stats>,
    /// Datagrams from UDP peers it rejects are dropped unseen.
    verify: Option<VerifyHook>,
    on_error: ErrorHook,
}

impl<P: DatagramProtocol, F: FnMut() -> P> DatagramHandler<P, F> {
    /// A handler running the protocols `factory` makes, counting in `stats`.
    pub(crate) fn new(config: &Config, mut factory: F, hooks: Hooks, stats: Arc<Stats>) -> Self {
        DatagramHandler {
            protocol: factory(),
            factory,
            outbox: Outbox::new(config.datagram_queue),
            buffer: vec![0; config.max_datagram_bytes + 1],
            max_datagram_bytes: config.max_datagram_bytes,
            stats,
            verify: hooks.verify,
            on_error: hooks.on_error,
        }
    }

    /// Hands the datagram of `length` bytes now in the buffer to the protocol. `length` is the
    /// datagram's true length, which may exceed the buffer: such a datagram is dropped.
    pub(crate) fn handle(&mut self, length: usize, from: &Peer) {
        if length > self.max_datagram_bytes {
            log::debug!("{from}: dropped a datagram of {length} bytes (over the limit)");
            metrics::add(&self.stats.datagrams_dropped, 1);
            return;
        }
        if let (Some(verify), Peer::Inet(addr)) = (&self.verify, from) {
            if !verify(*addr) {
                metrics::add(&self.stats.refused_by_verify, 1);
                return;
            }
        }
        metrics::add(&self.stats.datagrams_in, 1);
        metrics::add(&self.stats.bytes_in, length as u64);
        let queued = self.outbox.len();
        let (protocol, outbox, datagram) =
            (&mut self.protocol, &mut self.outbox, &self.buffer[..length]);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            protocol.on_datagram(datagram, from, outbox)
        }));
        if let Err(payload) = outcome {
            // Whatever the failed call queued is discarded with the instance it came from.
            self.outbox.truncate(queued);
            self.protocol = (self.factory)();
            metrics::add(&self.stats.datagram_panics, 1);
            (self.on_error)(&ErrorReport {
                conn: None,
                peer: match from {
                    Peer::Inet(addr) => Some(*addr),
                    Peer::Unix(_) => None,
                },
                message: panic_message(payload.as_ref()),
            });
        }
        metrics::add(&self.stats.datagrams_dropped, self.outbox.take_dropped());
    }

    /// Sends queued answers with `send_to` (the driver's socket call) until the outbox is empty or the socket would block (the only
    /// error returned). An answer the socket rejects for any other reason is dropped and
    /// counted.
    pub(crate) fn send_pending(
        &mut self,
        mut send_to: impl FnMut(&[u8], &Peer) -> io::Result<usize>,
    ) -> io::Result<()> {
        while let Some(answer) = self.outbox.front() {
            match send_to(&answer.data, &answer.to) {
                Ok(sent) => {
                    metrics::add(&self.stats.datagrams_out, 1);
                    metrics::add(&self.stats.bytes_out, sent as u64);
                }
                Err(error) if would_block(&error) => return Err(error),
                Err(error) if interrupted(&error) => continue,
                Err(error) => {
                    log::debug!("sending to {}: {error}", answer.to);
                    metrics::add(&self.stats.datagram_errors, 1);
                }
            }
            self.outbox.pop();
        }
        Ok(())
    }

    /// Drops the oldest queued answer (a blocking send that timed out), counting it.
    pub(crate) fn drop_oldest(&mut self) {
        if self.outbox.pop().is_some() {
            metrics::add(&self.stats.datagrams_dropped, 1);
        }
    }

    /// Counts a receive error other than `WouldBlock` and `Interrupted`. On Linux an unconnected
    /// socket does not report ICMP errors, but other systems (and connected sockets) do, as
    /// ECONNREFUSED on the next receive: it concerns an earlier send, never this socket.
    pub(crate) fn receive_failed(&self, error: &io::Error) {
        log::debug!("receiving a datagram: {error}");
        metrics::add(&self.stats.datagram_errors, 1);
    }
}

/// The hooks a datagram server calls.
#[derive(Clone)]
pub(crate) struct Hooks {
    pub(crate) verify: Option<VerifyHook>,
    pub(crate) on_error: ErrorHook,
}
