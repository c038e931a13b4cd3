//! Timers: a min-heap of deadlines, cancelled lazily, read against one cached `now` per turn.
//!
//! Nothing is ever removed from the middle of the heap. A timer carries the identity of what it
//! is for (a connection's `ConnId`) and its deadline; when it comes due, the reactor checks both
//! against the live state and drops the timer if they no longer match. Cancelling is therefore
//! O(1), and timers that are pushed back again and again (an idle timeout on every byte, a
//! protocol re-arming a keep-alive timer on every request) are not re-pushed each time: the
//! connection remembers its wanted deadline, and when the one entry in the heap comes due early
//! it is re-armed for the deadline then wanted. Each connection so has one live entry per timer.
//!
//! Due timers are *collected* before any of them runs, so a callback that arms a new timer with
//! a zero delay cannot make the reactor loop on timers forever within one turn.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The reactor's clock: read once per turn, so every decision in a turn sees the same `now`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    now: Instant,
}

impl Clock {
    /// A clock reading the current time.
    pub fn new() -> Self {
        Clock {
            now: Instant::now(),
        }
    }

    /// Reads the system clock; called once at the start of each turn.
    pub fn update(&mut self) -> Instant {
        self.now = Instant::now();
        self.now
    }

    /// The time cached at the start of this turn.
    pub fn now(&self) -> Instant {
        self.now
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// One pending timer.
#[derive(Debug)]
struct Entry<T> {
    deadline: Instant,
    /// Insertion order, so timers with equal deadlines fire first-in first-out.
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// A min-heap of `(deadline, item)`; items are validated by the caller when they come due.
#[derive(Debug)]
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    next_seq: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T> Timers<T> {
    /// Arms a timer for `item` at `deadline`.
    pub fn schedule(&mut self, deadline: Instant, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Entry {
            deadline,
            seq,
            item,
        }));
    }

    /// The earliest deadline, if any timer is armed (cancelled ones included: they fire and are
    /// dropped, which costs at most one spurious wake-up per cancelled timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(entry)| entry.deadline)
    }

    /// How long the poll may sleep: until the next deadline, or forever (`None`).
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        self.next_deadline()
            .map(|deadline| deadline.saturating_duration_since(now))
    }

    /// Moves every item due at `now` into `due` with its deadline, earliest first.
    pub fn collect_expired(&mut self, now: Instant, due: &mut Vec<(Instant, T)>) {
        while let Some(Reverse(entry)) = self.heap.peek() {
            if entry.deadline > now {
                break;
            }
            if let Some(Reverse(entry)) = self.heap.pop() {
                due.push((entry.deadline, entry.item));
            }
        }
    }

    /// Number of armed timers (cancelled ones included until they come due).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_timers_come_out_in_deadline_order() {
        let start = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(start + Duration::from_millis(30), "c");
        timers.schedule(start + Duration::from_millis(10), "a");
        timers.schedule(start + Duration::from_millis(20), "b");
        timers.schedule(start + Duration::from_millis(10), "a2");
        let mut due = Vec::new();
        timers.collect_expired(start + Duration::from_millis(20), &mut due);
        let items: Vec<_> = due.iter().map(|(_, item)| *item).collect();
        assert_eq!(items, ["a", "a2", "b"]);
        assert_eq!(due[0].0, start + Duration::from_millis(10));
        assert_eq!(timers.poll_timeout(start), Some(Duration::from_millis(30)));
    }

    #[test]
    fn nothing_is_due_before_its_deadline() {
        let start = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(start + Duration::from_secs(1), ());
        let mut due = Vec::new();
        timers.collect_expired(start, &mut due);
        assert!(due.is_empty());
        assert_eq!(timers.len(), 1);
    }
}
