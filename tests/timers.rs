//! Protocol timers: they fire, never early; cancelling works; re-arming does not grow the heap.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use socketserver::protocol::{Context, Protocol};
use socketserver::Config;
use util::*;

/// `set N` arms the timer N ms from now, `cancel` disarms it; the timer answers with how long
/// after the last `set` it fired. Any other byte re-arms a 10 s timer (like a keep-alive).
#[derive(Default)]
struct Ticker {
    armed_at: Option<Instant>,
}

impl Protocol for Ticker {
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        let mut consumed = 0;
        while let Some(end) = input[consumed..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&input[consumed..consumed + end]).to_string();
            consumed += end + 1;
            if let Some(ms) = line.strip_prefix("set ").and_then(|n| n.parse().ok()) {
                self.armed_at = Some(Instant::now());
                ctx.set_timer(Duration::from_millis(ms));
            } else if line == "cancel" {
                ctx.cancel_timer();
            } else {
                ctx.set_timer(Duration::from_secs(10));
            }
        }
        consumed
    }

    fn on_timer(&mut self, ctx: &mut Context<'_>) {
        let elapsed = self.armed_at.map_or(0, |at| at.elapsed().as_millis());
        ctx.write(format!("fired after {elapsed}\n").as_bytes());
    }
}

fn fired_after(line: &str) -> u128 {
    line.trim_end()
        .strip_prefix("fired after ")
        .and_then(|n| n.parse().ok())
        .expect("a firing")
}

#[test]
fn a_timer_fires_and_never_early() {
    let server = start(Ticker::default);
    let mut stream = connect(server.local_addr());
    stream.write_all(b"set 100\n").expect("write");
    assert!(fired_after(&read_line(&mut stream)) >= 100);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn re_arming_later_moves_the_deadline_back() {
    let server = start(Ticker::default);
    let mut stream = connect(server.local_addr());
    // The first deadline is replaced by a later one before it comes due.
    stream.write_all(b"set 50\nset 300\n").expect("write");
    assert!(
        fired_after(&read_line(&mut stream)) >= 300,
        "fired at the replaced deadline"
    );
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_cancelled_timer_does_not_fire() {
    let server = start(Ticker::default);
    let mut stream = connect(server.local_addr());
    stream.write_all(b"set 50\ncancel\n").expect("write");
    // Stay quiet well past the cancelled deadline (the scenario, not a synchronisation).
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(b"set 250\n").expect("write");
    // Had the cancelled timer fired, its "fired after ~50" would be the first line here.
    assert!(fired_after(&read_line(&mut stream)) >= 250);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn re_arming_on_every_message_keeps_one_heap_entry_per_connection() {
    let config = Config {
        idle_timeout: None,
        ..test_config()
    };
    let server = start_with(config, Ticker::default);
    let mut streams: Vec<_> = (0..10).map(|_| connect(server.local_addr())).collect();
    for _ in 0..200 {
        for stream in &mut streams {
            stream.write_all(b"keepalive\n").expect("write");
        }
    }
    // A line the protocol echoes nothing for; wait until all 2,000 lines were read.
    wait_for("every line to be read", || {
        server.stats().bytes_in == 10 * 200 * 10
    });
    let timers = server.stats().timers;
    assert!(
        timers <= 10,
        "{timers} timer entries for 10 connections re-arming 200 times each"
    );
    drop(streams);
    server.shutdown().expect("clean shutdown");
}
