"""Benchmark: EK-FAC (issue 20) on the digits MLP — as a preconditioner of exact cg, and alone.

Digits (1,797 8×8 images, the split of bench_many_tests.py: 1,200 train, the rest test), MLP 64-32-10
tanh (d = 2,410), float64, l2 = 1e-3, fitted by ``influence.fit`` (L-BFGS, gtol 1e-7). One
HessianOperator (damping 0, step calibrated once) for every solve.

- **Preconditioning**: for each of ``--tests`` test points, s_test = H⁻¹ ∇ℓ(test) by plain cg and by
  cg preconditioned with EK-FAC (``influence.cg(H, b, preconditioner=ekfac)``), both to the default
  rtol (1e-6, on the unpreconditioned residual): Hessian-vector products spent, wall seconds, and
  ‖x_pre − x_plain‖/‖x_plain‖. EK-FAC is fitted with sampled labels (the Gauss-Newton matrix) and
  each listed damping.
- **EK-FAC alone**: the influence scores gᵢᵀ s of every training point with s = EK-FAC⁻¹ ∇ℓ(test)
  against those of the exact s (plain cg above): Pearson and Spearman per test point.
- Cost: seconds to fit the factors (2 passes of batched per-example gradients), seconds per query.
- **CNN** (the issue's 137k-parameter network: Conv 16 → max-pool → Conv 32 → max-pool → Dense 64 →
  Dense 10, ReLU, float32, random Glorot weights) on ``--cnn-rows`` random 3×32×32 images with random
  labels: seconds to fit EK-FAC (sampled labels, damping "auto") and to answer 1 and 100 queries
  (per-example test gradients included). Skipped with ``--quick`` or ``--cnn-rows 0``.
- **Trained CNN** (examples/cnn_batchnorm.py's network: Convolution2D → BatchNormalization → ReLU →
  MaxPooling → Dropout → Dense, trained on ``--trained-rows`` digits for 8 Adam epochs with CNTK's
  Trainer, not at an optimum; ``--trained-dtype``, default float64): the Gauss-Newton matrix G with damping "auto"
  (λ = 0.1 × its mean eigenvalue), ``--trained-tests`` test points. Plain cg and cg preconditioned
  with EK-FAC (sampled labels, fitted at the same λ) to the default rtol on the true residual of
  (G + λI)x = b: products and the ratio. EK-FAC alone (same λ) against the exact cg solution: Pearson
  and Spearman of the scores over the training points, per test point. Why the preconditioner does
  not do better: from the dense G (d products), the condition number of G + λI, of the system
  preconditioned by EK-FAC, and of the system preconditioned by the EXACT per-layer blocks of G + λI
  (the best any block-diagonal approximation — K-FAC, EK-FAC or exact per-layer — can do; cg's products
  grow like the square root of the condition number), and the scores of that exact block-diagonal
  inverse used alone. Skipped with ``--trained-rows 0``.

    python bench/bench_ekfac.py            # 4 test points + the CNN at n = 10,000 (~10 min on 2 shared cores)
    python bench/bench_ekfac.py --quick    # 2 test points, no CNN
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
from influence.evaluate.leave_one_out import spearman  # noqa: E402

L2 = 1e-3
#: EK-FAC settings compared: (labels, damping, strategy).
SETTINGS = [("sampled", 0.0, "ekfac"), ("sampled", "auto", "ekfac"), ("true", 0.0, "ekfac"),
            ("sampled", 0.0, "kfac")]


def digits_mlp(n_train=1200):
    x, y = influence.load_digits()
    perm = np.random.RandomState(0).permutation(len(x))
    tr, te = perm[:n_train], perm[n_train:]
    model = CNTKModel(build_network(64, 10, (32,), "tanh", dtype=np.float64, seed=0), l2=L2)
    fit = influence.fit(model, (x[tr], y[tr]), gtol=1e-7)
    return model, (x[tr], y[tr]), (x[te], y[te]), fit


def build_issue_cnn(seed=0):
    """Conv 16 → max-pool → Conv 32 → max-pool → Dense 64 → Dense 10 (ReLU, float32, 3×32×32 inputs)."""
    from influence.adapters.cntk import import_cntk
    C = import_cntk()
    with C.default_options(dtype=np.float32):
        x = C.input_variable((3, 32, 32), dtype=np.float32, name="features")
        h = C.layers.Convolution2D((3, 3), 16, pad=True, activation=C.relu, init=C.glorot_uniform(seed=seed))(x)
        h = C.layers.MaxPooling((2, 2), strides=(2, 2))(h)
        h = C.layers.Convolution2D((3, 3), 32, pad=True, activation=C.relu, init=C.glorot_uniform(seed=seed + 1))(h)
        h = C.layers.MaxPooling((2, 2), strides=(2, 2))(h)
        h = C.layers.Dense(64, activation=C.relu, init=C.glorot_uniform(seed=seed + 2))(h)
        return C.layers.Dense(10, init=C.glorot_uniform(seed=seed + 3))(h)


def bench_cnn(n):
    rng = np.random.RandomState(0)
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    y = rng.randint(0, 10, n)
    xt = rng.standard_normal((100, 3, 32, 32)).astype(np.float32)
    yt = rng.randint(0, 10, 100)
    model = CNTKModel(build_issue_cnn(), l2=1e-3)
    load = os.getloadavg()
    t = time.time()
    ek = influence.EKFAC(model, (x, y), random_state=0)
    fit_s = time.time() - t
    out = {"n": n, "d": int(model.n_params), "fit_seconds": fit_s, "plan": str(ek),
           "load_average_before": list(load)}
    for m in (1, 100):
        t = time.time()
        g = model.per_example_grads((xt[:m], yt[:m]))
        ek.solve(g)
        out["query_seconds_%d" % m] = time.time() - t
    out["load_average_after"] = list(os.getloadavg())
    print("CNN d=%d n=%d: EK-FAC fit %.1f s; 1 query %.2f s, 100 queries %.2f s (%s)"
          % (out["d"], n, fit_s, out["query_seconds_1"], out["query_seconds_100"], out["plan"]))
    return out


def bench_trained_cnn(n, tests, dtype):
    sys.path.insert(0, os.path.join(HERE, "..", "examples"))
    import cnn_batchnorm
    from influence.adapters.cntk import import_cntk
    C = import_cntk()
    images, labels = influence.load_digits()
    images = images.reshape(-1, 1, 8, 8).astype(dtype)
    x, z = cnn_batchnorm.build(C, False, dtype)
    cnn_batchnorm.train(C, x, z, images[:n], labels[:n], 8)
    model = CNTKModel(z)
    train = (images[:n], labels[:n])
    test = (images[1500:1500 + tests], labels[1500:1500 + tests])
    load = os.getloadavg()
    t = time.time()
    G = influence.GaussNewtonOperator(model, train, damping="auto")
    out = {"n": n, "d": int(model.n_params), "dtype": np.dtype(dtype).name, "tests": tests,
           "damping": float(G.damping), "grad_norm": float(np.linalg.norm(model.grad(train))),
           "load_average_before": list(load), "operator_seconds": time.time() - t}
    grads_test = model.per_example_grads(test)
    grads_train = model.per_example_grads(train)
    t = time.time()
    ek = influence.EKFAC(model, train, damping=float(G.damping), random_state=0)
    out["fit_seconds"] = time.time() - t
    out["plan"] = str(ek)
    alone = ek.solve(grads_test)
    rows, exact_solutions = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j, b in enumerate(grads_test):
            t = time.time()
            plain = influence.cg(G, b)
            t_plain = time.time() - t
            t = time.time()
            pre = influence.cg(G, b, preconditioner=ek)
            t_pre = time.time() - t
            s_exact, s_alone = grads_train @ plain.x, grads_train @ alone[j]
            exact_solutions.append(plain.x)
            rows.append({"plain_products": plain.n_hvp, "plain_converged": bool(plain.converged),
                         "plain_residual": plain.residual, "plain_seconds": t_plain,
                         "pre_products": pre.n_hvp, "pre_converged": bool(pre.converged),
                         "pre_residual": pre.residual, "pre_seconds": t_pre,
                         "rel_diff": float(np.linalg.norm(pre.x - plain.x) / np.linalg.norm(plain.x)),
                         "alone_pearson": _pearson(s_alone, s_exact),
                         "alone_spearman": float(spearman(s_alone, s_exact))})
            print("trained CNN test %d: cg products plain %d (converged %s), preconditioned %d (converged %s); "
                  "EK-FAC alone pearson %.3f spearman %.3f" % (j, plain.n_hvp, plain.converged, pre.n_hvp,
                                                                pre.converged, rows[-1]["alone_pearson"],
                                                                rows[-1]["alone_spearman"]))
    out["tests_detail"] = rows
    out.update(_block_analysis(model, G, ek, grads_train, grads_test, exact_solutions))
    out["n_hvp_ratio"] = float(sum(r["pre_products"] for r in rows) / sum(r["plain_products"] for r in rows))
    out["load_average_after"] = list(os.getloadavg())
    print("trained CNN d=%d n=%d %s, G damping auto = %.3g: preconditioned / plain cg products = %.3f; EK-FAC "
          "alone spearman %.3f-%.3f, pearson %.3f-%.3f (fit %.1f s)"
          % (out["d"], n, out["dtype"], out["damping"], out["n_hvp_ratio"],
             min(r["alone_spearman"] for r in rows), max(r["alone_spearman"] for r in rows),
             min(r["alone_pearson"] for r in rows), max(r["alone_pearson"] for r in rows), out["fit_seconds"]))
    if "condition" in out:
        c = out["condition"]
        print("  condition numbers: G + λI %.3g; preconditioned by EK-FAC %.3g (%d sampled labels per row: %.3g); by "
              "the exact per-layer blocks %.3g. The exact per-layer blocks alone: spearman %.3f-%.3f, pearson %.3f-%.3f"
              % (c["plain"], c["ekfac"], LABEL_REPEATS, c["ekfac_%d_labels_per_row" % LABEL_REPEATS],
                 c["exact_blocks"], min(out["blocks_alone_spearman"]),
                 max(out["blocks_alone_spearman"]), min(out["blocks_alone_pearson"]),
                 max(out["blocks_alone_pearson"])))
    return out


#: Sampled labels per training row of the EK-FAC fitted to test Monte Carlo noise.
LABEL_REPEATS = 10
#: The dense analysis of the trained CNN runs up to this many parameters (d products and d×d matrices).
DENSE_MAX_PARAMS = 3000


def _block_analysis(model, G, ek, grads_train, grads_test, exact):
    """Condition numbers of G + λI unpreconditioned, preconditioned by EK-FAC and by the exact
    per-layer diagonal blocks of G + λI (every parameter in the block of its layer, the rest in one
    block), and the scores of that exact block-diagonal inverse against the exact ones."""
    d = int(model.n_params)
    if d > DENSE_MAX_PARAMS:
        return {}
    A = np.column_stack([G.matvec(e) for e in np.eye(d)])
    A = 0.5 * (A + A.T)
    layers, others = model.kfac_plan()
    blocks = [np.asarray(L.indices) for L in layers]
    rest = np.setdiff1d(np.arange(d), np.concatenate(blocks) if blocks else [])
    if rest.size:
        blocks.append(rest)
    B = np.zeros_like(A)
    for ix in blocks:
        B[np.ix_(ix, ix)] = A[np.ix_(ix, ix)]

    def condition(inverse_sqrt):
        e = np.linalg.eigvalsh(inverse_sqrt @ A @ inverse_sqrt.T)
        return float(e.max() / e.min())

    def inverse_sqrt(M):
        w, V = np.linalg.eigh(0.5 * (M + M.T))
        return (V / np.sqrt(w)) @ V.T
    cond = {"plain": condition(np.eye(d)), "ekfac": condition(inverse_sqrt(np.linalg.inv(ek.solve(np.eye(d))))),
            "exact_blocks": condition(inverse_sqrt(B))}
    # Monte Carlo noise of the sampled labels? The rows repeated LABEL_REPEATS times, each copy with its
    # own draw: the factors then average that many labels per example.
    x, y = ek.data.x, ek.data.y
    repeated = (np.concatenate([x] * LABEL_REPEATS), np.concatenate([y] * LABEL_REPEATS))
    ek_many = influence.EKFAC(model, repeated, damping=ek.damping, random_state=0)
    cond["ekfac_%d_labels_per_row" % LABEL_REPEATS] = condition(inverse_sqrt(np.linalg.inv(ek_many.solve(np.eye(d)))))
    alone = np.linalg.solve(B, grads_test.T).T
    sp, pe = [], []
    for j in range(len(grads_test)):
        s_exact, s_blocks = grads_train @ exact[j], grads_train @ alone[j]
        sp.append(float(spearman(s_blocks, s_exact)))
        pe.append(_pearson(s_blocks, s_exact))
    return {"condition": cond, "blocks_alone_spearman": sp, "blocks_alone_pearson": pe,
            "block_sizes": [int(len(ix)) for ix in blocks]}


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 test points")
    p.add_argument("--tests", type=int, default=4, help="test points (default 4)")
    p.add_argument("--cnn-rows", type=int, default=10000, help="rows of the CNN part (default 10,000; 0: skip)")
    p.add_argument("--trained-rows", type=int, default=600,
                   help="digits of the trained-CNN part (default 600; 0: skip)")
    p.add_argument("--trained-tests", type=int, default=10, help="test points of the trained-CNN part (default 10)")
    p.add_argument("--trained-dtype", choices=("float32", "float64"), default="float64",
                   help="dtype of the trained CNN (default float64: in float32 a product carries ~1e-4 relative "
                        "rounding and plain cg stopped unconverged at its 302-product limit, so there is no "
                        "count to compare)")
    p.add_argument("--only-trained", action="store_true", help="run only the trained-CNN part")
    args = p.parse_args(argv)
    if args.only_trained:
        return {"trained_cnn": bench_trained_cnn(args.trained_rows, args.trained_tests, np.dtype(args.trained_dtype))}
    m = 2 if args.quick else args.tests
    load_before = os.getloadavg()
    model, train, test, fit = digits_mlp()
    H = influence.HessianOperator(model, train)
    grads_test = model.per_example_grads((test[0][:m], test[1][:m]))
    grads_train = model.per_example_grads(train)
    print("digits MLP 64-32-10 tanh float64: d=%d, n=%d, l2=%g, fit ‖∇R‖=%.2e"
          % (model.n_params, len(train[0]), L2, fit.grad_norm))
    plain = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in grads_test:
            t = time.time()
            sol = influence.cg(H, b)
            plain.append({"n_hvp": sol.n_hvp, "seconds": time.time() - t, "residual": sol.residual,
                          "converged": bool(sol.converged), "x": sol.x})
    print("plain cg: products %s" % [r["n_hvp"] for r in plain])
    settings = []
    for labels, damping, strategy in SETTINGS:
        t = time.time()
        ek = influence.EKFAC(model, train, damping=damping, labels=labels, strategy=strategy, random_state=0)
        fit_s = time.time() - t
        row = {"labels": labels, "damping": damping, "strategy": strategy, "fit_seconds": fit_s,
               "block_damping": [float(v) for v in ek.block_damping], "tests": []}
        t = time.time()
        alone = ek.solve(grads_test)
        row["query_seconds_all"] = time.time() - t
        for j, b in enumerate(grads_test):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.time()
                sol = influence.cg(H, b, preconditioner=ek)
                sec = time.time() - t
            exact = plain[j]["x"]
            s_exact, s_alone = grads_train @ exact, grads_train @ alone[j]
            row["tests"].append({"n_hvp": sol.n_hvp, "seconds": sec, "residual": sol.residual,
                                 "converged": bool(sol.converged),
                                 "rel_diff": float(np.linalg.norm(sol.x - exact) / np.linalg.norm(exact)),
                                 "pearson": _pearson(s_alone, s_exact), "spearman": float(spearman(s_alone, s_exact))})
        row["n_hvp_ratio"] = float(sum(r["n_hvp"] for r in row["tests"]) / sum(r["n_hvp"] for r in plain))
        settings.append(row)
        print("EK-FAC %s labels=%s damping=%s: fit %.1f s; preconditioned cg products %s (ratio %.3f); alone "
              "pearson %s spearman %s" % (strategy, labels, damping, fit_s, [r["n_hvp"] for r in row["tests"]],
                                          row["n_hvp_ratio"], ["%.3f" % r["pearson"] for r in row["tests"]],
                                          ["%.3f" % r["spearman"] for r in row["tests"]]))
    for r in plain:
        r.pop("x")
    out = {"d": int(model.n_params), "n": len(train[0]), "l2": L2, "tests": m, "fit_grad_norm": fit.grad_norm,
           "plain": plain, "settings": settings, "load_average_before": list(load_before),
           "load_average_after": list(os.getloadavg()), "cores": os.cpu_count()}
    if args.cnn_rows > 0 and not args.quick:
        out["cnn"] = bench_cnn(args.cnn_rows)
    if args.trained_rows > 0:
        out["trained_cnn"] = bench_trained_cnn(args.trained_rows, 2 if args.quick else args.trained_tests,
                                               np.dtype(args.trained_dtype))
    return out


if __name__ == "__main__":
    main()
