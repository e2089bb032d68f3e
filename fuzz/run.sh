#!/usr/bin/env bash
# Fuzzes the decoder, the parser and the way to the sink with libFuzzer, SECONDS per target
# (default 600), one target after another (two cores: never two fuzzers at once).
#
#   bash fuzz/run.sh [SECONDS] [TARGET…]
#
# Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# The corpus grows in fuzz/work/TARGET (not committed), starting from fuzz/seeds. An input that
# fails is saved under fuzz/artifacts/TARGET/; once fixed, copy it into fuzz/regressions/ so
# that `cargo test` (tests/fuzz_corpus.rs) replays it on stable from then on.
# Prints, per target, the executions, their rate and the corpus; the log is fuzz/work/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decoder_chunks parse_frame sink_line)
fi

# No sanitizer: the code fuzzed (protocol, record) has no `unsafe`, so AddressSanitizer would
# only slow each execution about seven times without finding anything Rust does not check.
fuzz=(cargo +nightly fuzz)
mkdir -p work
if ! "${fuzz[@]}" build -O -s none >work/build.log 2>&1; then
    tail -n 40 work/build.log >&2
    exit 1
fi
total=0
printf '%-16s %14s %10s %8s %6s\n' target executions exec/s corpus secs
for target in "${targets[@]}"; do
    mkdir -p "work/$target"
    log="work/$target.log"
    # -max_len: 1 KiB passes the largest small max_frame of the control byte's table, and
    # longer inputs only slow the search. -timeout: a hang is a bug.
    if ! "${fuzz[@]}" run -O -s none "$target" "work/$target" seeds -- \
        -max_total_time="$seconds" -max_len=1024 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        echo "$target FAILED: see fuzz/$log and fuzz/artifacts/$target/" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    corpus=$(find "work/$target" -type f | wc -l)
    printf '%-16s %14s %10s %8s %6s\n' "$target" "$runs" "$rate" "$corpus" "$seconds"
    total=$((total + runs))
done
printf '%-16s %14s\n' total "$total"
