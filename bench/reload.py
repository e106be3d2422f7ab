#!/usr/bin/env python3
"""Hot reload under load: figures for signed model updates (issue 24).

Signs copies of the default int8 bundle (versions 1..N+1, every other one
relabelled), serves the first with --trusted-keys, keeps C clients sending
requests, and reloads N times through the `reload` op, flipping a `current`
link as cross/deploy.sh --model-only does. Prints one JSON line: requests
answered and errors during the run, each reload's time and the extra memory
it took (old and new model loaded at once), and the server's RSS before and
after.

    cargo build --release -p edge-bert -p edge-bert-quantize
    python3 bench/reload.py                     # 10 reloads, 8 clients
    python3 bench/reload.py --reloads 20 --clients 4 --bin target/release/edge-bert
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.expanduser("~"), ".cache/edge-bert/target"))


def ask(path, obj, timeout=120):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    f = s.makefile("rwb")
    f.write((json.dumps(obj) + "\n").encode())
    f.flush()
    line = f.readline()
    s.close()
    return json.loads(line)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(TARGET, "release/edge-bert"))
    ap.add_argument("--quantize", default=os.path.join(TARGET, "release/edge-bert-quantize"))
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds of load between reloads")
    a = ap.parse_args()
    for b in (a.bin, a.quantize):
        if not os.access(b, os.X_OK):
            sys.exit(f"error: no binary {b} (cargo build --release -p edge-bert -p edge-bert-quantize)")
    src = os.path.join(ROOT, "models/sentiment-int8")
    work = tempfile.mkdtemp(prefix="edge-bert-reload-")
    try:
        subprocess.run([a.quantize, "keygen", "--output", f"{work}/keys/release"], check=True, capture_output=True)
        os.mkdir(f"{work}/trusted")
        shutil.copy(f"{work}/keys/release.pub", f"{work}/trusted/")

        def slot(version):
            d = f"{work}/v{version}"
            os.mkdir(d)
            for name in os.listdir(src):
                (os.link if name == "model.onnx" else shutil.copy)(f"{src}/{name}", f"{d}/{name}")
            if version % 2 == 0:
                m = json.load(open(f"{d}/manifest.json"))
                m["labels"], m["name"] = ["neg", "pos"], "relabelled"
                json.dump(m, open(f"{d}/manifest.json", "w"), indent=2)
            subprocess.run([a.quantize, "sign", "--key", f"{work}/keys/release.key", "--version", str(version), d],
                           check=True, capture_output=True)
            return d

        def point(d):
            os.symlink(d, f"{work}/current.new")
            os.replace(f"{work}/current.new", f"{work}/current")

        point(slot(1))
        sock = f"{work}/eb.sock"
        server = subprocess.Popen([a.bin, "serve", "--socket", sock, "--model", f"{work}/current",
                                   "--trusted-keys", f"{work}/trusted", "--state-dir", f"{work}/state"],
                                  stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while True:
            try:
                if ask(sock, {"op": "health"}, 5)["status"] == "ok":
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit("error: the server did not come up")
            time.sleep(0.05)
        rss_before = rss_kib(server.pid)
        stop = threading.Event()
        counts = [[0, 0] for _ in range(a.clients)]

        def client(k):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            f = s.makefile("rwb")
            i = 0
            while not stop.is_set():
                f.write((json.dumps({"id": i, "text": f"client {k} request {i}: a moving, well acted film"}) + "\n").encode())
                f.flush()
                v = json.loads(f.readline())
                ok = v.get("id") == i and "label" in v and "model" in v
                counts[k][0 if ok else 1] += 1
                i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
        for t in threads:
            t.start()
        time.sleep(a.pause)
        ms, extra, refused = [], [], 0
        started = time.time()
        for version in range(2, a.reloads + 2):
            point(slot(version))
            r = ask(sock, {"op": "reload"})
            if r.get("reload") == "ok":
                ms.append(r["ms"])
                extra.append(r["extra_rss_kib"])
            else:
                refused += 1
            time.sleep(a.pause)
        elapsed = time.time() - started
        stop.set()
        for t in threads:
            t.join()
        health = ask(sock, {"op": "health"})
        rss_after = rss_kib(server.pid)
        server.terminate()
        server.wait(timeout=30)
        ms_sorted = sorted(ms)
        print(json.dumps({
            "binary": a.bin,
            "clients": a.clients,
            "reloads": len(ms),
            "refused": refused,
            "seconds": round(elapsed, 1),
            "requests_answered": sum(c[0] for c in counts),
            "bad_answers": sum(c[1] for c in counts),
            "reload_ms": ms,
            "reload_ms_median": ms_sorted[len(ms_sorted) // 2] if ms else None,
            "extra_rss_kib": extra,
            "extra_rss_kib_max": max(extra) if extra else None,
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
            "final_model": health["model"],
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
