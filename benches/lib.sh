# Shared by the benchmark scripts (sourced): installs what is missing, a work
# directory removed at exit, processes stopped by the pids the script
# started (never by name), free loopback ports.

# need_apt CMD... : installs the Debian packages named like the commands missing.
need_apt() {
  local need=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
  if [ "${#need[@]}" -gt 0 ]; then
    echo "$(basename "$0"): installing ${need[*]} (Debian packages)"
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

W=$(mktemp -d /tmp/morgw-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
# free_ports N: N distinct free ports (all bound at once, then released).
free_ports() { python3 -c 'import socket,sys
ss=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"; }
wait_port() { for _ in $(seq "${WAIT_TRIES:-200}"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# need_deb PKG... : installs the Debian packages not installed yet.
need_deb() {
  local need=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ "${#need[@]}" -gt 0 ]; then
    echo "$(basename "$0"): installing ${need[*]} (Debian packages)"
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# Each start_* below starts a process in the background and sets LAST_PID
# (also in PIDS, stopped at exit). start_nginx_lua and start_gw run their
# proxy under the command in the array WRAP when it is set (instructions.sh:
# valgrind); the process keeps its pid.
WRAP=()

# start_upstream PORT CPU : MOR's stand-in for the loads, nginx answering a
# MOR-like page to every request.
start_upstream() {
  mkdir -p "$W/up"
  cat > "$W/up/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; error_log stderr error; pid $W/up/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location / {
      default_type application/xml;
      return 200 '<?xml version="1.0" encoding="UTF-8"?><page><details><id>123</id><username>client123</username><balance>55.0000</balance></details></page>';
    }
  }
}
EOF
  taskset -c "$2" nginx -p "$W/up" -c "$W/up/nginx.conf" & LAST_PID=$!; PIDS+=($LAST_PID)
}

# start_nginx_proxy PORT UPSTREAM-PORT CPU : plain nginx proxy_pass with
# upstream keep-alive, no checks (the baseline).
start_nginx_proxy() {
  mkdir -p "$W/px"
  cat > "$W/px/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; error_log stderr error; pid $W/px/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream mor { server 127.0.0.1:$2; keepalive 64; }
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location / {
      proxy_pass http://mor;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
  taskset -c "$3" nginx -p "$W/px" -c "$W/px/nginx.conf" & LAST_PID=$!; PIDS+=($LAST_PID)
}

# The check the loads need, in a few lines of lua: the form parameters,
# SHA1(user_id + key), compare; 200 with MOR's XML error when the hash is
# wrong, else the legacy alias rewritten and proxy_pass with keep-alive.
# start_nginx_lua PORT UPSTREAM-PORT KEY CPU
start_nginx_lua() {
  mkdir -p "$W/lua"
  cat > "$W/lua/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; error_log stderr error; pid $W/lua/nginx.pid;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  lua_package_path "/usr/share/lua/5.1/?.lua;;";
  upstream mor { server 127.0.0.1:$2; keepalive 64; }
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location ~ ^/billing/api/(user_details|user_details_get)\$ {
      client_body_buffer_size 16k;
      access_by_lua_block {
        ngx.req.read_body()
        local args = ngx.req.get_post_args(100)
        local uid, hash = args.user_id, args.hash
        local ok = type(uid) == "string" and type(hash) == "string"
        if ok then
          local d = ngx.sha1_bin(uid .. "$3")
          ok = string.format(string.rep("%02x", 20), d:byte(1, 20)) == hash
        end
        if not ok then
          ngx.header["Content-Type"] = "application/xml"
          ngx.print('<?xml version="1.0" encoding="UTF-8"?><status><error>Incorrect hash</error></status>')
          return ngx.exit(200)
        end
      }
      rewrite ^ /billing/api/user_details_get break;
      proxy_pass http://mor;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
  taskset -c "$4" "${WRAP[@]}" nginx -p "$W/lua" -c "$W/lua/nginx.conf" & LAST_PID=$!; PIDS+=($LAST_PID)
}

# start_gw LABEL BINARY EXTRA-LINES : a gateway on CPU 0 in front of $UP
# with admin key $KEY ("{REDIS}" and "{MYSQL}" in EXTRA-LINES, ';'-separated
# top-level config lines, are $REDIS and $MYSQL); sets GW (its port), MET
# (metrics port), GW_PID.
start_gw() {
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
  BENCH_KEY=$KEY taskset -c 0 "${WRAP[@]}" "$bin" run -c "$W/gw-$label.toml" 2>"$W/gw-$label.err" & GW_PID=$!; PIDS+=($GW_PID)
  wait_port "$GW"
  sleep 0.5
}

# start_mariadb : a mariadbd of our own on a free port (data in $W/mariadb,
# made with mariadb-install-db), on CPU 1; sets MYSQL (port) and MYSQL_PID.
start_mariadb() {
  need_apt mariadbd mariadb-install-db mariadb
  MYSQL=$(free_port)
  mariadb-install-db --no-defaults --user=root --auth-root-authentication-method=normal \
    --skip-test-db --skip-log-bin --datadir="$W/mariadb" >"$W/mariadb-install.log" 2>&1
  taskset -c 1 mariadbd --no-defaults --user=root --bind-address=127.0.0.1 --port="$MYSQL" \
    --skip-name-resolve --skip-log-bin --datadir="$W/mariadb" --socket="$W/mysqld.sock" \
    --pid-file="$W/mysqld.pid" --log-error="$W/mariadb.err" & MYSQL_PID=$!; PIDS+=($MYSQL_PID)
  for _ in $(seq 200); do
    mariadb --no-defaults -uroot --socket="$W/mysqld.sock" -e 'SELECT 1' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "mariadbd did not start" >&2; exit 1
}

# mysql_root SQL : runs SQL as root over the socket.
mysql_root() { mariadb --no-defaults -uroot --socket="$W/mysqld.sock" --batch --skip-column-names -e "$1"; }

# seed_mor USERS RESELLERS KEY : MOR's users and conflines (mor-db.md) with
# USERS users: user1..userN, the first 1000 owned by the admin (the benches'
# callers, signed with KEY), the rest spread over RESELLERS resellers
# (res1..resN, each with its own key and switches); the view and the
# gateway's least-privilege account (password $BENCH_DB_PASSWORD).
seed_mor() {
  local users=$1 resellers=$2 key=$3
  mysql_root "
CREATE DATABASE mor;
USE mor;
CREATE TABLE mor.users (id INT PRIMARY KEY, username VARCHAR(255) NOT NULL, password VARCHAR(255),
  usertype VARCHAR(20) NOT NULL, owner_id INT NOT NULL DEFAULT 0, uniquehash VARCHAR(64), first_name VARCHAR(255));
CREATE TABLE mor.conflines (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(255) NOT NULL, value TEXT, owner_id INT NOT NULL DEFAULT 0);
INSERT INTO mor.users VALUES (0, 'admin', 'x', 'admin', 0, 'adminuniq', 'Admin');
INSERT INTO mor.users SELECT 1000000 + seq, CONCAT('res', seq), 'x', 'reseller', 0, SHA1(CONCAT('r', seq)), 'R'
  FROM seq_1_to_$resellers;
INSERT INTO mor.users SELECT seq, CONCAT('user', seq), 'x', 'user',
  IF(seq <= 1000, 0, 1000001 + seq MOD $resellers), SHA1(seq), 'U' FROM seq_1_to_$users;
INSERT INTO mor.conflines (name, value, owner_id) VALUES ('API_Secret_Key', '$key', 0), ('Allow_API', '1', 0),
  ('Allow_GET_API', '0', 0), ('API_Disable_hash_checking', '0', 0), ('Devices_Check_Ballance', '1', 0),
  ('Email_Smtp_Password', 'x', 0);
INSERT INTO mor.conflines (name, value, owner_id) SELECT 'API_Secret_Key', SHA1(CONCAT('k', seq)), 1000000 + seq FROM seq_1_to_$resellers;
INSERT INTO mor.conflines (name, value, owner_id) SELECT 'Allow_API', '1', 1000000 + seq FROM seq_1_to_$resellers;
INSERT INTO mor.conflines (name, value, owner_id) SELECT 'API_Disable_hash_checking', IF(seq MOD 10 = 0, '1', '0'), 1000000 + seq FROM seq_1_to_$resellers;
CREATE VIEW mor.gateway_conflines AS SELECT id, name, value, owner_id FROM mor.conflines
  WHERE name IN ('API_Secret_Key', 'Allow_API', 'API_Disable_hash_checking', 'Allow_GET_API', 'Devices_Check_Ballance');
CREATE USER 'mor-gateway'@'127.0.0.1' IDENTIFIED BY '$BENCH_DB_PASSWORD';
GRANT SELECT (id, username, usertype, owner_id, uniquehash) ON mor.users TO 'mor-gateway'@'127.0.0.1';
GRANT SELECT ON mor.gateway_conflines TO 'mor-gateway'@'127.0.0.1';"
}

# calls PORT LOAD N : N sequential calls (LOAD good, badhash or alias: the
# signed user_details_get of users 1-1000 with key $KEY, the same with a
# wrong hash, the legacy alias) on one keep-alive connection, each answer
# read whole and checked to be a 200.
calls() {
  python3 - "$1" "$2" "$3" "$KEY" <<'PY'
import hashlib, socket, sys
port, load, n, key = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
path = "/billing/api/user_details" if load == "alias" else "/billing/api/user_details_get"
reqs = []
for i in range(1, 1001):
    h = hashlib.sha1(f"{i}{key}".encode()).hexdigest() if load != "badhash" else "0" * 40
    body = f"u=user{i}&user_id={i}&hash={h}".encode()
    reqs.append(b"POST %s HTTP/1.1\r\nHost: mor\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(n):
    s.sendall(reqs[i % len(reqs)])
    buf = b""
    while True:
        buf += s.recv(65536)
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            continue
        cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        if cl and len(rest) >= int(cl[0].split(b":")[1]):
            break
        if not cl and rest.endswith(b"0\r\n\r\n"):   # chunked (nginx+lua's refusal)
            break
    assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
s.close()
PY
}
