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
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
