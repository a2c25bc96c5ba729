#!/usr/bin/env bash
# Boots systemd in a container (systemd-nspawn, the host's /usr read-only,
# a fresh /etc and /var, a private network with only loopback) and runs the
# mor-gateway package's units there, with their whole sandbox: start
# (ExecStartPre check, port 80 via CAP_NET_BIND_SERVICE, the secret from
# EnvironmentFile=), calls through to a simulator over HTTPS (its CA only
# in the distribution's CA store, where the gateway must find it without
# upstream.ca_file), reload (SIGHUP), rotation by the package's logrotate
# snippet (SIGUSR1), SIGUSR2, stop. The syscall filter kills instead of
# returning EPERM here, so a syscall it forbids shows as a dead service.
# When the binary has `run --upgrade`, the zero-downtime hand-off to slot @a
# and on to @b is run under load too.
#
#   sudo deploy/systemd/boot-test.sh             the INSTALLED Debian package
#   sudo deploy/systemd/boot-test.sh --rpm FILE  the RPM, installed with rpm
#       inside the container (its /usr an overlay over the host's, written
#       nowhere else): its scriptlets, its static binary finding the CA in
#       RHEL's place (/etc/pki/tls/certs), then an upgrade (rpm -U: the
#       gateway keeps running, the secret and the edited config stay) and
#       the erase (rpm -e: the gateway stopped, the secret gone)
#
# Needs systemd-nspawn (systemd-container), openssl; --rpm needs rpm.
#
# Exit 0: passed; 1: the gateway or its units failed; 3: systemd could not
# boot in a container on this machine (nothing about the gateway was
# tested). Everything it starts is stopped by its pid; it leaves nothing
# behind.
set -euo pipefail

usage() { echo "usage: deploy/systemd/boot-test.sh [--rpm FILE]" >&2; exit 2; }
rpm_file=""
case "${1:-}" in
  "") ;;
  --rpm) [ -f "${2:-}" ] || usage; rpm_file=$(realpath "$2") ;;
  *) usage ;;
esac

[ "$(id -u)" = 0 ] || { echo "boot-test: run as root" >&2; exit 2; }
command -v systemd-nspawn >/dev/null || { echo "boot-test: needs systemd-nspawn (systemd-container)" >&2; exit 2; }
command -v openssl >/dev/null || { echo "boot-test: needs openssl" >&2; exit 2; }
if [ -n "$rpm_file" ]; then
  command -v rpm >/dev/null || { echo "boot-test: --rpm needs rpm" >&2; exit 2; }
else
  [ -x /usr/bin/mor-gateway ] && [ -f /usr/lib/systemd/system/mor-gateway.service ] ||
    { echo "boot-test: install the mor-gateway package first" >&2; exit 2; }
fi

work=$(mktemp -d /tmp/mor-gateway-boot.XXXXXX)
root=$work/root
nspawn_pid=""
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true   # the container shuts down
    for _ in $(seq 1 40); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  if mountpoint -q "$root/usr"; then umount "$root/usr"; fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  if [ -n "${IN:-}" ]; then $IN journalctl --no-pager -n 60 -o short-monotonic >&2 || true; fi
  echo "boot-test: FAILED: $*" >&2
  exit 1
}
cannot_boot() { echo "boot-test: NOT RUN: $*" >&2; tail -n 20 "$work/console.log" >&2 || true; exit 3; }

# An OS tree of nothing but the host's /usr. For the installed Debian
# package: read-only, in a volatile container (an empty /etc and /var in
# memory). For the RPM: an overlay whose changes (rpm -i) land in $work
# only, with an empty /etc and /var there (a volatile container would
# mount /usr read-only).
mkdir -p "$root/usr" "$work/etc" "$work/srv"
if [ -n "$rpm_file" ]; then
  mkdir -p "$work/usr-upper" "$work/usr-work" "$root/etc" "$root/var"
  mount -t overlay overlay \
    -o "lowerdir=/usr,upperdir=$work/usr-upper,workdir=$work/usr-work" "$root/usr"
  volatile=no
else
  mount --bind /usr "$root/usr"
  mount -o remount,bind,ro "$root/usr"
  volatile=yes
fi
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done

# The simulator's certificate for localhost, signed by a CA the container
# trusts only through the distribution's CA store.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=boot-test-ca \
  -keyout "$work/srv/ca.key" -out "$work/srv/ca.pem" >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
  -keyout "$work/srv/sim.key" -out "$work/srv/sim.csr" >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost\n' > "$work/srv/san.ext"
