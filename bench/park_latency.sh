#!/usr/bin/env bash
# The added latency of a parked connection's first byte: the time from an item's write to its
# ack on N connections that have all parked (park_after 1s, then 3 s of silence), against the
# same on N connections that stay tasks (park_after off), measured side by side in alternating
# runs. Each connection sends one item, one connection at a time, so each time is one wake-up.
#
# usage: bench/park_latency.sh [N]   N connections per run (default 500)
# env:   RUNS (3)  pairs of runs; the percentiles are over every sample of a kind
#        OUT (bench/results/park-latency-<time>)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-500}
RUNS=${RUNS:-3}
OUT=${OUT:-$ROOT/bench/results/park-latency-$(date +%Y%m%d-%H%M%S)}
PORT=7730
source "$ROOT/bench/lib.sh"
prepare_release

# run KIND PARK_AFTER: one server, N connections silent for 3 s, then one item each; appends
# the times (microseconds) to $OUT/KIND.us
run() {
  local kind=$1 park_after=$2
  RUST_LOG=warn "$ROOT/target/release/connwarden" serve --listen "127.0.0.1:$PORT" --sink file:/dev/null \
    --park-after "$park_after" --max-connections $((N + 100)) >"$OUT/$kind.server.out" 2>"$OUT/$kind.server.err" &
  local srv=$!; PIDS+=("$srv")
  for _ in $(seq 200); do ss -Hltn "( sport = :$PORT )" | grep -q . && break; sleep 0.05; done
  python3 - "$PORT" "$N" >>"$OUT/$kind.us" <<'EOF'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for c in conns:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.settimeout(5)
time.sleep(3)  # past park_after (1 s) for the parked kind
for i, c in enumerate(conns):
    line = b'{"ip":"10.0.0.1","id":"%d"}\n' % i
    began = time.perf_counter()
    c.sendall(line)
    answer = b""
    while not answer.endswith(b"\n"):
        answer += c.recv(256)
    took = time.perf_counter() - began
    assert b'"ack"' in answer, answer
    print(round(took * 1e6))
EOF
  kill -TERM "$srv"; wait "$srv" 2>/dev/null || true
}

log "machine: $(nproc) cores, kernel $(uname -r); N=$N runs=$RUNS; results in $OUT"
for r in $(seq 1 "$RUNS"); do
  run parked 1s
  run task off
done
for kind in task parked; do
  log "$kind: $(wc -l <"$OUT/$kind.us") acks, first byte to ack p50 $(pct 50 <"$OUT/$kind.us") us, p99 $(pct 99 <"$OUT/$kind.us") us, max $(sort -g "$OUT/$kind.us" | tail -1) us"
done
