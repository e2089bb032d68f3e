#!/usr/bin/env bash
# TLS against plain TCP, side by side in one run: memory per idle connection, TLS handshakes per
# second (full handshakes: the server keeps no session state for resumption), and flood items/s.
#
# usage: bench/tls.sh [N]     N idle connections (default 15000; one process may hold ~19,000)
# env:   RUNS (3) interleaved repetitions, medians reported; CONNS (64) flood connections;
#        ITEMS (20000) items per flood connection; BATCH (256) items per write;
#        OUT (bench/results/tls-<time>)
# The load is `connwarden bench` in its own process (--tls-ca for TLS), spread over 8 source
# addresses; the server's RSS is read from /proc before the load and while it holds N
# connections (per connection = difference / N; the kernel's socket memory is not in RSS).
# Certificates: a throw-away CA and a P-256 server certificate for localhost, made by openssl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-15000}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}
ITEMS=${ITEMS:-20000}
BATCH=${BATCH:-256}
PORT=${PORT:-7792}
OUT=${OUT:-$ROOT/bench/results/tls-$(date +%Y%m%d-%H%M%S)}
CW=$ROOT/target/release/connwarden
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
[ -x "$CW" ] || prepare_release


# start_server MODE: starts `serve` (with TLS when MODE is tls); sets SRV
start_server() {
  local tls=()
  [ "$1" = tls ] && tls=(--tls-cert "$OUT/certs/server.crt" --tls-key "$OUT/certs/server.key")
  RUST_LOG=warn "$CW" serve --listen "127.0.0.1:$PORT" --admin off --sink file:/dev/null \
    --max-connections $((N + 100)) --log-format json "${tls[@]}" >"$OUT/server.out" 2>"$OUT/server.err" &
  SRV=$!; PIDS+=("$SRV")
  for _ in $(seq 200); do ss -Hltn "( sport = :$PORT )" | grep -q . && break; sleep 0.05; done
  sleep 0.5
}

stop_server() { kill -TERM "$SRV"; wait "$SRV" 2>/dev/null || true; }

load_tls() { [ "$1" = tls ] && echo "--tls-ca $OUT/certs/ca.pem" || true; }

# idle MODE RUN: prints "bytes_per_conn connects_per_s"
idle() {
  local mode=$1 run=$2 base rss load
  start_server "$mode"
  base=$(rss_kib "$SRV")
  # shellcheck disable=SC2046
  "$CW" bench idle --to "127.0.0.1:$PORT" --conns "$N" --sources 8 --hold 6s --json \
    $(load_tls "$mode") >"$OUT/idle-$mode-$run.json" 2>"$OUT/idle-$mode-$run.err" &
  load=$!; PIDS+=("$load")
  for _ in $(seq 1200); do grep -q '^holding' "$OUT/idle-$mode-$run.err" && break; sleep 0.1; done
  sleep 2 # the server finishes each connection's set-up
  rss=$(rss_kib "$SRV")
  wait "$load" || true
  stop_server
  awk -v r="$rss" -v b="$base" -v n="$N" 'BEGIN {printf "%.0f ", (r - b) * 1024 / n}'
  json_num "$OUT/idle-$mode-$run.json" connects_per_second
}

# flood MODE RUN: prints items/s
flood() {
  local mode=$1 run=$2
  start_server "$mode"
  # shellcheck disable=SC2046
  "$CW" bench flood --to "127.0.0.1:$PORT" --conns "$CONNS" --items "$ITEMS" --batch "$BATCH" \
    --sources 8 --json $(load_tls "$mode") >"$OUT/flood-$mode-$run.json" 2>"$OUT/flood-$mode-$run.err"
  stop_server
  json_num "$OUT/flood-$mode-$run.json" items_per_second
}

make_certs "$OUT/certs"
declare -A mem=() cps=() ips=()
for run in $(seq "$RUNS"); do
  for mode in plain tls; do
    read -r m c < <(idle "$mode" "$run")
    i=$(flood "$mode" "$run")
    log "run $run $mode: $m bytes per idle connection, $c connects/s, $i items/s"
    mem[$mode]+="$m "; cps[$mode]+="$c "; ips[$mode]+="$i "
  done
done
med() { tr ' ' '\n' <<<"$1" | grep . | median; }
for mode in plain tls; do
  log "median $mode: $(med "${mem[$mode]}") bytes per idle connection ($N), $(med "${cps[$mode]}") connects/s, $(med "${ips[$mode]}") items/s ($CONNS connections, batch $BATCH)"
done
awk -v t="$(med "${ips[tls]}")" -v p="$(med "${ips[plain]}")" \
  'BEGIN {printf "TLS items/s are %.2f of plain\n", t / p}' | tee -a "$OUT/summary.txt"
