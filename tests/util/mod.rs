//! Helpers shared by the integration tests: start a server, connect with timeouts, wait for a
//! condition with a deadline. Every blocking read or wait here ends by itself.

#![allow(dead_code)] // each test file uses a different subset

pub mod browser;
pub mod http;
pub mod pubsub;
pub mod redis;
#[cfg(feature = "tls")]
pub mod tls;
pub mod ws;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socketserver::protocol::Protocol;
use socketserver::{Config, RunningServer, Server};

/// Where a program of the system is: on `PATH`, or in the `sbin` directories a user's `PATH`
/// may leave out (Debian puts `haproxy` and `nginx` in `/usr/sbin`); the bare name if nowhere,
/// so that spawning it fails with the name in the error.
pub fn system_program(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| name.into())
}

/// How long any single helper waits before failing the test.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A config for tests: no signal handlers (the test process owns its signals), two workers.
pub fn test_config() -> Config {
    Config {
        handle_signals: false,
        workers: 2,
        ..Config::default()
    }
}

/// Binds 127.0.0.1:0 with `config`.
pub fn bind(config: Config) -> Server {
    Server::bind_with("127.0.0.1:0", config).expect("bind 127.0.0.1:0")
}

/// Starts a server with the test config on its own thread.
pub fn start<P, F>(factory: F) -> RunningServer
where
    P: Protocol,
    F: FnMut() -> P + Send + 'static,
{
    start_with(test_config(), factory)
}

/// Starts a server with `config` on its own thread.
pub fn start_with<P, F>(config: Config, factory: F) -> RunningServer
where
    P: Protocol,
    F: FnMut() -> P + Send + 'static,
{
    bind(config).spawn(factory).expect("spawn server")
}

/// Which driver serves a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Reactor,
    Reactors,
    Threads,
    Pool,
}

/// Every driver a server can run in-process.
pub const DRIVERS: [Driver; 4] = [
    Driver::Reactor,
    Driver::Reactors,
    Driver::Threads,
    Driver::Pool,
];

/// Starts a server with `config` on `driver` (two loops for `Reactors`, with SO_REUSEPORT).
pub fn spawn_on<P, F>(driver: Driver, config: Config, factory: F) -> RunningServer
where
    P: Protocol + Send,
    F: FnMut() -> P + Clone + Send + 'static,
{
    spawn_bound(driver, bind_for(driver, config), factory)
}

/// Binds 127.0.0.1:0 with `config` as `driver` needs (SO_REUSEPORT for `Reactors`).
pub fn bind_for(driver: Driver, config: Config) -> Server {
    bind(Config {
        reuse_port: driver == Driver::Reactors,
        ..config
    })
}

/// Starts `server` (bound by [`bind_for`]) on `driver` (two loops for `Reactors`).
pub fn spawn_bound<P, F>(driver: Driver, server: Server, factory: F) -> RunningServer
where
    P: Protocol + Send,
    F: FnMut() -> P + Clone + Send + 'static,
{
    use socketserver::Model;
    match driver {
        Driver::Reactor => server.spawn(factory),
        Driver::Reactors => server.spawn_reactors(2, factory),
        Driver::Threads => server.spawn_blocking(
            Model::ThreadPerConnection {
                block_on_close: false,
            },
            factory,
        ),
        Driver::Pool => server.spawn_blocking(Model::ThreadPool, factory),
    }
    .expect("spawn")
}

/// Connects with a receive buffer of a few kilobytes (set before connecting, so the window is
/// small from the start): a server writing to a client that does not read backs up after a few
/// kilobytes rather than the megabytes loopback buffers take.
pub fn connect_with_small_window(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(8 * 1024).expect("SO_RCVBUF");
    socket
        .connect_timeout(&addr.into(), TIMEOUT)
        .expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
}

/// Connects with read and write timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("set write timeout");
    stream.set_nodelay(true).expect("set nodelay");
    stream
}

