//! Pre-forked worker processes: a supervisor and N workers sharing one listening socket — the
//! counterpart of Python socketserver's `ForkingMixIn`, shaped like PHP-FPM's static process
//! manager.
//!
//! The supervisor binds the socket, then starts each worker by running a command (normally this
//! same program again) with the socket left open across `exec` and its descriptor number in the
//! environment variable [`LISTEN_FD_ENV`]. A worker calls [`inherited`] to build its server on
//! that socket and serves it with the ordinary reactor. All workers wait on the one socket, so
//! the kernel hands each new connection (or datagram) to one of them; there is no handoff and
//! no per-worker port.
//!
//! * **Isolation.** A worker is a process: a crash (a segfault, an abort, SIGKILL) loses only
//!   the connections that worker held. The supervisor sees it exit and starts a replacement —
//!   at once if it had run a while, after a growing delay (100 ms doubling to 5 s) if it keeps
//!   dying young, so a worker that cannot start does not become a fork loop.
//! * **Shutdown.** SIGINT or SIGTERM to the supervisor (or [`SupervisorHandle::shutdown`]) is
//!   forwarded as SIGTERM to every worker, each of which drains gracefully; a worker still alive
//!   `shutdown_timeout` plus one second later is killed.
//! * **Orphans.** On Linux each worker asks the kernel for SIGTERM when its supervisor dies
//!   (`PR_SET_PDEATHSIG`), so killing the supervisor outright does not leave workers holding the
//!   port. (The signal follows the *thread* that started the worker: run the supervisor on a
//!   thread that lives as long as it does.)
//!
//! * **One connection cap.** [`Config::max_connections`] holds for the server, not per worker:
//!   the workers count their connections in a table shared through the supervisor (its
//!   descriptor is named in [`CONNECTIONS_FD_ENV`], the worker's slot in [`WORKER_SLOT_ENV`]),
//!   and the supervisor gives back the places of a worker that died. Workers admitting at the
//!   same instant may pass the cap by one connection per other worker.
//!
//! Not provided: counters across processes (each worker keeps its own), or passing live
//! connections between workers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::admission::{Admission, SharedTable};
use crate::config::Config;
use crate::error::{interrupted, Error, Result};
use crate::lifecycle::ShutdownSignal;
use crate::net::{self, Adopted};
use crate::reactor::poll_with_waker;
use crate::reactor::token::SIGNALS;
use crate::server::{DatagramServer, Server};

/// The environment variable through which a worker learns its inherited socket's descriptor.
pub const LISTEN_FD_ENV: &str = "SOCKETSERVER_LISTEN_FD";
/// The environment variable naming the descriptor of the table in which the workers count
/// their connections together, so that `max_connections` holds for the whole server.
pub const CONNECTIONS_FD_ENV: &str = "SOCKETSERVER_CONNECTIONS_FD";
/// The environment variable giving a worker its slot (0-based) in that table.
pub const WORKER_SLOT_ENV: &str = "SOCKETSERVER_WORKER_SLOT";

/// A worker that lived at least this long is restarted at once when it dies.
const STABLE_AFTER: Duration = Duration::from_secs(1);
/// First delay before restarting a worker that died young; doubled each time it does again.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between restarts of a worker that keeps dying young.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// How much longer than its own shutdown timeout a worker gets before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// A server built on the socket inherited from a supervisor.
pub enum Inherited {
    /// A TCP or Unix stream listener.
    Stream(Server),
    /// A UDP or Unix datagram socket.
    Datagram(DatagramServer),
}

