"""Finding mislabeled training digits by self-influence (CNTK softmax regression).

Flips 10% of the training labels to another random class, fits an L2 softmax regression with
``influence.fit``, and ranks the training points by self-influence s_i = g_iᵀH⁻¹g_i (exact: dense
H from d HVPs), by training loss, and at random. Prints, averaged over several seeds, the fraction
of the flipped labels found when checking the top 5/10/20/30% of each ranking.

    python examples/mislabeled_digits.py            # full size, 5 seeds
    python examples/mislabeled_digits.py --small    # reduced size for a quick run
"""
from __future__ import print_function

import argparse
import time

import numpy as np

import influence
from influence.adapters.cntk import CNTKModel, build_network

FRACTIONS = (0.05, 0.10, 0.20, 0.30)


def found(ranking, flipped, frac):
    top = ranking[:int(round(frac * ranking.size))]
    return np.isin(top, flipped).sum() / float(flipped.size)


def one_seed(seed, x, y, n_train, l2, method, k, dtype, timings):
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(x))[:n_train]
    xt, yt = x[idx], y[idx].copy()
    flipped = rng.choice(n_train, size=n_train // 10, replace=False)
    yt[flipped] = (yt[flipped] + rng.randint(1, 10, size=flipped.size)) % 10
    model = CNTKModel(build_network(64, 10, (), dtype=dtype, seed=seed), l2=l2)
    t = time.time()
    influence.fit(model, (xt, yt), gtol=1e-6)
    timings["fit"].append(time.time() - t)
    t = time.time()
    s = influence.self_influence(model, (xt, yt), method=method, k=k)
    timings["self_influence"].append(time.time() - t)
    losses = model.per_example_losses((xt, yt))
    rankings = {"self-influence": np.argsort(-s, kind="mergesort"),
                "training loss": np.argsort(-losses, kind="mergesort"),
                "random": rng.permutation(n_train)}
    return {name: [found(r, flipped, f) for f in FRACTIONS] for name, r in rankings.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--method", default="exact", choices=["exact", "lanczos"])
    p.add_argument("--k", type=int, default=100, help="rank for --method lanczos")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                   help="float64: the dense Hessian from float32 finite differences can be indefinite")
    p.add_argument("--small", action="store_true", help="reduced size (n-train 300, 2 seeds)")
    args = p.parse_args(argv)
    if args.small:
        args.n_train, args.seeds = 300, 2
    x, y = influence.load_digits()
    timings = {"fit": [], "self_influence": []}
    results = [one_seed(s, x, y, args.n_train, args.l2, args.method, args.k, args.dtype, timings)
               for s in range(args.seeds)]
    table = {name: np.mean([r[name] for r in results], axis=0) for name in results[0]}
    print("fraction of the %d flipped labels found in the top x%% (n=%d, %d seeds, %s)"
          % (args.n_train // 10, args.n_train, args.seeds, args.method))
    print("%-16s" % "ranking" + "".join("%8s" % ("top %d%%" % round(100 * f)) for f in FRACTIONS))
    for name, row in table.items():
        print("%-16s" % name + "".join("%8.3f" % v for v in row))
    for step, ts in timings.items():
        print("timing %-15s %.2f s per seed" % (step, np.mean(ts)))
    return {name: dict(zip(FRACTIONS, row)) for name, row in table.items()}


if __name__ == "__main__":
    main()
