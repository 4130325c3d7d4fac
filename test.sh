#!/usr/bin/env bash
# Runs every Cairn test on this machine: installs what is missing, builds the UI,
# checks formatting and lints, then runs the unit, integration and end-to-end tests
# (the real app through WebDriver under Xvfb, a real Secret Service keyring on a
# private D-Bus session, real SQLCipher files).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/env.sh
scripts/setup.sh

echo "== UI: type check and build"
npm --prefix ui run --silent check
npm --prefix ui run --silent build

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== LAN discovery (mDNS) inside a private network namespace"
# mDNS multicasts on every interface, so this test runs only where it can reach no
# one else: a namespace of its own with a veth pair (addresses private to it).
ns="cairn-mdns-$$"
if ip netns add "$ns" 2>/dev/null; then
  ip netns exec "$ns" sh -c 'ip link set lo up
    ip link add cairn0 type veth peer name cairn1
    ip addr add 10.201.0.1/24 dev cairn0 && ip addr add 10.201.0.2/24 dev cairn1
    ip link set cairn0 up && ip link set cairn1 up'
  status=0
  ip netns exec "$ns" cargo test -p cairn-net --locked --offline --test loopback -- --ignored mdns || status=$?
  ip netns del "$ns"
  [ "$status" -eq 0 ] || exit "$status"
else
  echo "skipped: this user may not create network namespaces (needs root or CAP_SYS_ADMIN)"
fi

echo "== the NAT lab's stand-in for the public network"
cargo build -p cairn-lab --locked

echo "== tests (Xvfb display, private D-Bus session with gnome-keyring)"
runner="nextest run --no-fail-fast"
cargo nextest --version >/dev/null 2>&1 || runner="test --no-fail-fast"
# The keyring daemon keeps its files under XDG_DATA_HOME: give it a throwaway one.
keyring_home="$(mktemp -d)"
trap 'rm -rf "$keyring_home"' EXIT
XDG_DATA_HOME="$keyring_home" timeout 1800 xvfb-run -a -s "-screen 0 1280x1024x24" \
  dbus-run-session -- bash -c '
    echo -n cairn-test | gnome-keyring-daemon --unlock --components=secrets >/dev/null
    cargo $0 --workspace --locked "$@"
  ' "$runner" "$@"
