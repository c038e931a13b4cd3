//! What TLS costs, against nginx with the same certificate, cipher suite and key exchange
//! (TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, an ECDSA P-256 certificate), one worker each.
//!
//! For each server it reports full and resumed handshakes per second and per second of server
//! CPU (each handshake followed by one request, so the session tickets are read), HTTPS
//! keep-alive requests per second and server CPU µs per request beside the same server's plain
//! HTTP, WSS echo CPU µs per message beside plain WebSocket (this crate only), and the memory an
//! idle TLS connection holds beside an idle plain one.
//!
//! ```text
//! cargo build --release
//! cargo bench --bench tls [-- --seconds 5 --idle 5000]
//! ```
//!
//! The servers run `taskset -c 0`; this process pins itself to CPU 1. nginx is left out (and
//! said so) when it is not installed. Bounded: every phase runs for `--seconds`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use socketserver::load::{LoadConfig, LoadProtocol};
use socketserver::tls::TlsConnector;

/// Client threads making handshakes (enough to keep one server core busy from one client
/// core, since each waits a round trip per handshake).
const HANDSHAKE_THREADS: usize = 4;

struct Options {
    seconds: f64,
    idle: usize,
}

fn options() -> Options {
    let mut options = Options {
        seconds: 5.0,
        idle: 5000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                options.seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(5.0)
            }
            "--idle" => options.idle = args.next().and_then(|v| v.parse().ok()).unwrap_or(5000),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

/// A CA and a server certificate for 127.0.0.1 and localhost (ECDSA P-256), as PEM files.
fn pki(dir: &Path) {
    std::fs::create_dir_all(dir).expect("PKI dir");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(DnType::CommonName, "Bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    std::fs::write(
        dir.join("ca.pem"),
        ca.self_signed(&ca_key).expect("CA").pem(),
    )
    .expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = server.signed_by(&key, &issuer).expect("sign");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("server.pem");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("server.key");
}

/// The one client configuration every measurement uses: TLS 1.3, one cipher suite, one group.
fn client_config(dir: &Path, resume: bool) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).expect("CA") {
        roots.add(cert.expect("CA cert")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

fn pinned(program: &str) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", "0", program]);
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server under test: its process and where it listens (HTTPS and plain HTTP).
struct Server {
    name: &'static str,
    processes: Vec<Child>,
    /// The process whose CPU and memory are measured.
    measured: u32,
    https: SocketAddr,
    http: SocketAddr,
    ws: Option<(SocketAddr, SocketAddr)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn socketserver(dir: &Path) -> Server {
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/socketserver");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let mut processes = Vec::new();
    let mut start = |protocol: &str, tls: bool| {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut command = pinned(binary);
        command.args([
            "serve",
            "--protocol",
            protocol,
            "--addr",
            &addr.to_string(),
            "--max-connections",
            "100000",
            "--idle-timeout",
            "0",
        ]);
        if tls {
            command
                .arg("--tls-cert")
                .arg(&cert)
                .arg("--tls-key")
                .arg(&key);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start target/release/socketserver (cargo build --release first)");
        wait_listening(addr);
        let pid = child.id();
        processes.push(child);
        (addr, pid)
    };
    let (https, measured) = start("http", true);
    let (http, _) = start("http", false);
    let (wss, _) = start("ws", true);
    let (ws, _) = start("ws", false);
    Server {
        name: "socketserver",
        measured,
        processes,
        https,
        http,
        ws: Some((wss, ws)),
    }
}

/// nginx with one process (`master_process off`: the process measured is the one serving),
/// the same certificate, TLS 1.3, a shared session cache and tickets; `None` if not installed.
fn nginx(dir: &Path) -> Option<Server> {
    if Command::new("nginx").arg("-v").output().is_err() {
        return None;
    }
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).expect("nginx prefix");
    let (https, http) = (free_port(), free_port());
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 100000;\n\
         pid nginx.pid;\nerror_log logs/error.log warn;\n\
         events {{ worker_connections 60000; }}\n\
         http {{\n access_log off;\n keepalive_requests 10000000;\n keepalive_timeout 300s;\n\
         client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fcgi;\n\
         uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
         ssl_protocols TLSv1.3;\n ssl_ecdh_curve X25519;\n\
         ssl_session_cache shared:TLS:10m;\n ssl_session_tickets on;\n\
         server {{\n  listen 127.0.0.1:{https} ssl backlog=4096;\n\
          ssl_certificate {cert};\n  ssl_certificate_key {key};\n\
          location / {{ default_type text/plain; return 200 \"Hello, World!\"; }}\n }}\n\
         server {{\n  listen 127.0.0.1:{http} backlog=4096;\n\
          location / {{ default_type text/plain; return 200 \"Hello, World!\"; }}\n }}\n}}\n",
        p = prefix.display(),
        cert = dir.join("server.pem").display(),
        key = dir.join("server.key").display(),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let child = pinned("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let https: SocketAddr = ([127, 0, 0, 1], https).into();
    wait_listening(https);
    Some(Server {
        name: "nginx",
        measured: child.id(),
        processes: vec![child],
        https,
        http: ([127, 0, 0, 1], http).into(),
        ws: None,
    })
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    socketserver::compare::process::Usage::of(pid).cpu_seconds
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Connects, finishes the handshake, sends one request and reads its answer.
fn handshake_and_request(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> bool {
    let Ok(socket) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = socket.set_nodelay(true);
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    let name = ServerName::try_from("localhost").expect("name");
    let Ok(connection) = rustls::ClientConnection::new(config.clone(), name) else {
        return false;
    };
    let mut stream = rustls::StreamOwned::new(connection, socket);
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

/// Handshakes (each with one request) per second, and per second of the server's CPU.
fn handshakes(server: &Server, config: &Arc<rustls::ClientConfig>, seconds: f64) -> (f64, f64) {
    // Warm the resumption cache (and the server) first.
    for _ in 0..50 {
        handshake_and_request(server.https, config);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(server.measured);
    let started = Instant::now();
    let threads: Vec<_> = (0..HANDSHAKE_THREADS)
        .map(|_| {
            let (stop, done, config, addr) =
                (stop.clone(), done.clone(), config.clone(), server.https);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if handshake_and_request(addr, &config) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.measured) - cpu_before;
    let count = done.load(Ordering::Relaxed) as f64;
    (count / elapsed, count / cpu.max(1e-9))
}

/// Keep-alive load: requests (or messages) per second and server CPU µs per request.
fn keep_alive(
    addr: SocketAddr,
    pid: u32,
    protocol: LoadProtocol,
    tls: Option<TlsConnector>,
    seconds: f64,
) -> (f64, f64) {
    let config = LoadConfig {
        addr,
        protocol,
        connections: 32,
        duration: Duration::from_secs_f64(seconds),
        warmup: Duration::from_millis(500),
        message_bytes: 64,
        tls,
        ..LoadConfig::default()
    };
    let mut cpu_start = 0.0;
    let mut cpu_end = 0.0;
    let report = socketserver::load::run_observed(&config, |phase| match phase {
        socketserver::load::Phase::Measuring => cpu_start = cpu_seconds(pid),
        socketserver::load::Phase::Draining => cpu_end = cpu_seconds(pid),
    })
    .expect("load");
    assert!(
        report.errors == 0,
        "load errors: {:?}",
        report.first_failure
    );
    let answered = report.rate * report.seconds;
    (report.rate, (cpu_end - cpu_start) * 1e6 / answered.max(1.0))
}

/// RSS per idle connection: `count` connections opened, each answered one keep-alive request
/// (so the server holds it for certain, TLS ones past their handshake), then left idle.
fn idle_bytes(
    addr: SocketAddr,
    pid: u32,
    count: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> f64 {
    fn one_request(stream: &mut impl ReadWrite) {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("idle request");
        let mut answer = Vec::new();
        let mut buffer = [0u8; 512];
        while !answer.ends_with(b"Hello, World!") {
            let read = stream.read(&mut buffer).expect("idle answer");
            assert!(read > 0, "closed before answering");
            answer.extend_from_slice(&buffer[..read]);
        }
    }
    let before = rss_bytes(pid);
    let mut held: Vec<Box<dyn std::any::Any>> = Vec::with_capacity(count);
    for _ in 0..count {
        let mut socket = TcpStream::connect(addr).expect("idle connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        match tls {
            None => {
                one_request(&mut socket);
                held.push(Box::new(socket));
            }
            Some(config) => {
                let name = ServerName::try_from("localhost").expect("name");
                let connection =
                    rustls::ClientConnection::new(config.clone(), name).expect("client");
                let mut stream = rustls::StreamOwned::new(connection, socket);
                one_request(&mut stream);
                held.push(Box::new(stream));
            }
        }
    }
    let after = rss_bytes(pid);
    drop(held);
    (after.saturating_sub(before)) as f64 / count as f64
}

/// A stream to send a request on and read its answer from.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn pin_self_to_cpu_1() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get live pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn main() {
    let options = options();
    pin_self_to_cpu_1();
    let _ = socketserver::net::raise_descriptor_limit();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("socketserver-tls-bench-{}", std::process::id()));
    pki(&dir);
    let full = client_config(&dir, false);
    let resumed = client_config(&dir, true);
    let connector = TlsConnector::from_config(full.clone());
    let mut servers = vec![socketserver(&dir)];
    match nginx(&dir) {
        Some(server) => servers.push(server),
        None => println!("nginx is not installed: measuring socketserver alone"),
    }
    println!(
        "TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, ECDSA P-256; servers on CPU 0, clients on CPU 1; {} s per phase\n",
        options.seconds
    );
    println!(
        "{:<13} {:>12} {:>14} {:>12} {:>14} {:>10} {:>9} {:>10} {:>9} {:>7}",
        "server",
        "full hs/s",
        "full hs/cpu-s",
        "resumed/s",
        "resumed/cpu-s",
        "https r/s",
        "µs/req",
        "http r/s",
        "µs/req",
        "+cpu"
    );
    for server in &servers {
        let (full_rate, full_per_cpu) = handshakes(server, &full, options.seconds);
        let (resumed_rate, resumed_per_cpu) = handshakes(server, &resumed, options.seconds);
        let (https_rate, https_us) = keep_alive(
            server.https,
            server.measured,
            LoadProtocol::Http,
            Some(connector.clone()),
            options.seconds,
        );
        // The plain server is another process for socketserver: measure that one's CPU.
        let http_pid = match server.name {
            "socketserver" => server.processes[1].id(),
            _ => server.measured,
        };
        let (http_rate, http_us) = keep_alive(
            server.http,
            http_pid,
            LoadProtocol::Http,
            None,
            options.seconds,
        );
        println!(
            "{:<13} {:>12.0} {:>14.0} {:>12.0} {:>14.0} {:>10.0} {:>9.2} {:>10.0} {:>9.2} {:>6.0}%",
            server.name,
            full_rate,
            full_per_cpu,
            resumed_rate,
            resumed_per_cpu,
            https_rate,
            https_us,
            http_rate,
            http_us,
            (https_us / http_us - 1.0) * 100.0
        );
    }
    println!();
    if let Some((wss, ws)) = servers[0].ws {
        let wss_pid = servers[0].processes[2].id();
        let ws_pid = servers[0].processes[3].id();
        let (wss_rate, wss_us) = keep_alive(
            wss,
            wss_pid,
            LoadProtocol::Ws,
            Some(connector.clone()),
            options.seconds,
        );
        let (ws_rate, ws_us) = keep_alive(ws, ws_pid, LoadProtocol::Ws, None, options.seconds);
        println!(
            "socketserver WebSocket echo, 64-byte messages: WSS {wss_rate:.0} msg/s at {wss_us:.2} CPU µs/msg; WS {ws_rate:.0} msg/s at {ws_us:.2} CPU µs/msg (+{:.0}%)",
            (wss_us / ws_us - 1.0) * 100.0
        );
    }
    println!(
        "\nmemory per idle connection ({} connections):",
        options.idle
    );
    for server in &servers {
        let http_pid = match server.name {
            "socketserver" => server.processes[1].id(),
            _ => server.measured,
        };
        // Plain first: nginx serves both from one process, whose heap keeps what the TLS
        // connections used once they are gone.
        let plain = idle_bytes(server.http, http_pid, options.idle, None);
        let tls = idle_bytes(server.https, server.measured, options.idle, Some(&full));
        println!(
            "  {:<13} TLS {:>7.0} B   plain TCP {:>6.0} B",
            server.name, tls, plain
        );
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}
