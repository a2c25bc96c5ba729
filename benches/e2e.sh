#!/usr/bin/env bash
# End-to-end benchmark: CPU cost per proxied request, mor-gateway vs nginx.
#
#   benches/e2e.sh [--duration S] [--connections N] [--rounds R] [--redis] [--mariadb]
#                  [--only good|badhash|alias|light] [--no-memory]
#                  [--variant LABEL=BINARY[,toml-line;toml-line...]]...
#
# --only measures one load (nginx+lua's and each variant's), so that more
# rounds fit in the same time: a focused A/B, e.g.
#   benches/e2e.sh --only good --rounds 5 --no-memory \
#     --variant before=/tmp/old/mor-gateway --variant now=target/release/mor-gateway
# --no-memory skips the RSS measurement with 10,000 connections.
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
#   lua-*         nginx 1 worker + lua verifying the same SHA1 (the honest
#                 peer: parameters, SHA1, compare, alias rewrite), same loads
#   gw-good       mor-gateway, fully verified POSTs cycling 1000 users
#   gw-badhash    mor-gateway, bad hashes (refused at the edge)
#   gw-alias      mor-gateway, legacy alias user_details (verified, rewritten)
#   *-light       nginx and mor-gateway (verified calls) with 2 connections
#                 only, so that neither is saturated: latency at the same load
# The proxy under test runs alone on CPU 0 (taskset); wrk and the upstream
# share CPU 1. CPU-µs/request = (utime+stime of the proxy process from
# /proc/PID/stat) / requests completed. Also reported: idle RSS and RSS with
# 10,000 open keep-alive client connections.
# Every target runs --rounds times (default 3), interleaved; the tables show
# medians and the CPU figure's spread. Loopback only; every load is bounded
# by --duration.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10
CONNS=64
ROUNDS=3
VARIANTS=()
REDIS=""
MARIADB=""
ONLY=""
NO_MEMORY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mariadb) MARIADB=1; shift ;;
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --variant) VARIANTS+=("$2"); shift 2 ;;
    --redis) REDIS=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --no-memory) NO_MEMORY=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

. benches/lib.sh
need_apt nginx wrk cmake
need_deb libnginx-mod-http-lua   # the nginx+lua peer
if [ -n "$REDIS" ]; then need_apt redis-server; fi
if [ "${#VARIANTS[@]}" -eq 0 ]; then
  cargo build --release --quiet --bin mor-gateway
  VARIANTS=("gw=target/release/mor-gateway")
fi
ulimit -n 65536 2>/dev/null || true
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

UP=$(free_port); NGX=$(free_port); LUA=$(free_port)
KEY=456789
CLK=$(getconf CLK_TCK)

start_upstream "$UP" 1

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

start_nginx_proxy "$NGX" "$UP" 0; NGX_PID=$LAST_PID
start_nginx_lua "$LUA" "$UP" "$KEY" 0; LUA_PID=$LAST_PID

wait_port "$UP"; wait_port "$NGX"; wait_port "$LUA"

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

# Every measurement is one line of $W/rows: round|name|reqs|rps|p50_ms|p99_ms|non2xx|us|redis_us
: > "$W/rows"
# run ROUND NAME PORT SCRIPT PID(or -) [CONNECTIONS]; with --only, only the
# targets of that load (NAME ending in -LOAD) run.
run() {
  local round=$1 name=$2 port=$3 script=$4 pid=$5 CONNS=${6:-$CONNS}
  if [ -n "$ONLY" ] && [[ "$name" != *-"$ONLY" ]]; then return 0; fi
  # warm-up (keep-alive pools, page faults)
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s "$W/$script.lua" "http://127.0.0.1:$port" >/dev/null
  local t0=0; [ "$pid" != "-" ] && t0=$(cpu_ticks "$pid")
  local r0=0; [ -n "$REDIS_PID" ] && r0=$(cpu_ticks "$REDIS_PID")
  local out; out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$W/$script.lua" "http://127.0.0.1:$port")
  local t1=0; [ "$pid" != "-" ] && t1=$(cpu_ticks "$pid")
  local r1=0; [ -n "$REDIS_PID" ] && r1=$(cpu_ticks "$REDIS_PID")
  python3 - "$round" "$name" "$pid" "$t0" "$t1" "$r0" "$r1" "$CLK" "$W/rows" <<PY
import sys, re
rnd, name, pid, t0, t1, r0, r1, clk, rows = sys.argv[1:]
out = """$out"""
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m[2]]
reqs = int(re.search(r"(\d+) requests in", out)[1])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1])
p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1])
m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
non2xx = int(m[1]) if m else 0
us = (int(t1) - int(t0)) / int(clk) * 1e6 / reqs if pid != "-" else ""
rus = (int(r1) - int(r0)) / int(clk) * 1e6 / reqs
with open(rows, "a") as f:
    f.write(f"{rnd}|{name}|{reqs}|{rps}|{p50}|{p99}|{non2xx}|{us}|{rus}\n")