openssl x509 -req -in "$work/srv/sim.csr" -CA "$work/srv/ca.pem" -CAkey "$work/srv/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/srv/san.ext" -out "$work/srv/sim.pem" >/dev/null 2>&1
chmod 0644 "$work/srv/"*
[ -z "$rpm_file" ] || cp "$rpm_file" "$work/srv/mor-gateway.rpm"

# /etc/mor-gateway: the package's config on loopback ports with the
# simulator as its upstream, a secret, the logrotate snippet. The Debian
# package's are the host's (bound in); the RPM brings its own and they are
# edited in place after rpm -i (an edited %config(noreplace) file).
key=boot-test-key
edit_config='s#^listen = \[.*#listen = ["127.0.0.1:80"]#; s#^servers = .*#servers = ["https://localhost:8443"]#'
if [ -z "$rpm_file" ]; then
  sed -e "$edit_config" /etc/mor-gateway/gateway.toml > "$work/etc/gateway.toml"
  printf 'MOR_API_SECRET=%s\n' "$key" > "$work/etc/secrets.env"
  chmod 0600 "$work/etc/secrets.env"
  cp /etc/logrotate.d/mor-gateway "$work/etc/logrotate.conf"
  logrotate_conf=/etc/mor-gateway/logrotate.conf
  etc_bind=(--bind-ro="$work/etc:/etc/mor-gateway")
  ca_store=/etc/ssl/certs/ca-certificates.crt   # Debian's
else
  logrotate_conf=/etc/logrotate.d/mor-gateway
  etc_bind=()
  ca_store=/etc/pki/tls/certs/ca-bundle.crt     # RHEL's
fi
# The hash MOR expects for user_details_get user_id=123 with that key.
hash=$(printf '123%s' "$key" | sha1sum | cut -d' ' -f1)
body="u=admin&user_id=123&hash=$hash"

systemd-nspawn --quiet --directory="$root" --volatile="$volatile" --private-network \
  --register=no --keep-unit --machine="mgboot$$" \
  "${etc_bind[@]}" --bind-ro="$work/srv:/srv/boot-test" \
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

if [ -n "$rpm_file" ]; then
  # Debian's rpm keeps its database in ~/.rpmdb (and warns unless told
  # --force-debian): the container's goes where RHEL keeps it. --nodeps: this rpm database knows no /bin/sh;
  # --ignoresize: the overlay reports no free space of its own.
  RPM="rpm --dbpath /var/lib/rpm"
  $IN mkdir -p /var/lib/rpm
  $IN $RPM --initdb
  $IN $RPM --force-debian --quiet -i --nodeps --ignoresize /srv/boot-test/mor-gateway.rpm || fail "rpm -i"
  $IN test -d /var/log/mor-gateway || fail "rpm %post made no /var/log/mor-gateway"
  $IN systemctl cat mor-gateway.service >/dev/null || fail "rpm -i: systemd does not know mor-gateway.service"
  $IN sed -i -e "$edit_config" /etc/mor-gateway/gateway.toml
  $IN sh -c "umask 077; printf 'MOR_API_SECRET=%s\n' '$key' > /etc/mor-gateway/secrets.env"
  echo "boot-test: rpm -i $(basename "$rpm_file"): ok"
fi
# The CA where this distribution keeps it; localhost resolved from /etc/hosts.
$IN sh -c "mkdir -p $(dirname "$ca_store") && cp /srv/boot-test/ca.pem $ca_store
  printf '127.0.0.1 localhost\n' > /etc/hosts; printf 'hosts: files\n' > /etc/nsswitch.conf"
$IN systemd-run --quiet --unit=mor-sim -p Environment=K="$key" \
  /usr/bin/mor-gateway sim --listen 127.0.0.1:8443 --key-env K \
  --tls-cert /srv/boot-test/sim.pem --tls-key /srv/boot-test/sim.key
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
# grep reads all of its input (no -q): under pipefail, a grep that quits at
# its first match could SIGPIPE the writer and fail the pipeline.
$IN sh -c 'curl -s 127.0.0.1:9464/metrics' | grep '^mor_gateway_config_reloads_total{result="ok"} 1$' >/dev/null || fail "reload not counted"
$IN logrotate -f -s /run/logrotate.state "$logrotate_conf" || fail "logrotate"
for _ in $(seq 1 50); do $IN test -e /var/log/mor-gateway/access.log && break; sleep 0.1; done
calls 30
# Drain (SIGUSR2): calls are still served while /readyz says 503; a second
# SIGUSR2 ends it.
ready_code() { $IN curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:9464/readyz || true; }
$IN systemctl kill -s USR2 --kill-who=main mor-gateway
for _ in $(seq 1 50); do [ "$(ready_code)" = 503 ] && break; sleep 0.1; done
[ "$(ready_code)" = 503 ] || fail "/readyz does not answer 503 while draining"
calls 5
$IN systemctl kill -s USR2 --kill-who=main mor-gateway
for _ in $(seq 1 50); do [ "$(ready_code)" = 200 ] && break; sleep 0.1; done
[ "$(ready_code)" = 200 ] || fail "/readyz does not answer 200 after the drain ended"
for _ in $(seq 1 50); do
  rotated=$(lines /var/log/mor-gateway/access.log.1)
  new=$(lines /var/log/mor-gateway/access.log)
  [ "$((rotated + new))" -ge "$answered" ] && break
  sleep 0.1
