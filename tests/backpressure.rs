//! Output is bounded: a client that never reads pauses its own input (watermarks) without
//! slowing anyone else, and a protocol that writes regardless is cut off at the hard limit.

mod util;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socketserver::protocol::{Context, Echo, Protocol};
use socketserver::Config;
use util::*;

fn small_buffers() -> Config {
    Config {
        write_low_watermark: 16 * 1024,
        write_high_watermark: 64 * 1024,
        write_hard_limit: 1024 * 1024,
        read_chunk_bytes: 16 * 1024,
        ..test_config()
    }
}

#[test]
fn a_client_that_never_reads_is_paused_and_does_not_slow_others() {
    let config = small_buffers();
    let server = start_with(config.clone(), || Echo);
    let stalled = connect(server.local_addr());
    stalled.set_write_timeout(None).expect("blocking writes");
    let written = Arc::new(AtomicU64::new(0));
    let mut writer = stalled.try_clone().expect("clone");
    let counter = written.clone();
    // Sends up to 64 MiB and never reads; blocks once the server stops reading.
    let flood = std::thread::spawn(move || {
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..1024 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    wait_for("the stalled connection to reach its high watermark", || {
        server.stats().peak_pending_output >= config.write_high_watermark as u64
    });

    // Another client is served normally while the first one is paused.
    let mut other = connect(server.local_addr());
    for i in 0..200 {
        let message = format!("message {i}\n");
        assert_eq!(
            round_trip(&mut other, message.as_bytes()),
            message.as_bytes()
        );
    }

    let stats = server.stats();
    // Pending output may pass the high watermark by at most one read's worth of echo.
    let bound = (config.write_high_watermark + config.read_chunk_bytes) as u64;
    assert!(
        stats.peak_pending_output <= bound,
        "{} bytes pending, bound {bound}",
        stats.peak_pending_output
    );
    assert_eq!(
        stats.closed_over_limit, 0,
        "a paused reader is not over any limit"
    );
    // The server stopped reading, so the flood could not be delivered.
    assert!(
        written.load(Ordering::Relaxed) < 64 << 20,
        "the server kept reading a paused client"
    );
    // Shut the socket itself down (the writer holds a duplicate descriptor): its write fails.
    stalled
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown");
    flood
        .join()
        .expect("flood thread ends once the connection is shut down");
    server.shutdown().expect("clean shutdown");
}

/// Writes 256 KiB every millisecond whatever the peer does (a push stream gone wrong).
struct Flood;

impl Protocol for Flood {
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        ctx.set_timer(Duration::from_millis(1));
    }
    fn on_read(&mut self, input: &[u8], _ctx: &mut Context<'_>) -> usize {
        input.len()
    }
    fn on_timer(&mut self, ctx: &mut Context<'_>) {
        ctx.write_owned(vec![b'f'; 256 * 1024]);
        ctx.set_timer(Duration::from_millis(1));
    }
}

#[test]
fn output_over_the_hard_limit_closes_the_connection() {
    let config = small_buffers();
    let server = start_with(config.clone(), || Flood);
    let mut stream = connect(server.local_addr());
    wait_for("the flooding connection to be closed", || {
        server.stats().closed_over_limit == 1
    });
    // One callback's output (256 KiB) may land on top of what was pending before the check.
    let bound = (config.write_hard_limit + 256 * 1024) as u64;
    assert!(server.stats().peak_pending_output <= bound);
    assert!(
        is_closed_by_server(&mut stream),
        "the client must see the connection end"
    );
    server.shutdown().expect("clean shutdown");
}
