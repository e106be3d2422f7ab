"""edge-bert vs ONNX Runtime on the same model, same machine, same texts.

Engines: ORT fp32 and ORT int8 (its quantize_dynamic, per-channel, on our
fp32 model), each single-threaded with dynamic shapes and no padding, as a
user would run them; edge-bert fp32 and int8 (`edge-bert bench`, one
thread). Every engine runs in its own process, the engines interleaved,
ROUNDS times; the medians are printed. Tokenising is included everywhere.

Figures per engine: texts/s over the texts, p50/p99 latency per text, cold
start (wall time of a fresh process that loads the model and answers one
text, measured from outside the same way for every engine), peak RSS (the
process's max resident set, loading included) and serving RSS (the peak
from after warm-up to the end of the run: the high-water mark is reset
then, through /proc/self/clear_refs).

Run it through bench/compare.sh, which builds edge-bert and sets up the venv.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def read_texts(path, limit):
    texts = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts.append(line.split("\t", 1)[-1])
    return texts[:limit] if limit else texts


def ort_session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def ort_classify(sess, tok, text):
    import numpy as np

    enc = tok.encode(text)
    ids = np.array([enc.ids], dtype=np.int64)
    feed = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = ids
        elif i.name == "attention_mask":
            feed[i.name] = np.ones_like(ids)
        else:
            feed[i.name] = np.zeros_like(ids)
    return sess.run(None, feed)[0]


def worker(args):
    """One ORT engine in this process: prints a JSON line of figures."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(args.bundle) / "tokenizer.json"))
    tok.enable_truncation(128)
    sess = ort_session(args.onnx)
    if args.cold:
        ort_classify(sess, tok, args.cold)
        print("ok", flush=True)
        return
    texts = read_texts(args.data, args.limit)
    for t in texts[:20]:
        ort_classify(sess, tok, t)
    # The serving phase gets its own high-water mark (Linux: clear_refs 5).
    serving = reset_peak_rss()
    lat = []
    start = time.perf_counter()
    for t in texts:
        s = time.perf_counter()
        ort_classify(sess, tok, t)
        lat.append((time.perf_counter() - s) * 1000)
    secs = time.perf_counter() - start
    lat.sort()
    print(json.dumps({
        "texts_per_second": len(texts) / secs,
        "latency_ms_p50": lat[len(lat) // 2],
        "latency_ms_p99": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "serving_peak_rss_kib": vm_hwm_kib() if serving else None,
    }))


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def cold_start(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--onnx")
    ap.add_argument("--bundle")
    ap.add_argument("--cold")
    ap.add_argument("--edge-bert")
    ap.add_argument("--fp32")
    ap.add_argument("--int8")
    ap.add_argument("--ort-int8")
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    py = sys.executable
    me = str(Path(__file__).resolve())
    sample = read_texts(args.data, 1)[0]
    engines = {
        "ORT fp32": (
            [py, me, "--worker", "--onnx", f"{args.fp32}/model.onnx", "--bundle", args.fp32],
            [py, me, "--worker", "--onnx", f"{args.fp32}/model.onnx", "--bundle", args.fp32, "--cold", sample, "--data", args.data],
        ),
        "ORT int8": (
            [py, me, "--worker", "--onnx", args.ort_int8, "--bundle", args.fp32],
            [py, me, "--worker", "--onnx", args.ort_int8, "--bundle", args.fp32, "--cold", sample, "--data", args.data],
        ),
        "edge-bert fp32": (
            [args.edge_bert, "bench", "--model", args.fp32, "--json"],
            [args.edge_bert, "classify", "--model", args.fp32, sample],
        ),
        "edge-bert int8": (
            [args.edge_bert, "bench", "--model", args.int8, "--json"],
            [args.edge_bert, "classify", "--model", args.int8, sample],
        ),
    }
    runs = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, (cmd, cold_cmd) in engines.items():
            full = cmd + ["--data", args.data] + (["--limit", str(args.limit)] if args.limit else [])
            out = subprocess.run(full, check=True, capture_output=True, text=True).stdout
            fig = json.loads(out.strip().splitlines()[-1])
            fig["cold_start_ms"] = cold_start(cold_cmd)
            runs[name].append(fig)
            print(f"round {r + 1} {name}: {fig['texts_per_second']:.1f} texts/s, "
                  f"cold {fig['cold_start_ms']:.0f} ms", file=sys.stderr, flush=True)

    med = {name: {k: statistics.median(f[k] for f in figs)
                  for k in ("texts_per_second", "latency_ms_p50", "latency_ms_p99",
                            "cold_start_ms", "peak_rss_kib", "serving_peak_rss_kib")}
           for name, figs in runs.items()}
    n = len(read_texts(args.data, args.limit))
    print(f"\n{n} texts from {args.data}, single thread, medians of {args.rounds} interleaved rounds\n")
    print("| engine | texts/s | p50 ms | p99 ms | cold start ms | peak RSS MiB | serving RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, m in med.items():
        print(f"| {name} | {m['texts_per_second']:.1f} | {m['latency_ms_p50']:.2f} | "
              f"{m['latency_ms_p99']:.2f} | {m['cold_start_ms']:.0f} | {m['peak_rss_kib'] / 1024:.0f} | "
              f"{m['serving_peak_rss_kib'] / 1024:.0f} |")
    print()
    for prec in ("fp32", "int8"):
        e, o = med[f"edge-bert {prec}"], med[f"ORT {prec}"]
        print(f"edge-bert/ORT {prec}: throughput {e['texts_per_second'] / o['texts_per_second']:.2f}x, "
              f"cold start {e['cold_start_ms'] / o['cold_start_ms']:.2f}x, "
              f"peak RSS {e['peak_rss_kib'] / o['peak_rss_kib']:.2f}x")
    e8, e32 = med["edge-bert int8"], med["edge-bert fp32"]
    print(f"edge-bert int8/fp32 throughput: {e8['texts_per_second'] / e32['texts_per_second']:.2f}x")
    bundle = sum(f.stat().st_size for f in Path(args.int8).iterdir() if f.name in ("model.onnx", "tokenizer.json"))
    print(f"edge-bert int8 RSS / int8 bundle ({bundle / 2**20:.1f} MiB): peak {e8['peak_rss_kib'] * 1024 / bundle:.2f}x, "
          f"serving {e8['serving_peak_rss_kib'] * 1024 / bundle:.2f}x")
    print(json.dumps({"texts": n, "rounds": args.rounds, "medians": med}))


if __name__ == "__main__":
    main()
