//! Results coming back into the loop from other threads: a crossbeam channel plus one `Waker`.
//!
//! A worker sends its result, then wakes the reactor — in that order, so a wake-up never arrives
//! before the result it announces. Wake-ups are coalesced with one flag: only the sender that
//! flips it from "quiet" to "pending" pays for the `Waker` write; the reactor clears the flag
//! *before* draining, so a result sent during the drain either is drained now or wakes again.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

/// Wakes the reactor from another thread, at most once per drain.
#[derive(Debug, Clone)]
pub struct Notifier {
    waker: Arc<Waker>,
    /// True between a wake-up and the reactor's next drain.
    pending: Arc<AtomicBool>,
}

impl Notifier {
    /// A notifier for `waker`.
    pub fn new(waker: Arc<Waker>) -> Self {
        Notifier {
            waker,
            pending: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Wakes the reactor unless a wake-up is already pending.
    pub fn notify(&self) -> io::Result<()> {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.waker.wake()?;
        }
        Ok(())
    }

    /// Called by the reactor before it drains: later sends must wake it again.
    pub fn clear(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

/// The receiving end the reactor drains when the waker fires.
#[derive(Debug)]
pub struct Completions<T> {
    receiver: Receiver<T>,
    notifier: Notifier,
}

/// The sending end handed to worker threads: send, then notify.
#[derive(Debug)]
pub struct CompletionSender<T> {
    sender: Sender<T>,
    notifier: Notifier,
}

impl<T> Clone for CompletionSender<T> {
    fn clone(&self) -> Self {
        CompletionSender {
            sender: self.sender.clone(),
            notifier: self.notifier.clone(),
        }
    }
}

/// A channel whose every send wakes the reactor (coalesced).
pub fn channel<T>(notifier: Notifier) -> (CompletionSender<T>, Completions<T>) {
    let (sender, receiver) = crossbeam_channel::unbounded();
    (
        CompletionSender {
            sender,
            notifier: notifier.clone(),
        },
        Completions { receiver, notifier },
    )
}

impl<T> CompletionSender<T> {
    /// Sends `item` and wakes the reactor. Fails only when the reactor has gone away.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.sender.send(item).map_err(|error| error.into_inner())?;
        if let Err(error) = self.notifier.notify() {
            log::warn!("could not wake the reactor: {error}");
        }
        Ok(())
    }
}

impl<T> Completions<T> {
    /// Clears the pending flag, then moves every queued item into `out`.
    pub fn drain_into(&self, out: &mut Vec<T>) {
        self.notifier.clear();
        while let Ok(item) = self.receiver.try_recv() {
            out.push(item);
        }
    }
}