PY
}

# Every gateway variant is started once, idle on CPU 0 while another target
# is measured; the rounds interleave all targets so that drift (thermal,
# other load) hits them alike.
declare -A GW_PORT GW_PIDS GW_MET
LABELS=()
for v in "${VARIANTS[@]}"; do
  label=${v%%=*}; rest=${v#*=}; bin=${rest%%,*}; extra=""
  [ "$rest" != "$bin" ] && extra=${rest#*,}
  start_gw "$label" "$bin" "$extra"
  GW_PORT[$label]=$GW; GW_PIDS[$label]=$GW_PID; GW_MET[$label]=$MET
  LABELS+=("$label")
  echo "$label|$(rss_kib "$GW_PID")" >> "$W/start_rss"
done

REDIS_BASE=""
if [ -n "$REDIS_PID" ]; then
  REDIS_BASE=$(redis-cli -p "$REDIS" info memory | tr -d '\r' | awk -F: '$1=="used_memory" {print $2}')
fi
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  run "$round" direct "$UP" good -
  run "$round" nginx "$NGX" good "$NGX_PID"
  run "$round" nginx-light "$NGX" good "$NGX_PID" 2
  run "$round" lua-good "$LUA" good "$LUA_PID"
  run "$round" lua-badhash "$LUA" bad "$LUA_PID"
  run "$round" lua-alias "$LUA" alias "$LUA_PID"
  run "$round" lua-light "$LUA" good "$LUA_PID" 2
  for label in "${LABELS[@]}"; do
    p=${GW_PORT[$label]}; pid=${GW_PIDS[$label]}
    run "$round" "$label-good" "$p" good "$pid"
    run "$round" "$label-badhash" "$p" bad "$pid"
    run "$round" "$label-alias" "$p" alias "$pid"
    run "$round" "$label-light" "$p" good "$pid" 2
    if [ -n "$REDIS_PID" ] && [ "$round" = "$ROUNDS" ]; then
      # Keys the gateway left in Redis right after its load, and their memory
      # beyond an empty server's (measured before the first round).
      info=$(redis-cli -p "$REDIS" info memory | tr -d '\r')
      used=$(awk -F: '$1=="used_memory" {print $2}' <<<"$info")
      keys=$(redis-cli -p "$REDIS" dbsize)
      echo "$label|$keys|$used" >> "$W/redis_mem"
    fi
    [ -n "$REDIS_PID" ] && { redis-cli -p "$REDIS" flushall >/dev/null; sleep 0.5; }
  done
done

: > "$W/metrics.txt"
# RSS of a process with 10,000 open keep-alive connections, each having
# made one call (a verified one for nginx+lua's sake too).
conn_rss() { # PORT PID
  python3 - "$1" "$2" "$KEY" <<'PY'
import hashlib, socket, sys, time
port, pid, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
body = b"u=user1&user_id=1&hash=" + hashlib.sha1(b"1" + key.encode()).hexdigest().encode()
req = b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
socks = []
for _ in range(10000):
    # one call each, one at a time (upstream connections stay few): every
    # connection is then an idle keep-alive session
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    s.recv(4096)
    socks.append(s)
time.sleep(1)
print([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
for s in socks:
    s.close()
PY
}
: > "$W/mem"
[ -z "$NO_MEMORY" ] && echo "nginx-lua|-|$(rss_kib "$LUA_PID")|$(conn_rss "$LUA" "$LUA_PID")" > "$W/mem"
for label in "${LABELS[@]}"; do
  pid=${GW_PIDS[$label]}
  curl -s "http://127.0.0.1:${GW_MET[$label]}/metrics" | grep -E '^mor_gateway_requests_total' | grep -v ' 0$' | sed "s/^/  $label: /" >> "$W/metrics.txt" || true
  idle=$(rss_kib "$pid")
  conn=-
  [ -z "$NO_MEMORY" ] && conn=$(conn_rss "${GW_PORT[$label]}" "$pid")
  start=$(awk -F'|' -v l="$label" '$1==l {print $2}' "$W/start_rss")
  echo "$label|$start|$idle|$conn" >> "$W/mem"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

echo
echo "mor-gateway benchmark: wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS rounds (medians; spread = (max-min)/median of the CPU figure), proxy on CPU 0, wrk+upstream on CPU 1, $(nproc) CPUs, load average before: $LOAD0, $(date -u +%FT%TZ)"
echo "direct: wrk straight to the upstream; nginx: proxy_pass, no checks; lua-*: nginx + lua verifying the same hash;"
echo "CPU columns are the proxy process's user+sys time per request; *-light rows use 2 connections."
echo
python3 - "$W" "${LABELS[@]}" <<'PY'
import statistics, sys
w, labels = sys.argv[1], sys.argv[2:]
rows = {}
for line in open(f"{w}/rows"):
    rnd, name, reqs, rps, p50, p99, non2xx, us, rus = line.rstrip("\n").split("|")
    rows.setdefault(name, []).append(dict(reqs=int(reqs), rps=float(rps), p50=float(p50), p99=float(p99),
        non2xx=int(non2xx), us=float(us) if us else None, rus=float(rus)))
def med(name, k):
    v = [r[k] for r in rows.get(name, []) if r[k] is not None]
    return statistics.median(v) if v else None
def spread(name):
    v = [r["us"] for r in rows.get(name, []) if r["us"] is not None]
    return (max(v) - min(v)) / statistics.median(v) if len(v) > 1 else 0.0
redis = any(r["rus"] > 0 for rs in rows.values() for r in rs)
head = "| load | req/s | p50 ms | p99 ms | non-2xx | proxy CPU-µs/req | spread | × nginx | × nginx+lua |"
print(head + (" redis CPU-µs/req |" if redis else ""))
print("| --- " * (head.count("|") - 1 + (1 if redis else 0)) + "|")
order = ["direct", "nginx", "nginx-light", "lua-good", "lua-badhash", "lua-alias", "lua-light"]
order += [f"{l}-{k}" for l in labels for k in ("good", "badhash", "alias", "light")]
for name in order:
    if name not in rows:
        continue
    load = name.rsplit("-", 1)[-1] if "-" in name else "good"
    us = med(name, "us")
    ngx = med("nginx-light" if load == "light" else "nginx", "us")
    lua = med(f"lua-{load}", "us") if load in ("good", "badhash", "alias", "light") else None
    x = lambda b: f"{us / b:.2f}" if us and b else "-"
    cols = [name, f"{med(name, 'rps'):.0f}", f"{med(name, 'p50'):.3f}", f"{med(name, 'p99'):.3f}",
            str(sum(r["non2xx"] for r in rows[name])), f"{us:.1f}" if us else "-",
            f"{spread(name) * 100:.0f} %" if us else "-",
            x(ngx) if not name.startswith("nginx") else "-",
            x(lua) if not name.startswith("lua") else "-"]
    if redis:
        cols.append(f"{med(name, 'rus'):.1f}")
    print("| " + " | ".join(cols) + " |")
PY
if [ -n "$REDIS_PID" ] && [ -f "$W/redis_mem" ]; then
  echo
  echo "| redis after the variant's load | keys | used_memory beyond empty | bytes per key |"
  echo "| --- | --- | --- | --- |"
  while IFS='|' read -r label keys used; do
    per="-"; [ "$keys" -gt 0 ] && per=$(( (used - REDIS_BASE) / keys ))
    echo "| $label | $keys | $(( used - REDIS_BASE )) B | $per |"
  done < "$W/redis_mem"
fi
echo
echo "gateway outcomes during the run (non-zero series):"
sed 's/^/  /' "$W/metrics.txt"

echo
echo "| memory | RSS MiB just started | idle after load | 10,000 open keep-alive connections | KiB per connection |"
echo "| --- | --- | --- | --- | --- |"
python3 - "$W/mem" <<'PY'
import sys
for line in open(sys.argv[1]):
    label, *v = line.rstrip("\n").split("|")
    a, b, c = (int(x) if x.isdigit() else None for x in v)
    f = lambda x: f"{x / 1024:.1f}" if x is not None else "-"
    per = f"{(c - b) / 10000:.1f}" if b is not None and c is not None else "-"
    print(f"| {label} | {f(a)} | {f(b)} | {f(c)} | {per} |")
PY
