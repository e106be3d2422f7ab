#!/usr/bin/env bash
# Instruction counts of edge-bert on the boards' CPUs, under qemu-user with
# a TCG plugin (bench/icount/icount.c): exact, and the same from run to run
# (the guest's random source is seeded, its environment emptied).
#
#   bash bench/arm_icount.sh [--quick] [--profile N] [--table]
#                            [--bin-aarch64 PATH] [--bin-armv7 PATH]
#                            [--config ARCH:CPU:MODEL[:VAR=VALUE,..]]...
#
# Prints one JSON line per configuration (bench/arm_icount.py): instructions
# per short and per long (128-token) text, by class (sdot, smmla, smlal,
# fmla, neon, vfp, sve, mem, scalar), start-up (loading the model and
# building the long bucket's plan), and the long text's ratio to the floor
# (the default model's 1.434 G MACs in SDOTs of 16 MACs: 89.65 M).
#
# Configurations, unless --config is given:
#   aarch64 cortex-a76 int8          Pi 5, Jetson Orin (SDOT, no SVE)
#   aarch64 cortex-a76 int8 EDGE_BERT_QMATMUL=off   (tract's own matmul)
#   aarch64 cortex-a72 int8          Pi 4, Jetson Nano class (no SDOT)
#   aarch64 cortex-a72 int8 EDGE_BERT_QMATMUL=off
#   aarch64 cortex-a72 fp32
#   aarch64 max        int8          SVE2, SME (no board of ours)
#   armv7   (default)  int8, fp32    32-bit Raspberry Pi OS
# --quick: cortex-a76 and cortex-a72, int8, each run twice to check that the
# counts repeat (what CI runs, about 2 minutes).
# --profile N: the N symbols with the most instructions per long text and
# in start-up.
# --table: a Markdown table after the JSON lines.
#
# Binaries: release builds from cross/build.sh (in
# $EDGE_BERT_CROSS_TARGET_DIR, symbols kept for --profile), unless
# --bin-aarch64 / --bin-armv7 name them. The plugin is compiled here with gcc against qemu 7.2's plugin API
# (qemu-user from Debian bookworm; Ubuntu/Debian packages of the same API
# version work too).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=cross/boards.sh
. "$ROOT/cross/boards.sh"
CACHE="${EDGE_BERT_CACHE:-$HOME/.cache/edge-bert}"
CROSS="${EDGE_BERT_CROSS_TARGET_DIR:-$CACHE/target-cross}"
usage() { sed -n '6,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
BIN_A64=""; BIN_A32=""; QUICK=""; PROFILE=0; TABLE=""; CONFIGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --table) TABLE=--table ;;
    --profile) [ $# -ge 2 ] || usage; PROFILE="$2"; shift ;;
    --bin-aarch64) [ $# -ge 2 ] || usage; BIN_A64="$2"; shift ;;
    --bin-armv7) [ $# -ge 2 ] || usage; BIN_A32="$2"; shift ;;
    --config) [ $# -ge 2 ] || usage; CONFIGS+=(--config "$2"); shift ;;
    -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
  shift
done
if [ ${#CONFIGS[@]} -eq 0 ]; then
  if [ -n "$QUICK" ]; then
    CONFIGS=(--config aarch64:cortex-a76:int8 --config aarch64:cortex-a72:int8)
  else
    CONFIGS=(--config aarch64:cortex-a76:int8 --config aarch64:cortex-a76:int8:EDGE_BERT_QMATMUL=off
             --config aarch64:cortex-a72:int8 --config aarch64:cortex-a72:int8:EDGE_BERT_QMATMUL=off
             --config aarch64:cortex-a72:fp32 --config aarch64:max:int8
             --config armv7::int8 --config armv7::fp32)
  fi
fi
NEED_A32=""; for c in "${CONFIGS[@]}"; do case "$c" in armv7:*) NEED_A32=1 ;; esac; done

# The binaries (release, unless given).
if [ -z "$BIN_A64" ]; then
  CARGO_PROFILE_RELEASE_STRIP=none EDGE_BERT_CROSS_TARGET_DIR="$CROSS" \
    bash "$ROOT/cross/build.sh" aarch64 --release >&2
  BIN_A64="$CROSS/aarch64-unknown-linux-gnu/release/edge-bert"
fi
if [ -n "$NEED_A32" ] && [ -z "$BIN_A32" ]; then
  CARGO_PROFILE_RELEASE_STRIP=none EDGE_BERT_CROSS_TARGET_DIR="$CROSS" \
    bash "$ROOT/cross/build.sh" armv7 --release >&2
  BIN_A32="$CROSS/thumbv7neon-unknown-linux-gnueabihf/release/edge-bert"
fi
for q in qemu-aarch64 qemu-arm; do
  command -v "$q" >/dev/null || { echo "error: $q not found (apt-get install qemu-user)" >&2; exit 1; }
done

# The plugin, rebuilt when its source changes.
PLUGIN="$CACHE/icount/libicount.so"
if [ ! -f "$PLUGIN" ] || [ "$ROOT/bench/icount/icount.c" -nt "$PLUGIN" ]; then
  mkdir -p "$CACHE/icount"
  gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$PLUGIN" "$ROOT/bench/icount/icount.c"
fi

# The guest's fixed random source (bench/icount/fixed_random.c), per board.
PRELOADS=()
for arch in aarch64 armv7; do
  [ "$arch" = armv7 ] && [ -z "$NEED_A32" ] && continue
  board "$arch"
  SO="$CACHE/icount/fixed_random-$arch.so"
  if [ ! -f "$SO" ] || [ "$ROOT/bench/icount/fixed_random.c" -nt "$SO" ]; then
    "$PREFIX-gcc" -O2 -Wall -Werror -shared -fPIC -o "$SO" "$ROOT/bench/icount/fixed_random.c" -ldl
  fi
  PRELOADS+=(--preload-$arch "$SO")
done

ARGS=(--plugin "$PLUGIN" "${PRELOADS[@]}" --bin-aarch64 "$BIN_A64" --fp32 "$ROOT/models/sentiment-fp32"
      --data "$ROOT/models/sentiment-fp32/test.tsv" "${CONFIGS[@]}")
[ -n "$BIN_A32" ] && ARGS+=(--bin-armv7 "$BIN_A32")
[ -n "$QUICK" ] && ARGS+=(--repeat)
[ "$PROFILE" != 0 ] && ARGS+=(--profile "$PROFILE")
[ -n "$TABLE" ] && ARGS+=("$TABLE")
exec python3 "$ROOT/bench/arm_icount.py" "${ARGS[@]}"
