#!/usr/bin/env bash
# The cost of MOR's directory: one refresh of 100,000 users (and 1,000
# resellers) from a real MariaDB on loopback, as the gateway does it
# (connect, the two SELECTs through the least-privilege account, the
# snapshot built): time, bytes the server sent, and RSS of the snapshot.
#
#   benches/directory.sh [--users N] [--resellers N] [--rounds N]
#
# The server runs on CPU 1 (mariadbd of our own, data in a temp dir), the
# bench on CPU 0. Prints a markdown table (benches/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=100000; RESELLERS=1000; ROUNDS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS="$2"; shift 2 ;;
    --resellers) RESELLERS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
. benches/lib.sh
export BENCH_DB_PASSWORD=bench-db-pw
start_mariadb
seed_mor "$USERS" "$RESELLERS" 456789
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs); $(date -u +%FT%TZ)"
MORGW_BENCH_DB_PORT=$MYSQL MORGW_BENCH_ROUNDS=$ROUNDS taskset -c 0 \
  cargo bench --quiet --bench directory
