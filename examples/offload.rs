//! CPU-bound work on the worker pool while the event loop keeps answering everyone else.
//!
//! A line protocol: `hash N TEXT` hashes TEXT N times (up to 50,000,000 rounds) on a worker
//! thread and answers with the digest; any other line is echoed at once. While a long hash runs,
//! other clients — and the same client's next lines — are not held up.
//!
//! Try it:
//!
//! ```text
//! cargo run --release --example offload          # prints "listening on 127.0.0.1:7001"
//! nc 127.0.0.1 7001
//! hash 30000000 hello                            # takes a moment, answered on its own line
//! ping                                           # answered at once, before the hash
//! ```

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Instant;

use socketserver::protocol::{Context, JobResult, OffloadError, Protocol};
use socketserver::Server;

/// Most rounds one request may ask for: bounds the CPU a single line can cost.
const MAX_ROUNDS: u64 = 50_000_000;
/// Longest request line.
const MAX_LINE: usize = 4096;

/// The digest of `text` after `rounds` rounds of SipHash, each round hashing the previous digest.
fn hash_rounds(text: &str, rounds: u64) -> u64 {
    let mut digest = 0u64;
    for round in 0..rounds {
        let mut hasher = DefaultHasher::new();
        (digest, round, text).hash(&mut hasher);
        digest = hasher.finish();
    }
    digest
}

#[derive(Default)]
struct Offload;

impl Offload {
    fn answer(&mut self, line: &str, ctx: &mut Context<'_>) {
        let mut words = line.splitn(3, ' ');
        if words.next() != Some("hash") {
            ctx.write(format!("{line}\n").as_bytes());
            return;
        }
        let rounds = words.next().and_then(|n| n.parse::<u64>().ok());
        let (Some(rounds), Some(text)) = (rounds, words.next()) else {
            ctx.write(b"error: usage: hash ROUNDS TEXT\n");
            return;
        };
        if rounds > MAX_ROUNDS {
            ctx.write(format!("error: at most {MAX_ROUNDS} rounds\n").as_bytes());
            return;
        }
        let text = text.to_string();
        let started = Instant::now();
        let job = move || (hash_rounds(&text, rounds), text, started.elapsed());
        match ctx.offload(rounds, job) {
            Ok(()) => {}
            Err(OffloadError::Busy | OffloadError::TooManyInFlight) => {
                ctx.write(b"busy: try again later\n")
            }
            Err(OffloadError::Unavailable) => ctx.write(b"error: no workers\n"),
        }
    }
}

impl Protocol for Offload {
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        let mut consumed = 0;
        while let Some(end) = input[consumed..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&input[consumed..consumed + end]);
            self.answer(line.trim_end_matches('\r'), ctx);
            consumed += end + 1;
        }
        if input.len() - consumed > MAX_LINE {
            ctx.write(b"error: line too long\n");
            ctx.fail("line too long");
            return input.len();
        }
        consumed
    }

    fn on_job_done(&mut self, rounds: u64, result: JobResult, ctx: &mut Context<'_>) {
        match result.map(|output| output.downcast::<(u64, String, std::time::Duration)>()) {
            Ok(Ok(done)) => {
                let (digest, text, took) = *done;
                let answer = format!("hash {rounds} {text} = {digest:016x} ({took:.2?})\n");
                ctx.write(answer.as_bytes());
            }
            _ => ctx.write(b"error: the job failed\n"),
        }
    }
}

fn main() -> socketserver::Result<()> {
    env_logger::init();
    let server = Server::bind("127.0.0.1:7001")?.workers(2);
    println!("listening on {}", server.local_addr());
    server.serve(|| Offload)
}
