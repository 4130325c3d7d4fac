#!/usr/bin/env bash
# Runs every decoder fuzz target (crates/proto/fuzz) for a fixed number of executions
# each and prints one line per target. Usage: scripts/fuzz.sh [RUNS] (default 200000).
# cargo fuzz wants nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
runs="${1:-200000}"
command -v cargo-fuzz >/dev/null || cargo install --locked --root "$CAIRN_TOOLS" cargo-fuzz --quiet
cd crates/proto/fuzz
for target in envelope sealed content invite device_list cache group link; do
  log="$(mktemp)"
  start=$(date +%s)
  if RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" -- -runs="$runs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    result="ok"
  else
    result="FAILED (see $log)"
  fi
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
  echo "$target: $result, $execs executions, coverage $cov edges, $(( $(date +%s) - start )) s"
done
