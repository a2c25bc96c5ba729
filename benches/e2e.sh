#!/usr/bin/env bash
# End-to-end benchmark: CPU cost per proxied request, mor-gateway vs nginx.
#
#   benches/e2e.sh [--duration S] [--connections N] [--redis] [--mariadb]
#                  [--variant LABEL=BINARY[,toml-line;toml-line...]]...
#
# Without --variant the release build is measured as "gw". Each variant is
# its own gateway process (BINARY, plus extra top-level config lines), e.g.
#   --variant sys=target/release/mor-gateway
#   --variant mimalloc=target/mimalloc/release/mor-gateway
#   --variant rb64k=target/release/mor-gateway,read_buffer_bytes=65536
# --redis starts a redis-server of its own (on CPU 1, no persistence);
# "{REDIS}" in a variant's lines is its port, and each row then also shows
# Redis' CPU per request and the memory its keys take (benches/shared.sh).
# --mariadb starts a mariadbd of its own (on CPU 1) holding MOR's tables with
# 100,000 users (the load's user1..user1000 among them, the admin's) and
# 1,000 resellers; "{MYSQL}" in a variant's lines is its port, the gateway's
# database password is in BENCH_DB_PASSWORD. Directory on vs off:
#   --mariadb --variant off=target/release/mor-gateway \
#     --variant dir=target/release/mor-gateway,'[directory];url = "mysql://mor-gateway@127.0.0.1:{MYSQL}/mor";password_env = "BENCH_DB_PASSWORD"'
#
# One run measures, against the same upstream (nginx `return 200` with a
# MOR-like XML page) and the same wrk load, on loopback:
#   direct        wrk -> upstream (no proxy)
#   nginx         nginx 1 worker, proxy_pass with upstream keep-alive, no checks
#   gw-good       mor-gateway, fully verified POSTs cycling 1000 users
#   gw-badhash    mor-gateway, bad hashes (refused at the edge)
#   gw-alias      mor-gateway, legacy alias user_details (verified, rewritten)
#   *-light       nginx and mor-gateway (verified calls) with 2 connections
#                 only, so that neither is saturated: latency at the same load
# The proxy under test runs alone on CPU 0 (taskset); wrk and the upstream
# share CPU 1. CPU-µs/request = (utime+stime of the proxy process from
# /proc/PID/stat) / requests completed. Also reported: idle RSS and RSS with
# 10,000 open keep-alive client connections.
# Loopback only; every load is bounded by --duration.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10
CONNS=32
VARIANTS=()
REDIS=""
MARIADB=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mariadb) MARIADB=1; shift ;;
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNS="$2"; shift 2 ;;
    --variant) VARIANTS+=("$2"); shift 2 ;;
    --redis) REDIS=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
need_apt nginx wrk cmake
if [ -n "$REDIS" ]; then need_apt redis-server; fi
if [ "${#VARIANTS[@]}" -eq 0 ]; then
  cargo build --release --quiet
  VARIANTS=("gw=target/release/mor-gateway")
fi
ulimit -n 65536 2>/dev/null || true

UP=$(free_port); NGX=$(free_port)
KEY=456789
CLK=$(getconf CLK_TCK)

# --- upstream: nginx answering a MOR-like page -------------------------------
mkdir -p "$W/up" "$W/px"
cat > "$W/up/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; error_log stderr error; pid $W/up/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP backlog=4096;
    location / {
      default_type application/xml;
      return 200 '<?xml version="1.0" encoding="UTF-8"?><page><details><id>123</id><username>client123</username><balance>55.0000</balance></details></page>';
    }
  }
}
EOF
taskset -c 1 nginx -p "$W/up" -c "$W/up/nginx.conf" & PIDS+=($!)

REDIS_PID=""
if [ -n "$REDIS" ]; then
  REDIS=$(free_port)
  taskset -c 1 redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no \
    --protected-mode no >"$W/redis.log" 2>&1 & REDIS_PID=$!; PIDS+=($REDIS_PID)
  wait_port "$REDIS"
fi

MYSQL=""
if [ -n "$MARIADB" ]; then
  export BENCH_DB_PASSWORD=bench-db-pw
  start_mariadb
  seed_mor 100000 1000 "$KEY"
  # Settle the bulk insert before the first gateway reads it.
  mysql_root "SELECT COUNT(*), SUM(CRC32(username)) FROM mor.users" >/dev/null
fi

