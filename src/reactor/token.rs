//! Connection identities that survive slot reuse: `ConnId { index, gen }` and the table keyed by it.
//!
//! A slab reuses a freed slot for the next connection. Anything that still names the old
//! connection by slot index alone — a readiness event later in the same batch, a timer, a worker
//! result — would then reach the wrong peer. So every identity carries the generation the slot had
//! when the connection moved in, packed into the `mio::Token`, and every lookup goes through
//! [`Slots::get_mut`], which answers `None` when the generations differ.
//!
//! Tokens at the top of the `usize` range are reserved for the listener, the waker and signals;
//! connection tokens never reach them because slot indices are bounded by `max_connections`.

use mio::Token;
use slab::Slab;

/// The token of the listening socket.
pub const LISTENER: Token = Token(usize::MAX);
/// The token of the `mio::Waker` that worker threads and shutdown handles use.
pub const WAKER: Token = Token(usize::MAX - 1);
/// The token of the signal pipe (SIGINT, SIGTERM).
pub const SIGNALS: Token = Token(usize::MAX - 2);

/// Names one connection for its whole life: the slab slot and the generation of that slot.
/// Shown as `index.generation` (`3.1`) in log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Slot in the connection table.
    pub index: u32,
    /// Generation the slot had when this connection moved in; differs for every later occupant.
    pub gen: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index, self.gen)
    }
}

impl ConnId {
    /// Packs the identity into a poll token: generation in the high half, index in the low half.
    pub fn token(self) -> Token {
        Token(((self.gen as usize) << 32) | self.index as usize)
    }

    /// Unpacks a token made by [`ConnId::token`]. Reserved tokens give ids no slot ever holds.
    pub fn from_token(token: Token) -> ConnId {
        ConnId {
            index: token.0 as u32,
            gen: (token.0 >> 32) as u32,
        }
    }
}

// Packing needs 64 bits of token: 32 for the index and 32 for the generation.
const _: () = assert!(
    usize::BITS >= 64,
    "socketserver packs ConnId into a 64-bit mio::Token"
);

/// A slab whose entries are named by [`ConnId`]: a stale id (its slot since freed and perhaps
/// reused) finds nothing instead of the slot's new occupant.
#[derive(Debug)]
pub struct Slots<T> {
    /// The entries, each with the generation it was inserted under.
    entries: Slab<(u32, T)>,
    /// Generation handed to the next insert; wraps after 2^32 inserts, so a stale id could only
    /// match again if it outlived four billion connections that all landed in its slot.
    next_gen: u32,
}

impl<T> Slots<T> {
    /// An empty table with room for `capacity` entries before it reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        Slots {
            entries: Slab::with_capacity(capacity),
            next_gen: 0,
        }
    }

    /// Inserts `make(id)` and returns its id; `make` sees the id so the entry can know itself.
    pub fn insert_with(&mut self, make: impl FnOnce(ConnId) -> T) -> ConnId {
        let entry = self.entries.vacant_entry();
        let id = ConnId {
            index: entry.key() as u32,
            gen: self.next_gen,
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        entry.insert((id.gen, make(id)));
        id
    }

    /// The entry `id` names, if it is still the one in its slot.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.entries.get_mut(id.index as usize) {
            Some((gen, entry)) if *gen == id.gen => Some(entry),
            _ => None,
        }
    }

    /// Shared access to the entry `id` names, if it is still the one in its slot.
    pub fn get(&self, id: ConnId) -> Option<&T> {
        match self.entries.get(id.index as usize) {
            Some((gen, entry)) if *gen == id.gen => Some(entry),
            _ => None,
        }
    }

    /// Removes and returns the entry `id` names; a stale id removes nothing.
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        match self.entries.get(id.index as usize) {
            Some((gen, _)) if *gen == id.gen => Some(self.entries.remove(id.index as usize).1),
            _ => None,
        }
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids of every live entry (a snapshot, so the table can be changed while walking it).
    pub fn ids(&self) -> Vec<ConnId> {
        self.entries
            .iter()
            .map(|(index, (gen, _))| ConnId {
                index: index as u32,
                gen: *gen,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        let id = ConnId {
            index: 7,
            gen: 0xdead_beef,
        };
        assert_eq!(ConnId::from_token(id.token()), id);
    }

    #[test]
    fn reserved_tokens_never_name_a_slot() {
        for token in [LISTENER, WAKER, SIGNALS] {
            assert!(ConnId::from_token(token).index as usize >= 1_000_000);
        }
    }
}
