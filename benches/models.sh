#!/usr/bin/env bash
# Echo round trips per second and latency for every concurrency model, in one run.
#
#   ECHO_LOAD=/path/to/echo_load benches/models.sh [SECONDS] [CONNS...]
#
# ECHO_LOAD is a closed-loop echo client taking `ADDR CONNS SECONDS MSG_BYTES WARMUP_SECS` and
# printing `rt_per_s=… p50_us=… p99_us=…`. The server runs on CPU 0 and the load on CPU 1;
# server CPU (user + system, workers included) is read from /proc around each measurement.
# Every process started here is stopped by its PID; every load run is bounded by SECONDS.
set -euo pipefail

: "${ECHO_LOAD:?set ECHO_LOAD to the echo load generator}"
SECONDS_PER_RUN=${1:-5}
shift || true
if [ $# -gt 0 ]; then CONNS=("$@"); else CONNS=(1 16 256 1024); fi
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN="$HERE/target/release/socketserver"
(cd "$HERE" && cargo build --release --quiet)
TICKS=$(getconf CLK_TCK)

# CPU ticks (user + system) of a process and its live children.
cpu_ticks() {
    local pid total=0 ticks
    for pid in "$1" $(awk -v p="$1" '$4 == p { print $1 }' /proc/[0-9]*/stat 2>/dev/null); do
        ticks=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + ticks))
    done
    echo "$total"
}

printf '| model | conns | round trips/s | p50 µs | p99 µs | server CPU µs/round trip |\n'
printf '|---|---|---|---|---|---|\n'
for model in reactor reactors threads pool prefork; do
    out=$(mktemp)
    # Two loops or processes for the two-core models; the pool keeps its default 64 threads.
    case $model in
        reactors) extra=(--threads 2) ;;
        prefork) extra=(--processes 2) ;;
        *) extra=() ;;
    esac
    taskset -c 0 "$BIN" serve --model "$model" --addr 127.0.0.1:0 "${extra[@]}" \
        --idle-timeout 0 --max-connections 20000 >"$out" 2>/dev/null &
    server=$!
    for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.05; done
    addr=$(sed -n 's/^listening on //p' "$out")
    label=$model
    case $model in
        reactors) label="reactors (2 loops)" ;;
        pool) label="pool (64 threads)" ;;
        prefork) label="prefork (2 processes)" ;;
    esac
    for conns in "${CONNS[@]}"; do
        before=$(cpu_ticks "$server")
        result=$(timeout $((SECONDS_PER_RUN + 30)) taskset -c 1 "$ECHO_LOAD" "$addr" "$conns" \
            "$SECONDS_PER_RUN" 64 1 2>&1 || true)
        after=$(cpu_ticks "$server")
        rt=$(grep -o 'rt_per_s=[0-9.]*' <<<"$result" | cut -d= -f2 || true)
        p50=$(grep -o 'p50_us=[0-9.]*' <<<"$result" | cut -d= -f2 || true)
        p99=$(grep -o 'p99_us=[0-9.]*' <<<"$result" | cut -d= -f2 || true)
        # Warm-up is one second of the same load, so CPU covers SECONDS_PER_RUN + 1.
        cpu=$(awk -v t=$((after - before)) -v hz="$TICKS" -v rt="${rt:-0}" -v s="$SECONDS_PER_RUN" \
            'BEGIN { if (rt > 0) printf "%.2f", t / hz * 1e6 / (rt * (s + 1)); else print "-" }')
        printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$conns" \
            "${rt:--}" "${p50:--}" "${p99:--}" "$cpu"
    done
    kill -TERM "$server"
    wait "$server" || true
    rm -f "$out"
done
