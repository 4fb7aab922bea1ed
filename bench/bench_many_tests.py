"""Benchmark: s_test for 1, 10, 100 test points on the digits MLP, per solver, and the plan of "auto".

Digits (1,797 8×8 images, the split of examples/digits_influence.py: 1,200 train, the rest test),
MLP 64-32-10 tanh (d = 2,410), float64, l2 = 1e-2, fitted by ``influence.fit`` (L-BFGS, gtol 1e-7).
One HessianOperator (step calibrated once) for every run. Per solver and number of test points m:
wall seconds of ``s_test``, products spent (sum over the rows), the worst relative residual, and the
ratio to the same solver's m = 1 run (target of issue 13: 100 test points <= 3 × one). cg runs cold
(``recycle=False``: every test point from 0) and warm (``recycle=True``: each started from the Galerkin
projection on the previous solutions); cold cg is m independent solves, so it runs up to
``--cold-max-m`` (default 10: m = 100 cold would add ~15 min and only repeat its linear growth). ``auto``: the plan it makes for each m (one timed product).

    python bench/bench_many_tests.py           # m = 1, 10, 100 (cold cg: 1, 10) (~20 min on 2 cores)
    python bench/bench_many_tests.py --quick   # cg only for m = 1, 10 (~10 min)
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

import influence  # noqa: E402
from influence.adapters.cntk import CNTKModel, build_network  # noqa: E402
from influence.scoring.scores import plan_auto  # noqa: E402


def digits_mlp(n_train=1200):
    x, y = influence.load_digits()
    perm = np.random.RandomState(0).permutation(len(x))
    tr, te = perm[:n_train], perm[n_train:]
    model = CNTKModel(build_network(64, 10, (32,), "tanh", dtype=np.float64, seed=0), l2=1e-2)
    fit = influence.fit(model, (x[tr], y[tr]), gtol=1e-7)
    return model, (x[tr], y[tr]), (x[te], y[te]), fit


def run_s_test(model, train, test, H, m, solver, options):
    sub = (test[0][:m], test[1][:m])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.time()
        st = influence.s_test(model, train, sub, solver=solver, hessian=H, check_optimum=False, **options)
        seconds = time.time() - t
    return {"solver": solver + ("" if options.get("recycle", True) else " cold") if solver == "cg" else solver,
            "m": m, "seconds": seconds, "n_hvp": int(sum(s.n_hvp for s in st.solutions)),
            "max_residual": float(max(s.residual for s in st.solutions)),
            "converged": int(sum(bool(s.converged) for s in st.solutions)), "vectors": st.vectors}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="m = 1, 10; cg cold and warm, direct")
    p.add_argument("--m", type=int, nargs="+", default=None, help="numbers of test points (default 1 10 100)")
    p.add_argument("--solvers", nargs="+", default=["direct", "cg", "cg-cold"],
                   help="direct, cg (warm), cg-cold (default all three)")
    p.add_argument("--rtol", type=float, default=1e-6, help="cg's rtol (default 1e-6)")
    p.add_argument("--cold-max-m", type=int, default=10,
                   help="largest m for cold cg (default 10; its cost is m independent solves)")
    args = p.parse_args(argv)
    ms = args.m or ([1, 10] if args.quick else [1, 10, 100])
    model, train, test, fit = digits_mlp()
    H = influence.HessianOperator(model, train)
    t = time.time()
    H.matvec(np.ones(model.n_params))          # calibration + one product, outside every timing
    print("digits MLP 64-32-10 tanh, float64: d=%d, n=%d, fit ‖∇R‖=%.2e; first product (with step "
          "calibration) %.3g s" % (model.n_params, len(train[0]), fit.grad_norm, time.time() - t))
    out = {"d": model.n_params, "n": len(train[0]), "rows": [], "plans": []}
    for m in ms:
        plan = plan_auto(H, m)
        out["plans"].append(dict(plan._asdict()))
        print(str(plan))
    reference = {}
    for name in args.solvers:
        solver, options = ("cg", {"rtol": args.rtol, "maxiter": 2000, "recycle": name == "cg"}) \
            if name.startswith("cg") else (name, {})
        for m in ms:
            if name == "cg-cold" and m > args.cold_max_m:
                continue
            row = run_s_test(model, train, test, H, m, solver, options)
            vectors = row.pop("vectors")
            if m in reference:
                row["rel_diff_vs_first_solver"] = float(np.linalg.norm(vectors - reference[m][:m])
                                                        / np.linalg.norm(reference[m][:m]))
            else:
                reference[m] = vectors
            one = [r for r in out["rows"] if r["solver"] == row["solver"] and r["m"] == 1]
            row["ratio_vs_m1"] = row["seconds"] / one[0]["seconds"] if one else (1.0 if m == 1 else None)
            out["rows"].append(row)
            print("  %-8s m=%3d  %8.2f s  %7d products  max residual %.2e  converged %d/%d  ×m=1: %s"
                  % (row["solver"], m, row["seconds"], row["n_hvp"], row["max_residual"], row["converged"], m,
                     "-" if row["ratio_vs_m1"] is None else "%.2f" % row["ratio_vs_m1"]))
            sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
