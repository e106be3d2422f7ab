"""Shared helper: write a bundle's manifest.json (format_version 1).

The manifest lists every file in the bundle directory (except manifest.json
itself), sorted by path, with its SHA-256 and size, plus fixed metadata and a
free-form provenance object. Output is deterministic: JSON with indent=2,
stable key order and a trailing newline, so re-running on identical inputs
gives identical bytes.

Usage as a script (re-hash an existing bundle, keeping its other fields):
    python manifest.py ../sentiment-fp32
"""
import argparse
import hashlib
import json
from pathlib import Path

FORMAT_VERSION = 1
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT = "logits"
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(bundle_dir: Path):
    entries = []
    for p in sorted(bundle_dir.iterdir(), key=lambda p: p.name):
        if not p.is_file() or p.name == MANIFEST:
            continue
        entries.append({"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    return entries


def write_manifest(bundle_dir, *, name, precision, labels, max_seq_len, buckets, provenance,
                   task="text-classification", model="model.onnx", tokenizer="tokenizer.json"):
    """Write <bundle_dir>/manifest.json and return the manifest dict."""
    bundle_dir = Path(bundle_dir)
    for required in (model, tokenizer):
        if not (bundle_dir / required).is_file():
            raise FileNotFoundError(bundle_dir / required)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "task": task,
        "precision": precision,
        "labels": list(labels),
        "max_seq_len": int(max_seq_len),
        "buckets": [int(b) for b in buckets],
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "model": model,
        "tokenizer": tokenizer,
        "files": file_entries(bundle_dir),
        "provenance": provenance,
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (bundle_dir / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def verify_manifest(bundle_dir) -> bool:
    """Return True if every listed file matches its hash/size and no file is missing from the list."""
    bundle_dir = Path(bundle_dir)
    m = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    return m["files"] == file_entries(bundle_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle_dir", type=Path, help="bundle directory containing manifest.json")
    ap.add_argument("--check", action="store_true", help="only verify hashes, do not rewrite")
    args = ap.parse_args()
    if args.check:
        ok = verify_manifest(args.bundle_dir)
        print("OK" if ok else "MISMATCH")
        raise SystemExit(0 if ok else 1)
    m = json.loads((args.bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    write_manifest(args.bundle_dir, name=m["name"], precision=m["precision"], labels=m["labels"],
                   max_seq_len=m["max_seq_len"], buckets=m["buckets"], provenance=m["provenance"],
                   task=m["task"], model=m["model"], tokenizer=m["tokenizer"])
    print(f"rewrote {args.bundle_dir / MANIFEST}")


if __name__ == "__main__":
    main()
