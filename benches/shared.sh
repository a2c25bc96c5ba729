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
cargo build --release --quiet
B=target/release/mor-gateway
LIM='[limits];per_user = { per_second = 0.01, burst = 1000000 };[limits.per_method_user];user_details_get = { per_second = 0.01, burst = 1000000 };[limits.lockout];failures = 1000000000;window = "60s";cooloff = "300s"'
exec benches/e2e.sh --redis "$@" \
  --variant "local=$B,$LIM" \
  --variant "shared=$B,$LIM;[limits.shared];url = \"redis://127.0.0.1:{REDIS}\";timeout = \"50ms\""
