//! Sans-IO datagram protocols: one datagram in, any number of datagrams out.
//!
//! A [`DatagramProtocol`] is the datagram counterpart of [`Protocol`](super::Protocol). There
//! are no connections, so there is no open, end of stream or close: each datagram arrives whole
//! with its sender's [`Peer`] address, and answers go into an [`Outbox`], addressed to whoever
//! they are for (usually the sender). The driver — the reactor's datagram loop, a blocking
//! receive loop, or a unit test — owns the socket and sends what the outbox holds.
//!
//! One protocol instance serves one socket on one thread, so it may keep state across datagrams
//! (per-peer sessions, counters). A panic in [`DatagramProtocol::on_datagram`] discards the
//! answers that call queued and the instance itself: the driver reports the panic to the error
//! hook and makes a fresh instance from the factory, then goes on with the next datagram.
//!
//! Bounds: the driver drops datagrams larger than
//! [`Config::max_datagram_bytes`](crate::Config::max_datagram_bytes) before any protocol sees
//! them, and the outbox holds at most [`Config::datagram_queue`](crate::Config::datagram_queue)
//! answers; [`Outbox::send_to`] says whether an answer was taken.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The address of a datagram's sender, or of an answer's recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A UDP peer.
    Inet(SocketAddr),
    /// A Unix datagram peer: the path its socket is bound to, or `None` for an unnamed socket
    /// (which can send but cannot be answered).
    Unix(Option<PathBuf>),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Inet(addr) => write!(f, "{addr}"),
            Peer::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            Peer::Unix(None) => write!(f, "unix:(unnamed)"),
        }
    }
}

/// A sans-IO datagram protocol: one whole datagram in with its sender's [`Peer`], answers out
/// through an [`Outbox`]; the driver owns the socket.
///
/// One instance serves one socket on one thread, so it may keep state across datagrams. A
/// panic discards the answers that call queued and the instance itself: the driver reports it
/// to the error hook, makes a fresh instance from the factory, and goes on. Datagrams over
/// [`Config::max_datagram_bytes`](crate::Config::max_datagram_bytes) are dropped before any
/// protocol sees them; the outbox holds at most
/// [`Config::datagram_queue`](crate::Config::datagram_queue) answers.
pub trait DatagramProtocol: 'static {
    /// One whole datagram from `from`. Queue answers in `out`; they are sent in order.
    fn on_datagram(&mut self, datagram: &[u8], from: &Peer, out: &mut Outbox);
}

/// An answer waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Where it goes.
    pub to: Peer,
    /// The datagram.
    pub data: Vec<u8>,
}

/// Answers queued by a [`DatagramProtocol`], bounded in count.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Outgoing>,
    /// Most answers held at once.
    limit: usize,
    /// Answers refused because the queue was full or the peer cannot be answered, since the
    /// driver last took the count.
    dropped: u64,
}

impl Outbox {
    /// An empty outbox holding at most `limit` answers (at least one).
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            limit: limit.max(1),
            dropped: 0,
        }
    }

    /// Queues `data` for `to`. Returns false, and drops it, if the outbox is full or `to` is an
    /// unnamed Unix socket (nothing can be sent to it).
    pub fn send_to(&mut self, to: &Peer, data: &[u8]) -> bool {
        if self.queue.len() >= self.limit || matches!(to, Peer::Unix(None)) {
            self.dropped += 1;
            return false;
        }
        self.queue.push_back(Outgoing {
            to: to.clone(),
            data: data.to_vec(),
        });
        true
    }

    /// Answers waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// True when no further answer fits.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.limit
    }

    /// The oldest answer, to be sent next.
    pub fn front(&self) -> Option<&Outgoing> {
        self.queue.front()
    }

    /// Takes the oldest answer out.
    pub fn pop(&mut self) -> Option<Outgoing> {
        self.queue.pop_front()
    }

    /// Returns, and resets, the count of answers dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Discards answers queued after the first `len` (what a panicking callback left).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.queue.truncate(len);
    }
}

impl DatagramProtocol for super::Echo {
    fn on_datagram(&mut self, datagram: &[u8], from: &Peer, out: &mut Outbox) {
        out.send_to(from, datagram);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Echo;

    #[test]
    fn echo_answers_the_sender() {
        let from = Peer::Inet(SocketAddr::from(([127, 0, 0, 1], 9)));
        let mut out = Outbox::new(4);
        Echo.on_datagram(b"ping", &from, &mut out);
        assert_eq!(
            out.pop(),
            Some(Outgoing {
                to: from,
                data: b"ping".to_vec()
            })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_full_outbox_drops_and_counts() {
        let to = Peer::Unix(Some(PathBuf::from("/nonexistent/peer")));
        let mut out = Outbox::new(2);
        assert!(out.send_to(&to, b"1"));
        assert!(out.send_to(&to, b"2"));
        assert!(!out.send_to(&to, b"3"));
        assert!(out.is_full());
        assert_eq!(out.take_dropped(), 1);
        assert_eq!(out.take_dropped(), 0);
        assert_eq!(out.pop().map(|answer| answer.data), Some(b"1".to_vec()));
    }

    #[test]
    fn an_unnamed_peer_cannot_be_answered() {
        let mut out = Outbox::new(2);
        assert!(!out.send_to(&Peer::Unix(None), b"lost"));
        assert!(out.is_empty());
        assert_eq!(out.take_dropped(), 1);
    }
}
