#!/usr/bin/env bash
# Compare edge-bert-quantize with ONNX Runtime's quantize_dynamic on the same
# fp32 model: sizes, accuracy and agreement on the committed test split.
#
#   bash bench/quantize_vs_ort.sh [--data FILE.tsv]
#
# Installs onnxruntime, onnx, numpy and tokenizers (pinned) into
# ${EDGE_BERT_CACHE:-$HOME/.cache/edge-bert}/bench-venv on first use, and
# builds edge-bert (dev profile: dependencies, tract included, are optimised;
# only accuracy and size are measured here). Takes ~5 minutes after the build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGE_BERT_CACHE:-$HOME/.cache/edge-bert}"
VENV="$CACHE/bench-venv"
DATA="$ROOT/models/sentiment-fp32/test.tsv"
if [ "${1:-}" = "--data" ]; then DATA="$2"; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q onnxruntime==1.32.0 onnx==1.23.2 numpy==2.4.6 tokenizers==0.23.3
fi
cargo build -q --bin edge-bert
EB="$CARGO_TARGET_DIR/debug/edge-bert"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$EB" eval --model "$ROOT/models/sentiment-int8" --reference "$ROOT/models/sentiment-fp32" \
  --data "$DATA" --json > "$WORK/edge-int8.json"
"$EB" eval --model "$ROOT/models/sentiment-fp32" --data "$DATA" --json > "$WORK/edge-fp32.json"
"$VENV/bin/python" "$ROOT/bench/quantize_vs_ort.py" --fp32 "$ROOT/models/sentiment-fp32" \
  --int8 "$ROOT/models/sentiment-int8" --data "$DATA" --edge-eval "$WORK/edge-int8.json" \
  --edge-eval-fp32 "$WORK/edge-fp32.json" --work "$WORK"
