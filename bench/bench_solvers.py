"""Benchmark of the inverse-HVP solvers: relative error against a reference solution vs Hessian-vector
products spent and wall time, for cg, lissa (auto scale) and lanczos.

Problems
- NumPy logistic regression: 5000 examples, 100 features (d = 101), L2 set so that cond(H) ≈ 1e3;
  reference: ``direct`` (exact dense solve of the same finite-difference operator).
- CNTK 784-100-10 tanh MLP (d = 79,510; needs CNTK, skipped otherwise): 1000 synthetic examples
  (Gaussian inputs, labels from a random tanh teacher), float64 (float32 HVPs carry ~1e-4 relative
  finite-difference error, which no reference at rtol 1e-10 could resolve), l2 = 0.01, fitted by 200 L-BFGS iterations;
  damping 0.01; reference: cg to rtol 1e-9 (the float64 finite-difference floor is ≈ 5e-10).
The right-hand side is the mean loss gradient of 10 held-out examples (an influence s_test).

``main()`` prints a compact table and returns ``{problem: {"info": {...}, "rows": [...]}}`` where
each row is ``{"method", "setting", "n_hvp", "seconds", "error", "residual"}``.
Run: ``python bench/bench_solvers.py`` (a few minutes; CNTK part only where CNTK imports).
"""
from __future__ import print_function

import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from influence import HessianOperator, solvers  # noqa: E402
from influence.models import LogisticRegression  # noqa: E402

#: CG checkpoints (iterations), LiSSA checkpoints (steps) and lanczos ranks reported per problem.
CG_CHECKPOINTS = (5, 10, 20, 50, 100, 200, 500)
LISSA_CHECKPOINTS = (100, 300, 1000, 3000, 5000)
LANCZOS_KS = (5, 20, 50)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _logistic_problem(n=5000, p=100, cond=1e3, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, p)) * np.geomspace(1.0, 0.01, p)
    y = (x @ rng.standard_normal(p) + rng.logistic(size=n) > 0).astype(np.int64)
    model = LogisticRegression(p, random_state=seed, scale=0.3)
    e = np.linalg.eigvalsh(model.hessian((x, y)))
    model.l2 = (e[-1] - cond * e[0]) / (cond - 1.0)
    xt = rng.standard_normal((10, p))
    yt = (xt @ rng.standard_normal(p) > 0).astype(np.int64)
    b = model.grad_sum((xt, yt)) / 10.0
    return model, (x, y), b


def _mlp_problem(n=1000, seed=0, l2=0.01, fit_iters=200):
    import scipy.optimize
    from influence import CNTKModel
    from influence.adapters.cntk import build_network
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n + 10, 784))
    w1 = rng.standard_normal((784, 50)) / np.sqrt(784)
    w2 = rng.standard_normal((50, 10)) * 2.0
    y = np.argmax(np.tanh(x @ w1) @ w2 + rng.gumbel(size=(n + 10, 10)), axis=1).astype(np.int64)
    z = build_network(784, 10, hidden=(100,), activation="tanh", dtype=np.float64, seed=seed)
    model = CNTKModel(z, loss="cross_entropy", l2=l2)
    train, test = (x[:n], y[:n]), (x[n:], y[n:])
    t0 = time.time()

    def fun(w):
        model.set_params(w)
        return model.loss(train), model.grad(train)

    res = scipy.optimize.minimize(fun, model.get_params().astype(np.float64), jac=True, method="L-BFGS-B",
                                  options={"maxiter": fit_iters})
    model.set_params(res.x)
    info = {"fit_seconds": time.time() - t0, "fit_iters": int(res.nit),
            "grad_norm": float(np.linalg.norm(model.grad(train))), "loss": float(model.loss(train))}
    b = model.grad_sum(test) / 10.0
    return model, train, b, info


