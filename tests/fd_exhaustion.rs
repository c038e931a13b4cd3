//! Running out of file descriptors: accepting pauses (no spin), warns once, and resumes when
//! descriptors free up. Runs the binary in a child process with a low RLIMIT_NOFILE.

mod util;

use std::time::Duration;

use util::*;

#[test]
fn accept_exhaustion_does_not_spin_and_the_server_recovers() {
    const LIMIT: u64 = 32;
    let server = Cli::start(
        &["serve", "--protocol", "echo", "--workers", "0"],
        Some(LIMIT),
    );

    // More clients than descriptors: the kernel completes their handshakes (backlog), the
    // server accepts until EMFILE.
    let mut clients: Vec<_> = (0..LIMIT + 16).map(|_| connect(server.addr)).collect();
    wait_for("the server to use every descriptor", || {
        server.open_files() as u64 >= LIMIT
    });

    // While exhausted the listener stays readable; a spinning accept loop would burn a core.
    let before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(1)); // the observation window itself
    let spent = server.cpu_time() - before;
    assert!(
        spent < Duration::from_millis(300),
        "{spent:?} of CPU in 1 s while out of descriptors"
    );

    // Free descriptors (as many as the limit): every client left, accepted or still waiting
    // in the backlog, now fits and is served.
    let leaving: Vec<_> = clients.drain(..LIMIT as usize).collect();
    drop(leaving);
    for (i, client) in clients.iter_mut().enumerate() {
        let message = format!("client {i}");
        assert_eq!(round_trip(client, message.as_bytes()), message.as_bytes());
    }
    drop(clients);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "exit status {status:?}, stderr: {stderr}");
    let warnings = stderr.matches("pausing accepts").count();
    assert_eq!(
        warnings, 1,
        "warned {warnings} times (rate-limited to once): {stderr}"
    );
}
