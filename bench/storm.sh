#!/usr/bin/env bash
# A reconnect storm: a fleet of client-library clients all (re)connecting to a freshly started
# server within one second, plain and TLS, while an established fleet stays connected.
#
# usage: bench/storm.sh [CLIENTS]   clients in the storm (default 10000), in PROCS processes
# env:   PROCS (4) load processes sharing the storm; HELD (1000) clients connected before the
#        storm and held through it (their heartbeats go on); RUNS (1); EXTRA (flags for serve,
#        e.g. a bound to compare); MODES ("plain tls"); OUT (bench/results/storm-<time>)
# Reported per mode: the time until the whole fleet is back (from the window's start to the last
# client's first ack), each client's time to its ack (p50/p99/max over the processes' own
# percentiles: the worst p99, the median p50), attempts that failed (retried after a wait),
# the server's TLS handshake times (connwarden_tls_handshake_seconds), its closes by reason
# (handshake_timeout above all), and held clients that lost their connection (must be 0).
# The machine's two cores run the server and the load together: the load's own TLS work is a
# large part of each client's time (compare the server's handshake times with the clients').
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=${1:-10000}
PROCS=${PROCS:-4}
HELD=${HELD:-1000}
RUNS=${RUNS:-1}
PORT=${PORT:-7793}
ADMIN=${ADMIN:-127.0.0.1:7794}
OUT=${OUT:-$ROOT/bench/results/storm-$(date +%Y%m%d-%H%M%S)}
CW=$ROOT/target/release/connwarden
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
[ -x "$CW" ] || prepare_release
make_certs "$OUT/certs"

# storm MODE RUN: one storm against a fresh server; logs its line
storm() {
  local mode=$1 run=$2 tls=() load=() dir=$OUT/$1-$2 at p pids=() held
  mkdir -p "$dir"
  if [ "$mode" = tls ]; then
    tls=(--tls-cert "$OUT/certs/server.crt" --tls-key "$OUT/certs/server.key")
    load=(--tls-ca "$OUT/certs/ca.pem")
  fi
  # shellcheck disable=SC2086
  RUST_LOG=warn "$CW" serve --listen "127.0.0.1:$PORT" --admin "$ADMIN" --sink file:/dev/null \
    --max-connections $((CLIENTS + HELD + 100)) "${tls[@]}" ${EXTRA:-} >"$dir/server.out" 2>"$dir/server.err" &
  SRV=$!; PIDS+=("$SRV")
  for _ in $(seq 200); do curl -sf "http://$ADMIN/healthz" >/dev/null && break; sleep 0.05; done
  # The established fleet, held through the storm.
  "$CW" bench storm --to "127.0.0.1:$PORT" --clients "$HELD" --within 1s --hold 40s --json \
    "${load[@]}" >"$dir/held.json" 2>"$dir/held.err" &
  held=$!; PIDS+=("$held")
  for _ in $(seq 300); do
    [ "$(curl -s "http://$ADMIN/metrics" | awk '/^connwarden_connections_live /{print $2}')" = "$HELD" ] && break
    sleep 0.1
  done
  at=$(( $(date +%s%3N) + 1000 ))
  for p in $(seq "$PROCS"); do
    "$CW" bench storm --to "127.0.0.1:$PORT" --clients $((CLIENTS / PROCS)) --within 1s --at "$at" \
      --json "${load[@]}" >"$dir/storm-$p.json" 2>"$dir/storm-$p.err" &
    pids+=($!); PIDS+=($!)
  done
  wait "${pids[@]}" || true
  curl -s "http://$ADMIN/metrics" >"$dir/metrics.txt"
  wait "$held" || true
  kill -TERM "$SRV"; wait "$SRV" 2>/dev/null || true
  python3 - "$dir" "$mode" "$run" "$PROCS" <<'PY' | tee -a "$OUT/summary.txt"
import glob, json, re, statistics, sys
d, mode, run, procs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
storms = [json.load(open(f)) for f in sorted(glob.glob(f"{d}/storm-*.json"))]
held = json.load(open(f"{d}/held.json"))
metrics = open(f"{d}/metrics.txt").read()
def sample(name):
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0
buckets = [(float(le), float(v)) for le, v in re.findall(r'^connwarden_tls_handshake_seconds_bucket\{le="([0-9.]+)"\} (\S+)$', metrics, re.M)]
count = sample("connwarden_tls_handshake_seconds_count")
def quantile(q):
    for le, v in buckets:
        if count and v >= q * count:
            return f"<={le:g}s"
    return "n/a"
closes = {r: int(float(v)) for r, v in re.findall(r'^connwarden_connections_(?:closed|refused)_total\{reason="(\w+)"\} (\S+)$', metrics, re.M) if float(v) > 0}
acked = sum(s["acked"] for s in storms)
clients = sum(s["clients"] for s in storms)
print(f"{mode} run {run}: {acked}/{clients} clients back in {max(s['fleet_back_ms'] for s in storms)/1000:.2f} s; "
      f"time to ack p50 {statistics.median(s['time_to_ack']['p50_ms'] for s in storms)/1000:.2f} s, "
      f"p99 {max(s['time_to_ack']['p99_ms'] for s in storms)/1000:.2f} s, max {max(s['time_to_ack']['max_ms'] for s in storms)/1000:.2f} s; "
      f"failed attempts {sum(s['failed_attempts'] for s in storms)} ({sum(s['clients_retried'] for s in storms)} clients); "
      f"server TLS handshakes: {int(count)}, p50 {quantile(0.5)}, p99 {quantile(0.99)}; "
      f"closes {closes}; held {held['clients']}: {held['lost_while_held']} lost")
PY
}

log "storm of $CLIENTS clients in $PROCS processes within 1 s, $HELD held through it; serve ${EXTRA:-(defaults)}"
for run in $(seq "$RUNS"); do
  for mode in ${MODES:-plain tls}; do storm "$mode" "$run"; done
done
