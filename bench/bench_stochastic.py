"""Stochastic inverse-HVPs: relative error of the influence SCORES (G·s) and of s = (H+λI)⁻¹b versus
Hessian-vector work and versus seconds, for cg, classic LiSSA (Koh & Liang) and the refined LiSSA
(exact-residual refinement, the default ``method="lissa"``).

Problems (CNTK):
- ``softmax``: digits softmax regression (build_network, no hidden layer, d = 650), l2 = 1e-2, float64,
  fitted by ``influence.fit``; 1,257 training points, b = gradient of test point 181;
- ``mlp``/``mlp-damped``: digits MLP 64-32-10 tanh (d = 2,410), l2 = 1e-3, float64, at its optimum
  (``influence.fit``), damping 0 and 1e-3; b = gradient of test point 118;
- ``synthetic``: a 100-50-10 tanh float32 MLP on n = 100,000 synthetic rows (a random tanh teacher),
  l2 = 1e-3, 30 L-BFGS iterations (not at the optimum), damping 1e-2; the solvers run on the float32
  model, the reference on a float64 copy of the same weights; scores on 2,000 training rows.
Reference: cg on the float64 model at rtol 1e-9 (the float64 finite-difference floor is ≈ 1e-9; 1e-7
for the synthetic problem).
G: per-example training-loss gradients; "scores error" = ‖G(s − s*)‖/‖G s*‖.

Work is counted in FULL PASSES: one full-data product = 1, a minibatch product of B rows = B/n (the
rows the gradients touch, from the adapter); the one-time finite-difference step calibration is
counted too. Timings include the solvers' own overhead, not the error bookkeeping.
Run: ``python bench/bench_stochastic.py [--quick] [--png PATH]``.
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

#: Reference tolerance (float64 cg) and the scores errors at which work and time are reported.
REF_RTOL = 1e-9
#: cg iterations of the reference at most (the float64 finite-difference floor stops progress near
#: 1e-8..1e-9 on the digits MLP; it gets there in ~400-1000 iterations).
REF_MAXITER = 1500
#: The n = 1e5 reference stops earlier (each product is two passes over 1e5 rows); errors are
#: reported down to 1e-3, far above what this leaves.
SYNTHETIC_REF_RTOL = 1e-7
LEVELS = (1e-2, 1e-3)
#: Checkpoints are recorded when the work has grown by this factor since the last one.
GRID = 1.15


class _RowCounter(object):
    """Counts rows passed through the model's gradient primitive (installed on the instance)."""

    def __init__(self, model):
        self.rows = 0
        inner = model._grad_sum

        def counted(batch):
            self.rows += len(batch)
            return inner(batch)
        model._grad_sum = counted


class _Trace(object):
    """A solver callback keeping (full passes, seconds, x) on a geometric grid of the work, the time spent
    in the callback itself excluded from the seconds."""

    def __init__(self, counter, n):
        self.counter, self.n = counter, float(n)
        self.points, self.t0, self.own, self.last = [], time.time(), 0.0, 0.0

    def passes(self):
        return self.counter.rows / (2.0 * self.n)

    def __call__(self, x):
        t = time.time()
        w = self.passes()
        if w >= self.last * GRID or not self.points:
            self.points.append((w, t - self.t0 - self.own, np.array(x, dtype=np.float64)))
            self.last = w
        self.own += time.time() - t


def _digits_problem(kind):
    import influence
    from influence.adapters.cntk import build_network
    x, y = influence.load_digits()
    train, test = (x[:1257], y[:1257]), (x[1257:], y[1257:])
    if kind == "softmax":
        model = influence.CNTKModel(build_network(64, 10, hidden=(), dtype=np.float64, seed=0), l2=1e-2)
        point = 181
    else:
        model = influence.CNTKModel(build_network(64, 10, hidden=(32,), dtype=np.float64, seed=0), l2=1e-3)
        point = 118
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        influence.fit(model, train)
    b = model.grad_sum((test[0][point:point + 1], test[1][point:point + 1]))
    return model, model, train, b, model.per_example_grads(train)


def _synthetic_problem(n, seed=0):
    import influence
    from influence.adapters.cntk import build_network
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n + 1, 100)).astype(np.float32)
    w1 = rng.standard_normal((100, 50)) / 10.0
    w2 = rng.standard_normal((50, 10)) * 2.0
    y = np.argmax(np.tanh(x @ w1) @ w2 + rng.gumbel(size=(n + 1, 10)), axis=1).astype(np.int64)
    model = influence.CNTKModel(build_network(100, 10, hidden=(50,), dtype=np.float32, seed=seed), l2=1e-3)
    train = (x[:n], y[:n])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        influence.fit(model, train, maxiter=30)
    ref_model = influence.CNTKModel(build_network(100, 10, hidden=(50,), dtype=np.float64, seed=seed), l2=1e-3)
    ref_model.set_params(model.get_params().astype(np.float64))
    b = ref_model.grad_sum((x[n:], y[n:]))
    rows = np.sort(rng.choice(n, 2000, replace=False))
    G = ref_model.per_example_grads((x[rows], y[rows]))
    return model, ref_model, train, b, G


def _runs(name, quick):
    """(method label, solve options) for problem ``name``."""
    classic_steps = 1000 if quick else (2000 if name == "synthetic" else 5000)
    runs = [("cg", dict(method="cg", rtol=1e-10, maxiter=150 if quick or name == "synthetic" else 600)),
            ("lissa classic", dict(method="lissa", variant="classic", rtol=0.0, maxiter=classic_steps)),
            ("lissa refined (defaults)", dict(method="lissa"))]
    if name == "softmax":
        runs.append(("lissa refined, rtol 1e-6", dict(method="lissa", rtol=1e-6, maxiter=40000)))
    return runs


