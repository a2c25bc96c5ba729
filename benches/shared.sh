#!/usr/bin/env bash
# Shared limits (Redis) against local-only limits, in one run (benches/e2e.sh
# with a redis-server of its own): CPU per verified call and p50/p99 of the
# gateway, Redis' CPU per call, and the memory Redis' keys take.
#
#   benches/shared.sh [--duration S] [--connections N]
#
# Both variants have the same limits: per_user and per_method_user quotas
# (high enough that the verified load is never limited, low enough that each
# user's bucket stays in Redis for the run) and the failed-hash lockout (a
# threshold never reached, so that the bad-hash load does not lock the users
# of the later loads out, yet every verified call asks the lockout too); the
# "shared" variant decides them in Redis, one round trip per call. Loopback only, bounded by --duration.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin mor-gateway
B=target/release/mor-gateway
LIM='[limits];per_user = { per_second = 0.01, burst = 1000000 };[limits.per_method_user];user_details_get = { per_second = 0.01, burst = 1000000 };[limits.lockout];failures = 1000000000;window = "60s";cooloff = "300s"'
benches/e2e.sh --redis "$@" \
  --variant "local=$B,$LIM" \
  --variant "shared=$B,$LIM;[limits.shared];url = \"redis://127.0.0.1:{REDIS}\";timeout = \"50ms\""

# Redis memory per tracked user at scale: 100,000 users with a per_user and
# a per_method_user bucket each, keys and values of the shape the gateway's
# script writes (prefix, layer, name; a TAT in µs; an expiry), in an empty
# redis-server of its own.
. benches/lib.sh
need_apt redis-server
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & PIDS+=($!)
wait_port "$RP"
used() { redis-cli -p "$RP" info memory | tr -d '\r' | awk -F: '$1=="used_memory" {print $2}'; }
before=$(used)
python3 - <<'PY' | redis-cli -p "$RP" --pipe >/dev/null
import sys
def cmd(*a):
    return f"*{len(a)}\r\n" + "".join(f"${len(str(x).encode())}\r\n{x}\r\n" for x in a)
for n in range(100000):
    for key in (f"mor-gateway:q:user|user{n}", f"mor-gateway:q:mu|user_details_get|user{n}"):
        sys.stdout.write(cmd("SET", key, "1764612345678901", "PX", 3600000))
PY
after=$(used); keys=$(redis-cli -p "$RP" dbsize)
echo
echo "| Redis, 100,000 tracked users (2 buckets each) | keys | used_memory added | bytes per key | bytes per user |"
echo "| --- | --- | --- | --- | --- |"
echo "| per_user + per_method_user | $keys | $((after - before)) B | $(( (after - before) / keys )) | $(( (after - before) / 100000 )) |"
