#!/usr/bin/env bash
# System calls per call, mor-gateway vs nginx + lua verifying the same hash.
#
#   benches/syscalls.sh [--calls N] [--binary PATH]
#
# Each proxy (one worker/thread) sits in front of the same upstream (nginx
# answering a MOR-like page). `strace -c -f` is attached to the proxy while
# a client sends N calls (default 10,000) one after the other on one
# keep-alive connection, for each load (verified, bad hash, legacy alias);
# the table gives the proxy's system calls per call, and the five most
# frequent ones. Loopback only; bounded by N.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=10000
BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS="$2"; shift 2 ;;
    --binary) BIN="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
need_apt nginx strace
need_deb libnginx-mod-http-lua
if [ -z "$BIN" ]; then
  cargo build --release --quiet --bin mor-gateway
  BIN=target/release/mor-gateway
fi

UP=$(free_port); LUA=$(free_port)
KEY=456789
REDIS=""
MYSQL=""
start_upstream "$UP" 1
start_nginx_lua "$LUA" "$UP" "$KEY" 0; LUA_PID=$LAST_PID
start_gw gw "$BIN" ""
wait_port "$UP"; wait_port "$LUA"

# measure NAME PORT PID LOAD -> a row
ROWS=()
measure() {
  local name=$1 port=$2 pid=$3 load=$4 out="$W/strace-$1-$4"
  calls "$port" "$load" 1000    # warm-up
  strace -c -f -p "$pid" -o "$out" 2>/dev/null & local st=$!
  sleep 0.5
  calls "$port" "$load" "$CALLS"
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  ROWS+=("$(python3 - "$out" "$name" "$load" "$CALLS" <<'PY'
import sys
path, name, load, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
counts = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[-1] != "total" and f[3].isdigit():
        counts[f[-1]] = int(f[3])
total = sum(counts.values())
top = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
print(f"| {name} | {load} | {total / n:.2f} | {top} |")
PY
)")
}

for load in good badhash alias; do
  measure nginx+lua "$LUA" "$LUA_PID" "$load"
  measure mor-gateway "$GW" "$GW_PID" "$load"
done
echo
echo "system calls per call ($CALLS sequential calls per load on one keep-alive connection, strace -c -f on the proxy, $(date -u +%FT%TZ))"
echo
echo "| proxy | load | syscalls/call | most frequent (per call) |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
