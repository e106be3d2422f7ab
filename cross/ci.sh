#!/usr/bin/env bash
# The ARM part of CI (run by .ci/run after `cargo test --workspace`):
#   1. cross-build aarch64 and armv7 (tests included) with zig at the glibc
#      floors (2.27 / 2.28), failing above them;
#   2. under qemu-user, in two parallel lanes (one per core):
#        lane 1: aarch64 tests as cortex-a72 (Pi 4: no dot product), then armv7;
#        lane 2: aarch64 tests as cortex-a76 (Pi 5, Jetson Orin: SDOT, no SVE),
#                then the eval gate (cortex-a72): the first 300 test texts,
#                aarch64 vs x86;
#      (measured at 5082171: a72 660 s, armv7 1,449 s, `max` 1,129 s, eval
#      692 s; `max`, with SVE2 that no board has, ran tract's SVE kernels
#      and never the SDOT ones, so cortex-a76 replaced it);
#   3. instruction counts under qemu (bench/arm_icount.sh --quick, on the
#      tested aarch64 binary): cortex-a76 and cortex-a72, a short and a long
#      text, each run twice; fails if a count does not repeat;
#   4. the arm64 and armhf packages, built from the tested binaries and
#      checked (contents, glibc, systemd-analyze verify).
# The deploy script's --dry-run is tested by `cargo test` (tests/it/deploy.rs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CROSS="${EDGE_BERT_CROSS_TARGET_DIR:-$HOME/.cache/edge-bert/target-cross}"
EVAL_TEXTS="${EDGE_BERT_EVAL_TEXTS:-300}"
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

step "ARM: build aarch64"
bash "$ROOT/cross/build.sh" aarch64 --tests
step "ARM: build armv7"
bash "$ROOT/cross/build.sh" armv7 --tests
command -v systemd-analyze >/dev/null || {
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq systemd >/dev/null
}

step "ARM: tests under qemu (two lanes)"
LOGS="$(mktemp -d)"; trap 'rm -rf "$LOGS"' EXIT
export EDGE_BERT_NO_BUILD=1
( bash "$ROOT/cross/test.sh" aarch64 --cpu cortex-a72 && bash "$ROOT/cross/test.sh" armv7 ) > "$LOGS/lane1" 2>&1 &
L1=$!
( bash "$ROOT/cross/test.sh" aarch64 --cpu cortex-a76 \
  && EDGE_BERT_SKIP_TESTS=1 bash "$ROOT/cross/test.sh" aarch64 --cpu cortex-a72 --eval "$EVAL_TEXTS" ) > "$LOGS/lane2" 2>&1 &
L2=$!
rc1=0; rc2=0
wait "$L1" || rc1=$?
wait "$L2" || rc2=$?
echo "-- lane 1: aarch64 cortex-a72 + armv7 (exit $rc1)"; cat "$LOGS/lane1"
echo "-- lane 2: aarch64 cortex-a76 + eval gate (exit $rc2)"; cat "$LOGS/lane2"
[ "$rc1" = 0 ] && [ "$rc2" = 0 ] || { echo "ARM tests failed" >&2; exit 1; }

step "ARM: instruction counts under qemu (debug test build)"
bash "$ROOT/bench/arm_icount.sh" --quick --table \
  --bin-aarch64 "$CROSS/aarch64-unknown-linux-gnu/debug/edge-bert"

step "ARM: packages"
bash "$ROOT/cross/package.sh" aarch64 --bin "$CROSS/aarch64-unknown-linux-gnu/debug/edge-bert" --out "$LOGS/deb"
bash "$ROOT/cross/package.sh" armv7 --bin "$CROSS/thumbv7neon-unknown-linux-gnueabihf/debug/edge-bert" --out "$LOGS/deb"
bash "$ROOT/cross/check_package.sh" "$LOGS/deb/edge-bert_"*"_arm64.deb" arm64
bash "$ROOT/cross/check_package.sh" "$LOGS/deb/edge-bert_"*"_armhf.deb" armhf
