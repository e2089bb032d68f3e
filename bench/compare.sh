#!/usr/bin/env bash
# connwarden side by side with the Go baseline of ../shared/peers/go-seed (the seed article's
# recipe), on this machine, in one run. Prints one table; docs/BENCHMARKS.md explains it.
#
# usage: bench/compare.sh [STAGE...]    stages: memory flood churn deadpeer scale (default: all)
# env:   RUNS (3)                  repetitions where time is measured; medians are reported
#        MEM_COUNTS ("1000 5000 15000")   idle connections for the memory stage
#        FLOOD_CONNS ("4 64"), FLOOD_ITEMS (100000)   flood connections and items per connection
#        FLOOD_CLIENTS ("go cw"), FLOOD_SERVERS ("cw go")   load generators and servers to run
#        CHURN_CYCLES (100000)     churn cycles per run; CHURN_LONG (1000000) for the leak check
#        DEAD_CONNS (10000)        idle connections whose link goes down at once
#        SCALE_CONNS (100000), SCALE_PROCS (6)   the scale run: connections, server processes
#        SEED (../shared/peers/go-seed), OUT (bench/results/compare-<time>)
#        CW_BEFORE (unset)         a connwarden binary built from an earlier commit: the flood
#                                  stage then also runs it, interleaved run by run with this
#                                  build, and adds a row "this build / before" (the budget check)
#        CW_ADMIN_OFF (unset)      1: the flood stage also runs this build with --admin off,
#                                  interleaved, while the default server's /metrics is scraped
#                                  every second: a row "admin on and scraped / admin off"
#
# Both servers get a discarding sink and no per-connection logs where the figure does not need
# them. The dead-peer stages run in network namespaces (root, iproute2); the sysctls they raise
# (port range, backlogs) are set inside those namespaces, so nothing global changes, and every
# process, namespace and link made here is removed on exit, Ctrl-C included.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SEED=${SEED:-$ROOT/../shared/peers/go-seed}
OUT=${OUT:-$ROOT/bench/results/compare-$(date +%Y%m%d-%H%M%S)}
BIN=$ROOT/bench/bin
CW=$ROOT/target/release/connwarden
CW_BEFORE=${CW_BEFORE:-}
CW_ADMIN_OFF=${CW_ADMIN_OFF:-}
ADMIN_PORT=7731
RUNS=${RUNS:-3}
MEM_COUNTS=${MEM_COUNTS:-"1000 5000 15000"}
FLOOD_CONNS=${FLOOD_CONNS:-"4 64"}
FLOOD_ITEMS=${FLOOD_ITEMS:-100000}
CHURN_CYCLES=${CHURN_CYCLES:-100000}
CHURN_LONG=${CHURN_LONG:-1000000}
DEAD_CONNS=${DEAD_CONNS:-10000}
SCALE_CONNS=${SCALE_CONNS:-100000}
SCALE_PROCS=${SCALE_PROCS:-6}
STAGES=${*:-memory flood churn deadpeer scale}
PORT=7730
TAG=$$
NS_S=cmp-s-$TAG NS_C=cmp-c-$TAG IF_S=cmps$TAG IF_C=cmpc$TAG
SRV_IP=10.241.0.1 CLI_BASE=10.241.0.10 CLI_COUNT=8
mkdir -p "$OUT" "$BIN"
source "$ROOT/bench/lib.sh"
SRVS=() LOADS=()

