"""Side by side: edge-bert-quantize's int8 bundle vs ONNX Runtime's
quantize_dynamic (per-channel, int8 weights) on the same fp32 model.

Prints model sizes and, on the labelled test split, accuracy of fp32 and
int8 and the int8/fp32 agreement for both tool chains. ORT numbers come
from ORT itself; edge-bert numbers from `edge-bert eval`, passed in as JSON.
Run it through bench/quantize_vs_ort.sh, which sets everything up.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer


def read_tsv(path, labels):
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            label, text = line.split("\t", 1)
            out.append((labels.index(label), text))
    return out


def predict(model_path, tok, examples):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    preds = []
    for _, text in examples:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        logits = sess.run(None, {n: feed[n] for n in names})[0][0]
        preds.append(int(np.argmax(logits)))
    return preds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", type=Path, required=True, help="fp32 bundle dir")
    ap.add_argument("--int8", type=Path, required=True, help="edge-bert int8 bundle dir")
    ap.add_argument("--data", type=Path, required=True, help="LABEL<TAB>text file")
    ap.add_argument("--edge-eval", type=Path, required=True, help="`edge-bert eval --json` output for the int8 bundle with --reference fp32")
    ap.add_argument("--edge-eval-fp32", type=Path, required=True, help="`edge-bert eval --json` output for the fp32 bundle")
    ap.add_argument("--work", type=Path, required=True, help="scratch dir for the ORT int8 model")
    a = ap.parse_args()

    manifest = json.loads((a.fp32 / "manifest.json").read_text())
    labels = manifest["labels"]
    tok = Tokenizer.from_file(str(a.fp32 / "tokenizer.json"))
    tok.enable_truncation(manifest["max_seq_len"])
    tok.no_padding()
    examples = read_tsv(a.data, labels)
    truth = [l for l, _ in examples]

    a.work.mkdir(parents=True, exist_ok=True)
    ort_int8 = a.work / "ort-int8.onnx"
    quantize_dynamic(str(a.fp32 / "model.onnx"), str(ort_int8), per_channel=True, weight_type=QuantType.QInt8)

    p32 = predict(a.fp32 / "model.onnx", tok, examples)
    p8 = predict(ort_int8, tok, examples)
    acc = lambda p: 100.0 * sum(x == y for x, y in zip(p, truth)) / len(truth)
    agree = 100.0 * sum(x == y for x, y in zip(p32, p8)) / len(truth)

    edge = json.loads(a.edge_eval.read_text())
    edge32 = json.loads(a.edge_eval_fp32.read_text())
    fp32_size = (a.fp32 / "model.onnx").stat().st_size
    edge_size = (a.int8 / "model.onnx").stat().st_size
    ort_size = ort_int8.stat().st_size

    print(f"{len(examples)} texts from {a.data}")
    print(f"| tool chain | fp32 acc | int8 acc | drop (pts) | int8/fp32 agreement | int8 model size | % of fp32 ({fp32_size:,} B) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| ONNX Runtime quantize_dynamic (per-channel) | {acc(p32):.2f}% | {acc(p8):.2f}% | {acc(p32) - acc(p8):.2f} | {agree:.2f}% | {ort_size:,} B | {100 * ort_size / fp32_size:.1f}% |")
    e32 = 100 * edge32["accuracy"]
    e8 = 100 * edge["accuracy"]
    print(f"| edge-bert-quantize (default) on tract | {e32:.2f}% | {e8:.2f}% | {e32 - e8:.2f} | {100 * edge['agreement']:.2f}% | {edge_size:,} B | {100 * edge_size / fp32_size:.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