/// Set once the inherited descriptor has been taken, so it is never owned twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// If this process was started by a [`Supervisor`], the server on the socket it inherited,
/// configured with `config`; `None` if [`LISTEN_FD_ENV`] is not set. The descriptor is taken
/// once: a second call answers `None`. Settings applied at bind time (the backlog,
/// SO_REUSEPORT) are the supervisor's.
pub fn inherited(config: Config) -> Result<Option<Inherited>> {
    let Some(value) = std::env::var_os(LISTEN_FD_ENV) else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    config.validate()?;
    let fd: RawFd = value
        .to_str()
        .and_then(|text| text.parse().ok())
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| Error::Config(format!("{LISTEN_FD_ENV} is not a descriptor number")))?;
    // SAFETY: the supervisor left this descriptor open for this process alone, and `TAKEN`
    // makes sure it is wrapped at most once. If it is not a socket, `adopt` fails and the
    // wrapper closes it, which is right for a descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let adopted =
        net::adopt(fd).map_err(|error| Error::io("adopting the inherited socket", error))?;
    let admission = inherited_admission(config.max_connections)?;
    let server = match adopted {
        Adopted::Listener(listener) => {
            let server = Server::from_listener(listener, config)?;
            Inherited::Stream(match admission {
                Some(admission) => server.with_admission(admission),
                None => server,
            })
        }
        Adopted::Datagram(socket) => {
            Inherited::Datagram(DatagramServer::from_socket(socket, config)?)
        }
    };
    Ok(Some(server))
}

/// The shared connection count the supervisor handed over, if it did (a supervisor of another
/// build may not have).
fn inherited_admission(max: usize) -> Result<Option<Admission>> {
    let (Some(fd), Some(slot)) = (
        std::env::var_os(CONNECTIONS_FD_ENV),
        std::env::var_os(WORKER_SLOT_ENV),
    ) else {
        return Ok(None);
    };
    let number = |value: &std::ffi::OsStr, name: &str| {
        value
            .to_str()
            .and_then(|text| text.parse::<usize>().ok())
            .ok_or_else(|| Error::Config(format!("{name} is not a number")))
    };
    let (fd, slot) = (
        number(&fd, CONNECTIONS_FD_ENV)?,
        number(&slot, WORKER_SLOT_ENV)?,
    );
    let fd = RawFd::try_from(fd)
        .map_err(|_| Error::Config(format!("{CONNECTIONS_FD_ENV} is not a descriptor")))?;
    // SAFETY: like the listening socket, the supervisor left this descriptor open for this
    // process alone, and the caller's `TAKEN` guard makes sure it is wrapped at most once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let table = SharedTable::open(fd)
        .map_err(|error| Error::io("mapping the shared connection table", error))?;
    let admission = Admission::shared(max, table, slot)
        .map_err(|error| Error::io("taking a slot of the connection table", error))?;
    Ok(Some(admission))
}

/// Runs and watches the worker processes; see the [module documentation](self).
pub struct Supervisor {
    processes: usize,
    shutdown_timeout: Duration,
    handle_signals: bool,
    /// Pass SIGHUP on to the workers.
    forward_sighup: bool,
    poll: Poll,
    shutdown: Arc<ShutdownSignal>,
    pids: Arc<Mutex<Vec<u32>>>,
}

/// Controls a running [`Supervisor`] from another thread.
#[derive(Clone)]
pub struct SupervisorHandle {
    shutdown: Arc<ShutdownSignal>,
    pids: Arc<Mutex<Vec<u32>>>,
}

/// One worker slot: the process in it now, or when the next one starts.
struct Slot {
    child: Option<Child>,
    started: Instant,
    /// When to start a replacement (set while the slot is empty).
    restart_at: Option<Instant>,
    /// The delay before the next restart if this worker also dies young.
    delay: Duration,
}

impl Slot {
    /// The delay before restarting a worker that failed young; doubles the next one.
    fn back_off(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_RESTART_DELAY);
        delay
    }
}

impl Supervisor {
    /// A supervisor for `processes` workers (1..=1024), forwarding SIGINT/SIGTERM, giving workers
    /// [`Config::shutdown_timeout`]'s default to drain.
    pub fn new(processes: usize) -> Result<Supervisor> {
        if !(1..=1024).contains(&processes) {
            return Err(Error::Config(format!(
                "processes {processes} is outside 1..=1024"
            )));
        }
        let (poll, waker) = poll_with_waker()?;
        Ok(Supervisor {
            processes,
            shutdown_timeout: Config::default().shutdown_timeout,
            handle_signals: true,
            forward_sighup: false,
            poll,
            shutdown: Arc::new(ShutdownSignal::new(waker)),
            pids: Arc::default(),
        })
    }

