"""Peak memory of forward influence scoring does not grow with the training-set size n.

For each n, a synthetic training set (20 float64 features, 5 classes; 1e6 rows = 160 MB of features)
is written uncompressed with np.savez semantics (streamed into the zip, so the parent never holds it
either), and a fresh subprocess (.venv, CNTK) loads it with influence.load_npz (memory-mapped),
validates it for a float32 CNTK softmax regression and computes forward influence scores of every
training row for one test point (influence_scores with a given s_test vector, the default chunking;
plus the optimum check, one full gradient pass). The child reports its peak resident set size
(VmHWM from /proc/self/status: anonymous AND file-backed pages, so the memory-mapped data counts when
it is touched) after each phase.

    .venv/bin/python bench/bench_memory.py            # n = 1e5 and 1e6
    .venv/bin/python bench/bench_memory.py --quick    # n = 2e4 and 2e5

``main(argv)`` returns a dict {"rows": [...], "ratio": forward-scoring peak(n_max)/peak(n_min),
"optimum_check_ratio": the same after the optimum check, "flat": ratio <= 1.2}.
"""
from __future__ import print_function

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from _child_memory import STATUS_SOURCE  # bench/ is on sys.path (run_all and a direct run)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
P, K = 20, 5
TOLERANCE = 1.2

CHILD = r"""
import json, sys, time
import numpy as np
""" + STATUS_SOURCE + r"""

import influence
from influence.adapters.cntk import CNTKModel
path, model_path = sys.argv[1], sys.argv[2]
result = {"start": status()}
t0 = time.time()
model = CNTKModel.load(model_path, l2=1e-2)
train = model.validate(influence.load_npz(path), "train")
result["load+validate"] = status()
test = (np.zeros((1, %(P)d), np.float32), np.zeros(1, np.int64))
s = np.random.RandomState(0).standard_normal(model.n_params)
scores = influence.influence_scores(model, train, test, s=s[None, :], check_optimum=False)
result["forward scoring"] = status()
influence.check_optimum(model, train)
result["optimum check"] = status()
result["seconds"] = time.time() - t0
result["n_scores"] = int(scores.shape[0])
print(json.dumps(result))
""" % {"P": P}


def write_npz(path, n, seed=0, block=100000):
    """np.savez-compatible (uncompressed) archive with x (n × P float64) and y (n int64), streamed."""
    rng = np.random.RandomState(seed)
    teacher = rng.standard_normal((P, K))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        ys = []
        with zf.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (n, P)})
            for a in range(0, n, block):
                x = rng.standard_normal((min(block, n - a), P))
                ys.append(np.argmax(x @ teacher + rng.gumbel(size=(x.shape[0], K)), axis=1).astype(np.int64))
                f.write(x.tobytes())
        with zf.open("y.npy", "w", force_zip64=True) as f:
            y = np.concatenate(ys)
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (n,)})
            f.write(y.tobytes())


def make_model(folder):
    """A float32 CNTK softmax regression fitted on 2,000 rows of the same distribution."""
    import influence
    from influence.adapters.cntk import CNTKModel, build_network
    small = os.path.join(folder, "small.npz")
    write_npz(small, 2000)
    data = influence.load_npz(small)
    model = CNTKModel(build_network(P, K, dtype=np.float32, seed=0), l2=1e-2)
    influence.fit(model, data, gtol=1e-5, maxiter=300)
    path = os.path.join(folder, "model.cntk")
    model.save(path)
    return path


def measure(n, folder, model_path):
    path = os.path.join(folder, "train-%d.npz" % n)
    write_npz(path, n)
    proc = subprocess.run([sys.executable, "-c", CHILD, path, model_path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError("child failed for n=%d: %s" % (n, proc.stderr.decode()[-2000:]))
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    os.remove(path)
    result["n"] = n
    result["features_mib"] = n * P * 8 / 2.0 ** 20
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 2e4 and 2e5 instead of 1e5 and 1e6")
    parser.add_argument("--sizes", type=int, nargs="+", help="training-set sizes (overrides --quick)")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([20000, 200000] if args.quick else [100000, 1000000])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model_path = make_model(folder)
        for n in sizes:
            rows.append(measure(n, folder, model_path))
    print("peak resident memory (VmHWM, MiB) of a fresh process; features are n × %d float64" % P)
    print("%10s %12s %10s %14s %16s %14s %9s" % ("n", "features MiB", "start", "load+validate",
                                                 "forward scoring", "optimum check", "seconds"))
    for r in rows:
        print("%10d %12.1f %10.1f %14.1f %16.1f %14.1f %9.1f" % (
            r["n"], r["features_mib"], r["start"]["VmHWM"], r["load+validate"]["VmHWM"],
            r["forward scoring"]["VmHWM"], r["optimum check"]["VmHWM"], r["seconds"]))
    ratio = rows[-1]["forward scoring"]["VmHWM"] / rows[0]["forward scoring"]["VmHWM"]
    check = rows[-1]["optimum check"]["VmHWM"] / rows[0]["optimum check"]["VmHWM"]
    print("forward scoring: peak ratio n=%d / n=%d: %.3f (flat within %.0f%%: %s)"
          % (rows[-1]["n"], rows[0]["n"], ratio, 100 * (TOLERANCE - 1), ratio <= TOLERANCE))
    print("with the optimum check (one more gradient pass, blocks gathered a batch at a time): %.3f" % check)
    return {"rows": rows, "ratio": ratio, "optimum_check_ratio": check, "flat": ratio <= TOLERANCE}


if __name__ == "__main__":
    main()
