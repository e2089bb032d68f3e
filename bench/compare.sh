#!/usr/bin/env bash
# connwarden side by side with the Go baseline of ../shared/peers/go-seed (the seed article's
# recipe) and, in the flood stage, with syslog-ng 3.38 (Debian's syslog-ng-core; configured by
# bench/syslog-ng.conf.in), on this machine, in one run. Prints one table; docs/BENCHMARKS.md
# explains it.
#
# usage: bench/compare.sh [STAGE...]    stages: memory flood churn deadpeer scale (default: all)
# env:   RUNS (3)                  repetitions where time is measured; medians are reported
#        MEM_COUNTS ("1000 5000 15000")   idle connections for the memory stage
#        FLOOD_CONNS ("4 64"), FLOOD_ITEMS (100000)   flood connections and items per connection
#        FLOOD_BATCHES ("1")       items per write of the load generators, each a flood of its own
#                                  ("1 64": both; the Go recipe's server decodes one object per
#                                  read, so beyond 1 go-seed's figure measures its framing bug)
#        FLOOD_CLIENTS ("go cw"), FLOOD_SERVERS ("cw go syslog")   load generators and servers.
#                                  syslog: syslog-ng 3.38 writing NDJSON records to a file; it
#                                  brings cwfile along (connwarden writing to a file the same
#                                  way), run next to it, for the row "connwarden / syslog-ng"
#        SKIP_CARGO (unset)        1: no cargo build; $CW is used as it is
#        CW (target/release/connwarden)   the connwarden binary under test
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
CW=${CW:-$ROOT/target/release/connwarden}
CW_BEFORE=${CW_BEFORE:-}
CW_ADMIN_OFF=${CW_ADMIN_OFF:-}
ADMIN_PORT=7731
RUNS=${RUNS:-3}
MEM_COUNTS=${MEM_COUNTS:-"1000 5000 15000"}
FLOOD_CONNS=${FLOOD_CONNS:-"4 64"}
FLOOD_ITEMS=${FLOOD_ITEMS:-100000}
FLOOD_BATCHES=${FLOOD_BATCHES:-1}
FLOOD_SERVERS=${FLOOD_SERVERS:-cw go syslog}
FLOOD_CLIENTS=${FLOOD_CLIENTS:-go cw}
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

wants_syslog() { [[ " $STAGES " == *" flood "* && " $FLOOD_SERVERS " == *" syslog "* ]]; }

build() {
  command -v go >/dev/null || { apt-get update -qq && apt-get install -y -qq golang-go >/dev/null; }
  (cd "$SEED" && go build -o "$BIN/seed-server" ./server && go build -o "$BIN/seed-load" ./load)
  if wants_syslog; then
    # Debian's package starts the system's syslog-ng service unless policy-rc.d forbids it (it
    # does on these machines); this script never uses that one: it runs its own (start_syslog).
    command -v syslog-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq syslog-ng-core >/dev/null; }
    # The peer is syslog-ng 3.38 (Debian 12's); another version is another comparison.
    syslog-ng --version | head -1 | grep -q '(3\.38\.' ||
      { echo "syslog-ng 3.38 wanted, found: $(syslog-ng --version | head -1)" >&2; exit 1; }
  fi
  [ -n "${SKIP_CARGO:-}" ] || (cd "$ROOT" && cargo build --release --quiet)
}

