"""Peak memory of a test × train score-matrix run is bounded by the chunk, not by the matrix.

Each configuration (m test points, n training rows, chunk size C) runs in a fresh subprocess: a
synthetic softmax regression (NumPy reference model, influence.models: 10 float64 features, 3
classes, d = 33; fitted on the first 2,000 rows, then scored with ``check_optimum=False``) and
``ScoreJob(..., matrix=PATH, groups=test labels)``: s_test by ``direct`` for all m test points, every
chunk of C training rows scored with per-example gradients (``scoring="gradient"``: the m × C block
of scores is one product), written into the memory-mapped ``.npy`` in the checkpoint folder and
summed into the running aggregates, and the finished file moved into place. The child reads its
peak resident set size (VmHWM from /proc/self/status: anonymous AND file-backed pages, so the
mapped matrix counts while it is mapped) before the job (data and model built) and after it.

The job's own peak is ``peak − before``. What it should hold, by construction: one m × C chunk of
scores (and its per-block pieces, ~2×), the (m, d) s_test and test gradients, and a few (n,)
aggregate vectors (sum, per class, a done-flag): O(m·C + m·d + n·classes), not O(m·n).

    python bench/bench_score_matrix.py            # m = 1000: n = 1e5 and 1e6 (C = 10,000), n = 1e6 (C = 2,500)
    python bench/bench_score_matrix.py --quick    # m = 200:  n = 2e4 and 2e5 (C = 5,000), n = 2e5 (C = 1,250)

``main(argv)`` returns {"rows": [...], "matrix_ratio": the job's peak at the largest matrix over
the smallest (same C), "chunk_ratio": the job's peak at C over C/4 (same matrix), "bounded":
matrix_ratio <= TOLERANCE while the matrix grew 10×}.
"""
from __future__ import print_function

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _child_memory import STATUS_SOURCE  # bench/ is on sys.path (run_all and a direct run)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: The job's peak may grow this much while the matrix grows 10× (the (n,) aggregate vectors grow with n).
TOLERANCE = 1.5

CHILD = r"""
import json, os, sys, time
import numpy as np
""" + STATUS_SOURCE + r"""

import influence
from influence.jobs import ScoreJob
from influence.models import SoftmaxRegression
m, n, chunk, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
P, K = 10, 3
rng = np.random.RandomState(0)
teacher = rng.standard_normal((P, K))
x = rng.standard_normal((n + m, P))
y = np.argmax(x @ teacher + rng.gumbel(size=(n + m, K)), axis=1).astype(np.int64)
train = influence.Dataset(x[:n], y[:n])
test = influence.Dataset(x[n:], y[n:])
model = SoftmaxRegression(P, K, l2=1e-2)
influence.fit(model, influence.Dataset(x[:2000], y[:2000]))
result = {"before": status()}
path = os.path.join(folder, "matrix.npy")
t0 = time.time()
job = ScoreJob(model, train, test, folder=os.path.join(folder, "partial"), solver="direct",
               scoring="gradient", chunk_size=chunk, check_optimum=False, matrix=path, groups=test.y)
res = job.run()
result["seconds"] = time.time() - t0
result["after"] = status()
result["file_bytes"] = os.path.getsize(path)
mm = np.load(path, mmap_mode="r")
result["shape"] = list(mm.shape)
result["checksum_first_row"] = float(np.sum(mm[0]))
result["aggregate_first"] = float(res.aggregates.sum[0])
del mm
os.remove(path)
print(json.dumps(result))
"""


def measure(m, n, chunk, folder):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(m), str(n), str(chunk), folder],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    if proc.returncode != 0:
        raise RuntimeError("child failed for m=%d n=%d chunk=%d: %s" % (m, n, chunk, proc.stderr.decode()[-2000:]))
    r = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    r.update({"m": m, "n": n, "chunk": chunk, "matrix_mib": m * n * 8 / 2.0 ** 20,
              "chunk_mib": m * chunk * 8 / 2.0 ** 20, "peak_mib": r["after"]["VmHWM"],
              "before_mib": r["before"]["VmHWM"]})
    r["job_peak_mib"] = r["peak_mib"] - r["before_mib"]
    return r


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="m = 200, n = 2e4 and 2e5 instead of m = 1000, n = 1e5 and 1e6")
    args = parser.parse_args(argv)
    if args.quick:
        m, small, large, chunk = 200, 20000, 200000, 5000
    else:
        m, small, large, chunk = 1000, 100000, 1000000, 10000
    configs = [(m, small, chunk), (m, large, chunk), (m, large, chunk // 4)]
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("INFLUENCE_BENCH_TMP")) as folder:
        for cfg in configs:
            rows.append(measure(cfg[0], cfg[1], cfg[2], folder))
    print("peak resident memory (VmHWM, MiB) of a fresh process; the job's peak = peak - before the job")
    print("%6s %9s %7s %11s %10s %10s %10s %13s %9s %12s" % ("m", "n", "chunk", "matrix MiB", "chunk MiB",
                                                             "before", "peak", "job's peak", "seconds", "scores/s"))
    for r in rows:
        print("%6d %9d %7d %11.1f %10.1f %10.1f %10.1f %13.1f %9.1f %12.3g" % (
            r["m"], r["n"], r["chunk"], r["matrix_mib"], r["chunk_mib"], r["before_mib"], r["peak_mib"],
            r["job_peak_mib"], r["seconds"], r["m"] * r["n"] / r["seconds"]))
    matrix_ratio = rows[1]["job_peak_mib"] / rows[0]["job_peak_mib"]
    chunk_ratio = rows[1]["job_peak_mib"] / rows[2]["job_peak_mib"]
    print("matrix %.0fx larger (same chunk): job's peak ratio %.3f (bounded within %.0f%%: %s); "
          "chunk 4x larger (same matrix): job's peak ratio %.3f"
          % (rows[1]["matrix_mib"] / rows[0]["matrix_mib"], matrix_ratio, 100 * (TOLERANCE - 1),
             matrix_ratio <= TOLERANCE, chunk_ratio))
    return {"rows": rows, "matrix_ratio": matrix_ratio, "chunk_ratio": chunk_ratio,
            "bounded": matrix_ratio <= TOLERANCE}


if __name__ == "__main__":
    main()
