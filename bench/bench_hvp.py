"""HVP time ÷ gradient time on a 784-100-10 tanh MLP with 1000 examples (CNTK), and for minibatch
operators of 128 and 256 rows (what a stochastic solver multiplies).

A central difference costs at least two gradients, so the floor is 2.0; the goal for the operator's
steady state is ≤ 2.1 raw ``Function.grad`` calls (the one-time step calibration is reported
separately). "raw" is CNTK's own ``Function.grad`` on an already converted feed (no adapter code at
all); "gradient" is the adapter's ``grad_sum``. For comparison, a naive HVP that shifts weights with
``Parameter.value = ...`` and restores by adding ±r·v back is timed too. Timings are interleaved; the
median of ``--repeats`` runs is reported, and the ratio of the minima (less sensitive to other load).

Curvature: the Gauss-Newton product G·v (``influence.GaussNewtonOperator``: two forward passes for
J v, one forward + one backward pass for Jᵀ H_ℓ J v — about 1.67 gradients if a forward pass is a
third of a gradient) and the empirical Fisher F·v, next to the finite-difference Hessian product, each
÷ one raw CNTK gradient over the same data: on the float32 MLP above (n = 1,000) and on a CNN
(Conv→BN→ReLU→MaxPool→Dropout→Dense, 8 channels, d = 1,386) trained 8 epochs with CNTK's Trainer
and Adam on 600 8×8 digits.
"""
import argparse
import time

import numpy as np


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def naive_hvp(model, data, v, r):
    """The notebook's approach: ``p.value = p.value ± r·v`` with restore by adding back."""
    params = model.parameters
    parts = model._params.split(v)
    grad = lambda: model.grad_sum(data) / len(data.x)
    for p, d in zip(params, parts):
        p.value = p.value + r * d
    g_plus = grad()
    for p, d in zip(params, parts):
        p.value = p.value - 2 * r * d
    g_minus = grad()
    for p, d in zip(params, parts):
        p.value = p.value + r * d
    return (g_plus - g_minus) / (2 * r)


def run(dtype, n=1000, repeats=20, seed=0, minibatch_rows=(128, 256)):
    import influence
    from influence.adapters.cntk import build_network
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, 784)).astype(dtype)
    y = rng.randint(0, 10, n)
    model = influence.CNTKModel(build_network(784, 10, hidden=(100,), dtype=dtype, seed=seed), l2=0.01)
    data = model.validate((x, y))
    v = rng.standard_normal(model.n_params)
    op = influence.HessianOperator(model, data)
    t = time.perf_counter()
    op @ v                                           # one-time calibration
    calibration = time.perf_counter() - t
    n_cal = op.n_grad
    loss, params = model.loss_function, model.parameters

    def raw_grad(rows):
        feed = model._feed(rows)
        feed = {k: model._C.Value(batch=a) for k, a in feed.items()}   # converted once, outside the timing
        return lambda: loss.grad(feed, wrt=params)

    raw = raw_grad(data)
    grad = lambda: model.grad_sum(data)
    raw(), grad()                                    # warm-up
    times = {"raw": [], "grad": [], "hvp": [], "naive": []}
    before = model.get_params()
    grads_before = op.n_grad
    for _ in range(repeats):
        times["raw"].append(_median_time(raw, 1))
        times["grad"].append(_median_time(grad, 1))
        times["hvp"].append(_median_time(lambda: op @ v, 1))
        times["naive"].append(_median_time(lambda: naive_hvp(model, data, v, 1e-3), 1))
    grad_calls = (op.n_grad - grads_before) / float(repeats)
    model.set_params(before)                         # the naive version drifts; the operator never does
    med = {k: float(np.median(t)) for k, t in times.items()}
    low = {k: float(np.min(t)) for k, t in times.items()}
    minibatches = []
    for rows in minibatch_rows:
        idx = np.sort(rng.choice(n, rows, replace=False))
        raw_b = raw_grad(data.subset(idx))
        product = lambda: op.minibatch(idx).matvec(v)      # a new minibatch operator each product, as in lissa
        raw_b(), product()
        tr, th = [], []
        for _ in range(5 * repeats):
            tr.append(_median_time(raw_b, 1))
            th.append(_median_time(product, 1))
        minibatches.append({"rows": rows, "raw_s": float(np.median(tr)), "hvp_s": float(np.median(th)),
                            "ratio": float(np.median(th) / np.median(tr)),
                            "min_ratio": float(np.min(th) / np.min(tr))})
    return {"dtype": np.dtype(dtype).name, "n_params": model.n_params, "grad_s": med["grad"],
            "raw_s": med["raw"], "hvp_s": med["hvp"], "ratio": med["hvp"] / med["grad"],
            "raw_ratio": med["hvp"] / med["raw"], "min_raw_ratio": low["hvp"] / low["raw"],
            "grad_calls": grad_calls, "naive_ratio": med["naive"] / med["grad"], "calibration_s": calibration,
            "calibration_grads": n_cal, "calibration_ratio": calibration / med["grad"],
            "rel_step": op.rel_step, "minibatch": minibatches}


