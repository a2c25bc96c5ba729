#!/usr/bin/env bash
# Slow-client attacks, mor-gateway vs nginx, in one run (slowhttptest).
#
#   benches/slow.sh [--connections N] [--seconds S] [--binary PATH]
#
# One embedded MOR simulator is the upstream of both proxies: nginx 1 worker
# with proxy_pass (its defaults: client_header_timeout and client_body_timeout
# 60s, keepalive_timeout 75s) and mor-gateway with its defaults
# ([client] read_timeout 60s, keepalive_timeout 75s). Against each, for
# slowloris (-H: headers dripped every 10 s) and R-U-Dead-Yet (-B: a body
# dripped every 10 s), slowhttptest opens N connections at 500/s for S
# seconds; meanwhile a verified API call is made every second through the
# proxy under attack. Reported: connections the proxy still holds at the end,
# its RSS, and how many of the legitimate calls succeeded.
# Loopback only; every attack is bounded by --seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=2000
SECS=20
BIN=target/release/mor-gateway
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) CONNS="$2"; shift 2 ;;
    --seconds) SECS="$2"; shift 2 ;;
    --binary) BIN="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
need_apt nginx slowhttptest curl
[ -x "$BIN" ] || cargo build --release --quiet
ulimit -n 65536 2>/dev/null || true

SIM=$(free_port); NGX=$(free_port); GW=$(free_port); MET=$(free_port)
KEY=456789
H=$(printf '%s' "123$KEY" | sha1sum | cut -d' ' -f1)

SIM_KEY=$KEY "$BIN" sim --listen "127.0.0.1:$SIM" --key-env SIM_KEY --threads 1 2>/dev/null & PIDS+=($!)
mkdir -p "$W/ngx"
cat > "$W/ngx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; error_log stderr crit; pid $W/ngx/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  upstream mor { server 127.0.0.1:$SIM; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX backlog=4096;
    location / { proxy_pass http://mor; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx -p "$W/ngx" -c "$W/ngx/nginx.conf" & NGX_PID=$!; PIDS+=($NGX_PID)
cat > "$W/gw.toml" <<EOF
listen = ["127.0.0.1:$GW"]
threads = 1
shutdown_grace = "0s"
[upstream]
servers = ["127.0.0.1:$SIM"]
[secrets]
admin_key_env = "BENCH_KEY"
[metrics]
listen = "127.0.0.1:$MET"
[access_log]
mode = "off"
EOF
BENCH_KEY=$KEY "$BIN" run -c "$W/gw.toml" 2>/dev/null & GW_PID=$!; PIDS+=($GW_PID)
wait_port "$SIM"; wait_port "$NGX"; wait_port "$GW"

rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
held() { ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; }

ROWS=()
attack() { # NAME MODE PORT PID
  local name=$1 mode=$2 port=$3 pid=$4
  local rss0; rss0=$(rss_mib "$pid")
  slowhttptest "$mode" -c "$CONNS" -r 500 -i 10 -l "$SECS" -s 8192 -t POST \
    -u "http://127.0.0.1:$port/billing/api/user_details_get" -p 3 >"$W/$name.out" 2>&1 &
  local att=$!
  local ok=0 tried=0
  for _ in $(seq $((SECS - 2))); do
    sleep 1
    tried=$((tried + 1))
    if curl -s -m 3 -X POST "http://127.0.0.1:$port/billing/api/user_details_get" \
        -d "u=admin&user_id=123&hash=$H" | grep -q client123; then ok=$((ok + 1)); fi
  done
  local h; h=$(held "$port")
  local rss1; rss1=$(rss_mib "$pid")
  wait "$att" || true
  ROWS+=("$name|$h|$rss0|$rss1|$ok/$tried")
  sleep 2
}

attack nginx-slowloris -H "$NGX" "$NGX_PID"
attack gateway-slowloris -H "$GW" "$GW_PID"
attack nginx-slowbody -B "$NGX" "$NGX_PID"
attack gateway-slowbody -B "$GW" "$GW_PID"

echo
echo "slowhttptest: $CONNS connections at 500/s, data every 10 s, ${SECS} s per attack, $(date -u +%FT%TZ)"
echo
echo "| attack | connections held at the end | RSS before MiB | RSS during MiB | legitimate calls answered |"
echo "| --- | --- | --- | --- | --- |"
for r in "${ROWS[@]}"; do
  IFS='|' read -r a b c d e <<<"$r"
  echo "| $a | $b | $c | $d | $e |"
done