done
[ "$rotated" -gt 0 ] && [ "$new" -gt 0 ] && [ "$((rotated + new))" = "$answered" ] ||
  fail "access log: $rotated rotated + $new new lines for $answered calls"
echo "boot-test: start, $answered calls over HTTPS to MOR (CA from $ca_store), reload, logrotate (SIGUSR1: $rotated + $new lines, one per call), drain (SIGUSR2: served while /readyz 503): ok"

# A plain restart under a light load (one call at a time): the calls that
# fail are those sent between the old process closing its listeners and the
# new one listening. The old one exits as soon as no call is in flight, so
# that window is the restart itself, not the shutdown grace.
$IN sh -c 'end=$(($(date +%s) + 6)); bad=0; n=0; first=0; last=0
  while [ $(date +%s) -lt $end ]; do
    c=$(curl -s -o /dev/null -w "%{http_code}" --max-time 5 -X POST http://127.0.0.1/billing/api/user_details_get -d "'"$body"'")
    n=$((n+1))
    if [ "$c" != 200 ]; then
      bad=$((bad+1)); t=$(date +%s%N); [ "$first" = 0 ] && first=$t; last=$t
    fi
  done; echo "$n $bad $(( (last - first) / 1000000 ))" > /run/restart-load' &
load=$!
sleep 2
t0=$(date +%s%N)
$IN systemctl restart mor-gateway || fail "systemctl restart"
t1=$(date +%s%N)
wait "$load"
read -r n bad window < <($IN cat /run/restart-load)
restart_ms=$(( (t1 - t0) / 1000000 ))
[ "$window" -le 1000 ] || fail "restart: calls failed over ${window} ms ($bad of $n; systemctl restart took ${restart_ms} ms)"
echo "boot-test: systemctl restart took ${restart_ms} ms (shutdown_grace 10s); $bad of $n calls failed, over ${window} ms"
calls 3

if $IN /usr/bin/mor-gateway run --help | grep -- '--upgrade' >/dev/null; then
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

if [ -n "$rpm_file" ]; then
  # An upgrade (the same package again) stops nothing and keeps the secret
  # and the edited config; the erase stops the gateway and takes the secret.
  $IN $RPM --force-debian --quiet -U --replacepkgs --nodeps --ignoresize /srv/boot-test/mor-gateway.rpm || fail "rpm -U"
  $IN systemctl is-active --quiet "$last" || fail "rpm -U stopped $last"
  $IN test -f /etc/mor-gateway/secrets.env || fail "rpm -U removed secrets.env"
  $IN grep -q '^servers = \["https://localhost:8443"\]' /etc/mor-gateway/gateway.toml ||
    fail "rpm -U replaced the edited gateway.toml"
  calls 5
  $IN $RPM --force-debian --quiet -e mor-gateway || fail "rpm -e"
  $IN systemctl is-active --quiet "$last" && fail "rpm -e left $last running"
  $IN test -e /etc/mor-gateway/secrets.env && fail "rpm -e left secrets.env"
  $IN test -e /usr/bin/mor-gateway && fail "rpm -e left /usr/bin/mor-gateway"
  $IN test -f /etc/mor-gateway/gateway.toml.rpmsave || fail "rpm -e kept no gateway.toml.rpmsave"
  $IN test -d /var/log/mor-gateway || fail "rpm -e removed the access logs"
  echo "boot-test: rpm -U (gateway kept running, secret and config kept), rpm -e (stopped, secret removed): ok"
else
  $IN systemctl stop "$last"
fi
result=$($IN systemctl show "$last" -p Result --value)
[ "$result" = success ] || fail "$last stopped with result '$result'"
if $IN journalctl --no-pager -o cat -u mor-gateway -u 'mor-gateway@*' | grep -E '(^| )(ERROR|WARN) '; then
  fail "the gateway logged errors or warnings"
fi
echo "boot-test: passed (stopped cleanly, no ERROR or WARN line in the journal)"
