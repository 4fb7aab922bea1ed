"""Benchmark: forward-difference vs per-example-gradient influence scoring on a CNTK MLP, and the
accuracy targets on the digits (leave-one-out, mislabeled labels).

Forward scoring vs gradient scoring, 784-100-10 tanh MLP on synthetic data (Gaussian features, labels
from a noisy random linear teacher), fitted by ``influence.fit`` (L-BFGS, l2=1e-3), s_test by CG
(damping 1e-3 on top of the L2 term: the MLP is fitted to a finite tolerance). Both scorings use the
same s_test, so the comparison isolates the scoring step. Relative error = ‖I_fwd − I_grad‖/‖I_grad‖.

    python bench/bench_scores.py            # ~10 min on 2 cores
    python bench/bench_scores.py --quick    # smaller n
"""
from __future__ import print_function

import argparse
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import influence  # noqa: E402
from influence.adapters.cntk import CNTKModel, build_network  # noqa: E402
from influence.evaluate.leave_one_out import spearman  # noqa: E402


def synthetic(n, p=784, k=10, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n + 1, p))
    teacher = rng.standard_normal((p, k)) / np.sqrt(p)
    y = np.argmax(3.0 * x @ teacher + rng.gumbel(size=(n + 1, k)), axis=1).astype(np.int64)
    return (x[:n], y[:n]), (x[n:], y[n:])


def forward_vs_gradient(n, dtype, fit_iter):
    train, test = synthetic(n)
    model = CNTKModel(build_network(784, 10, (100,), "tanh", dtype=dtype, seed=0), l2=1e-3)
    row = {"n": n, "dtype": np.dtype(dtype).name, "d": model.n_params}
    t = time.time()
    fr = influence.fit(model, train, maxiter=fit_iter)
    row["fit_s"], row["grad_norm"] = time.time() - t, fr.grad_norm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.time()
        st = influence.s_test(model, train, test, solver="cg", damping=1e-3, rtol=1e-6, maxiter=500)
        row["s_test_s"] = time.time() - t
        t = time.time()
        fwd = influence.influence_scores(model, train, test, scoring="forward", s=st, check_optimum=False)
        row["forward_s"] = time.time() - t
        t = time.time()
        grd = influence.influence_scores(model, train, test, scoring="gradient", s=st, check_optimum=False)
        row["gradient_s"] = time.time() - t
    row["speedup"] = row["gradient_s"] / row["forward_s"]
    row["rel_err"] = float(np.linalg.norm(fwd - grd) / np.linalg.norm(grd))
    row["max_err"] = float(np.max(np.abs(fwd - grd)) / np.max(np.abs(grd)))
    row["spearman"] = spearman(fwd, grd)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n=2000 (float32) / 500 (float64), no digits runs")
    p.add_argument("--n32", type=int, default=10000)
    p.add_argument("--n64", type=int, default=2000)
    p.add_argument("--fit-iter", type=int, default=200)
    args = p.parse_args(argv)
    if args.quick:
        args.n32, args.n64 = 2000, 500
    out = {"scoring": []}
    for n, dtype in ((args.n32, np.float32), (args.n64, np.float64)):
        out["scoring"].append(forward_vs_gradient(n, dtype, args.fit_iter))
    print("\nforward vs gradient scoring, 784-100-10 tanh CNTK MLP (one test point)")
    cols = ("dtype", "n", "d", "grad_norm", "forward_s", "gradient_s", "speedup", "rel_err", "max_err",
            "spearman")
    print(" ".join("%11s" % c for c in cols))
    for r in out["scoring"]:
        print(" ".join("%11s" % (("%.6f" % r[c]) if c == "spearman" else ("%.3g" % r[c]) if isinstance(r[c], float) else r[c]) for c in cols))
    if not args.quick:
        import digits_influence
        import mislabeled_digits
        print("\n--- examples/digits_influence.py (verify_loo) ---")
        out["digits_loo"] = digits_influence.main([])
        print("\n--- examples/mislabeled_digits.py ---")
        out["mislabeled"] = mislabeled_digits.main([])
    return out


if __name__ == "__main__":
    main()