cleanup() {
  kill_pids
  ip netns del "$NS_S" 2>/dev/null || true
  ip netns del "$NS_C" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

row() { printf '%s\n' "$*" | tee -a "$OUT/table.md"; }
ratio() { awk -v a="$1" -v b="$2" -v p="${3:-1}" 'BEGIN {if (b + 0 == 0) print "n/a"; else printf "%.*f", p, a / b}'; }
fds() { ls "/proc/$1/fd" | wc -l; }
wait_port() { # wait_port PORT [NETNS]
  local i
  for i in $(seq 200); do
    if [ -n "${2:-}" ]; then ip netns exec "$2" ss -Hltn "( sport = :$1 )" | grep -q . && return; 
    else ss -Hltn "( sport = :$1 )" | grep -q . && return; fi
    sleep 0.05
  done
  echo "nothing listens on $1" >&2; exit 1
}
wait_line() { # wait_line FILE PATTERN SECONDS
  local i
  for i in $(seq $(( $3 * 20 ))); do grep -q "$2" "$1" 2>/dev/null && return; sleep 0.05; done
  echo "no '$2' in $1 within $3 s" >&2; exit 1
}

build() {
  command -v go >/dev/null || { apt-get update -qq && apt-get install -y -qq golang-go >/dev/null; }
  (cd "$SEED" && go build -o "$BIN/seed-server" ./server && go build -o "$BIN/seed-load" ./load)
  (cd "$ROOT" && cargo build --release --quiet)
}

# start_cw NAME ARGS...: connwarden serve on 127.0.0.1:$PORT, final counters in its JSON log.
# SERVE_BIN overrides the binary (the flood stage's "before" server).
start_cw() {
  local name=$1; shift
  RUST_LOG=warn,connwarden::server=info "${SERVE_BIN:-$CW}" serve --listen "127.0.0.1:$PORT" --sink file:/dev/null \
    --log-format json "$@" >/dev/null 2>"$OUT/$name.err" &
  SRV=$!; PIDS+=("$SRV"); wait_port "$PORT"
}
start_go() {
  local name=$1; shift
  "$BIN/seed-server" -listen "127.0.0.1:$PORT" -stats-every 0 -log-conns=false "$@" \
    >"$OUT/$name.out" 2>"$OUT/$name.err" &
  SRV=$!; PIDS+=("$SRV"); wait_port "$PORT"
}
stop() { kill -TERM "$SRV"; wait "$SRV" 2>/dev/null || true; }
# Items the server took intact, after stop: connwarden's "written", go-seed's "received".
received_cw() { grep '"shutdown complete"' "$OUT/$1.err" | sed 's/.*"written":\([0-9]*\).*/\1/'; }
received_go() { tail -1 "$OUT/$1.out" | sed 's/.*"received":\([0-9]*\).*/\1/'; }

stage_memory() {
  log "== memory: resident memory per idle connection (bench/idle_memory.sh, go-seed load generator)"
  local n cw go
  for n in $MEM_COUNTS; do
    OUT="$OUT/memory-$n" RUNS=$RUNS bash "$ROOT/bench/idle_memory.sh" "$n" 2>>"$OUT/memory.log"
    local line; line=$(grep '^median bytes per idle connection' "$OUT/memory-$n/summary.txt" | tail -1)
    cw=$(sed 's/.*: connwarden \([0-9]*\),.*/\1/' <<<"$line")
    go=$(sed 's/.*, go-seed \([0-9]*\),.*/\1/' <<<"$line")
    row "| memory per idle connection, N = $n (bytes) | $cw | $go | $(ratio "$go" "$cw")× less |"
  done
}

# flood_run SERVER CLIENT CONNS RUN: prints "items_per_s received sent". SERVER: cw, go, or
# before (connwarden from $CW_BEFORE).
flood_run() {
  local server=$1 client=$2 conns=$3 run=$4 name="flood-$1-$2-$3-$4" sent secs received
  local scraper=
  case $server in
    cw)
      start_cw "$name" --admin "127.0.0.1:$ADMIN_PORT"
      # As Prometheus would: a scrape every second while the flood runs.
      ( while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics" || true; done ) &
      scraper=$! ;;
    noadmin) start_cw "$name" --admin off ;;
    before) SERVE_BIN=$CW_BEFORE start_cw "$name" ;;
    go) start_go "$name" ;;
  esac
  if [ "$client" = go ]; then
    "$BIN/seed-load" flood -to "127.0.0.1:$PORT" -conns "$conns" -items "$FLOOD_ITEMS" >"$OUT/$name.load" 2>&1
    sent=$(sed 's/.*"sent":\([0-9]*\).*/\1/' "$OUT/$name.load")
    secs=$(sed 's/.*"drain_s":\([0-9.e+-]*\).*/\1/' "$OUT/$name.load")
  else
    # One item per write, as the Go load generator does (the Go recipe decodes one object per
    # read, so coalesced writes would only measure its framing bug).
    "$CW" bench flood --to "127.0.0.1:$PORT" --conns "$conns" --items "$FLOOD_ITEMS" --sources 8 --batch 1 --json \
      >"$OUT/$name.load" 2>&1 || true
    sent=$(sed 's/.*"sent":\([0-9]*\).*/\1/' "$OUT/$name.load")
    secs=$(sed 's/.*"seconds":\([0-9.e+-]*\).*/\1/' "$OUT/$name.load")
  fi
  [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
  stop
  if [ "$server" = go ]; then received=$(received_go "$name"); else received=$(received_cw "$name"); fi
  awk -v r="$received" -v s="$secs" -v n="$sent" 'BEGIN {printf "%.0f %d %d\n", r / s, r, n}'
}

