"""The eval gate of cross/test.sh: board (qemu) predictions against x86.

    python3 cross/compare_predictions.py DATA.tsv X86.jsonl ARM.jsonl

DATA.tsv is LABEL<TAB>text; the two JSONL files are `edge-bert classify
--json` output for its texts, in order. Fails (exit 1) unless the labels
agree on at least 99.9% of the texts and the two accuracies are within 0.1
points. Prints both accuracies, the agreement and the largest score gap.
"""
import json
import sys


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    gold = [line.split("\t", 1)[0] for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
    x86 = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
    arm = [json.loads(l) for l in open(sys.argv[3], encoding="utf-8") if l.strip()]
    if not (len(gold) == len(x86) == len(arm)) or not gold:
        print(f"error: {len(gold)} texts, {len(x86)} x86 and {len(arm)} board predictions", file=sys.stderr)
        return 1
    n = len(gold)
    agree = sum(a["label"] == b["label"] for a, b in zip(x86, arm))
    acc_x86 = 100.0 * sum(g == p["label"] for g, p in zip(gold, x86)) / n
    acc_arm = 100.0 * sum(g == p["label"] for g, p in zip(gold, arm)) / n
    gap = max(abs(a["score"] - b["score"]) for a, b in zip(x86, arm))
    print(f"texts {n}: agreement {agree}/{n} ({100.0 * agree / n:.2f}%), "
          f"accuracy x86 {acc_x86:.2f}% board {acc_arm:.2f}%, largest score gap {gap:.4f}")
    ok = agree * 1000 >= 999 * n and abs(acc_x86 - acc_arm) <= 0.1 + 1e-9
    if not ok:
        print("error: board predictions differ from x86 beyond the gate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
