# Shared environment for Cairn's scripts (sourced, not run).
# Build output and tools live outside the clone so fresh clones reuse them.
export CAIRN_CACHE="${CAIRN_CACHE:-$HOME/.cache/cairn}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CAIRN_CACHE/target}"
export CAIRN_TOOLS="$CAIRN_CACHE/tools"
export PATH="$CAIRN_TOOLS/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
