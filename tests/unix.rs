//! Unix-domain stream sockets: every model serves them; the socket file is removed on close; a
//! stale file is replaced at bind, a live one or a non-socket is refused.

mod util;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use socketserver::net::ListenAddr;
use socketserver::protocol::{Echo, Line};
use socketserver::{Config, Model, RunningServer, Server};
use util::*;

/// A fresh socket path for one test, in the system's temporary directory.
fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "socketserver-test-{}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

fn connect_unix(path: &std::path::Path) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect to the unix socket");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
}

fn unix_round_trip(stream: &mut UnixStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("write");
    let mut answer = vec![0; message.len()];
    stream.read_exact(&mut answer).expect("read");
    answer
}

fn start_unix(path: &std::path::Path, model: Option<Model>) -> RunningServer {
    let config = Config {
        pool_threads: 4,
        ..test_config()
    };
    let server = Server::bind_unix_with(path, config).expect("bind unix");
    assert_eq!(server.listen_addr(), &ListenAddr::Unix(path.to_path_buf()));
    match model {
        None => server.spawn(Line::default),
        Some(model) => server.spawn_blocking(model, Line::default),
    }
    .expect("spawn")
}

#[test]
fn every_model_echoes_a_line_three_times_then_removes_its_socket_file() {
    let models = [
        None,
        Some(Model::ThreadPerConnection {
            block_on_close: true,
        }),
        Some(Model::ThreadPool),
    ];
    for (i, model) in models.into_iter().enumerate() {
        let path = socket_path(&format!("models-{i}"));
        let server = start_unix(&path, model);
        let mut stream = connect_unix(&path);
        for _ in 0..3 {
            assert_eq!(
                unix_round_trip(&mut stream, b"over unix\n"),
                b"over unix\n",
                "{model:?}"
            );
        }
        drop(stream);
        server.shutdown().expect("clean shutdown");
        assert!(
            !path.exists(),
            "{model:?}: the socket file must be removed on close"
        );
    }
}

#[test]
fn a_large_burst_is_echoed_byte_exact_over_unix() {
    let path = socket_path("burst");
    let server = Server::bind_unix_with(&path, test_config())
        .expect("bind")
        .spawn(|| Echo)
        .expect("spawn");
    let mut stream = connect_unix(&path);
    let payload = pattern(4 << 20, 3);
    let mut writer = stream.try_clone().expect("clone");
    let sent = payload.clone();
    let sender = std::thread::spawn(move || writer.write_all(&sent).expect("write"));
    let mut received = vec![0; payload.len()];
    stream.read_exact(&mut received).expect("read");
    sender.join().expect("sender");
    assert!(received == payload);
    drop(stream);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_stale_socket_file_is_replaced_at_bind() {
    let path = socket_path("stale");
    // A listener that goes away without removing its file, like a crashed server.
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let server = start_unix(&path, None);
    let mut stream = connect_unix(&path);
    assert_eq!(unix_round_trip(&mut stream, b"fresh\n"), b"fresh\n");
    drop(stream);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_live_socket_or_a_regular_file_is_not_taken_over() {
    let path = socket_path("live");
    let live = UnixListener::bind(&path).expect("bind");
    let error = Server::bind_unix(&path)
        .err()
        .expect("a live socket must not be taken over");
    assert!(
        error.to_string().contains(&*path.to_string_lossy()),
        "{error}"
    );
    drop(live);
    std::fs::remove_file(&path).expect("clean up");

    let file = socket_path("regular");
    std::fs::write(&file, b"not a socket").expect("write a file");
    assert!(
        Server::bind_unix(&file).is_err(),
        "a regular file must not be replaced"
    );
    assert_eq!(std::fs::read(&file).expect("still there"), b"not a socket");
    std::fs::remove_file(&file).expect("clean up");
}

#[test]
fn the_cli_serves_a_unix_socket_and_says_where() {
    use std::io::BufRead;
    let path = socket_path("cli");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_socketserver"))
        .args(["serve", "--protocol", "echo", "--unix"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert_eq!(first, format!("listening on unix:{}\n", path.display()));
    let mut stream = connect_unix(&path);
    assert_eq!(unix_round_trip(&mut stream, b"cli"), b"cli");
    drop(stream);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit after SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "the socket file is removed at exit");
}
