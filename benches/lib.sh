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
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

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
