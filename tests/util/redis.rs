//! A `redis-server` of a test's own, on a loopback port, for the backplane and deployment
//! tests (which are ignored where the program is missing).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{wait_for, TIMEOUT};

/// A `redis-server` of this test's own, on a loopback port, with its data in a fresh
/// directory (append-only file on, so a restart keeps the topics).
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

impl Redis {
    pub fn start(name: &str) -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "socketserver-backplane-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis data directory");
        let port = free_port();
        let mut redis = Redis {
            child: None,
            port,
            dir,
        };
        redis.run();
        redis
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub fn run(&mut self) {
        let child = Command::new(super::system_program("redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install Debian's redis-server)");
        self.child = Some(child);
        let addr = self.addr();
        wait_for("redis-server to answer PING", || ping(addr));
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The keys this server holds (`KEYS *`, fine for a test's few).
    pub fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("url");
        let mut connection = client
            .get_connection_with_timeout(TIMEOUT)
            .expect("connect to redis");
        redis::cmd("KEYS")
            .arg("*")
            .query(&mut connection)
            .expect("KEYS")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on now (the kernel's pick, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// True if a Redis server answers PING at `addr`.
pub fn ping(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