/// Reads exactly `len` bytes (fails the test on timeout or early end of stream).
pub fn read_exact(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buffer = vec![0; len];
    stream.read_exact(&mut buffer).expect("read_exact");
    buffer
}

/// Writes `message` and reads back as many bytes.
pub fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("write");
    read_exact(stream, message.len())
}

/// Reads until end of stream; returns what came, or the error that ended it early.
pub fn read_to_end(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    Ok(out)
}

/// True when the server ended the connection: a read returns end of stream or an error that
/// means the connection is gone (reset, aborted) — not a timeout. Drains bytes still in flight.
pub fn is_closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Polls `condition` until it holds, failing the test after [`TIMEOUT`]. This waits for a state
/// to be reached; it is not a delay standing in for one.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True if no socket listens on `addr`: a listener of our own can be bound there (with
/// SO_REUSEADDR, as servers bind, so connections lingering in TIME_WAIT do not count). It
/// probes by binding, not connecting: a connection would land in whatever server of another
/// test has since been given the port, and upset its counts.
pub fn nobody_listens_on(addr: SocketAddr) -> bool {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).is_ok() && socket.listen(1).is_ok()
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted echo cannot pass by accident.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Aborts the connection with a reset (SO_LINGER 0 then close) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let socket = socket2::Socket::from(stream);
    socket
        .set_linger(Some(Duration::ZERO))
        .expect("set linger 0");
    drop(socket);
}

/// A line protocol for worker tests. `wait <n>` offloads a job that blocks until the test opens
/// the gate once, then answers `done <n>`; `panic` offloads a job that panics (answered
/// `failed`); a full queue is answered `busy`; any other line is echoed at once.
pub struct GatedJobs {
    pub gate: crossbeam_channel::Receiver<()>,
}

impl Protocol for GatedJobs {
    fn on_read(&mut self, input: &[u8], ctx: &mut socketserver::protocol::Context<'_>) -> usize {
        let mut consumed = 0;
        while let Some(end) = input[consumed..].iter().position(|&b| b == b'\n') {
            let line = &input[consumed..consumed + end + 1];
            consumed += end + 1;
            let text = String::from_utf8_lossy(line).trim_end().to_string();
            let outcome = if let Some(name) = text.strip_prefix("wait ") {
                let gate = self.gate.clone();
                let answer = format!("done {name}\n");
                ctx.offload(0, move || {
                    let _ = gate.recv_timeout(TIMEOUT);
                    answer
                })
            } else if text == "panic" {
                ctx.offload(0, || -> String { panic!("job asked to panic") })
            } else {
                ctx.write(line);
                Ok(())
            };
            if outcome.is_err() {
                ctx.write(b"busy\n");
            }
        }
        consumed
    }

    fn on_job_done(
        &mut self,
        _tag: u64,
        result: socketserver::protocol::JobResult,
        ctx: &mut socketserver::protocol::Context<'_>,
    ) {
        match result.map(|output| output.downcast::<String>()) {
            Ok(Ok(answer)) => ctx.write(answer.as_bytes()),
            _ => ctx.write(b"failed\n"),
        }
    }
}

/// Reads one `\n`-terminated line (byte by byte: tests only).
pub fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(error) => panic!(
                "read_line: {error} after {:?}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    String::from_utf8(line).expect("utf-8 line")
}

/// The `socketserver` binary started as a child process, with its bound address.
pub struct Cli {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The lines the child printed after its first, read as they come (so that it never
    /// writes to a closed pipe).
    pub lines: crossbeam_channel::Receiver<String>,
}

impl Cli {
    /// Starts `socketserver ARGS` (with `--addr 127.0.0.1:0`) and waits for its first line,
    /// which must be exactly `listening on <addr>` (`udp:<addr>` for a UDP server).
    /// `max_files` lowers RLIMIT_NOFILE in the child only.
    pub fn start(args: &[&str], max_files: Option<u64>) -> Cli {
        Cli::start_full(args, max_files, &[])
    }