# start_cw NAME ARGS...: connwarden serve on 127.0.0.1:$PORT, final counters in its JSON log.
# SERVE_BIN overrides the binary (the flood stage's "before" server), SINK the sink (/dev/null).
start_cw() {
  local name=$1; shift
  RUST_LOG=warn,connwarden::server=info "${SERVE_BIN:-$CW}" serve --listen "127.0.0.1:$PORT" --sink "${SINK:-file:/dev/null}" \
    --log-format json "$@" >/dev/null 2>"$OUT/$name.err" &
  SRV=$!; PIDS+=("$SRV"); wait_port "$PORT"
}
start_go() {
  local name=$1; shift
  "$BIN/seed-server" -listen "127.0.0.1:$PORT" -stats-every 0 -log-conns=false "$@" \
    >"$OUT/$name.out" 2>"$OUT/$name.err" &
  SRV=$!; PIDS+=("$SRV"); wait_port "$PORT"
}
# cw_seconds KEY: a duration of connwarden's effective defaults (serve --print-config) in whole
# seconds, for the peers that take seconds.
cw_seconds() {
  local v; v=$("$CW" serve --print-config | sed -n "s/^$1 = \"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p")
  case $v in
    *ms) echo "connwarden's $1 is $v: not whole seconds" >&2; exit 1 ;;
    *s) echo "${v%s}" ;; *m) echo $(( ${v%m} * 60 )) ;; *h) echo $(( ${v%h} * 3600 )) ;; *) echo "$v" ;;
  esac
}
# start_syslog NAME: syslog-ng in the foreground with bench/syslog-ng.conf.in, its own persist
# file, pid file and control socket in $OUT (never /var/lib/syslog-ng, no system log source):
# records to $OUT/NAME.ndjson, lines that are not JSON to $OUT/NAME.rejected. As root it drops
# its capabilities but CAP_SYSLOG, as it would as a system service.
SYSLOG_MAX_CONNS=128 SYSLOG_WINDOW=1000
start_syslog() {
  local name=$1
  sed -e "s|@PORT@|$PORT|g" -e "s|@MAX_CONNS@|$SYSLOG_MAX_CONNS|g" -e "s|@WINDOW@|$SYSLOG_WINDOW|g" \
    -e "s|@IW_SIZE@|$((SYSLOG_MAX_CONNS * SYSLOG_WINDOW))|g" \
    -e "s|@KA_IDLE@|$(cw_seconds keepalive_idle)|g" -e "s|@KA_INTERVAL@|$(cw_seconds keepalive_interval)|g" \
    -e "s|@KA_COUNT@|$("$CW" serve --print-config | sed -n 's/^keepalive_count = //p')|g" \
    -e "s|@MAX_FRAME@|$("$CW" serve --print-config | sed -n 's/^max_frame = //p')|g" \
    -e "s|@OUT_FILE@|$OUT/$name.ndjson|g" -e "s|@REJECTED_FILE@|$OUT/$name.rejected|g" \
    "$ROOT/bench/syslog-ng.conf.in" >"$OUT/$name.conf"
  ! grep -n '@[A-Z_]*@' "$OUT/$name.conf" >&2 || { echo "unfilled in $OUT/$name.conf" >&2; exit 1; }
  syslog-ng -F -e -f "$OUT/$name.conf" --persist-file "$OUT/$name.persist" --pidfile "$OUT/$name.pid" \
    --control "$OUT/$name.ctl" >"$OUT/$name.err" 2>&1 &
  SRV=$!; PIDS+=("$SRV"); wait_port "$PORT"
}
# A stopped server leaves PIDS, so that kill_pids never signals a pid the system gave again.
stop() { kill -TERM "$SRV"; wait "$SRV" 2>/dev/null || true; forget "$SRV"; }
forget() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
# run_load CMD...: runs a load generator as a job in PIDS and waits for it (a signal ends the
# wait at once, so the EXIT trap stops it too); returns its status.
run_load() { local p rc=0; "$@" & p=$!; PIDS+=("$p"); wait "$p" || rc=$?; forget "$p"; return "$rc"; }
# wait_lines TARGET STALL_S BOUND_S FILE...: returns when the FILEs hold TARGET lines together,
# when they have not grown for STALL_S seconds, or after BOUND_S; prints the count and which.
# It polls (reading only what is new), so it stops within 20 ms of the event; the time of the
# last write comes from the file itself (record_count).
wait_lines() {
  python3 - "$@" <<'PY'
import sys, time
target, stall, bound = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
offsets = {p: 0 for p in sys.argv[4:]}
count = 0
start = grown = time.monotonic()
while True:
    for path in offsets:
        try:
            with open(path, "rb") as f:
                f.seek(offsets[path])
                while chunk := f.read(1 << 20):
                    count += chunk.count(b"\n")
                    offsets[path] += len(chunk)
                    grown = time.monotonic()
        except FileNotFoundError:
            pass
    now = time.monotonic()
    if count >= target:
        print(count, "complete"); break
    if now - grown > stall:
        print(count, "stalled"); break
    if now - start > bound:
        print(count, "timeout"); break
    time.sleep(0.02)
PY
}
# record_count FILE: "intact invalid mtime": lines of FILE that are whole records (a JSON object
# with received_at and an "item" object whose one ip key, any case, holds an IPv4 or IPv6
# address: what connwarden accepts as an item), other lines, and the time of FILE's last write
# (0 when there is no FILE).
record_count() {
  python3 - "$1" <<'PY'
import ipaddress, json, os, sys
path = sys.argv[1]
if not os.path.exists(path):
    print(0, 0, 0); sys.exit()
intact = invalid = 0
with open(path, "rb") as f:
    for line in f:
        try:
            record = json.loads(line)
            ips = [v for k, v in record["item"].items() if k.lower() == "ip"]
            ok = "received_at" in record and len(ips) == 1 and isinstance(ips[0], str)
            ok = ok and ipaddress.ip_address(ips[0]) is not None
        except Exception:
            ok = False
        intact += ok
        invalid += not ok
print(intact, invalid, "%.9f" % (os.stat(path).st_mtime_ns / 1e9))
PY
}
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

