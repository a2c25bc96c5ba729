#!/usr/bin/env bash
# Slow-client and flood attacks, mor-gateway vs nginx, in one run.
#
#   benches/slow.sh [--connections N] [--seconds S] [--binary PATH]
#                   [--variant LABEL=PATH]... [--memory-connections M]
#
# One MOR simulator (mor-sim) is the upstream of both proxies: nginx 1 worker
# with proxy_pass (its defaults: client_header_timeout and client_body_timeout
# 60s, keepalive_timeout 75s, client_max_body_size 1m, no connection cap but
# worker_connections; an ssl listener whose handshake client_header_timeout
# bounds) and mor-gateway with its defaults ([client] header_timeout 60s,
# read_timeout 60s, body_timeout 10s + 1 s per 1024 bytes, keepalive_timeout
# 75s, max_connections 10000, max_connections_per_address 256; [api] 64 MiB
# of bodies buffered, 4 MiB per address; [tls] handshake_timeout 5s,
# max_handshakes_per_address 32), one worker thread each. Every attack comes
# from 127.0.0.1 and lasts S seconds; meanwhile a verified API call (a POST
# with a form body) is made every second by another client (127.0.0.2)
# through the proxy under attack, over HTTPS for the TLS attacks.
#
# 1. slowhttptest: slowloris (-H: headers dripped every 10 s), R-U-Dead-Yet
#    (-B: a body dripped every 10 s, 8 KiB declared, then 1 MiB declared at
#    full strength), N connections at 500/s; then slowloris against a 5 s
#    header deadline on both (nginx client_header_timeout 5s; gateway
#    header_timeout = "5s" without the per-address cap).
# 2. Connection flood (benches/hold.py flood): one address (127.0.0.3 against
#    nginx, 127.0.0.4 against the gateway) opens connections as fast as it
#    can, keeping its newest 10,000 open.
# 3. Silent TLS (benches/hold.py): N connections to the HTTPS port that send
#    nothing, then N that send the first bytes of a ClientHello and stall.
# 4. Memory of pending TLS connections: M of each kind against nginx and a
#    fresh gateway for each kind whose caps are off (max_connections, max_connections_per_address
#    and max_handshakes_per_address 0, handshake_timeout 60s), so that all M
#    are held: RSS per held connection, and RSS once they closed (what the
#    allocator gave back); each --variant is measured the same way beside it
#    (e.g. mimalloc=target/mimalloc/release/mor-gateway, built with
#    cargo build --release --features mimalloc --target-dir target/mimalloc).
# Reported: connections the proxy holds near the end, its RSS, how many of
# the legitimate calls succeeded, and the gateway's own count of refusals by
# reason (mor_gateway_connections_refused_total,
# mor_gateway_tls_handshake_failures_total as tls_*, and the refusal reasons
# of mor_gateway_requests_total). Loopback only; every attack is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=2000
SECS=20
BIN=target/release/mor-gateway
VARIANTS=()
MEMCONNS=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) CONNS="$2"; shift 2 ;;
    --seconds) SECS="$2"; shift 2 ;;
    --binary) BIN="$2"; shift 2 ;;
    --variant) VARIANTS+=("$2"); shift 2 ;;
    --memory-connections) MEMCONNS="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
need_apt nginx slowhttptest curl openssl
[ -x "$BIN" ] || cargo build --release --quiet --bin mor-gateway
# The MOR simulator (a development tool, its own binary), optimised as the
# gateway it stands behind.
SIM_BIN=target/release/mor-sim
[ -x "$SIM_BIN" ] || cargo build --release --quiet --bin mor-sim
ulimit -n 65536 2>/dev/null || true
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)

