//! Micro-benchmarks of the hot paths that involve no socket: protocol parsing, buffers, timers.
//!
//! Run with `cargo bench --bench protocols`.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use socketserver::protocol::{Frame, Line, Session};
use socketserver::reactor::buffer::WriteBuf;
use socketserver::reactor::timer::Timers;

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
        let start = Instant::now();
        let mut due = Vec::with_capacity(1000);
        b.iter(|| {
            let mut timers = Timers::default();
            for i in 0..1000u64 {
                timers.schedule(start + Duration::from_micros((i * 7919) % 1000), i);
            }
            due.clear();
            timers.collect_expired(start + Duration::from_millis(1), &mut due);
            black_box(due.len());
        })
    });
}

criterion_group!(
    benches,
    line_protocol,
    frame_protocol,
    write_buffer,
    timer_heap
);
criterion_main!(benches);
