#!/usr/bin/env bash
# Installs what is missing and launches the Cairn desktop app.
# Options are passed to the app, e.g. `./run.sh --profile bob` for a second profile.
# With no display (a server, CI) the app runs on a virtual Xvfb display.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/env.sh
scripts/setup.sh
npm --prefix ui run --silent build
cargo build --locked --bin cairn
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  echo "run.sh: no display; running Cairn headless on Xvfb (Ctrl-C to stop)"
  exec xvfb-run -a "$CARGO_TARGET_DIR/debug/cairn" "$@"
fi
exec "$CARGO_TARGET_DIR/debug/cairn" "$@"
