# Helpers shared by the scripts of bench/ (sourced, not run). Each script sets OUT (where
# summary.txt goes) before calling log, and appends the pids it starts to PIDS.
PIDS=()

# Stops every process in PIDS: TERM first, so servers drain and print their figures, KILL after.
kill_pids() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}

log() { printf '%s\n' "$*" | tee -a "$OUT/summary.txt" >&2; }
# median of the numbers on stdin ("n/a" when there are none)
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
# percentile P (nearest rank) of the numbers on stdin
pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# established connections whose local (server) port is PORT, counted on the server side only
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }
