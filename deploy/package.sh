#!/usr/bin/env bash
# Builds the release artefacts (README "Deploy"); .ci/run runs it.
#
#   deploy/package.sh deb     the release build (Debian's OpenSSL), its man
#                             pages, cargo deb:
#                             target/debian/mor-gateway_VERSION-1_amd64.deb
#   deploy/package.sh static  one binary for any x86_64 Linux (musl libc and
#                             OpenSSL linked in, no shared library at all):
#                             target/x86_64-unknown-linux-musl/release-static/mor-gateway
#   deploy/package.sh rpm     the static binary, its man pages, cargo
#                             generate-rpm (for rpm >= 4.14: EL8 and later):
#                             target/x86_64-unknown-linux-musl/generate-rpm/mor-gateway-VERSION-1.x86_64.rpm
#   deploy/package.sh         all three
#
# Only the mor-gateway binary is built and packaged: the MOR simulator
# (mor-sim) is a development tool (tests/package.rs and .ci/run check that
# no package and no gateway binary holds it).
#
# Each run replaces what an earlier one built. What a step needs and lacks
# is installed first, and said: cargo-deb and cargo-generate-rpm (cargo
# install, into ~/.cargo/bin), the musl target (rustup). The static build
# also needs musl-gcc (Debian: apt install musl-tools; .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

tgt="${CARGO_TARGET_DIR:-target}"
musl=x86_64-unknown-linux-musl
profile=release-static
# Pinned: the RPM layout is checked against what this version writes.
rpm_tool_version=0.21.1

say() { echo "deploy/package.sh: $*"; }

need_cargo_tool() {   # command, crate, version (empty: latest)
  if ! command -v "$1" >/dev/null 2>&1; then
    say "installing $2${3:+ $3} (cargo install --locked, into ~/.cargo/bin)"
    cargo install --locked --quiet "$2" ${3:+--version "$3"}
  fi
}

# Man pages of the binary $1 into $2, gzipped as packages install them.
man_pages() {
  rm -rf "$2"
  "$1" manpage --gzip --dir "$2" >/dev/null
}

deb() {
  need_cargo_tool cargo-deb cargo-deb ""
  cargo build --release --locked --quiet --bin mor-gateway
  man_pages "$tgt/release/mor-gateway" "$tgt/release/man"
  rm -f "$tgt"/debian/mor-gateway_*.deb
  cargo deb --no-build --locked --quiet
  say "built $(ls "$tgt"/debian/mor-gateway_*.deb)"
}

static() {
  if ! rustup target list --installed 2>/dev/null | grep -x "$musl" >/dev/null; then
    say "installing the Rust target $musl (rustup target add)"
    rustup target add "$musl"
  fi
  command -v musl-gcc >/dev/null 2>&1 || {
    say "the static build needs musl-gcc (Debian: apt install musl-tools)" >&2
    exit 2
  }
  # OpenSSL from source (openssl-src), for every crate that links it; the
  # Debian build's OPENSSL_NO_VENDOR=1 (.cargo/config.toml) is overridden
  # here, and build.rs refuses a `static` build that did not vendor it.
  OPENSSL_NO_VENDOR=0 cargo build --locked --quiet --bin mor-gateway \
    --target "$musl" --profile "$profile" --features static
  man_pages "$tgt/$musl/$profile/mor-gateway" "$tgt/$musl/$profile/man"
  say "built $tgt/$musl/$profile/mor-gateway"
}

rpm() {
  need_cargo_tool cargo-generate-rpm cargo-generate-rpm "$rpm_tool_version"
  static
  rm -f "$tgt/$musl"/generate-rpm/mor-gateway-*.rpm
  # gzip: every rpm since EL5 reads it (zstd needs a newer one).
  cargo generate-rpm --target "$musl" --profile "$profile" --payload-compress gzip
  say "built $(ls "$tgt/$musl"/generate-rpm/mor-gateway-*.rpm)"
}

case "${1:-all}" in
  deb) deb ;;
  static) static ;;
  rpm) rpm ;;
  all) deb; rpm ;;
  *) echo "usage: deploy/package.sh [deb|static|rpm]" >&2; exit 2 ;;
esac
