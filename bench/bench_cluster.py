"""Benchmark: forward influence scoring on a Dask LocalCluster with 1 vs 2 worker processes.

Synthetic training set (Gaussian float32 features, random labels) of n rows written to an
uncompressed .npz (memory-mapped by every worker), a 100-50-10 tanh CNTK MLP (random weights: the
throughput of scoring does not depend on the optimum), one test point, default Richardson stencil
(4 forward passes over the data plus the step search on 512 pilot rows), chunks of 10,000 rows.

Each cluster run is timed end to end from an already started cluster: the step search on the
client, shipping the job, CNTK import / model load / data check on each worker, the scoring itself
and the assembly. The single-process run (no Dask) is the reference, and every cluster result is
checked against it to the bit. Throughput = n / wall seconds (training points per second).

    .venv/bin/python bench/bench_cluster.py            # n = 1,000,000 (~1 min on 2 cores)
    .venv/bin/python bench/bench_cluster.py --quick    # n = 100,000
"""
from __future__ import print_function

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import influence  # noqa: E402
from influence import dask as cluster  # noqa: E402


def write_synthetic(path, n, p, k, seed=0, block=100000):
    """An uncompressed .npz with x (n, p) float32 and y (n,) int64, written without holding the
    float64 intermediate of all rows at once."""
    rng = np.random.RandomState(seed)
    x = np.empty((n, p), dtype=np.float32)
    for a in range(0, n, block):
        x[a:a + block] = rng.standard_normal((min(block, n - a), p))
    y = rng.randint(0, k, size=n).astype(np.int64)
    np.savez(path, x=x, y=y)
    return x[:1].copy(), y[:1].copy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 100,000 instead of 1,000,000")
    ap.add_argument("--n", type=int, default=None, help="training rows (default 1e6, 1e5 with --quick)")
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=50)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--chunk-size", type=int, default=10000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--result-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        # Scaling is measured with one native thread per process (the single-process reference and
        # every worker alike, so results stay bit-identical): rerun in a child with that setting.
        import json
        import subprocess
        fd, result = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            subprocess.check_call([sys.executable, os.path.abspath(__file__)] + list(argv or sys.argv[1:])
                                  + ["--result-json", result], env=env)
            with open(result) as f:
                return json.load(f)
        finally:
            os.remove(result)
    n = args.n or (100000 if args.quick else 1000000)
    from influence.adapters.cntk import CNTKModel, build_network
    folder = tempfile.mkdtemp(prefix="bench-cluster-")
    out = {"n": n, "features": args.features, "hidden": args.hidden, "classes": args.classes,
           "chunk_size": args.chunk_size, "cores": os.cpu_count(), "runs": [],
           "load_average_before": os.getloadavg()[0]}
    try:
        path = os.path.join(folder, "train.npz")
        t = time.time()
        test = write_synthetic(path, n, args.features, args.classes)
        out["write_s"] = time.time() - t
        out["file_mb"] = os.path.getsize(path) / 1e6
        train = influence.load_npz(path)
        model = CNTKModel(build_network(args.features, args.classes, hidden=(args.hidden,), seed=0),
                          loss="cross_entropy", l2=1e-3)
        out["d"] = model.n_params
        s = np.random.RandomState(1).standard_normal((1, model.n_params))
        kw = dict(s=s, check_optimum=False, chunk_size=args.chunk_size)

        t = time.time()
        ref = influence.influence_scores(model, train, test, **kw)
        sec = time.time() - t
        out["runs"].append({"mode": "single process", "workers": 0, "startup_s": 0.0, "seconds": sec,
                            "points_per_s": n / sec, "bit_identical": True})
        for w in args.workers:
            t = time.time()
            client = cluster.connect("local:%d" % w)
            try:
                client.wait_for_workers(w)
                startup = time.time() - t
                t = time.time()
                got = influence.influence_scores(model, train, test, executor=cluster.DaskExecutor(client), **kw)
                sec = time.time() - t
            finally:
                client.close()
            out["runs"].append({"mode": "LocalCluster", "workers": w, "startup_s": startup, "seconds": sec,
                                "points_per_s": n / sec, "bit_identical": bool(np.array_equal(got, ref))})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    by_workers = {r["workers"]: r for r in out["runs"]}
    if 1 in by_workers and 2 in by_workers:
        out["ratio_2_vs_1"] = by_workers[2]["points_per_s"] / by_workers[1]["points_per_s"]
    print("\nforward scoring on a Dask LocalCluster: n = %d, %d-%d-%d tanh CNTK MLP (d = %d), %d cores, "
          "chunks of %d, data file %.0f MB"
          % (n, args.features, args.hidden, args.classes, out["d"], out["cores"] or 0, args.chunk_size,
             out["file_mb"]))
    print("%-16s %8s %10s %10s %14s %14s" % ("mode", "workers", "startup_s", "seconds", "points/s",
                                             "bit-identical"))
    for r in out["runs"]:
        print("%-16s %8d %10.2f %10.2f %14.0f %14s" % (r["mode"], r["workers"], r["startup_s"], r["seconds"],
                                                     r["points_per_s"], r["bit_identical"]))
    print("load average before the runs: %.2f (other processes on the machine skew the timings)"
          % out["load_average_before"])
    if "ratio_2_vs_1" in out:
        print("scaling 2 vs 1 workers: %.2fx (target >= 1.7x); every process with OMP_NUM_THREADS=1"
              % out["ratio_2_vs_1"])
    if args.result_json:
        import json
        with open(args.result_json, "w") as f:
            json.dump(out, f)
    return out


if __name__ == "__main__":
    main()