# Runs are interleaved (run 1 of every server, then run 2, …) so that the machine's drift
# reaches every server alike.
stage_flood() {
  log "== flood: items received intact per second, and items lost (sent - received intact)"
  local conns client server run servers=(${FLOOD_SERVERS:-cw go}) rate received sent paired
  [ -n "$CW_BEFORE" ] && servers+=(before)
  [ -n "$CW_ADMIN_OFF" ] && servers+=(noadmin)
  for conns in $FLOOD_CONNS; do
    for client in ${FLOOD_CLIENTS:-go cw}; do
      declare -A rates=() lost=() med=() lostmed=()
      for run in $(seq "$RUNS"); do
        for server in "${servers[@]}"; do
          read -r rate received sent < <(flood_run "$server" "$client" "$conns" "$run")
          rates[$server]+="$rate "; lost[$server]+="$((sent - received)) "
        done
      done
      for server in "${servers[@]}"; do
        med[$server]=$(printf '%s\n' ${rates[$server]} | median)
        lostmed[$server]=$(printf '%s\n' ${lost[$server]} | median)
        log "flood conns=$conns client=$client server=$server: items/s ${rates[$server]}(median ${med[$server]}), lost ${lost[$server]}"
      done
      row "| items/s received intact, $conns connections, $client load generator | ${med[cw]} (lost ${lostmed[cw]}) | ${med[go]:-n/a} (lost ${lostmed[go]:-n/a}) | $(ratio "${med[cw]}" "${med[go]:-0}")× |"
      if [ -n "$CW_BEFORE" ]; then
        # Runs n of both builds ran next to each other: the median of those pairs' ratios is
        # the figure least moved by the machine's drift.
        paired=$(paste <(printf '%s\n' ${rates[cw]}) <(printf '%s\n' ${rates[before]}) |
          awk '{printf "%.4f\n", $1 / $2}' | median)
        log "flood conns=$conns client=$client this build / before, run by run: $(paste -d/ <(printf '%s\n' ${rates[cw]}) <(printf '%s\n' ${rates[before]}) | tr '\n' ' ')"
        row "| — this build / before ($(basename "$CW_BEFORE")): ${med[cw]} / ${med[before]} items/s (lost ${lostmed[before]} before); median of paired runs $paired× | | | $(ratio "${med[cw]}" "${med[before]}" 3)× |"
      fi
      if [ -n "$CW_ADMIN_OFF" ]; then
        paired=$(paste <(printf '%s\n' ${rates[cw]}) <(printf '%s\n' ${rates[noadmin]}) |
          awk '{printf "%.4f\n", $1 / $2}' | median)
        log "flood conns=$conns client=$client admin on and scraped / admin off, run by run: $(paste -d/ <(printf '%s\n' ${rates[cw]}) <(printf '%s\n' ${rates[noadmin]}) | tr '\n' ' ')"
        row "| — admin on, /metrics scraped every second / --admin off: ${med[cw]} / ${med[noadmin]} items/s; median of paired runs $paired× | | | $(ratio "${med[cw]}" "${med[noadmin]}" 3)× |"
      fi
      unset rates lost med lostmed
    done
  done
}

