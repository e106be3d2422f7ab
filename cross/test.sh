#!/usr/bin/env bash
# Run edge-bert's tests for a board under qemu-user, and (aarch64) the eval
# gate against the x86 predictions.
#
#   cross/test.sh aarch64|armv7 [--cpu CPU] [--eval N]
#
# Cross-builds with cross/build.sh --tests, then runs, under qemu with the
# cross glibc as library root (runners in .cargo/config.toml), one test at
# a time (--test-threads 1):
#   - the unit tests of the runtime's crates (edge-bert-wire: the protocol
#     codec and serial framing; edge-bert-model: tokenizer, post-processing,
#     engine; edge-bert-kernels: every kernel path against its reference;
#     edge-bert: the transports), property tests included;
#   - from the integration binary: the golden tests of the tiny model
#     (logits against the recipe's ONNX Runtime run) and of the int8 default
#     model (against ONNX Runtime on the same file, tests/fixtures), token
#     parity with Hugging Face `tokenizers`, and real Unix-socket round trips
#     (good and bad lines, health/info/metrics) with a server that runs under
#     qemu too (EDGE_BERT_TEST_RUNNER), on the tiny model.
# The full suite is not run: its load and soak tests take hours emulated,
# and a server with the real model takes minutes to start emulated; the
# real model is covered in-process by the int8 golden test and by --eval.
#
# --cpu sets QEMU_CPU (cortex-a72: the Pi 4, no dot product; cortex-a76:
# the Pi 5 and Jetson Orin, SDOT and no SVE), so tract's run-time kernel
# choice is exercised both ways. (`max` adds SVE2 and SME, which no board
# has; edge-bert turns tract's SVE/SME kernels off, so it now runs the
# SDOT path too.)
# EDGE_BERT_SKIP_TESTS=1 skips the tests (to run only --eval).
# --eval N classifies the first N texts of the committed test split with the
# embedded int8 model (`edge-bert classify --json`) under qemu and with the
# x86 build, and fails unless the labels agree on >= 99.9% of them and the
# accuracies are within 0.1 points (cross/compare_predictions.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { echo "usage: cross/test.sh aarch64|armv7 [--cpu CPU] [--eval N]" >&2; exit 2; }
[ $# -ge 1 ] || usage
ARCH="$1"; shift
# shellcheck source=cross/boards.sh
. "$ROOT/cross/boards.sh"
board "$ARCH" || usage
CPU=""; EVAL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) [ $# -ge 2 ] || usage; CPU="$2"; shift ;;
    --eval) [ $# -ge 2 ] || usage; EVAL="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
# Cross builds keep their own target dir (EDGE_BERT_CROSS_TARGET_DIR).
X86_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-bert/target}"
export CARGO_TARGET_DIR="${EDGE_BERT_CROSS_TARGET_DIR:-$HOME/.cache/edge-bert/target-cross}"
if [ -z "${EDGE_BERT_NO_BUILD:-}" ]; then bash "$ROOT/cross/build.sh" "$ARCH" --tests; fi
export PATH="$HOME/.cache/edge-bert/zig-venv/bin:$PATH"
if [ -n "$CPU" ]; then export QEMU_CPU="$CPU"; fi
export EDGE_BERT_TEST_RUNNER="$QEMU"
cd "$ROOT"
# The test executables, from cargo's build messages (no rebuild: build.sh did it).
# shellcheck disable=SC2086
mapfile -t EXES < <(cargo-zigbuild test --target "$TARGET.$GLIBC_FLOOR" $TEST_PACKAGES --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        if t["kind"] == ["lib"] or t["name"] == "integration":
            print(t["name"], m["executable"])
')
LIBS=(); INTEGRATION=""
for e in "${EXES[@]}"; do
  case "$e" in "integration "*) INTEGRATION="${e#* }" ;; *) LIBS+=("${e#* }") ;; esac
done
[ ${#LIBS[@]} -ge 4 ] && [ -n "$INTEGRATION" ] || { echo "error: test executables not found" >&2; exit 1; }
if [ -z "${EDGE_BERT_SKIP_TESTS:-}" ]; then
  echo "== $ARCH tests under qemu (cpu ${CPU:-default})"
  SECONDS=0
  for lib in "${LIBS[@]}"; do
    # shellcheck disable=SC2086
    $QEMU "$lib" --test-threads 1
  done
  # shellcheck disable=SC2086
  $QEMU "$INTEGRATION" --test-threads 1 \
    golden::tiny golden::int8 tokenizer:: \
    serve::bad_lines_get_errors serve::ops_health_info_metrics
  echo "qemu tests took ${SECONDS}s"
fi

if [ "$EVAL" -gt 0 ]; then
  echo "== eval gate: first $EVAL test texts, $ARCH (qemu, cpu ${CPU:-default}) vs x86"
  SECONDS=0
  DATA="$(mktemp)"; trap 'rm -f "$DATA" "$DATA".*' EXIT
  head -n "$EVAL" "$ROOT/models/sentiment-fp32/test.tsv" > "$DATA"
  cut -f2 "$DATA" > "$DATA.texts"
  # The binary `cargo test` built for the integration tests (building it
  # with `cargo build` would recompile dependencies with other features).
  CARGO_TARGET_DIR="$X86_TARGET_DIR" cargo test -q -p edge-bert --test integration --no-run
  "$X86_TARGET_DIR/debug/edge-bert" classify --json < "$DATA.texts" > "$DATA.x86"
  # shellcheck disable=SC2086
  $QEMU "$CARGO_TARGET_DIR/$TARGET/debug/edge-bert" classify --json < "$DATA.texts" > "$DATA.arm"
  python3 "$ROOT/cross/compare_predictions.py" "$DATA" "$DATA.x86" "$DATA.arm"
  echo "eval gate took ${SECONDS}s"
fi
