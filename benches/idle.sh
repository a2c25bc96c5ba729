#!/usr/bin/env bash
# Memory of connections that wait: mor-gateway vs nginx, in one run.
#
#   benches/idle.sh [--binary PATH] [--variant LABEL=PATH]...
#                   [--connections N] [--loris M]
#
# One upstream (nginx answering MOR's page); nginx proxy_pass (1 worker,
# client_header_timeout 60s, keepalive_timeout 75s) and each gateway binary
# (1 worker; caps off: max_connections and max_connections_per_address 0;
# header_timeout 60s, keepalive_timeout 75s), each started fresh per mode.
# Per mode, from 127.0.0.1 (benches/hold.py), held 10 s:
#   silent     N connections that send nothing
#   keepalive  N connections that made one verified call each (answered),
#              then stay open: idle keep-alive connections
#   loris      M connections that sent the start of a request header
# Reported: RSS before, while held and 5 s after they closed (what the
# allocator gave back), and KiB per held connection ((held - before) / held).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

BIN=target/release/mor-gateway
VARIANTS=()
N=10000
M=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BIN="$2"; shift 2 ;;
    --variant) VARIANTS+=("$2"); shift 2 ;;
    --connections) N="$2"; shift 2 ;;
    --loris) M="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
need_apt nginx python3
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
KEY=idlebenchkey
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

UP=$(free_port)
start_upstream "$UP" 1
wait_port "$UP"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
held() { ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; }

start_nginx() { # PORT: nginx proxy_pass on CPU 0; sets NPID
  mkdir -p "$W/ng$1"
  cat > "$W/ng$1/nginx.conf" <<NGX
daemon off; master_process off; worker_processes 1; error_log stderr error; pid $W/ng$1/nginx.pid;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
  access_log off;
  client_header_timeout 60s;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  upstream mor { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location / { proxy_pass http://mor; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
  taskset -c 0 nginx -p "$W/ng$1" -c "$W/ng$1/nginx.conf" & NPID=$!; PIDS+=($NPID)
}

start_gateway() { # BINARY PORT METRICS: on CPU 0; sets GPID
  cat > "$W/gw$2.toml" <<TOML
listen = ["127.0.0.1:$2"]
threads = 1
shutdown_grace = "0s"
[client]
max_connections = 0
max_connections_per_address = 0
header_timeout = "60s"
keepalive_timeout = "75s"
[upstream]
servers = ["127.0.0.1:$UP"]
[secrets]
admin_key_env = "BENCH_KEY"
[metrics]
listen = "127.0.0.1:$3"
[access_log]
mode = "off"
TOML
  BENCH_KEY=$KEY taskset -c 0 "$1" run -c "$W/gw$2.toml" 2>"$W/gw$2.log" & GPID=$!; PIDS+=($GPID)
}

ROWS=()
measure() { # LABEL MODE PID PORT COUNT
  local label=$1 mode=$2 pid=$3 port=$4 count=$5
  sleep 2
  local r0; r0=$(rss_kib "$pid")
  python3 benches/hold.py "$mode" "$port" 127.0.0.1 "$count" 10 "$KEY" >"$W/hold.out" 2>&1 &
  local att=$!
  for _ in $(seq 1200); do grep -q ready "$W/hold.out" 2>/dev/null && break; sleep 0.1; done
  sleep 3
  local h; h=$(held "$port")
  local r1; r1=$(rss_kib "$pid")
  wait "$att" || true
  sleep 5
  local r2; r2=$(rss_kib "$pid")
  ROWS+=("$label|$mode|$count|$h|$(awk -v a="$r0" -v b="$r1" -v n="$h" 'BEGIN {printf "%.2f", n ? (b - a) / n : 0}')|$(awk -v k="$r0" 'BEGIN {printf "%.1f", k/1024}')|$(awk -v k="$r1" 'BEGIN {printf "%.1f", k/1024}')|$(awk -v k="$r2" 'BEGIN {printf "%.1f", k/1024}')")
  echo "$label $mode: held $h of $count, RSS $r0 -> $r1 -> $r2 KiB" >&2
}

for mode in silent keepalive loris; do
  count=$N; [ "$mode" = loris ] && count=$M
  p=$(free_port)
  start_nginx "$p"; wait_port "$p"
  measure nginx "$mode" "$NPID" "$p" "$count"
  kill "$NPID"; wait "$NPID" 2>/dev/null || true
  for v in "gateway=$BIN" "${VARIANTS[@]}"; do
    read -r p m <<<"$(free_ports 2)"
    start_gateway "${v#*=}" "$p" "$m"
    wait_port "$p"
    measure "${v%%=*}" "$mode" "$GPID" "$p" "$count"
    kill "$GPID"; wait "$GPID" 2>/dev/null || true
  done
done

echo
echo "benches/idle.sh: connections from 127.0.0.1 held 10 s; load average before: $LOAD0; $(date -u +%FT%TZ)"
echo
echo "| server | mode | connections | held | KiB per held connection | RSS before MiB | RSS held MiB | RSS 5 s after close MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for r in "${ROWS[@]}"; do
  IFS='|' read -r a b c d e f g h <<<"$r"
  echo "| $a | $b | $c | $d | $e | $f | $g | $h |"
done