stage_churn() {
  log "== churn: connect, send one item, close (connwarden bench churn, 64 at once)"
  local server run rates med cw_med go_med name
  for server in cw go; do
    rates=()
    for run in $(seq "$RUNS"); do
      name="churn-$server-$run"
      if [ "$server" = cw ]; then start_cw "$name"; else start_go "$name"; fi
      "$CW" bench churn --to "127.0.0.1:$PORT" --cycles "$CHURN_CYCLES" --sources 8 --json >"$OUT/$name.load" 2>&1 || true
      stop
      rates+=("$(sed 's/.*"cycles_per_second":\([0-9.]*\).*/\1/' "$OUT/$name.load" | cut -d. -f1)")
    done
    med=$(printf '%s\n' "${rates[@]}" | median)
    log "churn server=$server: cycles/s ${rates[*]} (median $med)"
    if [ "$server" = cw ]; then cw_med=$med; else go_med=$med; fi
  done
  row "| churn cycles/s (connect, 1 item, close) | $cw_med | $go_med | $(ratio "$cw_med" "$go_med")× |"

  log "== churn leak check: $CHURN_LONG cycles against one connwarden process"
  start_cw churn-long
  local fd0 fd1 rss1 rss2 live
  fd0=$(fds "$SRV")
  "$CW" bench churn --to "127.0.0.1:$PORT" --cycles 10000 --sources 8 --json >"$OUT/churn-long-a.load"
  rss1=$(rss_kib "$SRV")
  "$CW" bench churn --to "127.0.0.1:$PORT" --cycles $((CHURN_LONG - 10000)) --sources 8 --json >"$OUT/churn-long-b.load"
  sleep 1
  rss2=$(rss_kib "$SRV"); fd1=$(fds "$SRV")
  live=$(established $PORT)
  stop
  log "churn leak check: descriptors $fd0 -> $fd1, live connections after: $live, RSS after 10k cycles ${rss1} KiB, after $CHURN_LONG ${rss2} KiB ($(awk -v a="$rss2" -v b="$rss1" 'BEGIN {printf "%+.1f%%", (a - b) * 100 / b}'))"
  row "| after $CHURN_LONG churn cycles: descriptors, live connections, RSS change since 10k cycles | $fd0 → $fd1, $live live, $(awk -v a="$rss2" -v b="$rss1" 'BEGIN {printf "%+.1f%%", (a - b) * 100 / b}') | | |"
}