# --- plain nginx reverse proxy (the baseline) --------------------------------
cat > "$W/px/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; error_log stderr error; pid $W/px/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream mor { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX backlog=4096;
    location / {
      proxy_pass http://mor;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
taskset -c 0 nginx -p "$W/px" -c "$W/px/nginx.conf" & NGX_PID=$!; PIDS+=($NGX_PID)

# --- mor-gateway (one process per variant, started when measured) -----------
start_gw() { # LABEL BINARY EXTRA-LINES -> sets GW, MET, GW_PID
  local label=$1 bin=$2 extra=$3
  GW=$(free_port); MET=$(free_port)
  {
    echo "listen = [\"127.0.0.1:$GW\"]"
    echo "threads = 1"
    echo "shutdown_grace = \"0s\""
    extra=${extra//\{REDIS\}/$REDIS}
    tr ';' '\n' <<<"${extra//\{MYSQL\}/$MYSQL}"
    cat <<EOF
[client]
# 10,000 connections from one address are measured below: no caps.
max_connections = 0
max_connections_per_address = 0
[upstream]
servers = ["127.0.0.1:$UP"]
keepalive_pool_size = 256
[api]
allow_get = false
[secrets]
admin_key_env = "BENCH_KEY"
[metrics]
listen = "127.0.0.1:$MET"
[access_log]
mode = "off"
EOF
  } > "$W/gw-$label.toml"
  BENCH_KEY=$KEY taskset -c 0 "$bin" run -c "$W/gw-$label.toml" 2>"$W/gw-$label.err" & GW_PID=$!; PIDS+=($GW_PID)
  wait_port "$GW"
  sleep 0.5
}

wait_port "$UP"; wait_port "$NGX"

# --- request scripts -----------------------------------------------------------
python3 - "$W" "$KEY" <<'PY'
import hashlib, sys
w, key = sys.argv[1], sys.argv[2]
def lua(name, path, bodies):
    with open(f"{w}/{name}.lua", "w") as f:
        f.write("local bodies = {\n")
        for b in bodies:
            f.write(f'  "{b}",\n')
        f.write("}\nlocal i = 0\n")
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n')
        f.write("request = function()\n  i = i % #bodies + 1\n")
        f.write(f'  return wrk.format("POST", "{path}", nil, bodies[i])\nend\n')
good = [f"u=user{n}&user_id={n}&hash={hashlib.sha1((str(n)+key).encode()).hexdigest()}" for n in range(1, 1001)]
bad = [f"u=user{n}&user_id={n}&hash={'0'*40}" for n in range(1, 1001)]
lua("good", "/billing/api/user_details_get", good)
lua("bad", "/billing/api/user_details_get", bad)
lua("alias", "/billing/api/user_details", good)
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

ROWS=()
# run NAME PORT SCRIPT PID(or -)
run() {
  local name=$1 port=$2 script=$3 pid=$4 CONNS=${5:-$CONNS}
  # warm-up (keep-alive pools, page faults)
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s "$W/$script.lua" "http://127.0.0.1:$port" >/dev/null
  local t0=0; [ "$pid" != "-" ] && t0=$(cpu_ticks "$pid")
  local r0=0; [ -n "$REDIS_PID" ] && r0=$(cpu_ticks "$REDIS_PID")
  local out; out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$W/$script.lua" "http://127.0.0.1:$port")
  local t1=0; [ "$pid" != "-" ] && t1=$(cpu_ticks "$pid")
  local r1=0; [ -n "$REDIS_PID" ] && r1=$(cpu_ticks "$REDIS_PID")
  local reqs; reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  local rps; rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  local p50; p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  local p99; p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  local us="-"
  if [ "$pid" != "-" ]; then
    us=$(python3 -c "print(f'{($t1-$t0)/$CLK*1e6/$reqs:.1f}')")
  fi
  local rus; rus=$(python3 -c "print(f'{($r1-$r0)/$CLK*1e6/$reqs:.1f}')")
  ROWS+=("$name|$reqs|$rps|$p50|$p99|$non2xx|$us|$rus")
}

run direct "$UP" good -
run nginx "$NGX" good "$NGX_PID"
# light load: 2 connections, neither proxy saturated (p99 at the same load)
run nginx-light "$NGX" good "$NGX_PID" 2
MEM=()
REDIS_MEM=()
REDIS_BASE=""
if [ -n "$REDIS_PID" ]; then
  REDIS_BASE=$(redis-cli -p "$REDIS" info memory | tr -d '\r' | awk -F: '$1=="used_memory" {print $2}')
fi
: > "$W/metrics.txt"
for v in "${VARIANTS[@]}"; do
  label=${v%%=*}; rest=${v#*=}; bin=${rest%%,*}; extra=""
  [ "$rest" != "$bin" ] && extra=${rest#*,}
  start_gw "$label" "$bin" "$extra"
  start_rss=$(rss_kib "$GW_PID")
  run "$label-good" "$GW" good "$GW_PID"
  run "$label-badhash" "$GW" bad "$GW_PID"
  run "$label-alias" "$GW" alias "$GW_PID"
  run "$label-light" "$GW" good "$GW_PID" 2
  if [ -n "$REDIS_PID" ]; then
    # Keys the gateway left in Redis right after its load, and their memory
    # beyond an empty server's (measured before the first variant).
    info=$(redis-cli -p "$REDIS" info memory | tr -d '\r')
    used=$(awk -F: '$1=="used_memory" {print $2}' <<<"$info")
    keys=$(redis-cli -p "$REDIS" dbsize)
    REDIS_MEM+=("$label|$keys|$used")
    redis-cli -p "$REDIS" flushall >/dev/null
    sleep 0.5
  fi
  curl -s "http://127.0.0.1:$MET/metrics" | grep -E '^mor_gateway_requests_total' | grep -v ' 0$' | sed "s/^/  $label: /" >> "$W/metrics.txt" || true
  idle_rss=$(rss_kib "$GW_PID")
  conn_rss=$(python3 - "$GW" "$GW_PID" <<'PY'
import socket, sys, time
port, pid = int(sys.argv[1]), sys.argv[2]
body = b"u=user1&user_id=1&hash=" + b"0" * 40
req = b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(10000)]
for s in socks:
    s.sendall(req)   # one request each: every connection is a live keep-alive session
for s in socks:
    s.recv(4096)
time.sleep(1)
print([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
for s in socks:
    s.close()
PY
)
  MEM+=("$label|$start_rss|$idle_rss|$conn_rss")
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
done

NGINX_US=""; NGINX_LIGHT_US=""
for r in "${ROWS[@]}"; do
  IFS='|' read -r n _ _ _ _ _ us _ <<<"$r"
  if [ "$n" = nginx ]; then NGINX_US=$us; fi
  if [ "$n" = nginx-light ]; then NGINX_LIGHT_US=$us; fi
done
echo
echo "mor-gateway benchmark: wrk -t1 -c$CONNS -d${DURATION}s, proxy on CPU 0, wrk+upstream on CPU 1, $(nproc) CPUs, $(date -u +%FT%TZ)"
echo "direct: wrk straight to the upstream; CPU columns are the proxy process's user+sys time per request;"
echo "*-light rows use 2 connections and are compared with nginx-light."
echo
rcol=""; rsep=""
if [ -n "$REDIS_PID" ]; then rcol=" redis CPU-µs/req |"; rsep=" --- |"; fi
echo "| load | requests | req/s | p50 | p99 | non-2xx | proxy CPU-µs/req | × nginx |$rcol"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |$rsep"
for r in "${ROWS[@]}"; do
  IFS='|' read -r n reqs rps p50 p99 non2xx us rus <<<"$r"
  ratio="-"
  base=$NGINX_US; [ "${n%-light}" != "$n" ] && base=$NGINX_LIGHT_US
  if [ "$us" != "-" ] && [ -n "$base" ]; then ratio=$(python3 -c "print(f'{$us/$base:.2f}')"); fi
  rval=""; [ -n "$REDIS_PID" ] && rval=" $rus |"
  echo "| $n | $reqs | $rps | $p50 | $p99 | $non2xx | $us | $ratio |$rval"
done
if [ -n "$REDIS_PID" ]; then
  echo
  echo "| redis after the variant's load | keys | used_memory beyond empty | bytes per key |"
  echo "| --- | --- | --- | --- |"
  for m in "${REDIS_MEM[@]}"; do
    IFS='|' read -r label keys used <<<"$m"
    per="-"; [ "$keys" -gt 0 ] && per=$(( (used - REDIS_BASE) / keys ))
    echo "| $label | $keys | $(( used - REDIS_BASE )) B | $per |"
  done
fi
echo
echo "gateway outcomes during the run (non-zero series):"
sed 's/^/  /' "$W/metrics.txt"

echo
echo "| gateway memory | RSS MiB just started | idle after load | 10,000 open keep-alive connections |"
echo "| --- | --- | --- | --- |"
for m in "${MEM[@]}"; do
  IFS='|' read -r label a b c <<<"$m"
  echo "| $label | $(python3 -c "print(f'{$a/1024:.1f}')") | $(python3 -c "print(f'{$b/1024:.1f}')") | $(python3 -c "print(f'{$c/1024:.1f}')") |"
done
