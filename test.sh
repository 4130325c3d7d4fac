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
