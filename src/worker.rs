//! The worker pool: CPU-bound jobs run on N threads, off the event loop.
//!
//! A reactor hands a job over with `try_send` on a bounded crossbeam channel: a full queue is
//! an immediate answer ([`OffloadError::Busy`]), never a stall of the loop. Each job carries the
//! [`CompletionSender`] of the reactor that asked for it, so one pool serves any number of
//! reactors; the result goes back tagged with the [`ConnId`] that asked, and wakes that reactor,
//! which drops results whose connection has since closed (its generation no longer matches). A job that panics fails only itself: the worker catches the panic and reports it as
//! that job's result.
//!
//! On shutdown the queue is closed; jobs still queued are dropped and the threads exit after the
//! job they are running.
//!
//! The same channel carries [`Notice`]s: messages another thread (a pub/sub hub) addresses to
//! connections of a loop through that loop's [`Mailbox`]. The loop hands each to the protocol
//! of every connection named ([`Protocol::on_notice`](crate::protocol::Protocol::on_notice)),
//! dropping names whose connection has closed, exactly as it drops stale job results.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::lifecycle::panic_message;
use crate::reactor::completions::CompletionSender;
use crate::reactor::token::ConnId;

/// What a job returns: any sendable value; the protocol downcasts it.
pub type JobOutput = Box<dyn Any + Send>;

/// The outcome of an offloaded job as its protocol receives it.
pub type JobResult = Result<JobOutput, JobFailed>;

/// A job panicked; the message is the panic's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailed {
    /// The panic message, or a placeholder when the payload was not a string.
    pub message: String,
}

impl fmt::Display for JobFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job panicked: {}", self.message)
    }
}

/// Why a job could not be offloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// The job queue is full: answer "busy" (HTTP 503) or retry later.
    Busy,
    /// This connection already has `max_jobs_per_connection` jobs in flight.
    TooManyInFlight,
    /// The server runs no worker threads (`workers = 0`), or is shutting down.
    Unavailable,
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OffloadError::Busy => "the job queue is full",
            OffloadError::TooManyInFlight => "too many jobs in flight on this connection",
            OffloadError::Unavailable => "no worker threads are running",
        })
    }
}

impl std::error::Error for OffloadError {}

/// A job with the identity of the connection that asked for it.
pub(crate) struct Job {
    pub(crate) conn: ConnId,
    pub(crate) tag: u64,
    pub(crate) work: Box<dyn FnOnce() -> JobOutput + Send>,
    /// Where the result goes: the asking reactor's completion channel.
    pub(crate) reply: CompletionSender<Completion>,
    /// When it was handed over, for the job latency.
    pub(crate) submitted: Instant,
}

/// What comes into a loop from other threads.
pub(crate) enum Completion {
    /// A finished job on its way back.
    Job(JobDone),
    /// A notice for some of the loop's connections.
    Notice {
        /// Who it is for; names of connections that have closed are skipped.
        to: Recipients,
        notice: Notice,
    },
}

/// A finished job on its way back to the reactor.
pub(crate) struct JobDone {
    pub(crate) conn: ConnId,
    pub(crate) tag: u64,
    pub(crate) result: JobResult,
    /// From handing the job over to its result (queueing and running).
    pub(crate) latency: Duration,
}

/// A message from another thread to a connection's protocol; the protocol downcasts it. Shared,
/// so one notice can go to many connections without a copy.
pub type Notice = Arc<dyn Any + Send + Sync>;

/// The connections of one loop a [`Notice`] is for.
#[derive(Debug, Clone)]
pub enum Recipients {
    /// One connection.
    One(ConnId),
    /// Many, in this order (a topic's subscribers on that loop, kept as one shared list that
    /// changes only when they do).
    Many(Arc<[ConnId]>),
}

/// Where another thread sends notices for the connections of one loop: its completion channel
/// and its waker (sending never blocks). Under a blocking driver, where a connection is its own
/// thread and has no loop to wake, a connection's mailbox is the connection itself: the sender
/// hands it the notice and writes what it answers, waiting for the peer as blocking servers
/// do. Cheap to clone.
#[derive(Clone)]
pub struct Mailbox {
    target: Target,
    /// Tells loops apart (a hub groups a topic's subscribers by loop); under a blocking driver,
    /// each connection has its own.
    loop_id: u64,
}

#[derive(Clone)]
enum Target {
    Loop(CompletionSender<Completion>),
    Direct(std::sync::Weak<dyn DirectDelivery>),
}

