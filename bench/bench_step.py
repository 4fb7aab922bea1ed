"""Finite-difference step: relative error of H·v vs the closed form, as a function of the relative
step t (r = t·(1+‖w‖)/‖v‖), for the plain central difference and its Richardson extrapolant, on a
CNTK softmax regression (digits, L2 = 1e-3) in float32 and float64; and what the adaptive choice
picks. Numbers for docs/concepts-hvp.md and docs/performance.md.
"""
import numpy as np


def run(dtype, seed=0):
    import influence
    from influence.adapters.cntk import build_network
    from influence.curvature.hessian import central_difference, adaptive_difference
    x, y = influence.load_digits()
    x, y = x[:500], y[:500]
    model = influence.CNTKModel(build_network(64, 10, dtype=dtype, seed=seed), l2=1e-3)
    data = model.validate((x, y))
    # closed form from the NumPy reference model with the same weights
    idx = np.arange(model.n_params)
    parts = {q.name: a for q, a in zip(model.parameters, model._params.split(idx))}
    perm = np.concatenate([parts["W"].T.ravel(), parts["b"]])
    ref = influence.models.SoftmaxRegression(64, 10, l2=1e-3)
    ref.set_params(model.get_params().astype(np.float64)[perm])
    v = np.random.RandomState(seed).standard_normal(model.n_params)
    exact = np.empty(model.n_params)
    exact[perm] = ref.exact_hvp((x, y), v[perm]) - 1e-3 * v[perm]
    f = lambda: model.grad_sum(data) / len(x)
    rel = lambda a: float(np.linalg.norm(a - exact) / np.linalg.norm(exact))
    rows = []
    for k in range(0, 11):
        t = 4.0 ** -k
        d1 = central_difference(f, model, v, rel_step=t)
        d2 = central_difference(f, model, v, rel_step=t / 4)
        rows.append((t, rel(d1), rel((16 * d2 - d1) / 15)))
    value, step, (central, central_value) = adaptive_difference(f, model, v)
    return {"dtype": np.dtype(dtype).name, "grid": rows,
            "adaptive_richardson": (step.t, rel(value), step.n_evals),
            "adaptive_central": (central.t, rel(central_value))}


def main(argv=None):
    results = [run(np.float32), run(np.float64)]
    for r in results:
        print("%s: relative error of H·v vs closed form" % r["dtype"])
        print("  %10s %12s %12s" % ("t", "central", "richardson"))
        for t, c, rr in r["grid"]:
            print("  %10.2e %12.2e %12.2e" % (t, c, rr))
        t, e, n = r["adaptive_richardson"]
        tc, ec = r["adaptive_central"]
        print("  adaptive: richardson t=%.2e err=%.2e (%d gradients); central t=%.2e err=%.2e" % (t, e, n, tc, ec))
    return {"step": results}


if __name__ == "__main__":
    main()
