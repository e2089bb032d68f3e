#!/usr/bin/env bash
# Where `serve`'s instructions per item go, by function: the two floods of
# bench/item_instructions.sh under cachegrind, their difference taken with cg_diff (start-up
# and shutdown cancel out), each function's count divided by the difference of items. Prints
# the functions that cost the most per item, and the total (issue 28; docs/BENCHMARKS.md).
#
# usage: bench/item_profile.sh [BIN]       default: target/release/connwarden (the release
#                                          profile keeps the debug info this needs)
# env:   TOP (30) functions shown; CONNS, ITEMS, BATCH, PORT, FLOOD_ARGS as item_instructions.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/connwarden}
CONNS=${CONNS:-4}
ITEMS=${ITEMS:-"20000 60000"}
TOP=${TOP:-30}
PROFILE_DIR=$(mktemp -d)
trap 'rm -rf "$PROFILE_DIR"' EXIT
PROFILE_DIR=$PROFILE_DIR CONNS=$CONNS ITEMS=$ITEMS RUNS=1 bash "$ROOT/bench/item_instructions.sh" "$BIN"
read -r small large <<<"$ITEMS"
cg_diff "$PROFILE_DIR/$small.cg" "$PROFILE_DIR/$large.cg" >"$PROFILE_DIR/diff.cg"
items=$(( CONNS * (large - small) ))
echo "instructions per item by function ($items items of difference)"
cg_annotate --auto=no "$PROFILE_DIR/diff.cg" 2>/dev/null | python3 -c '
import re, sys
items, top = int(sys.argv[1]), int(sys.argv[2])
total, by_function, listing = 0, {}, False
for line in sys.stdin:
    m = re.match(r"\s*([0-9,]+) \(\s*[0-9.]+%\)\s+(.*)", line)
    if not m:
        listing = listing or line.startswith("Ir") and "file:function" in line
        continue
    ir, what = int(m.group(1).replace(",", "")), m.group(2).strip()
    if what == "PROGRAM TOTALS":
        total = ir
    elif listing:
        # "file:function": the function, wherever inlining put its code.
        f = re.match(r"(?:.*?\.(?:rs|c|S|h)|\?\?\?):(.*)", what)
        name = f.group(1) if f else what
        # Lines the debug info gives no function for (inlined code): named by their file.
        u = re.match(r"<counts for unidentified lines in (.*)>", what)
        if u:
            path = re.sub(r".*/registry/src/[^/]+/|.*/target/release/build/[^/]+/out/build/", "", u.group(1))
            name = f"(inlined, in {path})"
        by_function[name] = by_function.get(name, 0) + ir
shown = 0
for name, ir in sorted(by_function.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{ir / items:8.0f}  {name[:140]}")
    shown += ir
print(f"{(total - shown) / items:8.0f}  everything else")
print(f"{total / items:8.0f}  total")
' "$items" "$TOP"
