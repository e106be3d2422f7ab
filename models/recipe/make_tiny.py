"""Generate the `tiny` bundle: a random-weight BERT classifier for fast unit tests.

Deterministic (fixed seed). Builds a small WordPiece tokenizer.json with the
`tokenizers` library (same normaliser/pre-tokenizer/post-processor as the real
uncased BERT tokenizer): [PAD] [UNK] [CLS] [SEP] [MASK], every single ASCII
character and ##character present in the base vocab, and the most frequent
whole words of the training texts. The model is BertForSequenceClassification
with hidden 32, 2 layers, 2 heads, intermediate 64, 64 positions and
initializer_range 0.5 so the logits depend strongly on the input. Exported
exactly like the real bundle (export.py helpers), with reference.jsonl,
a 40-line test.tsv and manifest.json (max_seq_len 32, buckets [8, 16, 32]).
"""
import argparse
import collections
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
from export import (LABELS, SPECIAL_TEXTS, base_model_dir, boundary_texts, build_reference,  # noqa: E402
                    export_onnx, long_texts, ort_session, pkg_version)
from manifest import write_manifest  # noqa: E402
from prepare_data import DEFAULT_WORK, MODELS, read_tsv  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocab(base_vocab_file: Path, train_texts, n_words: int):
    base = [l.rstrip("\n") for l in open(base_vocab_file, encoding="utf-8")]
    chars = [t for t in base if len(t) == 1 and ord(t) < 128]
    subchars = [t for t in base if len(t) == 3 and t.startswith("##") and ord(t[2]) < 128]
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    norm = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = BertPreTokenizer()
    counts = collections.Counter()
    for t in train_texts:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)):
            if len(w) > 1 and w.isascii() and w.isalpha():
                counts[w] += 1
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_words]]
    vocab = []
    for t in SPECIALS + chars + subchars + words:
        if t not in vocab:
            vocab.append(t)
    return vocab


def build_tokenizer(vocab):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    v = {t: i for i, t in enumerate(vocab)}
    tk = Tokenizer(models.WordPiece(v, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                               strip_accents=None, lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", v["[CLS]"]), ("[SEP]", v["[SEP]"])])
    tk.decoder = decoders.WordPiece(prefix="##")
    for s in SPECIALS:
        tk.add_special_tokens([s])
    return tk


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="dir holding train.tsv")
    ap.add_argument("--test-tsv", type=Path, default=MODELS / "sentiment-fp32" / "test.tsv")
    ap.add_argument("--bundle", type=Path, default=MODELS / "tiny")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-words", type=int, default=500)
    ap.add_argument("--max-seq-len", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=40)
    args = ap.parse_args()

    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    bundle = args.bundle
    bundle.mkdir(parents=True, exist_ok=True)

    train_texts = [t for _, t in read_tsv(args.work / "train.tsv")]
    vocab = build_vocab(base_model_dir() / "vocab.txt", train_texts, args.n_words)
    tk = build_tokenizer(vocab)
    tk.save(str(bundle / "tokenizer.json"), pretty=True)
    tj = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
    assert tj["truncation"] is None and tj["padding"] is None
    tok = PreTrainedTokenizerFast(tokenizer_file=str(bundle / "tokenizer.json"), unk_token="[UNK]",
                                  pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")

    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                        initializer_range=0.5, pad_token_id=0, num_labels=2,
                        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config).eval()
    export_info = export_onnx(model, bundle / "model.onnx", seq_len=8)
    sess = ort_session(bundle / "model.onnx")

    test = read_tsv(args.test_tsv)
    with open(bundle / "test.tsv", "w", encoding="utf-8", newline="\n") as f:
        for label, text in test[:args.n_test]:
            f.write(f"{label}\t{text}\n")
    test_texts = [t for _, t in test]
    short = [t for t in test_texts if len(tok(t)["input_ids"]) < args.max_seq_len][:6]
    texts = short + SPECIAL_TEXTS[:5] + [SPECIAL_TEXTS[6], SPECIAL_TEXTS[10], SPECIAL_TEXTS[7], SPECIAL_TEXTS[12],
                                                  SPECIAL_TEXTS[13], SPECIAL_TEXTS[15]] \
        + long_texts(test_texts[10:], n_join=3, n_chars=400) + boundary_texts(tok, args.max_seq_len, word="good")
    max_diff, rows = build_reference(tok, sess, model, texts, args.max_seq_len, bundle / "reference.jsonl",
                                     bundle / "tokenizer.json")
    logits = [json.loads(l)["logits"] for l in open(bundle / "reference.jsonl", encoding="utf-8")]
    for r, lg in zip(rows, logits):
        print(f"  {lg[0]:+.4f} {lg[1]:+.4f}  n={len(r['input_ids']):3d} trunc={int(r['truncated'])}  {r['text'][:50]!r}")
    spread = np.ptp(np.asarray(logits), axis=0)
    n_distinct = len({tuple(np.round(l, 4)) for l in logits})
    n_inputs = len({tuple(r["input_ids"]) for r in rows})
    print(f"tiny: vocab={len(vocab)} reference={len(rows)} lines ({sum(r['truncated'] for r in rows)} truncated) "
          f"distinct inputs={n_inputs} distinct logits={n_distinct} spread={spread} max |ORT-torch|={max_diff:.3g}")
    assert n_distinct == n_inputs and spread.min() > 0.5, "tiny logits do not vary with the input"

    provenance = {
        "description": "random-weight BERT for unit tests; predictions are meaningless",
        "generator": "python models/recipe/make_tiny.py",
        "seed": args.seed,
        "config": {"vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 64, "initializer_range": 0.5},
        "tokenizer": "WordPiece, BertNormalizer(lowercase) + BertPreTokenizer; vocab = 5 specials + ASCII chars and "
                     f"##chars of the all-MiniLM-L6-v2 vocab + {args.n_words} most frequent training words",
        "test_tsv": f"first {args.n_test} lines of sentiment-fp32/test.tsv",
        "export": {"exporter": "torch.onnx.export(dynamo=False)", "opset": export_info["opset"],
                   "attn_implementation": "eager", "value_info_cleared": export_info["value_info_cleared"],
                   "torch": pkg_version("torch"), "transformers": pkg_version("transformers"),
                   "onnx": pkg_version("onnx"), "onnxruntime": pkg_version("onnxruntime")},
        "max_abs_diff_ort_vs_torch": float(f"{max_diff:.3g}"),
    }
    write_manifest(bundle, name="tiny", precision="fp32", labels=LABELS, max_seq_len=args.max_seq_len,
                   buckets=[8, 16, 32], provenance=provenance)
    print(f"wrote {bundle / 'manifest.json'}")


if __name__ == "__main__":
    main()
