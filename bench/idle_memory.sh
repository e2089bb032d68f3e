#!/usr/bin/env bash
# Resident memory per idle connection: connwarden and the go-seed baseline, side by side in one
# run, each holding N idle connections opened by the go-seed load generator (a separate process,
# so the client's memory is not counted, and a client that is not ours).
#
# usage: bench/idle_memory.sh [N]        N idle connections (default 10000; one process may hold
#                                        at most ~19,000 here: RLIMIT_NOFILE is 20,000)
# env:   RUNS (3)  repetitions per server, the median is reported
#        SEED (../shared/peers/go-seed)  the baseline's sources
#        OUT  (bench/results/idle-memory-<time>)  logs and the CSV
#        SOURCES (8)  distinct source addresses of the idle connections (127.0.0.2 on); past 8
#                     the load is `connwarden bench idle` (go-seed's stops at 255)
#        SERVE_ARGS ("")  more flags for every connwarden serve measured
#        SETTLE (7)  seconds between the last connection and the reading: past park_after (5 s)
#        CW_BEFORE (unset)  a connwarden binary from an earlier commit: measured too, in the same
#                           runs, for the budget check "memory per idle connection must not grow"
#        CW_MUSL (unset)    1: the static musl build of this commit too (built here, target
#                           x86_64-unknown-linux-musl), in the same runs: glibc and musl side by side
#        CW_EXAMPLES (unset)  examples of the liveness layer to measure too, in the same runs, e.g.
#                           "line_echo length_prefixed" (built here). They run on the system's
#                           allocator (an example has no #[global_allocator]), the binary on jemalloc
#
# Per connection = (RSS holding N connections - RSS of the same process before the load) / N.
# The kernel's socket memory is not in RSS; it is the same for both servers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-10000}
RUNS=${RUNS:-3}
SOURCES=${SOURCES:-8}
SEED=${SEED:-$ROOT/../shared/peers/go-seed}
OUT=${OUT:-$ROOT/bench/results/idle-memory-$(date +%Y%m%d-%H%M%S)}
BIN=$ROOT/bench/bin
PORT=7710
mkdir -p "$OUT" "$BIN"
source "$ROOT/bench/lib.sh"

build() {
  command -v go >/dev/null || { apt-get update -qq && apt-get install -y -qq golang-go >/dev/null; }
  (cd "$SEED" && go build -o "$BIN/seed-server" ./server && go build -o "$BIN/seed-load" ./load)
  (cd "$ROOT" && cargo build --release --quiet 2>/dev/null || cargo build --release)
  if [ -n "${CW_MUSL:-}" ]; then
    rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
    (cd "$ROOT" && cargo build --release --quiet --target x86_64-unknown-linux-musl)
  fi
  for example in ${CW_EXAMPLES:-}; do
    (cd "$ROOT" && cargo build --release --quiet --example "$example")
  done
}

# The other connwarden builds measured in the same runs: "name path" lines.
others() {
  if [ -n "${CW_BEFORE:-}" ]; then echo "before $CW_BEFORE"; fi
  if [ -n "${CW_MUSL:-}" ]; then echo "musl $ROOT/target/x86_64-unknown-linux-musl/release/connwarden"; fi
}