/// A connection of a blocking driver that takes notices on the sender's thread.
pub(crate) trait DirectDelivery: Send + Sync {
    /// Runs the connection's `on_notice` and writes what it answered.
    fn deliver(&self, notice: &Notice);
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("loop_id", &self.loop_id)
            .finish()
    }
}

impl Mailbox {
    /// A mailbox for the loop behind `sender`, with an id no other loop of this process has.
    pub(crate) fn new(sender: CompletionSender<Completion>) -> Mailbox {
        Mailbox {
            target: Target::Loop(sender),
            loop_id: next_loop_id(),
        }
    }

    /// The mailbox of one blocking connection, which takes its notices itself.
    pub(crate) fn direct(connection: std::sync::Weak<dyn DirectDelivery>) -> Mailbox {
        Mailbox {
            target: Target::Direct(connection),
            loop_id: next_loop_id(),
        }
    }

    /// The loop's id: equal for every mailbox of one loop.
    pub fn loop_id(&self) -> u64 {
        self.loop_id
    }

    /// Sends `notice` to the connections named; false once the loop (or, under a blocking
    /// driver, the connection) is gone. A blocking connection is given the notice on the
    /// calling thread, which waits while it is written (`to` names that one connection).
    pub fn send(&self, to: Recipients, notice: Notice) -> bool {
        match &self.target {
            Target::Loop(sender) => sender.send(Completion::Notice { to, notice }).is_ok(),
            Target::Direct(connection) => match connection.upgrade() {
                Some(connection) => {
                    connection.deliver(&notice);
                    true
                }
                None => false,
            },
        }
    }
}

/// An id no other loop (or blocking connection) of this process has.
fn next_loop_id() -> u64 {
    static NEXT_LOOP: AtomicU64 = AtomicU64::new(1);
    NEXT_LOOP.fetch_add(1, Ordering::Relaxed)
}

/// N worker threads and the bounded queue that feeds them.
pub(crate) struct WorkerPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Set at shutdown so workers skip jobs still queued.
    stopping: Arc<AtomicBool>,
    /// Jobs in the queue not yet taken by a worker (the metrics' queue depth): raised by the
    /// submitting reactor, lowered by the worker that takes the job.
    queued: Arc<AtomicU64>,
}

impl WorkerPool {
    /// Starts `threads` workers fed by a queue of `queue` jobs.
    pub(crate) fn start(threads: usize, queue: usize) -> std::io::Result<WorkerPool> {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(queue);
        let mut pool = WorkerPool {
            jobs: Some(sender),
            threads: Vec::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            queued: Arc::new(AtomicU64::new(0)),
        };
        for number in 0..threads {
            let receiver = receiver.clone();
            let stopping = pool.stopping.clone();
            let queued = pool.queued.clone();
            let thread = std::thread::Builder::new()
                .name(format!("socketserver-worker-{number}"))
                .spawn(move || work(receiver, stopping, queued))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// The count of jobs queued and not yet taken, for the metrics.
    pub(crate) fn queue_depth(&self) -> Arc<AtomicU64> {
        self.queued.clone()
    }

    /// Queues a job without blocking.
    pub(crate) fn try_submit(&self, job: Job) -> Result<(), OffloadError> {
        let Some(jobs) = &self.jobs else {
            return Err(OffloadError::Unavailable);
        };
        // Raised before the send: a worker may take the job (and lower it) at once.
        self.queued.fetch_add(1, Ordering::Relaxed);
        let sent = jobs.try_send(job);
        if sent.is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(OffloadError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(OffloadError::Unavailable),
        }
    }

    /// Closes the queue, drops queued jobs, and joins the threads that have finished; threads
    /// still inside a long job are left to end on their own (they hold nothing of the server's).
    pub(crate) fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.jobs = None;
        for thread in self.threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop();
    }
}

fn work(jobs: Receiver<Job>, stopping: Arc<AtomicBool>, queued: Arc<AtomicU64>) {
    for job in jobs {
        queued.fetch_sub(1, Ordering::Relaxed);
        if stopping.load(Ordering::Acquire) {
            continue;
        }
        let Job {
            conn,
            tag,
            work,
            reply,
            submitted,
        } = job;
        let result = catch_unwind(AssertUnwindSafe(work)).map_err(|payload| JobFailed {
            message: panic_message(payload.as_ref()),
        });
        let latency = submitted.elapsed();
        // An error means that reactor is gone; the result has no one to go to.
        let _ = reply.send(Completion::Job(JobDone {
            conn,
            tag,
            result,
            latency,
        }));
    }
}