    /// Like [`Cli::start`], with `env` added to the child's environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Cli {
        Cli::start_full(args, None, env)
    }

    fn start_full(args: &[&str], max_files: Option<u64>, env: &[(&str, &str)]) -> Cli {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--addr", "127.0.0.1:0"]);
        let (child, listening, lines) = Cli::spawn_reading(&all, max_files, env);
        let addr = listening
            .strip_prefix("udp:")
            .unwrap_or(&listening)
            .parse()
            .unwrap_or_else(|_| panic!("not an address: {listening:?}"));
        Cli { child, addr, lines }
    }

    /// The next line the child prints after its first (waits at most [`TIMEOUT`]).
    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .expect("the server printed another line")
    }

    /// The address in the next line the child prints, which must be `prefix` and an address
    /// (`agent check at 127.0.0.1:4000`, say).
    pub fn next_address(&self, prefix: &str) -> SocketAddr {
        let line = self.next_line();
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not an address: {line:?}"))
    }

    /// Starts `socketserver ARGS` as given and returns the child and what its first line says
    /// after `listening on `.
    pub fn spawn(args: &[&str], max_files: Option<u64>) -> (std::process::Child, String) {
        let (child, listening, _later_lines) = Cli::spawn_reading(args, max_files, &[]);
        (child, listening)
    }

    /// Like [`Cli::spawn`], also handing over the lines printed after the first.
    fn spawn_reading(
        args: &[&str],
        max_files: Option<u64>,
        env: &[(&str, &str)],
    ) -> (
        std::process::Child,
        String,
        crossbeam_channel::Receiver<String>,
    ) {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};

        let mut command = Command::new(env!("CARGO_BIN_EXE_socketserver"));
        command.args(args);
        command.envs(env.iter().copied());
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(limit) = max_files {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("spawn socketserver");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            // Every line, until the child closes its stdout (or the receiver is gone).
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(format!("{line}\n")).is_err() {
                    break;
                }
            }
        });
        let first = receiver
            .recv_timeout(TIMEOUT)
            .expect("the server printed its first line");
        let listening = first
            .strip_prefix("listening on ")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        (child, listening, receiver)
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status, stderr)
    }

    /// CPU time (user + system) the child has used so far.
    pub fn cpu_time(&self) -> Duration {
        let usage = socketserver::compare::process::Usage::of(self.child.id());
        Duration::from_secs_f64(usage.cpu_seconds)
    }

    /// Open descriptors of the child.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |dir| dir.count())
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the command-line tool to completion with `args`, killing it (and failing the test) if
/// it takes longer than `timeout`; returns its exit status, stdout and stderr.
pub fn run_cli(args: &[&str], timeout: Duration) -> (std::process::ExitStatus, String, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_socketserver"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socketserver");
    // Read both pipes on their own threads so a full pipe never stalls the child.
    let pipe_reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = pipe_reader(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = pipe_reader(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("socketserver {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    (status, stdout, stderr)
}

/// The live (not zombie) children of `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the parenthesised command name: state, then the parent's pid.
        let Some(after_name) = stat.rfind(')').map(|end| &stat[end + 2..]) else {
            continue;
        };
        let mut fields = after_name.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state != Some("Z") && ppid == Some(parent.to_string().as_str()) {
            children.push(pid);
        }
    }
    children.sort_unstable();
    children
}

/// Waits until `supervisor` has exactly `count` live children (prefork workers); returns them.
pub fn wait_for_workers(supervisor: &std::process::Child, count: usize) -> Vec<u32> {
    let mut workers = Vec::new();
    wait_for("the workers to be running", || {
        workers = children_of(supervisor.id());
        workers.len() == count
    });
    workers
}

/// True while process `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rfind(") Z").is_none())
}
