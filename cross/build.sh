#!/usr/bin/env bash
# Cross-build edge-bert for a board on an x86-64 Debian/Ubuntu host.
#
#   cross/build.sh aarch64|armv7 [--release] [--tests]
#
# The boards (target, glibc floor, cross tools) are in cross/boards.sh.
#
# Linking uses `cargo zigbuild`: zig links against the glibc version named in
# the target suffix (`.2.27`), so the binary runs on old board images although
# this host's glibc and Debian's cross glibc (2.36) are newer. ziglang and
# cargo-zigbuild come from PyPI into $HOME/.cache/edge-bert/zig-venv.
# Debian's cross binutils (strip, objdump) and qemu-user (with the cross
# glibc under /usr/<triple> as its library root) are installed from apt if
# missing, and the Rust target from rustup.
#
# --tests also builds the test binaries (for cross/test.sh). Prints the
# binary's path, its stripped size and the highest GLIBC_ version it needs,
# and fails if that is above the floor.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { echo "usage: cross/build.sh aarch64|armv7 [--release] [--tests]" >&2; exit 2; }
[ $# -ge 1 ] || usage
# shellcheck source=cross/boards.sh
. "$ROOT/cross/boards.sh"
board "$1" || usage
shift
PROFILE=debug
CARGO_ARGS=(--bin edge-bert)
for a in "$@"; do
  case "$a" in
    --release) PROFILE=release; CARGO_ARGS+=(--release) ;;
    --tests) TESTS=1 ;;
    *) usage ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
missing=()
command -v "$PREFIX-gcc" >/dev/null || missing+=("$GCC")
command -v "$QEMU_BIN" >/dev/null || missing+=(qemu-user)
command -v "$PREFIX-objdump" >/dev/null || missing+=("binutils-$PREFIX")
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi
ZIG_VENV="$HOME/.cache/edge-bert/zig-venv"
if [ ! -x "$ZIG_VENV/bin/cargo-zigbuild" ]; then
  echo "installing ziglang and cargo-zigbuild into $ZIG_VENV" >&2
  python3 -m venv "$ZIG_VENV"
  "$ZIG_VENV/bin/pip" install -q "ziglang==0.17.1" "cargo-zigbuild==0.24.1"
fi
export PATH="$ZIG_VENV/bin:$PATH"

# Cross builds keep their own target dir (EDGE_BERT_CROSS_TARGET_DIR).
export CARGO_TARGET_DIR="${EDGE_BERT_CROSS_TARGET_DIR:-$HOME/.cache/edge-bert/target-cross}"
cd "$ROOT"
if [ -n "${TESTS:-}" ]; then
  # The runtime's crates: the binary crate and the libraries it is built on.
  # The test build also links the binary (the tests spawn it), with the
  # dev-dependencies' features unified in, so it is built only this way.
  cargo-zigbuild test --target "$TARGET.$GLIBC_FLOOR" $TEST_PACKAGES --no-run \
    $([ "$PROFILE" = release ] && echo --release)
else
  cargo-zigbuild zigbuild --target "$TARGET.$GLIBC_FLOOR" "${CARGO_ARGS[@]}"
fi
BIN="$CARGO_TARGET_DIR/$TARGET/$PROFILE/edge-bert"
STRIPPED="$(mktemp)"
"$PREFIX-strip" -o "$STRIPPED" "$BIN"
GLIBC="$(highest_glibc "$BIN")"
echo "binary        $BIN"
echo "stripped size $(stat -c %s "$STRIPPED") bytes (embedded model included)"
echo "highest glibc GLIBC_$GLIBC (floor $GLIBC_FLOOR)"
rm -f "$STRIPPED"
if ! glibc_ok "$GLIBC" "$GLIBC_FLOOR"; then
  echo "error: $BIN needs GLIBC_$GLIBC, above the glibc $GLIBC_FLOOR floor" >&2
  exit 1
fi