# flood_run SERVER CLIENT CONNS BATCH RUN: prints "items_per_s received sent". SERVER: cw, go,
# before (connwarden from $CW_BEFORE), noadmin (cw with --admin off), cwfile or syslog.
#
# What items/s is. cw, go, before, noadmin: items received intact / the load generator's time
# (from its first write, the Go one's connections already up, until the server has closed every
# connection, i.e. has read every byte). connwarden closes a connection once it has read and
# queued its last item; its sink (/dev/null) may have up to --queue records still to write then.
# cwfile, syslog: end to end, whole records in the file / the time from the load generator's
# start until the file holds its last record. syslog-ng too closes a connection at the end of
# its input while up to its window of messages (bench/syslog-ng.conf.in) is still on the way to
# the file, so the load generator's time alone would flatter it; connwarden with a file sink
# (cwfile) is measured the same way, so that those two figures mean the same.
flood_run() {
  local server=$1 client=$2 conns=$3 batch=$4 run=$5 name="flood-$1-$2-$3-b$4-$5" sent secs received
  local scraper='' file='' done_at lines how invalid mtime
  case $server in
    cw)
      start_cw "$name" --admin "127.0.0.1:$ADMIN_PORT"
      # As Prometheus would: a scrape every second while the flood runs.
      ( while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics" || true; done ) &
      scraper=$!; PIDS+=("$scraper") ;;
    noadmin) start_cw "$name" --admin off ;;
    before) SERVE_BIN=$CW_BEFORE start_cw "$name" ;;
    go) start_go "$name" ;;
    cwfile)
      # --fsync never: syslog-ng's file() does not fsync either (connwarden's default, group
      # commit, syncs even when no client asks for acks). Neither server's counters are scraped.
      file=$OUT/$name.ndjson
      SINK=file:$file start_cw "$name" --admin off --fsync never ;;
    syslog) file=$OUT/$name.ndjson; start_syslog "$name" ;;
  esac
  if [ "$client" = go ]; then
    run_load "$BIN/seed-load" flood -to "127.0.0.1:$PORT" -conns "$conns" -items "$FLOOD_ITEMS" -batch "$batch" \
      >"$OUT/$name.load" 2>&1
    sent=$(sed 's/.*"sent":\([0-9]*\).*/\1/' "$OUT/$name.load")
    secs=$(sed 's/.*"drain_s":\([0-9.e+-]*\).*/\1/' "$OUT/$name.load")
  else
    # --batch as the Go load generator's -batch (at 1, the Go recipe decodes one object per
    # read, so coalesced writes would only measure its framing bug).
    run_load "$CW" bench flood --to "127.0.0.1:$PORT" --conns "$conns" --items "$FLOOD_ITEMS" --sources 8 --batch "$batch" --json \
      >"$OUT/$name.load" 2>&1 || true
    sent=$(sed 's/.*"sent":\([0-9]*\).*/\1/' "$OUT/$name.load")
    secs=$(sed 's/.*"seconds":\([0-9.e+-]*\).*/\1/' "$OUT/$name.load")
  fi
  # The load generator's start, on the clock of the files' times, is done_at - secs (its exit
  # and this date's fork, a few ms, are counted as part of its run: to the file's favour).
  done_at=$(date +%s.%N)
  [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; forget "$scraper"; }
  if [ -n "$file" ]; then
    # Every line sent is in a file (a record, or rejected as not JSON) or is not coming: at most
    # 5 s without growth, 300 s in all; the time of the last record is the file's, not ours.
    read -r lines how < <(wait_lines "$sent" 5 300 "$file" "$OUT/$name.rejected")
    [ "$how" = complete ] || log "flood $name: the files hold $lines lines of $sent sent ($how)"
  fi
  if [ "$server" = syslog ]; then
    # Flow control, checked: nothing dropped anywhere on the way (queues or destinations).
    syslog-ng-ctl stats --control "$OUT/$name.ctl" >"$OUT/$name.stats"
    log "flood $name: syslog-ng counters: dropped $(awk -F';' '$5 == "dropped" {n += $6} END {print n + 0}' "$OUT/$name.stats"), json-parser discarded $(awk -F';' '$2 == "p_json" && $5 == "discarded" {n += $6} END {print n + 0}' "$OUT/$name.stats"), written to the records file $(awk -F';' '$1 == "dst.file" && $2 ~ /^d_items/ && $5 == "written" {n += $6} END {print n + 0}' "$OUT/$name.stats"), lines rejected $(if [ -f "$OUT/$name.rejected" ]; then wc -l <"$OUT/$name.rejected"; else echo 0; fi)"
  fi
  stop
  if [ -n "$file" ]; then
    read -r received invalid mtime < <(record_count "$file")
    [ "$invalid" -eq 0 ] || log "flood $name: $invalid lines of the records file are not whole records"
    if [ "$server" = cwfile ] && [ "$received" != "$(received_cw "$name")" ]; then
      log "flood $name: $received records in the file, connwarden says it wrote $(received_cw "$name")"
    fi
    # A sample stays; the file goes (0.7 GB a run at 64 x 100,000 items), unless it is short of
    # items or holds other lines: then it is the evidence.
    head -3 "$file" >"$OUT/$name.sample" 2>/dev/null || true
    [ "$invalid" -ne 0 ] || [ "$received" -ne "$sent" ] || rm -f "$file"
    local until_last
    until_last=$(awk -v s="$secs" -v d="$done_at" -v m="$mtime" 'BEGIN {e = m - (d - s); print (m > 0 && e > s) ? e : s}')
    log "flood $name: the load generator's time $secs s, until the file's last record $until_last s"
    secs=$until_last
  elif [ "$server" = go ]; then received=$(received_go "$name"); else received=$(received_cw "$name"); fi
  awk -v r="$received" -v s="$secs" -v n="$sent" 'BEGIN {printf "%.0f %d %d\n", r / s, r, n}'
}