    /// How long workers get to drain at shutdown (they should be configured the same); after
    /// this plus a second, a worker still running is killed.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Whether SIGINT/SIGTERM to this process shut the workers down (default true).
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.handle_signals = handle;
        self
    }

    /// Whether SIGHUP to this process is passed on to every worker (default false: a worker
    /// that does not handle SIGHUP would die of it). Workers that reload their TLS
    /// configuration on SIGHUP want it.
    pub fn forward_sighup(mut self, forward: bool) -> Self {
        self.forward_sighup = forward;
        self
    }

    /// A handle for stopping the supervisor and listing its workers from another thread.
    pub fn handle(&self) -> SupervisorHandle {
        SupervisorHandle {
            shutdown: self.shutdown.clone(),
            pids: self.pids.clone(),
        }
    }

    /// Starts the workers on `socket`, each from `command(index)`, then keeps them running until
    /// shutdown. The commands get [`LISTEN_FD_ENV`] set and standard input closed; the rest of
    /// their environment and output is theirs. Fails at once if the first workers cannot start.
    pub fn run(
        mut self,
        socket: &impl AsFd,
        mut command: impl FnMut(usize) -> Command,
    ) -> Result<()> {
        let fd = socket.as_fd().as_raw_fd();
        let mut wanted = vec![SIGCHLD];
        if self.handle_signals {
            wanted.extend([SIGINT, SIGTERM]);
        }
        if self.forward_sighup {
            wanted.push(SIGHUP);
        }
        let mut signals =
            Signals::new(wanted).map_err(|error| Error::io("installing signal handlers", error))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|error| Error::io("registering signals", error))?;
        let table = SharedTable::create(self.processes)
            .map_err(|error| Error::io("creating the shared connection table", error))?;
        let inherit = Inheritance {
            listener: fd,
            table: &table,
            ignore_hangup: self.forward_sighup,
        };
        let mut slots = Vec::with_capacity(self.processes);
        for index in 0..self.processes {
            let started = Instant::now();
            let child = start_worker(&mut command(index), &inherit, index)
                .map_err(|error| Error::io(format!("starting worker {index}"), error));
            match child {
                Ok(child) => {
                    log::info!("worker {index} started (pid {})", child.id());
                    slots.push(Slot {
                        child: Some(child),
                        started,
                        restart_at: None,
                        delay: FIRST_RESTART_DELAY,
                    })
                }
                Err(error) => {
                    stop_all(&mut slots);
                    return Err(error);
                }
            }
        }
        self.publish_pids(&slots);
        let mut events = Events::with_capacity(8);
        let mut deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let wake_at = slots
                .iter()
                .filter_map(|slot| slot.restart_at)
                .chain(deadline)
                .min();
            let timeout = wake_at.map(|at| at.saturating_duration_since(now));
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if !interrupted(&error) {
                    stop_all(&mut slots);
                    return Err(Error::io("polling", error));
                }
            }
            let mut stop_requested = self.shutdown.is_requested();
            for signal in signals.pending() {
                match signal {
                    SIGCHLD => {}
                    SIGHUP => {
                        log::info!("SIGHUP: passing it on to every worker");
                        for child in slots.iter().filter_map(|slot| slot.child.as_ref()) {
                            signal_worker(child, libc::SIGHUP);
                        }
                    }
                    _ => stop_requested = true,
                }
            }
            let now = Instant::now();
            reap(&mut slots, &table, now, deadline.is_none());
            if stop_requested && deadline.is_none() {
                log::info!("shutting down: asking every worker to drain");
                deadline = Some(now + self.shutdown_timeout + KILL_GRACE);
                for slot in &mut slots {
                    slot.restart_at = None;
                    if let Some(child) = &slot.child {
                        signal_worker(child, libc::SIGTERM);
                    }
                }
            }
            match deadline {
                Some(_) if slots.iter().all(|slot| slot.child.is_none()) => break,
                Some(at) if now >= at => {
                    log::warn!("workers still running at the shutdown deadline: killing them");
                    stop_all(&mut slots);
                    break;
                }
                Some(_) => {}
                None => restart_due(&mut slots, &mut command, &inherit, now),
            }
            self.publish_pids(&slots);
        }
        self.publish_pids(&slots);
        log::debug!("supervisor stopped");
        Ok(())
    }

    fn publish_pids(&self, slots: &[Slot]) {
        let pids = slots
            .iter()
            .filter_map(|slot| slot.child.as_ref().map(Child::id))
            .collect();
        *lock(&self.pids) = pids;
    }
}

