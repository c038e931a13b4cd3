//! A bounded thread pool: `pool_threads` handlers take accepted connections from a queue of
//! `pool_queue`. The acceptor never waits for a free thread: a connection that finds the queue
//! full is closed at once and counted as refused over capacity.

use std::sync::Arc;

use crossbeam_channel::TrySendError;

use super::threads::wait_for_handlers;
use super::{serve_connection, Acceptor, Shared};
use crate::error::{Error, Result};
use crate::metrics;
use crate::protocol::Protocol;

/// Runs the thread-pool model until shutdown.
pub(crate) fn run<P, F>(acceptor: Acceptor, shared: Arc<Shared>, mut factory: F) -> Result<()>
where
    P: Protocol + Send,
    F: FnMut() -> P,
{
    let (queue, waiting) = crossbeam_channel::bounded(shared.config.pool_queue);
    let mut handlers = Vec::with_capacity(shared.config.pool_threads);
    for number in 0..shared.config.pool_threads {
        let waiting = waiting.clone();
        let handler_shared = shared.clone();
        let handler = std::thread::Builder::new()
            .name(format!("socketserver-pool-{number}"))
            .spawn(move || {
                for (stream, peer, protocol) in waiting {
                    serve_connection(stream, peer, protocol, &handler_shared);
                }
            })
            .map_err(|error| Error::io("starting pool threads", error))?;
        handlers.push(handler);
        metrics::shared_add(&shared.stats.handler_threads, 1);
    }
    drop(waiting);
    let result = acceptor.run(&shared, |stream, peer| {
        let stats = &shared.stats;
        if stats.active.load(std::sync::atomic::Ordering::Relaxed)
            >= shared.config.max_connections as u64
        {
            metrics::shared_add(&stats.refused_over_capacity, 1);
            return;
        }
        metrics::shared_add(&stats.active, 1);
        match queue.try_send((stream, peer, factory())) {
            Ok(()) => metrics::shared_add(&stats.accepted, 1),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // The refused stream is dropped with the error: closed at once.
                metrics::shared_sub(&stats.active, 1);
                metrics::shared_add(&stats.refused_over_capacity, 1);
                log::debug!("refused {peer:?}: every pool thread is busy and the queue is full");
            }
        }
    });
    // Close the queue: handlers finish what is queued (each sees the shutdown at once) and exit.
    shared.begin_shutdown();
    drop(queue);
    wait_for_handlers(handlers, &shared.stats, shared.config.shutdown_timeout);
    result
}