def _first_reaching(points, level, key):
    for p in points:
        if p["scores"] <= level:
            return p[key]
    return None


def run_problem(name, quick, methods=None):
    import influence
    t0 = time.time()
    if name == "synthetic":
        model, ref_model, train, b, G = _synthetic_problem(20000 if quick else 100000)
        damping = 1e-2
    else:
        model, ref_model, train, b, G = _digits_problem("softmax" if name == "softmax" else "mlp")
        damping = 1e-3 if name == "mlp-damped" else 0.0
    setup = time.time() - t0
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = influence.solve(influence.HessianOperator(ref_model, train), b, method="cg", damping=damping,
                              rtol=REF_RTOL if name != "synthetic" else SYNTHETIC_REF_RTOL, maxiter=REF_MAXITER)
    ref_seconds = time.time() - t0
    s_ref = ref.x
    g_ref = G @ s_ref
    n = len(train[0])
    info = {"n": n, "d": model.n_params, "dtype": np.dtype(model.dtype).name, "damping": damping,
            "reference_residual": ref.residual, "reference_hvp": ref.n_hvp, "reference_seconds": ref_seconds,
            "setup_seconds": setup}
    rows, curves = [], {}
    for label, opts in _runs(name, quick):
        if methods and not any(label.startswith(m) for m in methods):
            continue
        counter = _RowCounter(model)
        H = influence.HessianOperator(model, train)
        trace = _Trace(counter, n)
        caught = []
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            sol = influence.solve(H, b, damping=damping, callback=trace, **opts)
            caught = [str(w.message) for w in rec if "ConvergenceWarning" in type(w.message).__name__]
        seconds = time.time() - trace.t0 - trace.own
        points = [{"passes": w, "seconds": t, "s": float(np.linalg.norm(x - s_ref) / np.linalg.norm(s_ref)),
                   "scores": float(np.linalg.norm(G @ x - g_ref) / np.linalg.norm(g_ref))}
                  for w, t, x in trace.points]
        final = {"passes": trace.passes(), "seconds": seconds,
                 "s": float(np.linalg.norm(sol.x - s_ref) / np.linalg.norm(s_ref)),
                 "scores": float(np.linalg.norm(G @ sol.x - g_ref) / np.linalg.norm(g_ref))}
        points.append(final)
        curves[label] = points
        row = {"method": label, "passes": final["passes"], "seconds": seconds, "n_hvp": sol.n_hvp,
               "n_iter": sol.n_iter, "error_s": final["s"], "error_scores": final["scores"],
               "residual": sol.residual, "converged": bool(sol.converged),
               "upfront_warning": any(m.startswith("lissa: the estimated condition number") for m in caught)}
        for level in LEVELS:
            row["passes_to_%g" % level] = _first_reaching(points, level, "passes")
            row["seconds_to_%g" % level] = _first_reaching(points, level, "seconds")
        rows.append(row)
        reach = ["%s" % ("-" if row["passes_to_%g" % lv] is None else "%.1f/%.1fs" % (
            row["passes_to_%g" % lv], row["seconds_to_%g" % lv])) for lv in LEVELS]
        print("  %-26s passes %8.1f  %7.2fs  s %.1e  scores %.1e  residual %.1e  %s%s  to 1e-2: %s  to 1e-3: %s"
              % (label, final["passes"], seconds, final["s"], final["scores"], sol.residual,
                 "converged" if sol.converged else "not converged",
                 "  (up-front warning)" if row["upfront_warning"] else "", reach[0], reach[1]))
        sys.stdout.flush()
    return {"info": info, "rows": rows, "curves": curves}


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7.5), squeeze=False)
    for j, name in enumerate(names):
        for label, pts in results[name]["curves"].items():
            for i, key in enumerate(("passes", "seconds")):
                xs = [max(p[key], 1e-3) for p in pts]
                axes[i][j].loglog(xs, [max(p["scores"], 1e-12) for p in pts], ".-", label=label, ms=3)
        axes[0][j].set_title(name)
        axes[0][j].set_xlabel("work (full-data passes)")
        axes[1][j].set_xlabel("seconds (shared machine, under load)")
        for i in range(2):
            axes[i][j].set_ylabel("relative error of the scores")
            axes[i][j].grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller synthetic problem, fewer steps")
    parser.add_argument("--only", nargs="*", default=None, help="problems: softmax mlp mlp-damped synthetic")
    parser.add_argument("--png", default=os.path.join(HERE, "..", "docs", "img", "stochastic.png"),
                        help="where to draw the plot (default docs/img/stochastic.png, shown in docs/performance.md)")
    parser.add_argument("--methods", nargs="*", default=None, help="only these method labels (prefix match)")
    args = parser.parse_args(argv)
    results = {}
    for name in args.only or ("softmax", "mlp-damped", "mlp", "synthetic"):
        print("%s:" % name)
        sys.stdout.flush()
        results[name] = run_problem(name, args.quick, args.methods)
        print("  (%s)" % ", ".join("%s=%s" % (k, ("%.3g" % v) if isinstance(v, float) else v)
                                   for k, v in sorted(results[name]["info"].items())))
    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    plot(results, args.png)
    print("plot: %s" % args.png)
    return {"stochastic": {name: {"info": r["info"], "rows": r["rows"]} for name, r in results.items()},
            "png": os.path.relpath(args.png, os.path.join(HERE, ".."))}


if __name__ == "__main__":
    main()
