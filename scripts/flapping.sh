#!/usr/bin/env bash
# The flapping-peer run from issue 13, on demand: Alice queues MESSAGES texts for Bob
# while he is away; then Bob's node comes and goes (SIGKILL after about a second,
# KILLS times) while Alice's node stays up; then Bob's node runs undisturbed for
# SETTLE seconds. Prints how many of the texts Bob holds and what Alice's states are.
# Two cairnd processes on loopback, LAN discovery off.
#
#   scripts/flapping.sh [CAIRND] [MESSAGES] [KILLS] [SETTLE]
#
# CAIRND defaults to this checkout's debug build. Counting reads Bob's profile with
# `cairnd history`, which needs this checkout's build (it is given as COUNTER).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
counter="$CARGO_TARGET_DIR/debug/cairnd"
cairnd="${1:-$counter}"
messages="${2:-100}"
kills="${3:-25}"
settle="${4:-40}"
export CAIRND_PASSPHRASE="flapping run"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
alice_port="$(free_port)"; bob_port="$(free_port)"
node() { # PROFILE PORT ARGS... (in the background; its output in PROFILE.log)
  local profile="$1" port="$2"; shift 2
  "$cairnd" --profile-dir "$work/$profile" --no-mdns --listen "/ip4/127.0.0.1/tcp/$port" "$@" \
    >>"$work/$profile.log" 2>>"$work/$profile.err" &
  pids+=($!)
  last=$!
}
wait_for() { # FILE PATTERN
  for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no '$2' in $1" >&2; exit 1
}

alice_id="$("$cairnd" --profile-dir "$work/alice" init --name Alice | cut -d' ' -f2)"
bob_id="$("$cairnd" --profile-dir "$work/bob" init --name Bob | cut -d' ' -f2)"
for profile in alice bob; do
  printf 'webrtc_udp = ["127.0.0.1:0"]\n' >"$work/$profile/cairnd.toml"
done

# They become contacts while both are up.
node alice "$alice_port" node; alice=$last
wait_for "$work/alice.log" '^invite '
"$cairnd" --profile-dir "$work/bob" add-contact "$(grep -m1 '^invite ' "$work/alice.log" | cut -d' ' -f2)" >/dev/null
node bob "$bob_port" listen; bob=$last
wait_for "$work/alice.log" "^contact $bob_id"
sleep 3
kill -TERM "$bob" "$alice"; wait "$bob" "$alice" 2>/dev/null || true

# Bob is away; Alice queues the backlog, then her node runs.
for i in $(seq "$messages"); do
  "$cairnd" --profile-dir "$work/alice" send "$bob_id" "backlog-$i" >/dev/null
done
node alice "$alice_port" node; alice=$last
sleep 3

# Bob's node comes and goes.
for _ in $(seq "$kills"); do
  node bob "$bob_port" listen; bob=$last
  sleep "$(python3 -c 'import random; print(round(random.uniform(0.6, 1.4), 2))')"
  kill -9 "$bob"; wait "$bob" 2>/dev/null || true
  sleep 0.3
done

# Then Bob stays.
node bob "$bob_port" listen; bob=$last
sleep "$settle"
kill -TERM "$bob" "$alice"; wait "$bob" "$alice" 2>/dev/null || true

got="$("$counter" --profile-dir "$work/bob" history "$alice_id" | grep -c ' in .* backlog-' || true)"
distinct="$("$counter" --profile-dir "$work/bob" history "$alice_id" | grep ' in ' | awk '{print $5}' | sort -u | grep -c backlog- || true)"
echo "bob holds $got of $messages texts ($distinct distinct)"
echo "alice's states: $("$counter" --profile-dir "$work/alice" history "$bob_id" | grep ' out ' | awk '{print $4}' | sort | uniq -c | tr '\n' ' ')"
echo "alice's outbox: $("$counter" --profile-dir "$work/alice" outbox | wc -l) rows"
