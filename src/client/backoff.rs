//! When to try again: reconnect delays that grow, are capped, and are spread by jitter so that
//! ten thousand clients of a server that restarts do not all come back in the same millisecond.
//!
//! A [`Backoff`] is the policy; a [`Retry`] applies it to one client, attempt by attempt. The
//! randomness comes in as an argument (a number in `[0, 1)`), so a schedule is a pure function
//! of the policy, the clock and the draws, and is tested as one.
//!
//! The jitters are those of Marc Brooker's "Exponential Backoff And Jitter" (AWS Architecture
//! Blog, 2015), where `ceiling = min(max, initial × multiplier^attempt)`:
//!
//! | jitter         | delay                                             |
//! |----------------|---------------------------------------------------|
//! | `None`         | `ceiling`                                         |
//! | `Full`         | uniform in `[0, ceiling)`                         |
//! | `Equal`        | `ceiling / 2` + uniform in `[0, ceiling / 2)`     |
//! | `Decorrelated` | `min(max, uniform in [initial, 3 × previous))`    |
//! | `Proportional` | `ceiling` × uniform in `[1 − f, 1 + f)`, then `≤ max` |
//!
//! Full jitter spreads a crowd the most (its expected delay is half the ceiling) and is the
//! one to use when many clients share a server; `Proportional(0.2)` is gRPC's.

use std::time::{Duration, Instant};

/// How a delay is spread around its ceiling (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Exactly the ceiling: every client of a restarted server comes back together.
    None,
    /// Uniform between zero and the ceiling.
    Full,
    /// Half the ceiling, plus uniform up to the other half.
    Equal,
    /// Uniform between the initial delay and three times the previous one, capped.
    Decorrelated,
    /// The ceiling, give or take this fraction of it (gRPC: 0.2).
    Proportional(f64),
}

/// A reconnect policy: how long to wait before each attempt.
///
/// The default is gRPC's connection-backoff rules (`doc/connection-backoff.md` in grpc/grpc):
/// 1 s first, growing ×1.6 to a cap of 120 s, ±20 %, retried forever. A connection counts as
/// healthy, and the next failure starts over from 1 s, once it stayed up for 30 s: longer
/// than one WebSocket heartbeat (25 s by default), so a server that accepts and then drops
/// every connection keeps its clients backing off instead of hammering it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry (and the floor of decorrelated jitter).
    pub initial: Duration,
    /// Each further retry's ceiling is this many times the last one's (1 for a fixed delay).
    pub multiplier: f64,
    /// No delay is longer than this.
    pub max: Duration,
    /// How delays are spread.
    pub jitter: Jitter,
    /// A connection up this long resets the schedule when it ends.
    pub min_uptime: Duration,
    /// Give up after this many retries in a row; `None` never gives up.
    pub max_retries: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            max: Duration::from_secs(120),
            jitter: Jitter::Proportional(0.2),
            min_uptime: Duration::from_secs(30),
            max_retries: None,
        }
    }
}

impl Backoff {
    /// The same delay before every retry, without jitter.
    pub fn fixed(delay: Duration) -> Backoff {
        Backoff {
            initial: delay,
            multiplier: 1.0,
            max: delay,
            jitter: Jitter::None,
            ..Backoff::default()
        }
    }

    /// Doubling from `initial` up to `max`, with full jitter: the policy for a crowd.
    pub fn exponential(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            multiplier: 2.0,
            max: max.max(initial),
            jitter: Jitter::Full,
            ..Backoff::default()
        }
    }

    /// This policy with `jitter`.
    pub fn with_jitter(mut self, jitter: Jitter) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// This policy, giving up after `retries` failures in a row.
    pub fn with_max_retries(mut self, retries: u32) -> Backoff {
        self.max_retries = Some(retries);
        self
    }

    /// This policy, resetting once a connection stayed up for `uptime`.
    pub fn with_min_uptime(mut self, uptime: Duration) -> Backoff {
        self.min_uptime = uptime;
        self
    }

    /// The ceiling of retry number `attempt` (0 for the first): `initial × multiplier^attempt`,
    /// at most `max`.
    fn ceiling(&self, attempt: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt as i32);
        Duration::from_secs_f64(grown.min(self.max.as_secs_f64()))
    }
}

/// One client's place in its policy's schedule.
#[derive(Debug, Clone)]
pub struct Retry {
    policy: Backoff,
    /// Retries in a row since the last healthy connection.
    attempt: u32,
    /// The last delay handed out (decorrelated jitter grows from it).
    previous: Duration,
    /// When the connection now up connected, if one is.
    up_since: Option<Instant>,
}

impl Retry {
    /// A client that has not failed yet.
    pub fn new(policy: Backoff) -> Retry {
        Retry {
            previous: policy.initial,
            policy,
            attempt: 0,
            up_since: None,
        }
    }

    /// The policy being followed.
    pub fn policy(&self) -> &Backoff {
        &self.policy
    }

    /// Retries in a row so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// A connection came up at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection (or the attempt at one) ended at `now`; one that had stayed up for the
    /// policy's minimum uptime starts the schedule over.
    pub fn disconnected(&mut self, now: Instant) {
        if let Some(since) = self.up_since.take() {
            if now.saturating_duration_since(since) >= self.policy.min_uptime {
                self.reset();
            }
        }
    }

    /// Starts the schedule over, as after a healthy connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.previous = self.policy.initial;
    }

    /// The delay before the next attempt, drawing on `random` (uniform in `[0, 1)`), or
    /// `None` once the retry limit is reached.
    pub fn next_delay(&mut self, random: f64) -> Option<Duration> {
        if self
            .policy
            .max_retries
            .is_some_and(|limit| self.attempt >= limit)
        {
            return None;
        }
        let random = random.clamp(0.0, 1.0);
        let policy = &self.policy;
        let ceiling = policy.ceiling(self.attempt).as_secs_f64();
        let max = policy.max.as_secs_f64();
        let seconds = match policy.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling * random,
            Jitter::Equal => ceiling / 2.0 + ceiling / 2.0 * random,
            Jitter::Decorrelated => {
                let low = policy.initial.as_secs_f64();
                let high = (self.previous.as_secs_f64() * 3.0).max(low);
                (low + (high - low) * random).min(max)
            }
            Jitter::Proportional(fraction) => {
                let fraction = fraction.clamp(0.0, 1.0);
                (ceiling * (1.0 - fraction + 2.0 * fraction * random)).min(max)
            }
        };
        let delay = Duration::from_secs_f64(seconds.max(0.0));
        self.attempt = self.attempt.saturating_add(1);
        self.previous = delay;
        Some(delay)
    }
}

/// A uniform draw in `[0, 1)` for [`Retry::next_delay`], from the thread's random generator.
pub fn random_unit() -> f64 {
    rand::random::<f64>()
}
