"""Scoring from a CTF file against the same numbers in an .npz: time and peak memory (needs CNTK).

A training set of ``--rows`` examples (the bundled digits, tiled, with a little noise), written both
as ``.npz`` (np.savez, memory-mapped when read) and as CTF (``|features`` 64 values, ``|labels``
one-hot). A fresh subprocess per format loads the file (``influence.load_data``) and scores every
training row against one direction with forward differences, chunk by chunk (``--chunk`` rows):
the work of ``influence score`` after the inverse HVP. It reports the load time, the scoring time,
its peak resident memory (VmHWM) and a digest of the scores; the scores must be identical.

    .venv/bin/python bench/bench_ctf_scoring.py            # 40,000 rows
    .venv/bin/python bench/bench_ctf_scoring.py --quick    # 8,000 rows

``main(argv)`` returns {"rows": [...], "ratio_ctf_over_npz": {...}, "identical": bool}.
"""
from __future__ import print_function

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _one(path, chunk):
    """In a fresh process: load ``path``, score every row along one direction; print JSON."""
    sys.path.insert(0, ROOT)
    import influence
    from influence.adapters.cntk import build_network
    from influence.scoring.kernels import chunk_scores, forward_steps
    from influence.scoring.chunks import run_chunks
    model = influence.CNTKModel(build_network(64, 10, hidden=(16,), seed=1), l2=0.01, batch_size=1000)
    base = _vm_hwm_mib()
    t0 = time.perf_counter()
    data = influence.load_data(path, model)
    data = model.validate(data)
    t1 = time.perf_counter()
    s = np.random.RandomState(0).standard_normal((1, model.n_params))
    steps = forward_steps(model, data, s)
    scores, _ = run_chunks(lambda a, b: chunk_scores(model, data, s, "forward", steps, a, b, 1000),
                           len(data), chunk)
    t2 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "score_s": t2 - t1, "peak_mib_above_start": _vm_hwm_mib() - base,
                      "digest": hashlib.sha256(np.ascontiguousarray(scores).tobytes()).hexdigest()[:16]}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int)
    p.add_argument("--chunk", type=int, default=2000)
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        _one(a.one, a.chunk)
        return None
    rows = a.rows or (8000 if a.quick else 40000)
    sys.path.insert(0, ROOT)
    import influence
    x, y = influence.load_digits()
    reps = -(-rows // len(x))
    rng = np.random.RandomState(0)
    x = np.tile(x, (reps, 1))[:rows] + 0.01 * rng.standard_normal((rows, 64))
    y = np.tile(y, reps)[:rows]
    folder = tempfile.mkdtemp(prefix="bench-ctf-scoring-")
    npz, ctf = os.path.join(folder, "train.npz"), os.path.join(folder, "train.ctf")
    np.savez(npz, x=x, y=y)
    eye = np.eye(10, dtype=int)
    with open(ctf, "w") as f:
        for xi, yi in zip(x, y):
            f.write("|features %s |labels %s\n" % (" ".join(repr(float(v)) for v in xi), " ".join(map(str, eye[yi]))))
    out = []
    for kind, path in (("npz", npz), ("ctf", ctf)):
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", path, "--chunk", str(a.chunk)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row.update(format=kind, rows=rows, mb=os.path.getsize(path) / 1e6)
        out.append(row)
        print("%s: %6.1f MB, load %.2f s, score %d rows (chunks of %d) %.2f s, peak RSS above start %.1f MiB"
              % (kind, row["mb"], row["load_s"], rows, a.chunk, row["score_s"], row["peak_mib_above_start"]))
    for path in (npz, ctf):
        os.remove(path)
    os.rmdir(folder)
    ratio = {k: out[1][k] / out[0][k] for k in ("load_s", "score_s")}
    identical = out[0]["digest"] == out[1]["digest"]
    print("ctf / npz: load %.1fx, score %.2fx; scores identical: %s (load avg %s)"
          % (ratio["load_s"], ratio["score_s"], identical, " ".join("%.1f" % v for v in os.getloadavg())))
    return {"rows": out, "ratio_ctf_over_npz": ratio, "identical": identical}


if __name__ == "__main__":
    main()
