#!/usr/bin/env bash
# edge-bert vs ONNX Runtime, fp32 and int8, on the committed test split:
# texts/s, p50/p99 latency, cold start, peak RSS, and the ratios.
#
#   bash bench/compare.sh [--limit N] [--rounds R] [--data FILE.tsv]
#
# Builds edge-bert with the release profile, and installs onnxruntime,
# numpy and tokenizers (pinned) into ${EDGE_BERT_CACHE:-$HOME/.cache/edge-bert}/bench-venv.
# ORT's int8 model is its own quantize_dynamic (per-channel) of our fp32
# model, made once into the cache.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGE_BERT_CACHE:-$HOME/.cache/edge-bert}"
VENV="$CACHE/bench-venv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
ARGS=(--data "$ROOT/models/sentiment-fp32/test.tsv")
while [ $# -gt 0 ]; do
  case "$1" in
    --limit|--rounds|--data) ARGS+=("$1" "$2"); shift 2 ;;
    *) echo "usage: bench/compare.sh [--limit N] [--rounds R] [--data FILE.tsv]" >&2; exit 2 ;;
  esac
done
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q onnxruntime==1.32.0 onnx==1.23.2 numpy==2.4.6 tokenizers==0.23.3
fi
ORT_INT8="$CACHE/ort-int8-per-channel.onnx"
if [ ! -f "$ORT_INT8" ]; then
  "$VENV/bin/python" - "$ROOT/models/sentiment-fp32/model.onnx" "$ORT_INT8" <<'PY'
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], per_channel=True, weight_type=QuantType.QInt8)
PY
fi
cargo build -q --release --bin edge-bert
"$VENV/bin/python" "$ROOT/bench/compare.py" --edge-bert "$CARGO_TARGET_DIR/release/edge-bert" \
  --fp32 "$ROOT/models/sentiment-fp32" --int8 "$ROOT/models/sentiment-int8" \
  --ort-int8 "$ORT_INT8" "${ARGS[@]}"
