#!/usr/bin/env bash
# Boots systemd in a container (systemd-nspawn, the host's /usr read-only,
# a fresh /etc and /var, a private network with only loopback) and runs the
# INSTALLED mor-gateway package's units there, with their whole sandbox:
# start (ExecStartPre check, port 80 via CAP_NET_BIND_SERVICE, the secret
# from EnvironmentFile=), calls through to a simulator, reload (SIGHUP),
# rotation by the installed logrotate snippet (SIGUSR1), SIGUSR2, stop. The
# syscall filter kills instead of returning EPERM here, so a syscall it
# forbids shows as a dead service. When the installed binary has
# `run --upgrade`, the zero-downtime hand-off to slot @a and on to @b is run
# under load too.
#
#   sudo deploy/systemd/boot-test.sh      (needs systemd-nspawn: systemd-container)
#
# Exit 0: passed; 1: the gateway or its units failed; 3: systemd could not
# boot in a container on this machine (nothing about the gateway was
# tested). Everything it starts is stopped by its pid; it leaves nothing
# behind.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "boot-test: run as root" >&2; exit 2; }
command -v systemd-nspawn >/dev/null || { echo "boot-test: needs systemd-nspawn (systemd-container)" >&2; exit 2; }
[ -x /usr/bin/mor-gateway ] && [ -f /usr/lib/systemd/system/mor-gateway.service ] ||
  { echo "boot-test: install the mor-gateway package first" >&2; exit 2; }

work=$(mktemp -d /tmp/mor-gateway-boot.XXXXXX)
root=$work/root
nspawn_pid=""
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true   # the container shuts down
    for _ in $(seq 1 40); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  mountpoint -q "$root/usr" && umount "$root/usr"
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  if [ -n "${IN:-}" ]; then $IN journalctl --no-pager -n 60 -o short-monotonic >&2 || true; fi
  echo "boot-test: FAILED: $*" >&2
  exit 1
}
cannot_boot() { echo "boot-test: NOT RUN: $*" >&2; tail -n 20 "$work/console.log" >&2 || true; exit 3; }

# An OS tree of nothing but the host's /usr.
mkdir -p "$root/usr" "$work/etc"
mount --bind /usr "$root/usr"
mount -o remount,bind,ro "$root/usr"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done

# /etc/mor-gateway inside: the installed config on loopback ports, a secret,
# and the installed logrotate snippet.
key=boot-test-key
sed -e 's#^listen = \[.*#listen = ["127.0.0.1:80"]#' \
    -e 's#^servers = .*#servers = ["127.0.0.1:8081"]#' \
    /etc/mor-gateway/gateway.toml > "$work/etc/gateway.toml"
printf 'MOR_API_SECRET=%s\n' "$key" > "$work/etc/secrets.env"
chmod 0600 "$work/etc/secrets.env"
cp /etc/logrotate.d/mor-gateway "$work/etc/logrotate.conf"
# The hash MOR expects for user_details_get user_id=123 with that key.
hash=$(printf '123%s' "$key" | sha1sum | cut -d' ' -f1)
body="u=admin&user_id=123&hash=$hash"

systemd-nspawn --quiet --directory="$root" --volatile=yes --private-network \
  --register=no --keep-unit --machine="mgboot$$" \
  --bind-ro="$work/etc:/etc/mor-gateway" \
  --boot systemd.firstboot=off systemd.unit=basic.target >"$work/console.log" 2>&1 &
nspawn_pid=$!

# The container's init: nspawn's child that is PID 1 in its own namespace
# (an intermediate child may show up first and exit).
find_init() {
  local p
  for p in $(pgrep -P "$nspawn_pid"); do
    if grep -qE '^NSpid:.*[[:space:]]1$' "/proc/$p/status" 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
init=""
for _ in $(seq 1 100); do
  init=$(find_init) && break
  kill -0 "$nspawn_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$init" ] || cannot_boot "the container did not start"
IN="nsenter --target $init --all"
# Booted far enough when basic.target is reached (the host's own services,
# enabled in its /etc, are not there: /etc is empty).
state=""
for _ in $(seq 1 120); do
  state=$($IN systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded|starting) break ;; esac
  sleep 0.25
done
case "$state" in running|degraded|starting) ;; *) cannot_boot "systemd did not boot (state: '$state')" ;; esac
echo "boot-test: systemd booted in a container ($state)"

