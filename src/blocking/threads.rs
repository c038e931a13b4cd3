//! Thread per connection: the acceptor starts a handler thread for every admitted connection.
//!
//! Finished threads are reaped (joined) each time a connection is accepted, so the bookkeeping
//! holds about as many handles as there are live connections, never one per connection ever
//! served (the `handler_threads` counter is the number of handles held). At most `max_connections` handlers run at once; a client over the cap is closed at
//! once.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{serve_connection, Acceptor, Shared};
use crate::error::Result;
use crate::metrics::{self, Stats};
use crate::protocol::Protocol;

/// Runs the thread-per-connection model until shutdown.
pub(crate) fn run<P, F>(
    acceptor: Acceptor,
    shared: Arc<Shared>,
    mut factory: F,
    block_on_close: bool,
) -> Result<()>
where
    P: Protocol + Send,
    F: FnMut() -> P,
{
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let result = acceptor.run(&shared, |stream, peer| {
        reap(&mut handlers, &shared.stats);
        let stats = &shared.stats;
        if stats.active.load(std::sync::atomic::Ordering::Relaxed)
            >= shared.config.max_connections as u64
        {
            metrics::shared_add(&stats.refused_over_capacity, 1);
            return; // dropping the stream closes it: a prompt end of stream, not a hang
        }
        let protocol = factory();
        metrics::shared_add(&stats.accepted, 1);
        metrics::shared_add(&stats.active, 1);
        let handler_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("socketserver-handler".into())
            .spawn(move || serve_connection(stream, peer, protocol, &handler_shared));
        match spawned {
            Ok(handle) => {
                metrics::shared_add(&stats.handler_threads, 1);
                handlers.push(handle);
            }
            Err(error) => {
                // The stream moved into the closure that failed to start and is closed with it.
                log::warn!("could not start a handler thread for {peer:?}: {error}");
                metrics::shared_sub(&stats.active, 1);
                metrics::shared_add(&stats.refused_over_capacity, 1);
            }
        }
    });
    shared.begin_shutdown();
    if block_on_close {
        wait_for_handlers(handlers, &shared.stats, shared.config.shutdown_timeout);
    }
    result
}

/// Joins the handler threads that have finished; keeps the rest.
fn reap(handlers: &mut Vec<JoinHandle<()>>, stats: &Stats) {
    let mut index = 0;
    while index < handlers.len() {
        if handlers[index].is_finished() {
            let _ = handlers.swap_remove(index).join();
            metrics::shared_sub(&stats.handler_threads, 1);
        } else {
            index += 1;
        }
    }
}

/// Waits up to `timeout` for every handler to finish, then leaves the stragglers detached.
pub(super) fn wait_for_handlers(
    mut handlers: Vec<JoinHandle<()>>,
    stats: &Stats,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    while !handlers.is_empty() && Instant::now() < deadline {
        reap(&mut handlers, stats);
        if !handlers.is_empty() {
            // Handlers are blocked in socket calls this thread cannot wait on together; a short
            // nap between checks bounds the wait without busy-spinning.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if !handlers.is_empty() {
        log::warn!(
            "{} handler threads still running at the shutdown deadline",
            handlers.len()
        );
    }
}