netns_up() {
  ip netns add "$NS_S"; ip netns add "$NS_C"
  ip link add "$IF_S" netns "$NS_S" type veth peer name "$IF_C" netns "$NS_C"
  ip -n "$NS_S" addr add "$SRV_IP/24" dev "$IF_S"
  local i base=${CLI_BASE##*.} prefix=${CLI_BASE%.*}
  for i in $(seq 0 $((CLI_COUNT - 1))); do ip -n "$NS_C" addr add "$prefix.$((base + i))/24" dev "$IF_C"; done
  for ns in "$NS_S" "$NS_C"; do
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 \
      net.ipv4.ip_local_port_range="1024 65535"
  done
  ip -n "$NS_S" link set "$IF_S" up; ip -n "$NS_C" link set "$IF_C" up
}
netns_down() { ip netns del "$NS_S" 2>/dev/null || true; ip netns del "$NS_C" 2>/dev/null || true; }

# closes_after LOGS... : milliseconds from $DOWN_AT to each close, one per line (reads the
# connwarden JSON close lines or go-seed's "conn_closed" lines).
closes_after() {
  python3 - "$DOWN_AT" "$@" <<'PY'
import json, sys, datetime
down = float(sys.argv[1])
for path in sys.argv[2:]:
    for line in open(path, errors="replace"):
        t = None
        if '"connection closed"' in line:
            v = json.loads(line)
            ts = v["timestamp"].rstrip("Z")
            t = datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp()
        elif "conn_closed" in line:
            t = float(line.split()[0])
        if t is not None:
            print(int((t - down) * 1000))
PY
}
percentiles() { sort -n | awk '{a[NR]=$1} END {if (!NR) {print "n/a"; exit} printf "p50 %.2f s, p99 %.2f s, max %.2f s (%d closed)", a[int(NR*0.5+0.5)]/1000, a[int(NR*0.99+0.5)]/1000, a[NR]/1000, NR}'; }

# deadpeer SERVER CONNS PROCS: idle connections from the client namespace, link down at once.
deadpeer() {
  local server=$1 conns=$2 procs=$3 name="deadpeer-$1-$2" p per logs=() fd0 fd1
  SRVS=(); LOADS=()
  netns_up
  per=$(( (conns + procs - 1) / procs ))
  for p in $(seq 0 $((procs - 1))); do
    if [ "$server" = cw ]; then
      ip netns exec "$NS_S" env RUST_LOG=info "$CW" serve --listen "$SRV_IP:$PORT" --sink file:/dev/null \
        --log-format json --reuse-port --max-connections 19000 --admin off \
        --keepalive-idle 2s --keepalive-interval 1s --keepalive-count 3 >/dev/null 2>"$OUT/$name-srv$p.err" &
    else
      ip netns exec "$NS_S" "$BIN/seed-server" -listen "$SRV_IP:$PORT" -keepalive-period 2s -stats-every 0 \
        >"$OUT/$name-srv$p.out" 2>"$OUT/$name-srv$p.err" &
    fi
    PIDS+=($!); logs+=("$OUT/$name-srv$p.err"); SRVS[$p]=$!
    # Each process must listen before the load starts, or SO_REUSEPORT spreads it unevenly.
    if [ "$server" = cw ]; then wait_line "$OUT/$name-srv$p.err" '"listening"' 10; else wait_port "$PORT" "$NS_S"; fi
  done
  fd0=0; for p in "${!SRVS[@]}"; do fd0=$((fd0 + $(fds "${SRVS[$p]}"))); done
  for p in $(seq 0 $((procs - 1))); do
    ip netns exec "$NS_C" "$CW" bench idle --to "$SRV_IP:$PORT" --conns "$per" --sources "$CLI_COUNT" \
      --source-base "$CLI_BASE" --parallel 512 >"$OUT/$name-load$p.out" 2>"$OUT/$name-load$p.err" &
    PIDS+=($!); LOADS+=($!)
  done
  for p in $(seq 0 $((procs - 1))); do wait_line "$OUT/$name-load$p.err" "^holding" 300; done
  local held; held=$(ip netns exec "$NS_S" ss -Htn state established "( sport = :$PORT )" | wc -l)
  sleep 3 # past keep-alive idle: probes flow and are answered while the link is up
  DOWN_AT=$(date +%s.%N)
  ip -n "$NS_C" link set "$IF_C" down
  local i closed=0 bound_s=$([ "$server" = cw ] && echo 5 || echo 20)
  for i in $(seq $(( (bound_s + 30) * 10 ))); do
    closed=$(ip netns exec "$NS_S" ss -Htn state established "( sport = :$PORT )" | wc -l)
    [ "$closed" -eq 0 ] && break
    sleep 0.1
  done
  sleep 1
  fd1=0; for p in "${!SRVS[@]}"; do fd1=$((fd1 + $(fds "${SRVS[$p]}"))); done
  local stats; stats=$(closes_after "${logs[@]}" | percentiles)
  log "dead peers server=$server: $held held, link down; $stats; bound ${bound_s} s; still established: $closed; server descriptors $fd0 before the load, $fd1 after"
  for p in "${!SRVS[@]}" ; do kill -TERM "${SRVS[$p]}" 2>/dev/null || true; done
  for p in "${LOADS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${!SRVS[@]}"; do wait "${SRVS[$p]}" 2>/dev/null || true; done
  for p in "${LOADS[@]}"; do wait "$p" 2>/dev/null || true; done
  SRVS=(); LOADS=()
  netns_down
  DEAD_RESULT="$stats; bound ${bound_s} s; descriptors $fd0 → $fd1"
}

stage_deadpeer() {
  log "== dead peers: $DEAD_CONNS idle connections lose their link at once (network namespaces)"
  deadpeer cw "$DEAD_CONNS" 1; local cw=$DEAD_RESULT
  deadpeer go "$DEAD_CONNS" 1; local go=$DEAD_RESULT
  row "| $DEAD_CONNS dead idle peers: detection after link down (keep-alive idle 2 s) | $cw | $go | |"
}

stage_scale() {
  log "== scale: $SCALE_CONNS idle connections on $SCALE_PROCS connwarden processes (SO_REUSEPORT), link down at once"
  deadpeer cw "$SCALE_CONNS" "$SCALE_PROCS"
  row "| $SCALE_CONNS dead idle peers on $SCALE_PROCS processes (SO_REUSEPORT) | $DEAD_RESULT | | |"
}

build
log "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r); runs=$RUNS; results in $OUT"
row "| measure | connwarden | go-seed | connwarden vs go-seed |"
row "|---|---|---|---|"
for stage in $STAGES; do "stage_$stage"; done
log "table: $OUT/table.md"