# A forbidden syscall kills the service here (instead of EPERM).
$IN sh -c 'mkdir -p /run/systemd/system/mor-gateway.service.d /run/systemd/system/mor-gateway@.service.d
  for d in mor-gateway.service.d mor-gateway@.service.d; do
    printf "[Service]\nSystemCallErrorNumber=\n" > /run/systemd/system/$d/seccomp-kill.conf
  done
  systemctl daemon-reload
  # The container has no network to wait for (the unit wants network-online).
  systemctl mask --runtime --quiet systemd-networkd-wait-online.service'

$IN systemd-run --quiet --unit=mor-sim -p Environment=K="$key" \
  /usr/bin/mor-gateway sim --listen 127.0.0.1:8081 --key-env K
$IN systemctl start mor-gateway || fail "mor-gateway did not start"

answered=0   # calls that got an answer: each is one access-log line
call() {
  code=$($IN curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST http://127.0.0.1/billing/api/user_details_get -d "$body" || true)
  [ "$code" = 000 ] || answered=$((answered + 1))
}
calls() {   # N calls, all must be 200
  for _ in $(seq 1 "$1"); do
    call
    [ "$code" = 200 ] || fail "a call answered '$code'"
  done
}
lines() { $IN sh -c "cat $1 2>/dev/null | wc -l"; }
ready() {
  for _ in $(seq 1 50); do call; [ "$code" = 200 ] && return 0; sleep 0.1; done
  fail "the gateway does not answer"
}

ready
calls 50
$IN systemctl reload mor-gateway || fail "reload"
calls 20
$IN sh -c 'curl -s 127.0.0.1:9464/metrics' | grep -q '^mor_gateway_config_reloads_total{result="ok"} 1' || fail "reload not counted"
$IN logrotate -f -s /run/logrotate.state /etc/mor-gateway/logrotate.conf || fail "logrotate"
for _ in $(seq 1 50); do $IN test -e /var/log/mor-gateway/access.log && break; sleep 0.1; done
calls 30
$IN systemctl kill -s USR2 --kill-who=main mor-gateway
calls 5
for _ in $(seq 1 50); do
  rotated=$(lines /var/log/mor-gateway/access.log.1)
  new=$(lines /var/log/mor-gateway/access.log)
  [ "$((rotated + new))" -ge "$answered" ] && break
  sleep 0.1
done
[ "$rotated" -gt 0 ] && [ "$new" -gt 0 ] && [ "$((rotated + new))" = "$answered" ] ||
  fail "access log: $rotated rotated + $new new lines for $answered calls"
echo "boot-test: start, $answered calls, reload, logrotate (SIGUSR1: $rotated + $new lines, one per call), SIGUSR2: ok"

if /usr/bin/mor-gateway run --help | grep -q -- '--upgrade'; then
  for step in "mor-gateway mor-gateway@a" "mor-gateway@a mor-gateway@b"; do
    set -- $step
    $IN sh -c 'end=$(($(date +%s) + 12)); bad=0; n=0
      while [ $(date +%s) -lt $end ]; do
        c=$(curl -s -o /dev/null -w "%{http_code}" --max-time 5 -X POST http://127.0.0.1/billing/api/user_details_get -d "'"$body"'")
        n=$((n+1)); [ "$c" = 200 ] || bad=$((bad+1))
      done; echo "$n $bad" > /run/upgrade-load' &
    load=$!
    sleep 2
    $IN systemctl start "$2" || fail "start $2"
    $IN systemctl kill -s QUIT --kill-who=main "$1"
    wait "$load"
    read -r n bad < <($IN cat /run/upgrade-load)
    [ "$bad" = 0 ] || fail "upgrade $1 -> $2: $bad of $n calls failed"
    for _ in $(seq 1 60); do $IN systemctl is-active --quiet "$1" || break; sleep 0.25; done
    $IN systemctl is-active --quiet "$1" && fail "$1 still runs after SIGQUIT"
    $IN systemctl is-active --quiet "$2" || fail "$2 is not running"
    echo "boot-test: zero-downtime upgrade $1 -> $2 under load: $n calls, 0 failed"
  done
  last=mor-gateway@b
else
  echo "boot-test: this binary has no 'run --upgrade': the upgrade slots were not exercised"
  last=mor-gateway
fi

$IN systemctl stop "$last"
result=$($IN systemctl show "$last" -p Result --value)
[ "$result" = success ] || fail "$last stopped with result '$result'"
if $IN journalctl --no-pager -o cat -u mor-gateway -u 'mor-gateway@*' | grep -E '(^| )(ERROR|WARN) '; then
  fail "the gateway logged errors or warnings"
fi
echo "boot-test: passed (stopped cleanly, no ERROR or WARN line in the journal)"
