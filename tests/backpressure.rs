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

/// More than the kernel's socket buffers take at once on loopback (up to 4 MiB).
const BURST: usize = 8 << 20;

/// On open writes far more than the high watermark, then counts the input it is fed and the
/// drains it is told of; with `own` it manages its own backpressure (keeps being fed).
struct Burst {
    own: bool,
    fed: Arc<AtomicU64>,
    drained: Arc<AtomicU64>,
}

impl Protocol for Burst {
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        if self.own {
            ctx.manage_own_backpressure();
        }
        ctx.write_owned(vec![b'b'; BURST]);
    }
    fn on_read(&mut self, input: &[u8], _ctx: &mut Context<'_>) -> usize {
        self.fed.fetch_add(input.len() as u64, Ordering::Relaxed);
        input.len()
    }
    fn on_drain(&mut self, ctx: &mut Context<'_>) {
        self.drained.fetch_add(1, Ordering::Relaxed);
        ctx.write(b"drained\n");
    }
}

/// Output that backed up past the high watermark and drained is reported once, on every
/// driver; and a protocol that manages its own backpressure is fed while it is backed up.
#[test]
fn a_drain_is_reported_and_a_protocol_that_owns_its_backpressure_keeps_reading() {
    for own in [false, true] {
        for blocking in [false, true] {
            let fed = Arc::new(AtomicU64::new(0));
            let drained = Arc::new(AtomicU64::new(0));
            let (fed_by, drained_by) = (fed.clone(), drained.clone());
            let factory = move || Burst {
                own,
                fed: fed_by.clone(),
                drained: drained_by.clone(),
            };
            let bound = bind(Config {
                write_hard_limit: 4 * BURST,
                ..small_buffers()
            });
            let server = if blocking {
                let model = socketserver::Model::ThreadPerConnection {
                    block_on_close: false,
                };
                bound.spawn_blocking(model, factory)
            } else {
                bound.spawn(factory)
            }
            .expect("spawn");
            let mut stream = connect_with_small_window(server.local_addr());
            wait_for("the server to be backed up", || {
                server.stats().backpressure_pauses == 1
            });
            stream.write_all(b"input while backed up").expect("write");
            if own && !blocking {
                wait_for("input fed while backed up", || {
                    fed.load(Ordering::Relaxed) == 21
                });
            }
            let mut received = Vec::new();
            while !received.ends_with(b"drained\n") {
                let mut chunk = [0u8; 256 * 1024];
                let count = std::io::Read::read(&mut stream, &mut chunk).expect("read");
                assert!(count > 0, "closed before the drain");
                received.extend_from_slice(&chunk[..count]);
            }
            assert_eq!(received.len(), BURST + 8, "own {own} blocking {blocking}");
            assert_eq!(drained.load(Ordering::Relaxed), 1);
            wait_for("the input fed after the drain", || {
                fed.load(Ordering::Relaxed) == 21
            });
            drop(stream);
            server.shutdown().expect("clean shutdown");
        }
    }
}
