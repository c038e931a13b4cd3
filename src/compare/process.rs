//! The server under test as a child process: started on its own cores, sampled through
//! `/proc` (CPU time, resident memory, threads, summed over the process and its children, so
//! a prefork supervisor counts with its workers), and stopped by its PID.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The CPUs this process may run on, in order.
pub fn available_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a live, writable cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return vec![0];
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, so CPU_ISSET stays inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread (and the threads and processes it starts afterwards) to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&cpu| cpu < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What the server's processes have used, summed over the server and its children.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time, in seconds (10 ms resolution on most kernels), of the server
    /// and its live children, and of every child that has exited and been waited for (a
    /// prefork worker that died and was replaced keeps counting).
    pub cpu_seconds: f64,
    /// Resident memory, in bytes (shared pages count once per process).
    pub rss_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Processes.
    pub processes: u64,
}

impl Usage {
    /// Samples process `pid` and its children (one level: a supervisor's workers).
    pub fn of(pid: u32) -> Usage {
        let mut usage = Usage::default();
        for pid in std::iter::once(pid).chain(children(pid)) {
            if let Some(one) = process_usage(pid) {
                usage.cpu_seconds += one.cpu_seconds;
                usage.rss_bytes += one.rss_bytes;
                usage.threads += one.threads;
                usage.processes += 1;
            }
        }
        usage
    }
}

/// The fields after the parenthesised command name of `/proc/PID/stat` (the name may hold
/// spaces and parentheses, so split after the last `)`).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    Some(after_name.split_whitespace().map(String::from).collect())
}

fn process_usage(pid: u32) -> Option<Usage> {
    let fields = stat_fields(pid)?;
    // Fields 14 to 17 (utime, stime, and cutime, cstime: the time of children exited and
    // waited for), 20 (threads) and 24 (rss pages) of stat(5); the list here starts at field 3.
    let number = |index: usize| fields.get(index)?.parse::<u64>().ok();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(Usage {
        cpu_seconds: (number(11)? + number(12)? + number(13)? + number(14)?) as f64
            / ticks_per_second,
        rss_bytes: number(21)? * page_bytes,
        threads: number(17)?,
        processes: 1,
    })
}

/// Processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            // Field 4 of stat(5), the parent's pid, is index 1 here.
            stat_fields(candidate)
                .and_then(|fields| fields.get(1)?.parse::<u32>().ok())
                .is_some_and(|parent| parent == pid)
        })
        .collect()
}

/// The servers started and not yet stopped, so that a signal to this process can stop them
/// before it exits ([`stop_all`]).
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<u32>> {
    // A list of pids is whole after every push or retain: a poisoned lock still holds one.
    RUNNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stops every server started by [`ServerProcess::start`] and not yet stopped: SIGTERM, a wait
/// of at most the stop timeout for each to exit (reaping it), then SIGKILL. For a signal
/// handler's thread, just before the process exits (the [`ServerProcess`] values still held
/// elsewhere are then never used again).
pub fn stop_all() {
    let pids: Vec<u32> = std::mem::take(&mut *running());
    for &pid in &pids {
        // SAFETY: kill(2) on a child of this process that has not been reaped: its pid is
        // removed from the list before the owner waits for it, so it cannot have been reused.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for pid in pids {
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child, WNOHANG: returns at once.
            let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if reaped != 0 {
                break; // exited and reaped (or already reaped by its owner)
            }
            if Instant::now() >= deadline {
                // SAFETY: as above; the child has not been reaped.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                // SAFETY: waitpid on our own child, blocking until SIGKILL has taken it.
                unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
                break;
            }
            // No exit notification to wait on from this thread: poll the child.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A server started by [`ServerProcess::start`]; dropping it stops it.
pub struct ServerProcess {
    child: Child,
    /// What the server printed after `listening on `.
    pub listen_addr: String,
}

impl ServerProcess {
    /// Starts `program` with `args` on `cpus` and waits (bounded) for its `listening on` line.
    pub fn start(program: &Path, args: &[String], cpus: &[usize]) -> Result<ServerProcess> {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let cpus = cpus.to_vec();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: sched_setaffinity, prctl and getppid are async-signal-safe, and the closure
        // allocates nothing (the CPU list was built before the fork).
        unsafe {
            command.pre_exec(move || {
                pin_current_thread(&cpus)?;
                stop_with_parent(parent)
            });
        }
        let mut child = command
            .spawn()
            .map_err(|error| Error::io("starting the server", error))?;
        running().push(child.id());
        let Some(stdout) = child.stdout.take() else {
            return Err(Error::Tool("the server's stdout is not piped".into()));
        };
        // The first line is read on a helper thread so that a server that never prints it
        // costs START_TIMEOUT, not a hang.
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = sender.send(lines.next());
            // Keep reading so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = ServerProcess {
            child,
            listen_addr: String::new(),
        };
        match receiver.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => match line.strip_prefix("listening on ") {
                Some(addr) => server.listen_addr = addr.to_string(),
                None => {
                    return Err(Error::Tool(format!(
                        "the server printed {line:?} instead of its address"
                    )))
                }
            },
            Ok(_) => {
                let status = server.wait_for_exit(STOP_TIMEOUT);
                return Err(Error::Tool(format!(
                    "the server exited before listening ({})",
                    describe(status)
                )));
            }
            Err(_) => {
                return Err(Error::Tool(format!(
                    "the server did not listen within {} s",
                    START_TIMEOUT.as_secs()
                )))
            }
        }
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server (with its children) has used so far.
    pub fn usage(&self) -> Usage {
        Usage::of(self.pid())
    }

    /// `Some(status)` if the server has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits for a graceful exit; kills the server if it takes longer than
    /// the stop timeout. Returns how it ended.
    pub fn stop(mut self) -> String {
        let status = self.terminate();
        describe(status)
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let pid = self.child.id();
        running().retain(|&running| running != pid);
        if let Some(status) = self.exited() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped (try_wait above).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.wait_for_exit(STOP_TIMEOUT);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // No exit notification to wait on without a signal handler: poll the child.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// In a child between fork and exec: asks the kernel for SIGTERM when the thread that started
/// it ends (the parent dies, however it dies), so that a killed `compare` leaves no server
/// running. Linux only; elsewhere the signal handler's [`stop_all`] is the only guard.
fn stop_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl and getppid are async-signal-safe and touch only this process.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have died before the request took effect.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return Err(std::io::Error::other("the parent exited"));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
    Ok(())
}

/// How a server ended, in words.
pub fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "killed after not exiting on SIGTERM".into(),
        Some(status) => match (status.code(), status.signal()) {
            (Some(0), _) => "exited cleanly".into(),
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => format!("{status}"),
        },
    }
}
