#!/usr/bin/env bash
# Cross-build edge-bert for a board on an x86-64 Debian/Ubuntu host.
#
#   cross/build.sh aarch64|armv7 [--release]
#
# aarch64: Raspberry Pi 4/5, Jetson (target aarch64-unknown-linux-gnu).
# armv7:   32-bit Raspberry Pi OS on a Pi 3 / Zero 2, with NEON
#          (target thumbv7neon-unknown-linux-gnueabihf).
#
# Installs what is missing: the Rust target (rustup) and Debian's cross gcc
# and qemu-user (apt). Linkers, C compilers and qemu runners come from
# .cargo/config.toml. Prints the binary's path, its stripped size and the
# highest GLIBC_ symbol version it needs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { echo "usage: cross/build.sh aarch64|armv7 [--release]" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in
  aarch64) TARGET=aarch64-unknown-linux-gnu; GCC=gcc-aarch64-linux-gnu; PREFIX=aarch64-linux-gnu ;;
  armv7) TARGET=thumbv7neon-unknown-linux-gnueabihf; GCC=gcc-arm-linux-gnueabihf; PREFIX=arm-linux-gnueabihf ;;
  *) usage ;;
esac
PROFILE=debug
CARGO_ARGS=()
if [ "${2:-}" = "--release" ]; then PROFILE=release; CARGO_ARGS+=(--release);
elif [ $# -ge 2 ]; then usage; fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
missing=()
command -v "$PREFIX-gcc" >/dev/null || missing+=("$GCC")
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v "$PREFIX-objdump" >/dev/null || missing+=("binutils-$PREFIX")
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-bert/target}"
cd "$ROOT"
cargo build --target "$TARGET" --bin edge-bert "${CARGO_ARGS[@]}"
BIN="$CARGO_TARGET_DIR/$TARGET/$PROFILE/edge-bert"
STRIPPED="$(mktemp)"
"$PREFIX-strip" -o "$STRIPPED" "$BIN"
GLIBC="$("$PREFIX-objdump" -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
echo "binary        $BIN"
echo "stripped size $(stat -c %s "$STRIPPED") bytes (embedded model included)"
echo "highest glibc $GLIBC"
rm -f "$STRIPPED"