def _train_with_trainer(z, x, y, epochs, minibatch=32, lr=0.01, seed=0):
    """What a CNTK user does: Trainer + Adam on softmax cross entropy, a few epochs."""
    from influence.adapters.cntk import import_cntk
    C = import_cntk()
    dtype = np.dtype(z.output.dtype)
    k = int(np.prod(z.output.shape))
    lab = C.input_variable(k, dtype=dtype)
    loss = C.cross_entropy_with_softmax(z, lab)
    learner = C.adam(z.parameters, C.learning_parameter_schedule(lr), C.momentum_schedule(0.9))
    trainer = C.Trainer(z, (loss, C.classification_error(z, lab)), [learner])
    onehot = np.eye(k, dtype=dtype)[y]
    rng = np.random.RandomState(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for a in range(0, len(y), minibatch):
            rows = order[a:a + minibatch]
            trainer.train_minibatch({z.arguments[0]: x[rows], lab: onehot[rows]})
    return z


def _curvature_model(kind, seed=0):
    import influence
    from influence.adapters.cntk import build_cnn, build_network
    if kind == "mlp":
        rng = np.random.RandomState(seed)
        x = rng.standard_normal((1000, 784)).astype(np.float32)
        y = rng.randint(0, 10, 1000)
        model = influence.CNTKModel(build_network(784, 10, hidden=(100,), dtype=np.float32, seed=seed), l2=0.01)
        return "784-100-10 tanh MLP, float32, n=1000", model, (x, y)
    x, y = influence.load_digits()
    x, y = x[:600].reshape(-1, 1, 8, 8).astype(np.float32), y[:600]
    z = build_cnn((1, 8, 8), 10, channels=(8,), dropout=0.3, dtype=np.float32, seed=seed)
    _train_with_trainer(z, x, y, epochs=8)
    return "CNN conv8-BN-ReLU-maxpool-dropout-dense, Trainer+Adam 8 epochs, float32, n=600", \
        influence.CNTKModel(z, l2=0.01), (x, y)


def run_curvature(kind, repeats=20, seed=0):
    """G·v, F·v and H·v ÷ one raw CNTK gradient over the same data (medians of interleaved runs)."""
    import influence
    name, model, data = _curvature_model(kind, seed)
    data = model.validate(data)
    v = np.random.RandomState(seed + 1).standard_normal(model.n_params)
    ops = {"hessian": influence.HessianOperator(model, data),
           "gauss_newton": influence.GaussNewtonOperator(model, data),
           "fisher": influence.FisherOperator(model, data)}
    for op in ops.values():
        op @ v                                        # calibration, outside the timing
    loss, params = model.loss_function, model.parameters
    feed = {k: model._C.Value(batch=a) for k, a in model._feed(data).items()}
    raw = lambda: loss.grad(feed, wrt=params)         # noqa: E731
    out_fn = model._inference_output
    out_feed = {k: a for k, a in feed.items() if any(k.uid == b.uid for b in out_fn.arguments)}
    forward = lambda: out_fn.forward(out_feed, [out_fn.output])     # noqa: E731
    raw(), forward()
    times = {k: [] for k in ["raw", "forward"] + list(ops)}
    counts = {k: (op.n_hvp, getattr(op, "n_forward", 0), getattr(op, "n_backward", 0)) for k, op in ops.items()}
    for _ in range(repeats):
        times["raw"].append(_median_time(raw, 1))
        times["forward"].append(_median_time(forward, 1))
        for k, op in ops.items():
            times[k].append(_median_time(lambda: op @ v, 1))
    med = {k: float(np.median(t)) for k, t in times.items()}
    low = {k: float(np.min(t)) for k, t in times.items()}
    out = {"model": name, "kind": kind, "n_params": model.n_params, "n": len(data), "raw_s": med["raw"],
           "forward_ratio": med["forward"] / med["raw"]}
    for k, op in ops.items():
        n0, f0, b0 = counts[k]
        out[k] = {"s": med[k], "ratio": med[k] / med["raw"], "min_ratio": low[k] / low["raw"],
                  "forward_passes": (getattr(op, "n_forward", 0) - f0) / float(op.n_hvp - n0),
                  "rel_step": op.rel_step}
    out["gauss_newton"]["damping_auto"] = influence.GaussNewtonOperator(model, data, rel_step=ops[
        "gauss_newton"].rel_step, damping="auto").damping
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only-curvature", action="store_true", help="only the curvature comparison")
    args = parser.parse_args(argv)
    curvature = [run_curvature("mlp", args.repeats), run_curvature("cnn", args.repeats)]
    print("Curvature products ÷ one raw CNTK gradient over the same data (median of %d; ratio of minima)"
          % args.repeats)
    print("%-78s %6s %8s %8s %14s %14s %14s" % ("model", "d", "raw ms", "fwd/raw", "G·v/raw", "F·v/raw",
                                                 "H·v/raw"))
    for c in curvature:
        print("%-78s %6d %8.2f %8.2f %6.2f (%5.2f) %6.2f (%5.2f) %6.2f (%5.2f)" % (
            c["model"], c["n_params"], 1e3 * c["raw_s"], c["forward_ratio"], c["gauss_newton"]["ratio"],
            c["gauss_newton"]["min_ratio"],
            c["fisher"]["ratio"], c["fisher"]["min_ratio"], c["hessian"]["ratio"], c["hessian"]["min_ratio"]))
    for c in curvature:
        print("%s: damping='auto' for G = %.3g; G rel step %.2g" % (c["kind"], c["gauss_newton"]["damping_auto"],
                                                                   c["gauss_newton"]["rel_step"]))
    if args.only_curvature:
        return {"curvature": curvature}
    rows = [run(np.float32, repeats=args.repeats), run(np.float64, repeats=args.repeats)]
    print("HVP ÷ gradient, 784-100-10 tanh MLP, 1000 examples (median of %d)" % args.repeats)
    print("%-8s %8s %8s %8s %9s %9s %8s %10s %8s %8s" % ("dtype", "raw ms", "grad ms", "HVP ms", "HVP/raw",
                                                         "min-ratio", "grads", "naive/grad", "calib.", "rel step"))
    for r in rows:
        print("%-8s %8.2f %8.2f %8.2f %9.2f %9.2f %8.1f %10.2f %8d %8.2g" % (
            r["dtype"], 1e3 * r["raw_s"], 1e3 * r["grad_s"], 1e3 * r["hvp_s"], r["raw_ratio"],
            r["min_raw_ratio"], r["grad_calls"], r["naive_ratio"], r["calibration_grads"], r["rel_step"]))
    for r in rows:
        for m in r["minibatch"]:
            print("%-8s minibatch %d rows: raw %.2f ms, HVP %.2f ms, HVP/raw %.2f (ratio of minima %.2f)"
                  % (r["dtype"], m["rows"], 1e3 * m["raw_s"], 1e3 * m["hvp_s"], m["ratio"], m["min_ratio"]))
    return {"hvp": rows, "curvature": curvature}


if __name__ == "__main__":
    main()