def _run_methods(model, data, b, damping, reference, rows, lissa_depth):
    # cg: one run, iterates recorded by the callback at the checkpoints
    H = HessianOperator(model, data, damping=damping)
    marks = {}
    count = [0]
    t0 = time.time()

    def on_cg(xk):
        count[0] += 1
        if count[0] in CG_CHECKPOINTS:
            marks[count[0]] = (H.n_hvp, time.time() - t0, _rel(xk, reference))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", solvers.ConvergenceWarning)
        s = solvers.cg(H, b, rtol=1e-8, maxiter=max(CG_CHECKPOINTS), callback=on_cg)
    for it in sorted(marks):
        rows.append({"method": "cg", "setting": "iter=%d" % it, "n_hvp": marks[it][0],
                     "seconds": marks[it][1], "error": marks[it][2], "residual": None})
    rows.append({"method": "cg", "setting": "rtol=1e-8 (%d it)" % s.n_iter, "n_hvp": s.n_hvp,
                 "seconds": s.seconds, "error": _rel(s.x, reference), "residual": s.residual})

    # lissa: one run at the default batch size and auto scale, checkpoints by the callback
    H = HessianOperator(model, data, damping=damping)
    marks = {}
    t0 = time.time()
    checkpoints = [c for c in LISSA_CHECKPOINTS if c <= lissa_depth]

    step = [0]

    def on_lissa(xj):
        step[0] += 1
        if step[0] in checkpoints:      # full products so far (power iteration, residual checks) + minibatch steps
            marks[step[0]] = (H.n_hvp + step[0], time.time() - t0, _rel(xj, reference))

    scale, label = "auto", "auto"
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", solvers.ConvergenceWarning)
                s = solvers.lissa(H, b, variant="classic", maxiter=lissa_depth, rtol=0, scale=scale,
                                  callback=on_lissa)
            break
        except solvers.DivergenceError as e:     # record it, retry with the scale the error suggests
            rows.append({"method": "lissa", "setting": "s=%s DIVERGED" % label, "n_hvp": H.n_hvp,
                         "seconds": time.time() - t0, "error": float("nan"), "residual": None})
            print("lissa:", str(e).splitlines()[0], file=sys.stderr)
            if e.suggested_scale is None:
                return
            scale = e.suggested_scale
            label = "%.3g" % scale
            H = HessianOperator(model, data, damping=damping)
            marks.clear()
            step[0] = 0
            t0 = time.time()
    else:
        return
    for step in sorted(marks):
        rows.append({"method": "lissa", "setting": "s=%s depth=%d" % (label, step), "n_hvp": marks[step][0],
                     "seconds": marks[step][1], "error": marks[step][2], "residual": None})
    if lissa_depth not in marks:
        rows.append({"method": "lissa", "setting": "s=%s depth=%d" % (label, lissa_depth), "n_hvp": s.n_hvp,
                     "seconds": s.seconds, "error": _rel(s.x, reference), "residual": None})
    rows[-1]["residual"] = s.residual

    for k in LANCZOS_KS:
        if k >= model.n_params - 1:
            continue
        H = HessianOperator(model, data, damping=damping)
        s = solvers.lanczos(H, b, k=k)
        rows.append({"method": "lanczos", "setting": "k=%d" % k, "n_hvp": s.n_hvp, "seconds": s.seconds,
                     "error": _rel(s.x, reference), "residual": s.residual})


def bench_numpy():
    model, data, b = _logistic_problem()
    H = HessianOperator(model, data)
    ref = solvers.direct(H, b)
    e = np.linalg.eigvalsh(model.hessian(data))
    rows = [{"method": "direct", "setting": "reference", "n_hvp": ref.n_hvp, "seconds": ref.seconds,
             "error": 0.0, "residual": ref.residual}]
    _run_methods(model, data, b, 0.0, ref.x, rows, lissa_depth=max(LISSA_CHECKPOINTS))
    info = {"problem": "NumPy logistic regression, n=5000, d=%d" % model.n_params,
            "cond": float(e[-1] / e[0]), "damping": 0.0, "reference": "direct"}
    return {"info": info, "rows": rows}


def bench_cntk(lissa_depth=2000):
    try:
        from influence.adapters.cntk import import_cntk
        import_cntk()
    except ImportError as e:
        return {"info": {"skipped": str(e).splitlines()[0]}, "rows": []}
    model, data, b, info = _mlp_problem()
    damping = 0.01
    H = HessianOperator(model, data, damping=damping)
    ref = solvers.cg(H, b, rtol=1e-9, maxiter=300)
    rows = [{"method": "cg", "setting": "reference rtol=1e-9", "n_hvp": ref.n_hvp, "seconds": ref.seconds,
             "error": 0.0, "residual": ref.residual}]
    _run_methods(model, data, b, damping, ref.x, rows, lissa_depth=lissa_depth)
    info.update({"problem": "CNTK 784-100-10 tanh MLP (float64), n=1000, d=%d" % model.n_params,
                 "damping": damping, "reference": "cg rtol=1e-9 (%d HVPs, converged=%s)"
                 % (ref.n_hvp, ref.converged)})
    return {"info": info, "rows": rows}


def _print(name, result):
    print("\n== %s" % name)
    for k, v in sorted(result["info"].items()):
        print("   %s: %s" % (k, v))
    if not result["rows"]:
        return
    print("   %-8s %-22s %7s %9s %10s %10s" % ("method", "setting", "n_hvp", "seconds", "rel.error", "residual"))
    for r in result["rows"]:
        print("   %-8s %-22s %7d %9.3f %10.2e %10s" % (r["method"], r["setting"], r["n_hvp"], r["seconds"],
                                                     r["error"], "" if r["residual"] is None
                                                     else "%.2e" % r["residual"]))


def main():
    results = {"numpy_logistic": bench_numpy(), "cntk_mlp": bench_cntk()}
    for name, result in results.items():
        _print(name, result)
    return results


if __name__ == "__main__":
    main()
