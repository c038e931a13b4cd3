//! Micro-benchmarks of the hot paths that involve no socket: protocol parsing, buffers, timers.
//!
//! Run with `cargo bench --bench hot_paths`. End-to-end figures (sockets, every model) come from
//! `socketserver compare`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::{Frame, Http, Line, Session};
use socketserver::reactor::buffer::{ReadBuf, WriteBuf};
use socketserver::reactor::timer::{Clock, Timers};

fn line_protocol(c: &mut Criterion) {
    let input: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n".repeat(100);
    let mut group = c.benchmark_group("line");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("100 lines in one read", |b| {
        let mut session = Session::new(Line::default());
        b.iter(|| {
            session.feed(black_box(&input));
            black_box(session.take_output());
        })
    });
    group.finish();
}

fn frame_protocol(c: &mut Criterion) {
    let mut input = Vec::new();
    for _ in 0..100 {
        input.extend_from_slice(&64u32.to_be_bytes());
        input.extend_from_slice(&[0xab; 64]);
    }
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("100 frames of 64 bytes", |b| {
        let mut session = Session::new(Frame::default());
        b.iter(|| {
            session.feed(black_box(&input));
            black_box(session.take_output());
        })
    });
    group.finish();
}

/// The HTTP protocol alone (parse, route, answer), as `serve --protocol http` runs it: one
/// keep-alive request at a time, and sixteen pipelined in one read.
fn http_requests(c: &mut Criterion) {
    let router =
        std::sync::Arc::new(Router::new().get("/", |_| Response::text(200, "Hello, World!")));
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    group.bench_function("GET / kept alive", |b| {
        let mut session = Session::new(Http::new(router.clone(), HttpLimits::default()));
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            session.feed(black_box(request));
            out.clear();
            session.write_output(&mut out).expect("a Vec takes it all");
            black_box(&out);
        })
    });
    let pipelined = request.repeat(16);
    group.throughput(Throughput::Elements(16));
    group.bench_function("16 pipelined GET / in one read", |b| {
        let mut session = Session::new(Http::new(router.clone(), HttpLimits::default()));
        let mut out = Vec::with_capacity(16 * 4096);
        b.iter(|| {
            session.feed(black_box(&pipelined));
            out.clear();
            session.write_output(&mut out).expect("a Vec takes it all");
            black_box(&out);
        })
    });
    group.finish();
}

fn split_input(c: &mut Criterion) {
    // The worst case for a parser: every byte arrives in its own read.
    let input: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n".repeat(10);
    let mut group = c.benchmark_group("line");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("10 lines, one byte per read", |b| {
        let mut session = Session::new(Line::default());
        b.iter(|| {
            for byte in input.chunks(1) {
                session.feed(black_box(byte));
            }
            black_box(session.take_output());
        })
    });
    group.finish();
}

fn read_buffer(c: &mut Criterion) {
    c.bench_function("read buffer: extend 64 B, consume 48 B", |b| {
        // A protocol that leaves a partial message behind each time: the buffer compacts.
        let mut buffer = ReadBuf::default();
        b.iter(|| {
            buffer.extend(black_box(&[7u8; 64]));
            let keep = buffer.len().min(16);
            buffer.consume(buffer.len() - keep);
            black_box(buffer.len());
        })
    });
}

/// A socket that accepts at most 1,000 bytes per write, as a full kernel buffer does.
struct Trickle;

impl std::io::Write for Trickle {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        Ok(bytes.len().min(1000))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_buffer_partial(c: &mut Criterion) {
    c.bench_function(
        "write buffer: 100 pushes of 64 B, drained by partial writes",
        |b| {
            let mut buffer = WriteBuf::default();
            b.iter(|| {
                for _ in 0..100 {
                    buffer.push(black_box(&[7u8; 64]));
                }
                buffer
                    .write_until_blocked(&mut Trickle)
                    .expect("the trickle never fails");
            })
        },
    );
}

fn write_buffer(c: &mut Criterion) {
    c.bench_function("write buffer: push 64 B, drain", |b| {
        let mut buffer = WriteBuf::default();
        let mut sink = std::io::sink();
        b.iter(|| {
            buffer.push(black_box(&[7u8; 64]));
            buffer.write_to(&mut sink).expect("sink never fails");
        })
    });
}

fn timer_heap(c: &mut Criterion) {
    c.bench_function("timers: schedule and expire 1,000", |b| {
        let start = Clock::new().now_tick();
        let mut due = Vec::with_capacity(1000);
        b.iter(|| {
            let mut timers = Timers::default();
            for i in 0..1000u64 {
                timers.schedule(start.after(Duration::from_micros((i * 7919) % 1000)), i);
            }
            due.clear();
            timers.collect_expired(start.after(Duration::from_millis(1)), &mut due);
            black_box(due.len());
        })
    });
}

fn timer_rearm(c: &mut Criterion) {
    c.bench_function("timers: 10,000 connections, one due each turn", |b| {
        // The idle-timeout pattern: many far deadlines, a few expiring per reactor turn.
        let start = Clock::new().now_tick();
        let mut timers = Timers::default();
        for i in 0..10_000u64 {
            timers.schedule(start.after(Duration::from_secs(60 + i)), i);
        }
        let mut due = Vec::with_capacity(4);
        let mut turn = 0u64;
        b.iter(|| {
            turn += 1;
            timers.schedule(start.after(Duration::from_micros(turn)), turn);
            due.clear();
            timers.collect_expired(start.after(Duration::from_micros(turn)), &mut due);
            black_box(due.len());
        })
    });
}

criterion_group!(
    benches,
    line_protocol,
    frame_protocol,
    http_requests,
    split_input,
    read_buffer,
    write_buffer,
    write_buffer_partial,
    timer_heap,
    timer_rearm
);
criterion_main!(benches);