impl SupervisorHandle {
    /// Starts the shutdown: every worker is asked to drain; returns at once.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// The process ids of the workers running now.
    pub fn worker_pids(&self) -> Vec<u32> {
        lock(&self.pids).clone()
    }
}

fn lock(pids: &Mutex<Vec<u32>>) -> std::sync::MutexGuard<'_, Vec<u32>> {
    // The list is replaced whole under the lock; a poisoned lock still holds a whole list.
    pids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What every worker inherits: the listening socket and the shared connection table.
struct Inheritance<'a> {
    listener: RawFd,
    table: &'a SharedTable,
    /// Start workers with SIGHUP ignored: one that the supervisor passes on while a worker is
    /// still starting (before it installs its own handler, which replaces the ignoring) must
    /// not kill it, as SIGHUP's default action would.
    ignore_hangup: bool,
}

/// Starts worker `slot` with the inherited descriptors left open across exec and named in its
/// environment.
fn start_worker(
    command: &mut Command,
    inherit: &Inheritance<'_>,
    slot: usize,
) -> io::Result<Child> {
    // SAFETY: `getpid` has no preconditions.
    let supervisor = unsafe { libc::getpid() };
    let (listener, table) = (inherit.listener, inherit.table.file().as_raw_fd());
    let ignore_hangup = inherit.ignore_hangup;
    command
        .env(LISTEN_FD_ENV, listener.to_string())
        .env(CONNECTIONS_FD_ENV, table.to_string())
        .env(WORKER_SLOT_ENV, slot.to_string())
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec, and calls only fcntl, prctl,
    // signal and getppid, which are async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // Both were opened close-on-exec; keep them open for this one child.
            for fd in [listener, table] {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // An ignored signal stays ignored across exec (a handled one does not).
            if ignore_hangup && libc::signal(libc::SIGHUP, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The supervisor may have died before the request took effect.
                if libc::getppid() != supervisor {
                    return Err(io::Error::other("the supervisor exited"));
                }
            }
            Ok(())
        })
    };
    #[cfg(not(target_os = "linux"))]
    let _ = supervisor;
    command.spawn()
}

/// Collects workers that exited (giving back their places in the connection table: the kernel
/// closed their connections); if `restart`, schedules their replacements.
fn reap(slots: &mut [Slot], table: &SharedTable, now: Instant, restart: bool) {
    for (index, slot) in slots.iter_mut().enumerate() {
        let Some(child) = &mut slot.child else {
            continue;
        };
        let status = match child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => continue,
            Err(error) => {
                log::warn!("waiting for worker {index}: {error}");
                continue;
            }
        };
        let pid = child.id();
        slot.child = None;
        table.forget(index);
        if !restart {
            log::debug!("worker {index} (pid {pid}) exited: {status}");
            continue;
        }
        let delay = if now.duration_since(slot.started) >= STABLE_AFTER {
            slot.delay = FIRST_RESTART_DELAY;
            Duration::ZERO
        } else {
            slot.back_off()
        };
        log::warn!("worker {index} (pid {pid}) exited ({status}); restarting in {delay:?}");
        slot.restart_at = Some(now + delay);
    }
}

/// Starts the replacements that are due.
fn restart_due(
    slots: &mut [Slot],
    command: &mut impl FnMut(usize) -> Command,
    inherit: &Inheritance<'_>,
    now: Instant,
) {
    for (index, slot) in slots.iter_mut().enumerate() {
        if slot.restart_at.is_none_or(|at| at > now) {
            continue;
        }
        slot.started = now;
        match start_worker(&mut command(index), inherit, index) {
            Ok(child) => {
                log::info!("worker {index} started (pid {})", child.id());
                slot.child = Some(child);
                slot.restart_at = None;
            }
            Err(error) => {
                log::error!("starting worker {index}: {error}");
                slot.restart_at = Some(now + slot.back_off());
            }
        }
    }
}

fn signal_worker(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: `pid` is a child not yet waited for, so it cannot have been reused.
    unsafe { libc::kill(pid, signal) };
}

/// Kills and waits for every worker still running.
fn stop_all(slots: &mut [Slot]) {
    for slot in slots.iter_mut() {
        slot.restart_at = None;
        if let Some(mut child) = slot.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
