#!/usr/bin/env bash
# Installs what Cairn's build, app and tests need and is missing on this machine:
# Debian packages, the UI's node modules, and tauri-driver. Safe to run repeatedly:
# each step does nothing when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

packages=(
  build-essential pkg-config libssl-dev protobuf-compiler  # Rust crates that build C / protobuf
  libwebkit2gtk-4.1-dev librsvg2-dev                        # Tauri on Linux
  xvfb xauth webkit2gtk-driver                              # the real app under WebDriver, headless
  gnome-keyring dbus-x11                                    # a real Secret Service for the keyring
  iproute2 nftables                                         # network namespaces and NAT for the LAN and NAT lab tests
  nodejs npm                                                # the UI build
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  # Node from another source (as on many dev machines) satisfies the UI build.
  if command -v node >/dev/null && command -v npm >/dev/null; then
    missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
  fi
  read -r -a missing <<<"${missing[*]}"
fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# UI dependencies, reinstalled only when the lock file changed.
stamp=ui/node_modules/.cairn-lock-stamp
if ! cmp -s ui/package-lock.json "$stamp" 2>/dev/null; then
  echo "setup: installing UI node modules"
  npm --prefix ui ci --no-audit --no-fund --loglevel=error
  cp ui/package-lock.json "$stamp"
fi

# tauri-driver, the WebDriver front for the real app, kept outside the clone.
if ! command -v tauri-driver >/dev/null; then
  echo "setup: installing tauri-driver"
  cargo install --locked --root "$CAIRN_TOOLS" tauri-driver --version "^2" --quiet
fi