# Runs are interleaved (run 1 of every server, then run 2, …) so that the machine's drift
# reaches every server alike.
stage_flood() {
  log "== flood: items received intact per second, and items lost (sent - received intact)"
  local conns batch per client server run servers=() rate received sent paired
  for server in $FLOOD_SERVERS; do
    # connwarden to a file runs right before syslog-ng: each pair of their runs sees the same
    # machine.
    [ "$server" = syslog ] && servers+=(cwfile)
    servers+=("$server")
  done
  [ -n "$CW_BEFORE" ] && servers+=(before)
  [ -n "$CW_ADMIN_OFF" ] && servers+=(noadmin)
  for conns in $FLOOD_CONNS; do
    for batch in $FLOOD_BATCHES; do
      if [ "$batch" = 1 ]; then per="1 item per write"; else per="$batch items per write"; fi
      for client in $FLOOD_CLIENTS; do
        declare -A rates=() lost=() med=() lostmed=()
        for run in $(seq "$RUNS"); do
          for server in "${servers[@]}"; do
            # In this shell, not in a $( ) or <( ) subshell: the servers it starts go into this
            # shell's PIDS, which the EXIT trap stops (Ctrl-C, a failed step), and a step that
            # fails ends the script.
            flood_run "$server" "$client" "$conns" "$batch" "$run" >"$OUT/flood-run.result"
            read -r rate received sent <"$OUT/flood-run.result"
            [[ "$rate $received $sent" =~ ^[0-9]+\ [0-9]+\ [0-9]+$ ]] ||
              { echo "flood run $server $client $conns $batch $run gave no figures, see $OUT" >&2; exit 1; }
            rates[$server]+="$rate "; lost[$server]+="$((sent - received)) "
          done
        done
        for server in "${servers[@]}"; do
          med[$server]=$(printf '%s\n' ${rates[$server]} | median)
          lostmed[$server]=$(printf '%s\n' ${lost[$server]} | median)
          log "flood conns=$conns batch=$batch client=$client server=$server: items/s ${rates[$server]}(median ${med[$server]}), lost ${lost[$server]}"
        done
        if [ -n "${med[cw]:-}" ]; then
          row "| items/s received intact, $conns connections, $per, $client load generator | ${med[cw]} (lost ${lostmed[cw]}) | ${med[go]:-n/a} (lost ${lostmed[go]:-n/a}) | $(ratio "${med[cw]}" "${med[go]:-0}")× |"
        fi
        if [ -n "${med[syslog]:-}" ]; then
          # Both write a record per item to a file and are timed until the file holds the last.
          paired=$(paste <(printf '%s\n' ${rates[cwfile]}) <(printf '%s\n' ${rates[syslog]}) |
            awk '{printf "%.4f\n", ($2 > 0) ? $1 / $2 : 0}' | median)
          log "flood conns=$conns batch=$batch client=$client connwarden (file) / syslog-ng, run by run: $(paste -d/ <(printf '%s\n' ${rates[cwfile]}) <(printf '%s\n' ${rates[syslog]}) | tr '\n' ' ')"
          row "| — connwarden / syslog-ng $(syslog-ng --version | head -1 | sed 's/.*(\(.*\))/\1/'), each writing a record per item to a file, end to end ($conns connections, $per, $client load generator): ${med[cwfile]} (lost ${lostmed[cwfile]}) / ${med[syslog]} (lost ${lostmed[syslog]}) items/s; median of paired runs $paired× | | | $(ratio "${med[cwfile]}" "${med[syslog]}" 2)× |"
        fi
        if [ -n "$CW_BEFORE" ]; then
          # Runs n of both builds ran next to each other: the median of those pairs' ratios is
          # the figure least moved by the machine's drift.
          paired=$(paste <(printf '%s\n' ${rates[cw]}) <(printf '%s\n' ${rates[before]}) |
            awk '{printf "%.4f\n", $1 / $2}' | median)
          log "flood conns=$conns batch=$batch client=$client this build / before, run by run: $(paste -d/ <(printf '%s\n' ${rates[cw]}) <(printf '%s\n' ${rates[before]}) | tr '\n' ' ')"
          row "| — this build / before ($(basename "$CW_BEFORE")): ${med[cw]} / ${med[before]} items/s (lost ${lostmed[before]} before); median of paired runs $paired× | | | $(ratio "${med[cw]}" "${med[before]}" 3)× |"
        fi
        if [ -n "$CW_ADMIN_OFF" ]; then
          paired=$(paste <(printf '%s\n' ${rates[cw]}) <(printf '%s\n' ${rates[noadmin]}) |
            awk '{printf "%.4f\n", $1 / $2}' | median)
          log "flood conns=$conns batch=$batch client=$client admin on and scraped / admin off, run by run: $(paste -d/ <(printf '%s\n' ${rates[cw]}) <(printf '%s\n' ${rates[noadmin]}) | tr '\n' ' ')"
          row "| — admin on, /metrics scraped every second / --admin off: ${med[cw]} / ${med[noadmin]} items/s; median of paired runs $paired× | | | $(ratio "${med[cw]}" "${med[noadmin]}" 3)× |"
        fi
        unset rates lost med lostmed
      done
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
