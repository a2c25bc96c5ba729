#!/usr/bin/env bash
# User-space instructions per call, mor-gateway vs nginx + lua verifying the
# same hash: a count that does not move with the machine's load.
#
#   benches/instructions.sh [--calls N] [--keep DIR] [--variant LABEL=BINARY]...
#
# Each proxy (one worker/thread) runs under valgrind's callgrind in front of
# the same upstream (nginx answering a MOR-like page, natively). For each
# load (verified, bad hash, legacy alias) a client sends 300 calls to warm
# up, the proxy's counters are zeroed (callgrind_control -z), N calls
# (default 2,000) go one after the other on one keep-alive connection, and
# the counters are dumped: the table gives instructions per call (Ir, the
# proxy's own code and its libraries, not the kernel's) and each variant's
# ratio to nginx+lua's. Instructions are not time (a cache miss or a system
# call costs more than its count says, and valgrind counts each byte of a
# large `rep movsb` copy, glibc's memcpy above ~2 KiB, as an instruction: a
# big future moved counts far more than it costs; e2e.sh measures CPU
# time), but for the same binary and inputs the count repeats to a few
# parts in 10,000 (nginx+lua's to ~3 %), so a change of 1 % in the
# gateway is seen here where e2e.sh's run-to-run noise hides it.
# --keep DIR copies each dump there as callgrind.LABEL-LOAD, for
# `callgrind_annotate` (where the instructions go, by function).
# Without --variant the release build is measured as "gw". Loopback only;
# bounded by N (valgrind runs the proxy ~50x slower).
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=2000
KEEP=""
VARIANTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS="$2"; shift 2 ;;
    --variant) VARIANTS+=("$2"); shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
need_apt nginx valgrind
need_deb libnginx-mod-http-lua
if [ "${#VARIANTS[@]}" -eq 0 ]; then
  cargo build --release --quiet --bin mor-gateway
  VARIANTS=("gw=target/release/mor-gateway")
fi

UP=$(free_port)
KEY=456789
REDIS=""
MYSQL=""
start_upstream "$UP" 1
wait_port "$UP"
# Under valgrind a proxy takes seconds to start listening.
WAIT_TRIES=1200
WRAP=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$W/callgrind.%p" --log-file="$W/valgrind.%p.log")

# measure NAME PORT PID LOAD -> instructions per call (also a row in ROWS)
ROWS=()
declare -A PER_CALL
measure() {
  local name=$1 port=$2 pid=$3 load=$4
  callgrind_control -i on "$pid" >/dev/null 2>&1
  calls "$port" "$load" 300    # warm-up
  callgrind_control -z "$pid" >/dev/null 2>&1
  calls "$port" "$load" "$CALLS"
  callgrind_control -d "$name-$load" "$pid" >/dev/null 2>&1
  callgrind_control -i off "$pid" >/dev/null 2>&1
  local dump
  dump=$(grep -l "^desc: Trigger: dump $name-$load\$" "$W"/callgrind."$pid".* | head -1)
  if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$dump" "$KEEP/callgrind.$name-$load"; fi
  PER_CALL[$name-$load]=$(awk -v n="$CALLS" '/^summary:/ { t = $2 } END { printf "%.0f", t / n }' "$dump")
}

start_nginx_lua "$(free_port)" "$UP" "$KEY" 0
LUA_PID=$LAST_PID
LUA_PORT=$(sed -n 's/.*listen 127.0.0.1:\([0-9]*\).*/\1/p' "$W/lua/nginx.conf")
wait_port "$LUA_PORT"
for load in good badhash alias; do
  measure nginx+lua "$LUA_PORT" "$LUA_PID" "$load"
done
kill "$LUA_PID"; wait "$LUA_PID" 2>/dev/null || true

LABELS=()
for v in "${VARIANTS[@]}"; do
  label=${v%%=*}; bin=${v#*=}
  LABELS+=("$label")
  start_gw "$label" "$bin" ""
  for load in good badhash alias; do
    measure "$label" "$GW" "$GW_PID" "$load"
  done
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
done

echo
echo "user-space instructions per call (callgrind Ir; $CALLS sequential calls per load on one keep-alive connection after 300 to warm up; $(date -u +%FT%TZ))"
echo
echo "| load | nginx+lua |$(printf ' %s |' "${LABELS[@]}")"
echo "| --- | --- |$(printf ' --- |%.0s' "${LABELS[@]}")"
for load in good badhash alias; do
  base=${PER_CALL[nginx+lua-$load]}
  row="| $load | $base |"
  for label in "${LABELS[@]}"; do
    n=${PER_CALL[$label-$load]}
    row+=" $n ($(awk -v a="$n" -v b="$base" 'BEGIN { printf "%.2fx", a / b }')) |"
  done
  echo "$row"
done