# measure NAME COMMAND...: prints bytes per connection
measure() {
  local name=$1; shift
  "$@" >"$OUT/$name.server.out" 2>"$OUT/$name.server.err" &
  local srv=$!; PIDS+=("$srv")
  local i
  for i in $(seq 1 200); do ss -Hltn "( sport = :$PORT )" | grep -q . && break; sleep 0.05; done
  sleep 1
  local base; base=$(rss_kib "$srv")
  if [ "$SOURCES" = 8 ]; then
    "$BIN/seed-load" idle -to "127.0.0.1:$PORT" -n "$N" -src-base 127.0.0.2 -sources 8 -parallel 128 -dial-timeout 5s \
      >"$OUT/$name.load.out" 2>"$OUT/$name.load.err" &
  else
    # go-seed's load generator spreads over at most 255 addresses: ours goes past the octet.
    "$ROOT/target/release/connwarden" bench idle --to "127.0.0.1:$PORT" --conns "$N" --sources "$SOURCES" \
      --source-base 127.0.0.2 --json >"$OUT/$name.load.out" 2>"$OUT/$name.load.err" &
  fi
  local load=$!; PIDS+=("$load")
  for i in $(seq 1 600); do
    { grep -q '"ready"' "$OUT/$name.load.out" 2>/dev/null || [ "$SOURCES" != 8 ]; } && break; sleep 0.1
  done
  for i in $(seq 1 300); do [ "$(established $PORT)" -ge "$N" ] && break; sleep 0.1; done
  sleep "${SETTLE:-7}" # let the server finish its per-connection set-up and park its idle connections (park_after: 5 s)
  local live; live=$(established $PORT)
  local rss; rss=$(rss_kib "$srv")
  kill -TERM "$load"; wait "$load" 2>/dev/null || true
  kill -TERM "$srv"; wait "$srv" 2>/dev/null || true
  if [ "$live" -ne "$N" ]; then log "$name: only $live of $N connections established"; fi
  local per=$(( (rss - base) * 1024 / live ))
  log "$name: base ${base} KiB, with $live idle connections ${rss} KiB -> $per bytes per connection"
  echo "$per"
}

build
log "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r); N=$N sources=$SOURCES runs=$RUNS; results in $OUT"
echo "server,run,bytes_per_conn" > "$OUT/idle-memory.csv"
for run in $(seq 1 "$RUNS"); do
  per=$(measure "connwarden-$run" env RUST_LOG=warn "$ROOT/target/release/connwarden" serve \
    --listen "127.0.0.1:$PORT" --sink file:/dev/null --max-connections $((N + 1000)) ${SERVE_ARGS:-})
  echo "connwarden,$run,$per" >> "$OUT/idle-memory.csv"
  per=$(measure "go-seed-$run" "$BIN/seed-server" -listen "127.0.0.1:$PORT" -keepalive-period 45s -stats-every 0 -log-conns=false)
  echo "go-seed,$run,$per" >> "$OUT/idle-memory.csv"
  while read -r name path; do
    per=$(measure "$name-$run" env RUST_LOG=warn "$path" serve \
      --listen "127.0.0.1:$PORT" --sink file:/dev/null --max-connections $((N + 1000)) ${SERVE_ARGS:-} </dev/null)
    echo "$name,$run,$per" >> "$OUT/idle-memory.csv"
  done < <(others)
  for example in ${CW_EXAMPLES:-}; do
    per=$(measure "$example-$run" "$ROOT/target/release/examples/$example" \
      --listen "127.0.0.1:$PORT" --max-connections $((N + 1000)) </dev/null)
    echo "$example,$run,$per" >> "$OUT/idle-memory.csv"
  done
done
cw=$(awk -F, '$1=="connwarden" {print $3}' "$OUT/idle-memory.csv" | median)
go=$(awk -F, '$1=="go-seed" {print $3}' "$OUT/idle-memory.csv" | median)
log "median bytes per idle connection at N=$N: connwarden $cw, go-seed $go, ratio go/connwarden $(awk -v a="$go" -v b="$cw" 'BEGIN {printf "%.1f", a/b}')"
while read -r name path; do
  other=$(awk -F, -v n="$name" '$1==n {print $3}' "$OUT/idle-memory.csv" | median)
  log "median bytes per idle connection at N=$N: this build $cw, $name ($path) $other"
done < <(others)
for example in ${CW_EXAMPLES:-}; do
  per=$(awk -F, -v n="$example" '$1==n {print $3}' "$OUT/idle-memory.csv" | median)
  log "median bytes per idle connection at N=$N: $example (examples/, system allocator) $per"
done
