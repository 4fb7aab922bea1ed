"""CTF reader (influence.data.ctf_reader): indexing and reading throughput, and peak memory bounded by the chunk.

Two generated CNTK Text Format files of about the same size (~100 MB; --quick: ~12 MB):
- ``seq``: sequences with ids, 1-20 steps each, a dense stream (8 values per step), a sparse stream
  (3 index:value pairs per step into 10,000) and one label per sequence (the LSTM/embedding layout);
- ``dense``: one sample per line without ids, 64 values and a 10-value one-hot label (the MLP layout).
A fresh subprocess per file builds the index (one pass), then reads every sequence in chunks of
``--chunk`` sequences; it reports wall time and its peak resident memory (VmHWM) after each phase.
Memory is bounded by the chunk: the same run on a file 4× smaller shows how much of the peak
grows with the file (the index, 16 bytes per sequence) and how much does not.

    .venv/bin/python bench/bench_ctf.py            # ~100 MB files (plus 25 MB for the memory ratio)
    .venv/bin/python bench/bench_ctf.py --quick    # ~12 MB (plus 3 MB)

``main(argv)`` returns {"rows": [...], "memory_ratio": {...}}.
"""
from __future__ import print_function

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MB = 1e6

CHILD = r"""
import json, os, sys, time
def status():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) / 1024.0 for k, _, v in (l.partition(":") for l in f)
                if k in ("VmHWM", "VmRSS")}
sys.path.insert(0, sys.argv[3])
import numpy as np
from influence.data.ctf_reader import CTFReader, InputSpec
kind, path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[4])
if kind == "seq":
    specs = {"f": InputSpec(8, is_sequence=True), "words": InputSpec(10000, is_sparse=True, is_sequence=True),
             "label": InputSpec(2)}
else:
    specs = {"x": InputSpec(64), "y": InputSpec(10)}
out = {"start": status()}
t0 = time.time()
r = CTFReader(path, specs, dtype=np.float32)
out["index_s"] = time.time() - t0
out["index"] = status()
out["n"] = len(r)
out["index_bytes"] = r.index_nbytes
t0 = time.time()
steps = 0
for a, b, data in r.chunks(chunk):
    steps += int(next(iter(data.values()))[1].sum())
out["read_s"] = time.time() - t0
out["read"] = status()
out["steps"] = steps
print(json.dumps(out))
"""


def write_seq(path, target_bytes, seed=0):
    """Sequences with ids: dense f (8), sparse words (3 of 10,000), one label (2) per sequence."""
    rng = np.random.RandomState(seed)
    size, seq = 0, 0
    with open(path, "w") as f:
        while size < target_bytes:
            lines = []
            for _ in range(1000):
                length = rng.randint(1, 21)
                f_vals = np.round(rng.standard_normal((length, 8)), 4)
                words = rng.randint(0, 10000, size=(length, 3))
                for t in range(length):
                    line = "%d |f %s |words %s" % (seq, " ".join("%g" % v for v in f_vals[t]),
                                                   " ".join("%d:1" % w for w in words[t]))
                    if t == 0:
                        line += " |label %s" % ("1 0" if seq % 2 else "0 1")
                    lines.append(line)
                seq += 1
            block = "\n".join(lines) + "\n"
            f.write(block)
            size += len(block)
    return size


def write_dense(path, target_bytes, seed=0):
    """No ids: one sample per line, x (64 values) and a one-hot y (10)."""
    rng = np.random.RandomState(seed)
    size, i = 0, 0
    eye = ["|y " + " ".join("1" if j == k else "0" for j in range(10)) for k in range(10)]
    with open(path, "w") as f:
        while size < target_bytes:
            x = np.round(rng.standard_normal((1000, 64)), 3)
            block = "\n".join("|x %s %s" % (" ".join("%g" % v for v in row), eye[(i + k) % 10])
                              for k, row in enumerate(x)) + "\n"
            i += 1000
            f.write(block)
            size += len(block)
    return size


def measure(kind, path, chunk):
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, path, ROOT, str(chunk)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError("child failed on %s: %s" % (path, proc.stderr.decode()[-2000:]))
    r = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    r["kind"], r["mb"], r["chunk"] = kind, os.path.getsize(path) / MB, chunk
    r["index_mb_s"] = r["mb"] / r["index_s"]
    r["index_seq_s"] = r["n"] / r["index_s"]
    r["read_mb_s"] = r["mb"] / r["read_s"]
    r["read_seq_s"] = r["n"] / r["read_s"]
    r["index_mib_above_start"] = r["index"]["VmHWM"] - r["start"]["VmHWM"]
    r["read_mib_above_start"] = r["read"]["VmHWM"] - r["start"]["VmHWM"]
    r["read_mib_minus_index"] = r["read_mib_above_start"] - r["index_bytes"] / 2.0 ** 20
    return r


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~12 MB files instead of ~100 MB")
    parser.add_argument("--mb", type=float, help="file size in MB (overrides --quick)")
    parser.add_argument("--chunk", type=int, default=1000, help="sequences per read (default 1000)")
    args = parser.parse_args(argv)
    big = (args.mb or (12 if args.quick else 100)) * MB
    rows, ratio = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for kind, write in (("seq", write_seq), ("dense", write_dense)):
            by_size = []
            for size in (big / 4, big):
                path = os.path.join(folder, "%s.ctf" % kind)
                write(path, size)
                by_size.append(measure(kind, path, args.chunk))
                os.remove(path)
            rows += by_size
            small, large = by_size
            ratio[kind] = {"file_ratio": large["mb"] / small["mb"],
                           "peak_above_start_ratio": large["read_mib_above_start"] / max(small["read_mib_above_start"], 1e-9),
                           "peak_minus_index_ratio": large["read_mib_minus_index"] / max(small["read_mib_minus_index"], 1e-9)}
    print("CTF reader: index (one pass) and read (chunks of %d sequences) of generated files; memory = peak RSS "
          "(VmHWM) of a fresh process above its start, MiB" % args.chunk)
    print("%6s %7s %9s %8s %10s %11s %8s %9s %10s %9s %10s %9s %11s" % (
        "file", "MB", "sequences", "index s", "index MB/s", "index seq/s", "read s", "read MB/s", "read seq/s",
        "index MiB", "index peak", "read peak", "peak-index"))
    for r in rows:
        print("%6s %7.1f %9d %8.2f %10.1f %11.0f %8.2f %9.2f %10.0f %9.2f %10.1f %9.1f %11.1f" % (
            r["kind"], r["mb"], r["n"], r["index_s"], r["index_mb_s"], r["index_seq_s"], r["read_s"],
            r["read_mb_s"], r["read_seq_s"], r["index_bytes"] / 2.0 ** 20, r["index_mib_above_start"],
            r["read_mib_above_start"], r["read_mib_minus_index"]))
    for kind, v in sorted(ratio.items()):
        print("%s: file %.1fx larger -> peak memory above start %.2fx, without the index (16 B/sequence) %.2fx"
              % (kind, v["file_ratio"], v["peak_above_start_ratio"], v["peak_minus_index_ratio"]))
    return {"rows": rows, "memory_ratio": ratio}


if __name__ == "__main__":
    main()
