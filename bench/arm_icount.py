#!/usr/bin/env python3
"""Instruction counts of edge-bert under qemu-user, exact and repeatable.

Run by bench/arm_icount.sh, which builds the binaries and the qemu plugin
(bench/icount/icount.c). For each configuration it runs the one-shot
`edge-bert classify --json` under qemu with the plugin, four times (1 and 3
short texts, 1 and 3 long texts), and derives

  per text  = (count with 3 texts - count with 1 text) / 2
  start-up  = count with 1 long text - per long text
              (loading the model and building the long bucket's plan)

for the total and for each instruction class. It prints one JSON line per
configuration; --table also prints a Markdown table, --profile the symbols
that take the most instructions per long text.

The guest is made deterministic: getrandom(2) gives fixed bytes (an
LD_PRELOAD of bench/icount/fixed_random.c in the guest: qemu-user passes
getrandom through to the host, and Rust's hash maps seed from it), qemu's
-seed fixes AT_RANDOM, /proc/cpuinfo is a fixed file describing the
emulated core (bind-mounted in a private mount namespace; the host's, which
qemu-user shows the guest, can change between reads), the environment is
emptied but for the configuration's variables (RUST_BACKTRACE and
RUST_LIB_BACKTRACE are never passed), and the same text files are used for
every run. --repeat checks that a second run of the 1-long-text case gives
the same counts.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

# The default model: MiniLM-L6 (6 layers, hidden 384, FFN 1536). MACs per
# 128-token text: per layer Q, K, V and output projections (4·T·H·H), the
# FFN (2·T·H·I) and the two attention products (2·T·T·H).
LAYERS, HIDDEN, FFN, TOKENS = 6, 384, 1536, 128
MACS = LAYERS * (4 * TOKENS * HIDDEN * HIDDEN + 2 * TOKENS * HIDDEN * FFN + 2 * TOKENS * TOKENS * HIDDEN)
# The floor: every MAC in an SDOT (16 int8 MACs per instruction).
FLOOR = MACS / 16

CLASSES = ["total", "sdot", "smmla", "smlal", "fmla", "neon", "vfp", "sve", "mem", "scalar"]

SHORT = "a gripping, funny and wholly original film ."


def long_text(data):
    """A text of well over 128 word pieces from the test split (truncated to
    the 128 bucket by the tokenizer)."""
    words = []
    with open(data, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            words.extend(parts[-1].split())
            if len(words) >= 200:
                break
    return " ".join(words)


def demangle(sym):
    """Rust legacy (_ZN...E) names to a::b::c, without the hash."""
    m = re.match(r"^_?_ZN(.*)E$", sym)
    if not m:
        return sym
    s, parts = m.group(1), []
    while s and s[0].isdigit():
        n = re.match(r"^(\d+)", s).group(1)
        s = s[len(n):]
        parts.append(s[: int(n)])
        s = s[int(n):]
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    out = "::".join(parts)
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$C$", ","), ("$RF$", "&"),
                 ("$BP$", "*"), ("..", "::"), ("$u7b$", "{"), ("$u7d$", "}")):
        out = out.replace(a, b)
    return out


# /proc/cpuinfo as the boards' kernels write it (the features of qemu's
# model of the core). tract reads it; the host's would otherwise show.
FEATURES = {
    "cortex-a72": "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid",
    "cortex-a76": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    "max": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh",
    "armv7": "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm",
}


def cpuinfo_file(tmp, arch, cpu):
    key = "armv7" if arch == "armv7" else (cpu or "max")
    path = os.path.join(tmp, f"cpuinfo-{key}")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f"processor\t: 0\nFeatures\t: {FEATURES.get(key, '')}\n\n")
    return path


def can_unshare():
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def run_once(qemu, cpu, plugin, binary, env, texts_file, out_file, extra, preload, cpuinfo):
    cmd = [*qemu, "-seed", "1", "-E", f"LD_PRELOAD={preload}"]
    if cpu:
        cmd += ["-cpu", cpu]
    cmd += ["-plugin", f"{plugin},out={out_file}", binary, "classify", "--json", *extra]
    if cpuinfo:
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /proc/cpuinfo && exec "$@"', cpuinfo, *cmd]
    with open(texts_file, "rb") as stdin:
        p = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    classes, syms = {}, {}
    with open(out_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            kind, rest = line.rstrip("\n").split(" ", 1)
            if kind == "class":
                name, n = rest.split(" ")
                classes[name] = int(n)
            elif kind == "sym":
                n, name = rest.split(" ", 1)
                syms[name] = syms.get(name, 0) + int(n)
    return classes, syms


def diff(a, b, div):
    return {k: (a.get(k, 0) - b.get(k, 0)) / div for k in set(a) | set(b)}


def measure(args, cfg, files, tmp):
    arch, cpu, model, env_spec = cfg
    qemu = args.qemu_aarch64 if arch == "aarch64" else args.qemu_arm
    binary = args.bin_aarch64 if arch == "aarch64" else args.bin_armv7
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    for kv in filter(None, env_spec.split(",")):
        k, v = kv.split("=", 1)
        env[k] = v
    extra = [] if model == "int8" else ["--model", args.fp32]
    preload = args.preload_aarch64 if arch == "aarch64" else args.preload_armv7
    cpuinfo = cpuinfo_file(tmp, arch, cpu) if args.unshare else None
    out = os.path.join(tmp, "counts.txt")
    runs = {}
    for name in ("s1", "s3", "l1", "l3"):
        runs[name] = run_once(qemu, cpu, args.plugin, binary, env, files[name], out, extra, preload, cpuinfo)
    if args.repeat:
        again = run_once(qemu, cpu, args.plugin, binary, env, files["l1"], out, extra, preload, cpuinfo)
        if again[0] != runs["l1"][0]:
            sys.exit(f"error: counts differ between two identical runs: {runs['l1'][0]} vs {again[0]}")
    short = diff(runs["s3"][0], runs["s1"][0], 2)
    long_ = diff(runs["l3"][0], runs["l1"][0], 2)
    startup = diff(runs["l1"][0], {k: v for k, v in long_.items()}, 1)
    line = {
        "arch": arch,
        "cpu": cpu or "default",
        "model": model,
        "env": env_spec or "",
        "long_per_text": {c: round(long_.get(c, 0)) for c in CLASSES if long_.get(c, 0)},
        "short_per_text": {c: round(short.get(c, 0)) for c in CLASSES if short.get(c, 0)},
        "startup": {c: round(startup.get(c, 0)) for c in CLASSES if startup.get(c, 0)},
        "floor_sdot": round(FLOOR),
        "long_div_floor": round(long_["total"] / FLOOR, 3),
    }
    if args.repeat:
        line["repeat_identical"] = True
    if args.profile:
        per = diff(runs["l3"][1], runs["l1"][1], 2)
        merged = {}
        for sym, n in per.items():
            d = demangle(sym)
            merged[d] = merged.get(d, 0) + n
        top = sorted(merged.items(), key=lambda kv: -kv[1])[: args.profile]
        line["profile_long"] = [[name, round(n), round(100 * n / long_["total"], 1)] for name, n in top]
        st = diff(runs["l1"][1], per, 1)
        merged = {}
        for sym, n in st.items():
            d = demangle(sym)
            merged[d] = merged.get(d, 0) + n
        top = sorted(merged.items(), key=lambda kv: -kv[1])[: args.profile]
        line["profile_startup"] = [[name, round(n), round(100 * n / max(1, startup["total"]), 1)] for name, n in top]
    return line


def parse_config(s):
    parts = s.split(":", 3)
    if len(parts) < 3 or parts[0] not in ("aarch64", "armv7") or parts[2] not in ("int8", "fp32"):
        sys.exit(f"error: bad --config {s!r}: ARCH:CPU:MODEL[:VAR=VALUE,...] (ARCH aarch64|armv7, MODEL int8|fp32, CPU may be empty)")
    return (parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--qemu-aarch64", default="qemu-aarch64 -L /usr/aarch64-linux-gnu")
    ap.add_argument("--qemu-arm", default="qemu-arm -L /usr/arm-linux-gnueabihf")
    ap.add_argument("--bin-aarch64")
    ap.add_argument("--bin-armv7")
    ap.add_argument("--preload-aarch64", help="fixed_random.c built for aarch64")
    ap.add_argument("--preload-armv7", help="fixed_random.c built for armv7")
    ap.add_argument("--fp32", help="the fp32 bundle directory")
    ap.add_argument("--data", required=True, help="a test split (TSV, text last) for the long text")
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    ap.add_argument("--repeat", action="store_true")
    args = ap.parse_args()
    args.qemu_aarch64 = args.qemu_aarch64.split()
    args.qemu_arm = args.qemu_arm.split()
    configs = [parse_config(c) for c in args.config]
    for arch, _, model, _ in configs:
        if (arch == "aarch64" and not args.bin_aarch64) or (arch == "armv7" and not args.bin_armv7):
            sys.exit(f"error: a {arch} configuration needs --bin-{arch}")
        if model == "fp32" and not args.fp32:
            sys.exit("error: an fp32 configuration needs --fp32 DIR")
    for arch, _, _, _ in configs:
        if not getattr(args, f"preload_{arch}"):
            sys.exit(f"error: a {arch} configuration needs --preload-{arch}")
    args.unshare = can_unshare()
    if not args.unshare:
        print("warning: cannot make a mount namespace (unshare -m): the guest reads the host's "
              "/proc/cpuinfo, and counts may differ between runs", file=sys.stderr)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        text = long_text(args.data)
        files = {}
        for name, t, n in (("s1", SHORT, 1), ("s3", SHORT, 3), ("l1", text, 1), ("l3", text, 3)):
            files[name] = os.path.join(tmp, name + ".txt")
            with open(files[name], "w", encoding="utf-8") as f:
                f.write((t + "\n") * n)
        for cfg in configs:
            line = measure(args, cfg, files, tmp)
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.table:
        print()
        print("| model | arch | qemu -cpu | switches | long text: instructions | SDOT | ÷ floor | short text | start-up |")
        print("|---|---|---|---|---:|---:|---:|---:|---:|")
        for l in lines:
            lp = l["long_per_text"]
            print(f"| {l['model']} | {l['arch']} | {l['cpu']} | {l['env'] or '—'} | {lp['total'] / 1e6:,.1f} M "
                  f"| {lp.get('sdot', 0) / 1e6:,.1f} M | {l['long_div_floor']:.2f} "
                  f"| {l['short_per_text']['total'] / 1e6:,.1f} M | {l['startup']['total'] / 1e9:,.3f} G |")


if __name__ == "__main__":
    main()
