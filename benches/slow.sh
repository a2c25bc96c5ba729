#!/usr/bin/env bash
# Slow-client attacks, mor-gateway vs nginx, in one run (slowhttptest).
#
#   benches/slow.sh [--connections N] [--seconds S] [--binary PATH]
#
# One embedded MOR simulator is the upstream of both proxies: nginx 1 worker
# with proxy_pass (its defaults: client_header_timeout and client_body_timeout
# 60s, keepalive_timeout 75s, no connection cap but worker_connections) and
# mor-gateway with its defaults ([client] header_timeout 60s, read_timeout
# 60s, keepalive_timeout 75s, max_connections 10000,
# max_connections_per_address 256). Against each, for slowloris (-H: headers
# dripped every 10 s) and R-U-Dead-Yet (-B: a body dripped every 10 s),
# slowhttptest opens N connections at 500/s for S seconds from 127.0.0.1;
# meanwhile a verified API call is made every second through the proxy under
# attack by another client (127.0.0.2). Then slowloris again against a second
# nginx server and a second gateway whose header deadline is 5 s (nginx
# client_header_timeout 5s; gateway header_timeout = "5s" with no
# per-address cap, so that the deadline alone acts): the deadline closes
# dripping connections although each of their reads is in time.
# Reported: connections the proxy still holds at the end, its RSS, how many
# of the legitimate calls succeeded, and the gateway's own count of refused
# or cut connections (mor_gateway_connections_refused_total by reason).
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

SIM=$(free_port); NGX=$(free_port); NGX5=$(free_port); GW=$(free_port); MET=$(free_port)
GW5=$(free_port); MET5=$(free_port)
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
  server {
    listen 127.0.0.1:$NGX5 backlog=4096;
    client_header_timeout 5s;
    location / { proxy_pass http://mor; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx -p "$W/ngx" -c "$W/ngx/nginx.conf" & NGX_PID=$!; PIDS+=($NGX_PID)
gw_config() { # PORT METRICS-PORT [client]-LINES
  cat <<EOF
listen = ["127.0.0.1:$1"]
threads = 1
shutdown_grace = "0s"
[client]
$3
[upstream]
servers = ["127.0.0.1:$SIM"]
[secrets]
admin_key_env = "BENCH_KEY"
[metrics]
listen = "127.0.0.1:$2"
[access_log]
mode = "off"
EOF
}
gw_config "$GW" "$MET" "" > "$W/gw.toml"
gw_config "$GW5" "$MET5" $'header_timeout = "5s"\nmax_connections_per_address = 0' > "$W/gw5.toml"
BENCH_KEY=$KEY "$BIN" run -c "$W/gw.toml" 2>/dev/null & GW_PID=$!; PIDS+=($GW_PID)
BENCH_KEY=$KEY "$BIN" run -c "$W/gw5.toml" 2>/dev/null & GW5_PID=$!; PIDS+=($GW5_PID)
wait_port "$SIM"; wait_port "$NGX"; wait_port "$NGX5"; wait_port "$GW"; wait_port "$GW5"

rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
held() { ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; }

# refusals METRICS-PORT: the gateway's non-zero refusal counters, "reason=n ..."
refusals() {
  curl -s "http://127.0.0.1:$1/metrics" \
    | awk -F'[{}"]' '/^mor_gateway_connections_refused_total/ && $NF+0 > 0 {printf "%s=%d ", $3, $NF}'
}

ROWS=()
attack() { # NAME MODE PORT PID [METRICS-PORT]
  local name=$1 mode=$2 port=$3 pid=$4 met=${5:-}
  local before=""; [ -n "$met" ] && before=$(refusals "$met")
  local rss0; rss0=$(rss_mib "$pid")
  slowhttptest "$mode" -c "$CONNS" -r 500 -i 10 -l "$SECS" -s 8192 -t POST \
    -u "http://127.0.0.1:$port/billing/api/user_details_get" -p 3 >"$W/$name.out" 2>&1 &
  local att=$!
  local ok=0 tried=0
  for _ in $(seq $((SECS - 2))); do
    sleep 1
    tried=$((tried + 1))
    if curl -s -m 3 --interface 127.0.0.2 -X POST "http://127.0.0.1:$port/billing/api/user_details_get" \
        -d "u=admin&user_id=123&hash=$H" | grep -q client123; then ok=$((ok + 1)); fi
  done
  local h; h=$(held "$port")
  local rss1; rss1=$(rss_mib "$pid")
  wait "$att" || true
  local refused="-"
  if [ -n "$met" ]; then
    refused=$(python3 - "$before" "$(refusals "$met")" <<'PY'
import sys
parse = lambda s: {k: int(v) for k, v in (kv.split("=") for kv in s.split())}
a, b = parse(sys.argv[1]), parse(sys.argv[2])
print(", ".join(f"{k} {n - a.get(k, 0)}" for k, n in b.items() if n > a.get(k, 0)) or "0")
PY
)
  fi
  ROWS+=("$name|$h|$rss0|$rss1|$ok/$tried|$refused")
  sleep 2
}

attack nginx-slowloris -H "$NGX" "$NGX_PID"
attack gateway-slowloris -H "$GW" "$GW_PID" "$MET"
attack nginx-slowbody -B "$NGX" "$NGX_PID"
attack gateway-slowbody -B "$GW" "$GW_PID" "$MET"
attack nginx-slowloris-deadline5s -H "$NGX5" "$NGX_PID"
attack gateway-slowloris-deadline5s -H "$GW5" "$GW5_PID" "$MET5"

echo
echo "slowhttptest: $CONNS connections at 500/s, data every 10 s, ${SECS} s per attack, $(date -u +%FT%TZ)"
echo
echo "| attack | connections held at the end | RSS before MiB | RSS during MiB | legitimate calls answered | gateway: refused or cut, by reason |"
echo "| --- | --- | --- | --- | --- | --- |"
for r in "${ROWS[@]}"; do
  IFS='|' read -r a b c d e f <<<"$r"
  echo "| $a | $b | $c | $d | $e | $f |"
done
