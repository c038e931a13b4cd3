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
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// A moment on a reactor's [`Clock`]: nanoseconds since the clock's origin (plus one, so that an
/// `Option<Tick>` is no larger than a `Tick`). Eight bytes where an `Instant` takes sixteen,
/// which matters in a connection record that must stay small: a reactor holds one per
/// connection and one per timer. Ticks of different clocks do not compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(NonZeroU64);

impl Tick {
    /// The tick `span` after the origin.
    fn from_span(span: Duration) -> Tick {
        let nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX - 1);
        Tick(NonZeroU64::MIN.saturating_add(nanos))
    }

    /// Time from the origin to this tick.
    fn span(self) -> Duration {
        Duration::from_nanos(self.0.get() - 1)
    }

    /// This tick moved `by` later.
    pub fn after(self, by: Duration) -> Tick {
        Tick::from_span(self.span().saturating_add(by))
    }

    /// How long from `earlier` to this tick (zero if `earlier` is later).
    pub fn since(self, earlier: Tick) -> Duration {
        self.span().saturating_sub(earlier.span())
    }
}

/// The reactor's clock: read once per turn, so every decision in a turn sees the same `now`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    now: Instant,
    /// The moment ticks count from.
    origin: Instant,
}

impl Clock {
    /// A clock reading the current time.
    pub fn new() -> Self {
        let now = Instant::now();
        Clock { now, origin: now }
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

    /// The time cached at the start of this turn, as a tick.
    pub fn now_tick(&self) -> Tick {
        self.tick(self.now)
    }

    /// `at` as a tick of this clock (the origin, for a moment before it).
    pub fn tick(&self, at: Instant) -> Tick {
        Tick::from_span(at.saturating_duration_since(self.origin))
    }

    /// The moment `tick` stands for.
    pub fn instant(&self, tick: Tick) -> Instant {
        self.origin + tick.span()
    }

    /// `span` kept in a tick's place (as the tick `span` after the origin), so that a connection
    /// can hold either a deadline or, while its timer is frozen, the time it has left, in one
    /// field. Undone by [`Clock::span_kept_in`].
    pub fn keep_span(&self, span: Duration) -> Tick {
        Tick::from_span(span)
    }

    /// The span stored by [`Clock::keep_span`].
    pub fn span_kept_in(&self, kept: Tick) -> Duration {
        kept.span()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Heaps this small are never worth compacting, nor shrinking below.
pub const COMPACT_FLOOR: usize = 256;

/// One pending timer: 24 bytes with a connection id as its item.
#[derive(Debug)]
struct Entry<T> {
    deadline: Tick,
    /// Insertion order, so timers with equal deadlines fire first-in first-out (it wraps after
    /// four billion timers, which can only swap two timers due at the same nanosecond).
    seq: u32,
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
    next_seq: u32,
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
    pub fn schedule(&mut self, deadline: Tick, item: T) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Reverse(Entry {
            deadline,
            seq,
            item,
        }));
    }

    /// The earliest deadline, if any timer is armed (cancelled ones included: they fire and are
    /// dropped, which costs at most one spurious wake-up per cancelled timer).
    pub fn next_deadline(&self) -> Option<Tick> {
        self.heap.peek().map(|Reverse(entry)| entry.deadline)
    }

    /// How long the poll may sleep: until the next deadline, or forever (`None`).
    pub fn poll_timeout(&self, now: Tick) -> Option<Duration> {
        self.next_deadline().map(|deadline| deadline.since(now))
    }

    /// Moves every item due at `now` into `due` with its deadline, earliest first.
    pub fn collect_expired(&mut self, now: Tick, due: &mut Vec<(Tick, T)>) {
        while let Some(Reverse(entry)) = self.heap.peek() {
            if entry.deadline > now {
                break;
            }
            if let Some(Reverse(entry)) = self.heap.pop() {
                due.push((entry.deadline, entry.item));
            }
        }
    }

    /// Keeps only the timers for which `live(deadline, item)` holds, and gives back memory the
    /// heap no longer needs. Costs a pass over the heap: the caller runs it when dead entries
    /// (for connections since closed) are known to be a large share, so that the heap is
    /// bounded by what is live rather than by what was armed in the last timeout's span.
    pub fn retain(&mut self, mut live: impl FnMut(Tick, &T) -> bool) {
        self.heap
            .retain(|Reverse(entry)| live(entry.deadline, &entry.item));
        let room = self.heap.len().max(COMPACT_FLOOR);
        if self.heap.capacity() > 2 * room {
            self.heap.shrink_to(room);
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

    fn at(clock: &Clock, millis: u64) -> Tick {
        clock.now_tick().after(Duration::from_millis(millis))
    }

    #[test]
    fn expired_timers_come_out_in_deadline_order() {
        let clock = Clock::new();
        let mut timers = Timers::default();
        timers.schedule(at(&clock, 30), "c");
        timers.schedule(at(&clock, 10), "a");
        timers.schedule(at(&clock, 20), "b");
        timers.schedule(at(&clock, 10), "a2");
        let mut due = Vec::new();
        timers.collect_expired(at(&clock, 20), &mut due);
        let items: Vec<_> = due.iter().map(|(_, item)| *item).collect();
        assert_eq!(items, ["a", "a2", "b"]);
        assert_eq!(due[0].0, at(&clock, 10));
        assert_eq!(
            timers.poll_timeout(clock.now_tick()),
            Some(Duration::from_millis(30))
        );
    }

    #[test]
    fn retain_keeps_the_live_and_gives_memory_back() {
        let clock = Clock::new();
        let mut timers = Timers::default();
        for index in 0..10_000u32 {
            timers.schedule(at(&clock, u64::from(index)), index);
        }
        timers.retain(|_, &index| index % 1000 == 0);
        assert_eq!(timers.len(), 10);
        assert!(timers.heap.capacity() <= 2 * COMPACT_FLOOR);
        let mut due = Vec::new();
        timers.collect_expired(at(&clock, 60_000), &mut due);
        let items: Vec<u32> = due.iter().map(|(_, item)| *item).collect();
        assert_eq!(items, (0..10).map(|i| i * 1000).collect::<Vec<_>>());
    }

    #[test]
    fn ticks_stand_for_instants_and_keep_spans() {
        let clock = Clock::new();
        let later = clock.now() + Duration::from_micros(1500);
        assert_eq!(clock.instant(clock.tick(later)), later);
        let span = Duration::from_millis(1234);
        assert_eq!(clock.span_kept_in(clock.keep_span(span)), span);
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 8);
        assert_eq!(std::mem::size_of::<Entry<[u32; 3]>>(), 24);
    }

    #[test]
    fn nothing_is_due_before_its_deadline() {
        let clock = Clock::new();
        let mut timers = Timers::default();
        timers.schedule(at(&clock, 1000), ());
        let mut due = Vec::new();
        timers.collect_expired(clock.now_tick(), &mut due);
        assert!(due.is_empty());
        assert_eq!(timers.len(), 1);
    }
}
