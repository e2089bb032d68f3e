#!/usr/bin/env bash
# Hand-over time of a binary upgrade (SIGUSR2) under N idle connections, and proof that none of
# them saw a FIN or an RST: `serve` (release build, JSON logs) holds N connections opened by a
# separate load process (tests/peers/idle_peers.py, which watches every socket), is sent
# SIGUSR2, and the new process (the same binary, copied to a directory of the run) takes the
# listeners and every connection.
#
# Usage: RUNS=3 bash bench/upgrade.sh 10000 19000
#
# Per run: the time from SIGUSR2 to the old process's exit (the new process's start, its ready,
# the hand-over and the old one's shutdown), the old process's hand_over_ms (ready to last
# connection sent) and the new one's taking_ms (ready to last connection adopted), the counts
# handed over and adopted, and the peers' FIN and RST counts. Medians per N at the end.
#
# One process may hold at most 20,000 descriptors on these machines: N up to about 19,000.
# Environment: CW_BIN (default target/release/connwarden), RUNS (default 3), OUT (default
# bench/results/upgrade-<time>).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CW_BIN:-$ROOT/target/release/connwarden}
RUNS=${RUNS:-3}
OUT=${OUT:-$ROOT/bench/results/upgrade-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release" >&2; exit 2; }
[ $# -gt 0 ] || set -- 10000 19000

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The value of "$2" in the first JSON log line of file $1 whose message starts with $3.
field() {
  python3 - "$1" "$2" "$3" <<'EOF'
import json, sys
path, key, message = sys.argv[1:]
for line in open(path, errors="replace"):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if str(entry.get("message", "")).startswith(message) and key in entry:
        print(entry[key])
        break
EOF
}

# Waits up to $3 seconds for file $1 to hold a line matching $2.
wait_for() {
  for _ in $(seq 1 $(($3 * 20))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for $2 in $1" >&2; tail -5 "$1" >&2; return 1
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

echo "n run sigusr2_to_old_exit_ms hand_over_ms taking_ms handed_over adopted peers_open fin rst" | tee "$OUT/runs.txt"
for N in "$@"; do
  for run in $(seq 1 "$RUNS"); do
    dir="$OUT/n$N-run$run"; mkdir -p "$dir"
    cp "$BIN" "$dir/connwarden"
    "$dir/connwarden" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --sink "file:$dir/sink.ndjson" \
      --log-format json --max-connections $((N + 100)) 2>"$dir/log" &
    old=$!; PIDS+=("$old")
    wait_for "$dir/log" '"message":"listening"' 30
    addr=$(field "$dir/log" addr "listening")
    admin=$(field "$dir/log" addr "admin listening")
    mkfifo "$dir/ask"
    python3 "$ROOT/tests/peers/idle_peers.py" "$addr" "$N" 8 <"$dir/ask" >"$dir/peers.out" &
    peers=$!; PIDS+=("$peers")
    exec 9>"$dir/ask"
    wait_for "$dir/peers.out" '"event": "ready"' 120
    for _ in $(seq 1 600); do
      live=$(curl -s "http://$admin/connections?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
      [ "$live" = "$N" ] && break; sleep 0.1
    done
    [ "$live" = "$N" ] || { echo "only $live of $N connections registered" >&2; exit 1; }
    start=$(now_ms)
    kill -USR2 "$old"
    rc=0; wait "$old" || rc=$?
    took=$(($(now_ms) - start))
    [ "$rc" = 0 ] || { echo "the old process exited $rc" >&2; exit 1; }
    wait_for "$dir/log" 'connections taken over from the old process' 60
    new=$(field "$dir/log" pid "upgrade: the new process is ready"); PIDS+=("$new")
    echo >&9
    for _ in $(seq 1 100); do [ "$(grep -c '"event": "report"' "$dir/peers.out")" -ge 1 ] && break; sleep 0.05; done
    report=$(grep '"event": "report"' "$dir/peers.out" | tail -1)
    read -r open fin rst < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["open"], r["fin"], r["rst"])' "$report")
    row="$N $run $took $(field "$dir/log" hand_over_ms "upgrade: connections handed over") \
$(field "$dir/log" taking_ms "upgrade: connections taken over") \
$(field "$dir/log" handed_over "upgrade: connections handed over") \
$(field "$dir/log" adopted "upgrade: connections taken over") $open $fin $rst"
    echo "$row" | tee -a "$OUT/runs.txt"
    exec 9>&-
    kill -9 "$new" "$peers" 2>/dev/null || true
    wait "$peers" 2>/dev/null || true
    rm -f "$dir/connwarden"
  done
done

python3 - "$OUT/runs.txt" <<'EOF' | tee "$OUT/summary.txt"
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]).read().splitlines()[1:]]
for n in sorted({int(r[0]) for r in rows}):
    mine = [r for r in rows if int(r[0]) == n]
    med = lambda i: statistics.median(float(r[i]) for r in mine)
    lost = sum(int(r[8]) + int(r[9]) for r in mine)
    print(f"n={n}: median SIGUSR2 to old exit {med(2):.0f} ms, hand-over {med(3):.0f} ms, "
          f"taken over {med(4):.0f} ms; handed over {min(int(r[5]) for r in mine)}..{max(int(r[5]) for r in mine)}, "
          f"peers that saw FIN or RST: {lost} over {len(mine)} runs")
EOF