# Every port now, distinct (the memory rows' gateways too: thousands of
# connections later hold many local ports).
read -r SIM NGX NGX5 NGXS GW MET GWS GW5 MET5 REST <<<"$(free_ports $((9 + 6 * (${#VARIANTS[@]} + 1))))"
UPORTS=()
for _ in $(seq $((2 * (${#VARIANTS[@]} + 1)))); do
  read -r a b c REST <<<"$REST"
  UPORTS+=("$a $b $c")
done
KEY=456789
H=$(printf '%s' "123$KEY" | sha1sum | cut -d' ' -f1)
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" \
  -days 2 -subj /CN=localhost >/dev/null 2>&1

SIM_KEY=$KEY "$SIM_BIN" --listen "127.0.0.1:$SIM" --key-env SIM_KEY --threads 1 2>/dev/null & PIDS+=($!)
mkdir -p "$W/ngx"
cat > "$W/ngx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; error_log stderr crit; pid $W/ngx/nginx.pid;
worker_rlimit_nofile 20000;
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
  server {
    listen 127.0.0.1:$NGXS ssl backlog=4096;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    location / { proxy_pass http://mor; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx -p "$W/ngx" -c "$W/ngx/nginx.conf" & NGX_PID=$!; PIDS+=($NGX_PID)
gw_config() { # PORT METRICS-PORT [client]-LINES [TLS-PORT [tls]-LINES]
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
  if [ -n "${4:-}" ]; then
    printf '[tls]\nlisten = ["127.0.0.1:%s"]\ncert_file = "%s"\nkey_file = "%s"\n%s\n' \
      "$4" "$W/cert.pem" "$W/key.pem" "${5:-}"
  fi
}
gw_config "$GW" "$MET" "" "$GWS" > "$W/gw.toml"
gw_config "$GW5" "$MET5" $'header_timeout = "5s"\nmax_connections_per_address = 0' > "$W/gw5.toml"
BENCH_KEY=$KEY "$BIN" run -c "$W/gw.toml" 2>"$W/gw.log" & GW_PID=$!; PIDS+=($GW_PID)
BENCH_KEY=$KEY "$BIN" run -c "$W/gw5.toml" 2>/dev/null & GW5_PID=$!; PIDS+=($GW5_PID)
wait_port "$SIM"; wait_port "$NGX"; wait_port "$NGX5"; wait_port "$NGXS"
wait_port "$GW"; wait_port "$GWS"; wait_port "$GW5"

rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
held() { ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; }

# refusals METRICS-PORT: the gateway's non-zero refusal counters, "reason=n ..."
refusals() {
  curl -s "http://127.0.0.1:$1/metrics" | awk -F'[{}"]' '
    /^mor_gateway_connections_refused_total/ && $NF+0 > 0 {printf "%s=%d ", $3, $NF}
    /^mor_gateway_tls_handshake_failures_total/ && $NF+0 > 0 {printf "tls_%s=%d ", $3, $NF}
    /^mor_gateway_requests_total/ {
      for (i = 1; i < NF; i++) if ($i == ",reason=" && $(i+1) != "") r[$(i+1)] += $NF
    }
    END {for (k in r) if (r[k] > 0) printf "%s=%d ", k, r[k]}'
}

# delta BEFORE AFTER: the counters that grew, "reason n, ..."
delta() {
  python3 - "$1" "$2" <<'PY'
import sys
parse = lambda s: {k: int(v) for k, v in (kv.split("=") for kv in s.split())}
a, b = parse(sys.argv[1]), parse(sys.argv[2])
print(", ".join(f"{k} {n - a.get(k, 0)}" for k, n in sorted(b.items()) if n > a.get(k, 0)) or "0")
PY
}

# legit PORT SCHEME: one verified call from 127.0.0.2; 0 when answered by MOR.
legit() {
  curl -sk -m 3 --interface 127.0.0.2 -X POST "$2://127.0.0.1:$1/billing/api/user_details_get" \
    -d "u=admin&user_id=123&hash=$H" | grep -q client123
}

ROWS=()
# run_attack NAME PORT PID METRICS SCHEME COMMAND...: the command runs in the
# background for about SECS; a legitimate call every second meanwhile.
run_attack() {
  local name=$1 port=$2 pid=$3 met=$4 scheme=$5; shift 5
  local before=""; [ -n "$met" ] && before=$(refusals "$met")
  local rss0; rss0=$(rss_mib "$pid")
  "$@" >"$W/$name.out" 2>&1 &
  local att=$!
  local ok=0 tried=0
  for _ in $(seq $((SECS - 2))); do
    sleep 1
    tried=$((tried + 1))
    if legit "$port" "$scheme"; then ok=$((ok + 1)); fi
  done
  local h; h=$(held "$port")
  local rss1; rss1=$(rss_mib "$pid")
  wait "$att" || true
  local refused="-"
  [ -n "$met" ] && refused=$(delta "$before" "$(refusals "$met")")
  ROWS+=("$name|$h|$rss0|$rss1|$ok/$tried|$refused")
  echo "$name: held $h, RSS $rss0 -> $rss1 MiB, legitimate $ok/$tried, $refused" >&2
  sleep 3
}

slow() { # NAME MODE PORT PID [METRICS] [BODY-SIZE]
  run_attack "$1" "$3" "$4" "${5:-}" http \
    slowhttptest "$2" -c "$CONNS" -r 500 -i 10 -l "$SECS" -s "${6:-8192}" -t POST \
    -u "http://127.0.0.1:$3/billing/api/user_details_get" -p 3
}

slow nginx-slowloris -H "$NGX" "$NGX_PID"
slow gateway-slowloris -H "$GW" "$GW_PID" "$MET"
slow nginx-slowbody -B "$NGX" "$NGX_PID"
slow gateway-slowbody -B "$GW" "$GW_PID" "$MET"
slow nginx-slowbody-1MiB -B "$NGX" "$NGX_PID" "" 1048576
slow gateway-slowbody-1MiB -B "$GW" "$GW_PID" "$MET" 1048576
slow nginx-slowloris-deadline5s -H "$NGX5" "$NGX_PID"
slow gateway-slowloris-deadline5s -H "$GW5" "$GW5_PID" "$MET5"
FLOODED=()
# Each flood from an address of its own (the first one's closed connections
# hold local ports in TIME_WAIT for a minute).
for target in "nginx $NGX 127.0.0.3 $NGX_PID" "gateway $GW 127.0.0.4 $GW_PID $MET"; do
  set -- $target
  run_attack "$1-flood" "$2" "$4" "${5:-}" http python3 benches/hold.py flood "$2" "$3" 10000 "$SECS"
  FLOODED+=("$1: $(cat "$W/$1-flood.out")")
done
for mode in silent hello; do
  run_attack "nginx-tls-$mode" "$NGXS" "$NGX_PID" "" https \
    python3 benches/hold.py "$mode" "$NGXS" 127.0.0.1 "$CONNS" "$((SECS - 1))"
  run_attack "gateway-tls-$mode" "$GWS" "$GW_PID" "$MET" https \
    python3 benches/hold.py "$mode" "$GWS" 127.0.0.1 "$CONNS" "$((SECS - 1))"
done
ERRORS=$(grep -c ERROR "$W/gw.log" || true)

# --- 4. memory of pending TLS connections, caps off --------------------------
MEMROWS=()
# memory NAME PID PORT MODE: MEMCONNS connections held 15 s, then closed.
memory() {
  local name=$1 pid=$2 port=$3 mode=$4
  sleep 2
  local r0; r0=$(rss_kib "$pid")
  python3 benches/hold.py "$mode" "$port" 127.0.0.1 "$MEMCONNS" 15 >"$W/mem.out" 2>&1 &
  local att=$!
  for _ in $(seq 300); do grep -q ready "$W/mem.out" 2>/dev/null && break; sleep 0.1; done
  sleep 4
  local h; h=$(held "$port")
  local r1; r1=$(rss_kib "$pid")
  wait "$att" || true
  sleep 5
  local r2; r2=$(rss_kib "$pid")
  MEMROWS+=("$name|$mode|$h|$(awk -v a="$r0" -v b="$r1" -v n="$h" 'BEGIN {printf "%.1f", n ? (b - a) / n : 0}')|$((r0 / 1024))|$((r1 / 1024))|$((r2 / 1024))")
  echo "memory $name $mode: held $h, RSS $r0 -> $r1 -> $r2 KiB" >&2
}
uncapped() { # BINARY LABEL MODE PORTS: a fresh gateway with every cap off
  local p m s
  read -r p m s <<<"$4"
  gw_config "$p" "$m" $'max_connections = 0\nmax_connections_per_address = 0' "$s" \
    $'handshake_timeout = "60s"\nmax_handshakes_per_address = 0' > "$W/gwu-$2-$3.toml"
  BENCH_KEY=$KEY "$1" run -c "$W/gwu-$2-$3.toml" 2>"$W/gwu-$2-$3.log" & local pid=$!; PIDS+=($pid)
  if ! (wait_port "$s"); then
    echo "$2 did not start:" >&2; cat "$W/gwu-$2-$3.log" >&2
    return
  fi
  memory "$2" "$pid" "$s" "$3"
  kill "$pid" 2>/dev/null || true
}
for mode in silent hello; do memory nginx "$NGX_PID" "$NGXS" "$mode"; done
i=0
for v in "gateway=$BIN" "${VARIANTS[@]/#/gateway-}"; do
  for mode in silent hello; do
    uncapped "${v#*=}" "${v%%=*}" "$mode" "${UPORTS[$i]}"
    i=$((i + 1))
  done
done

echo
echo "benches/slow.sh: $CONNS connections per slowhttptest and TLS attack, ${SECS} s per attack," \
  "load average before: $LOAD0, $(date -u +%FT%TZ)"
echo
echo "| attack | connections held at the end | RSS before MiB | RSS during MiB | legitimate calls answered | gateway: refused or cut, by reason |"
echo "| --- | --- | --- | --- | --- | --- |"
for r in "${ROWS[@]}"; do
  IFS='|' read -r a b c d e f <<<"$r"
  echo "| $a | $b | $c | $d | $e | $f |"
done
echo
echo "flood: ${FLOODED[*]}"
echo "ERROR lines in the gateway's log over all attacks: $ERRORS"
echo
echo "Pending TLS connections, caps off, $MEMCONNS from one address held 15 s:"
echo
echo "| server | connections | held | KiB per held connection | RSS before MiB | RSS held MiB | RSS 5 s after close MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for r in "${MEMROWS[@]}"; do
  IFS='|' read -r a b c d e f g <<<"$r"
  echo "| $a | $b | $c | $d | $e | $f | $g |"
done
