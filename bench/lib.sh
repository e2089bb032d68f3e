# Helpers shared by the scripts of bench/ (sourced, not run). A script sets ROOT and OUT (where
# summary.txt goes) first and appends the pids it starts to PIDS. Sourcing creates OUT and stops
# every process in PIDS on exit (a script with more to clean up sets its own trap after).
PIDS=()
mkdir -p "$OUT"
trap kill_pids EXIT

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
# json_num FILE KEY: the number under top-level KEY of the JSON object in FILE, rounded
json_num() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$1" "$2"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# established connections whose local (server) port is PORT, counted on the server side only
# (in the server's network namespace when IN_SERVER is set, e.g. "ip netns exec NS")
established() { ${IN_SERVER:-} ss -Htn state established "( sport = :$1 )" | wc -l; }

# Builds the release binary (quietly when it is up to date) and makes sure curl is there.
prepare_release() {
  (cd "$ROOT" && cargo build --release --quiet 2>/dev/null || cargo build --release)
  command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
}

# serve_with_idle_load N PORT ADMIN: starts `serve` on LISTEN_HOST:PORT (127.0.0.1; flags from
# SERVE_ARGS too) with its admin API on ADMIN, then N idle connections from a separate
# `bench idle` process (8 source addresses from SOURCE_BASE, 127.0.0.2); sets SRV and LOAD, and
# returns once all N are established on the server's side. IN_SERVER and IN_CLIENT prefix the
# commands of each side ("ip netns exec NS", to run them in network namespaces).
serve_with_idle_load() {
  local n=$1 port=$2 admin=$3 cw=${CW_SERVE:-$ROOT/target/release/connwarden}
  local host=${LISTEN_HOST:-127.0.0.1}
  RUST_LOG=warn ${IN_SERVER:-} "$cw" serve --listen "$host:$port" --admin "$admin" --sink file:/dev/null \
    --max-connections $((n + 100)) ${SERVE_ARGS:-} >"$OUT/server.out" 2>"$OUT/server.err" &
  SRV=$!; PIDS+=("$SRV")
  for _ in $(seq 200); do ${IN_SERVER:-} curl -sf "http://$admin/healthz" >/dev/null && break; sleep 0.05; done
  ${IN_CLIENT:-} "$cw" bench idle --to "$host:$port" --conns "$n" --sources 8 \
    --source-base "${SOURCE_BASE:-127.0.0.2}" --json >"$OUT/idle.json" 2>"$OUT/idle.err" &
  LOAD=$!; PIDS+=("$LOAD")
  for _ in $(seq 600); do [ "$(established "$port")" -ge "$n" ] && break; sleep 0.1; done
}

# make_certs DIR: a throw-away CA (DIR/ca.pem) and a P-256 server certificate for localhost and
# 127.0.0.1 (DIR/server.crt, DIR/server.key), made by openssl.
make_certs() {
  local d=$1
  command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/ext" -out "$d/server.crt" 2>/dev/null
}
