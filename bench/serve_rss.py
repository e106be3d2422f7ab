"""RSS of a running `edge-bert serve` over many requests of mixed lengths.

Starts the server (default: the embedded int8 model) and records VmRSS once
it listens (warmed up, start-up code pages released). It then sends every
text of the test split once, from one client, and records VmRSS again: the
server drops its loader's code pages at start-up, and the serving path
faults its own back in on first use. Then it sends N more requests (the
texts cycled, so every length bucket is hit) and prints VmRSS/VmHWM every
1,000 requests, with the drift from the RSS after that first pass. VmHWM
is reset when the server listens, so it is the serving phase's peak.

    python3 bench/serve_rss.py [--requests 10000] [--model DIR] [--bin PATH]
"""
import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--model", type=Path)
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/edge-bert/target"))
    ap.add_argument("--bin", type=Path, default=target / "debug/edge-bert")
    ap.add_argument("--data", type=Path, default=ROOT / "models/sentiment-fp32/test.tsv")
    a = ap.parse_args()

    texts = [l.split("\t", 1)[1] for l in a.data.read_text(encoding="utf-8").splitlines() if "\t" in l]
    tmp = tempfile.mkdtemp()
    sock_path = os.path.join(tmp, "eb.sock")
    args = [str(a.bin), "serve", "--socket", sock_path]
    if a.model:
        args += ["--model", str(a.model)]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(sock_path):
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.05)
        time.sleep(0.2)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        f = s.makefile("rwb")
        print(f"listening: VmRSS {status(proc.pid, 'VmRSS')} KiB, VmHWM {status(proc.pid, 'VmHWM')} KiB")
        def ask(i):
            f.write((json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n").encode())
            f.flush()
            r = json.loads(f.readline())
            assert r.get("id") == i and "label" in r, r

        try:
            # From here VmHWM is the serving phase's peak (Linux: clear_refs 5).
            with open(f"/proc/{proc.pid}/clear_refs", "w") as cr:
                cr.write("5")
            print("VmHWM reset: the VmHWM column is the peak while serving")
        except OSError:
            print("VmHWM not reset: the VmHWM column includes loading")
        for i in range(len(texts)):
            ask(i)
        base = status(proc.pid, "VmRSS")
        print(f"after one pass over the {len(texts)} texts: VmRSS {base} KiB, VmHWM {status(proc.pid, 'VmHWM')} KiB")
        start = time.time()
        worst = 0.0
        for i in range(a.requests):
            ask(i)
            if (i + 1) % 1000 == 0:
                rss = status(proc.pid, "VmRSS")
                drift = 100.0 * (rss - base) / base
                worst = max(worst, abs(drift))
                print(f"{i + 1:>6} requests  VmRSS {rss} KiB ({drift:+.2f}%)  VmHWM {status(proc.pid, 'VmHWM')} KiB  {(i + 1) / (time.time() - start):.1f} req/s")
        print(f"worst |drift| from the RSS after the first pass: {worst:.2f}% over {a.requests} requests")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
