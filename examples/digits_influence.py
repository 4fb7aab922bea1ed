"""Which training digits helped or hurt a misclassified test digit? (softmax regression and an MLP in CNTK)

Fits each model to an L2-regularized optimum with ``influence.fit``, scores every training digit
by I_up,loss for one misclassified test digit, prints the most helpful / most harmful training digits
with the predicted change of the test loss if each were removed (Δ = −I_up,loss/n; positive = the
digit helped), and checks the predictions by actually retraining without some of them
(``influence.verify_loo``). Runs offline on the bundled digits.

    python examples/digits_influence.py            # full size (~1-2 min)
    python examples/digits_influence.py --small    # reduced size (a few seconds)
"""
from __future__ import print_function

import argparse
import time

import numpy as np

import influence
from influence.adapters.cntk import CNTKModel, build_network


def _timed(label, f, *args, **kwargs):
    t = time.time()
    out = f(*args, **kwargs)
    print("  [%6.2f s] %s" % (time.time() - t, label))
    return out


def run_model(name, hidden, x_tr, y_tr, x_te, y_te, l2, k, dtype):
    print("\n== %s (hidden=%s, l2=%g, %s) ==" % (name, hidden, l2, np.dtype(dtype).name))
    model = CNTKModel(build_network(64, 10, hidden, "tanh", dtype=dtype, seed=0), l2=l2)
    res = _timed("fit (L-BFGS)", influence.fit, model, (x_tr, y_tr), gtol=1e-7)
    print("  loss %.4f, ‖∇R‖ = %.2e after %d iterations" % (res.loss, res.grad_norm, res.n_iter))
    pred = np.argmax(model.predict(x_te), axis=1)
    print("  test accuracy %.3f" % np.mean(pred == y_te))
    wrong = np.flatnonzero(pred != y_te)
    j = int(wrong[0]) if wrong.size else 0
    test = (x_te[j:j + 1], y_te[j:j + 1])
    print("  test digit #%d: label %d, predicted %d" % (j, y_te[j], pred[j]))
    scores = _timed("influence_scores (cg + forward differences)", influence.influence_scores,
                    model, (x_tr, y_tr), test, solver="cg", scoring="forward")
    delta = influence.predicted_loss_change(scores, len(x_tr))
    order = np.argsort(delta)
    print("  most helpful (removing raises the test loss):")
    for i in order[::-1][:5]:
        print("    train #%4d label %d  Δ test loss if removed %+.5f" % (i, y_tr[i], delta[i]))
    print("  most harmful (removing lowers the test loss):")
    for i in order[:5]:
        print("    train #%4d label %d  Δ test loss if removed %+.5f" % (i, y_tr[i], delta[i]))
    loo = _timed("verify_loo (k=%d retrainings)" % k, influence.verify_loo, model, (x_tr, y_tr), test,
                 k=k, scores=scores)
    print("  leave-one-out: Pearson %.4f, Spearman %.4f" % (loo.pearson, loo.spearman))
    return {"pearson": loo.pearson, "spearman": loo.spearman, "grad_norm": res.grad_norm,
            "test_index": j}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=1200, help="training digits (rest is test)")
    p.add_argument("--k", type=int, default=20, help="leave-one-out retrainings per model")
    p.add_argument("--small", action="store_true", help="reduced size for a quick run (n-train 200, k 4)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = p.parse_args(argv)
    if args.small:
        args.n_train, args.k = 200, 4
    x, y = influence.load_digits()
    rng = np.random.RandomState(0)
    perm = rng.permutation(len(x))
    tr, te = perm[:args.n_train], perm[args.n_train:]
    print("digits: %d train, %d test" % (tr.size, te.size))
    out = {}
    out["softmax"] = run_model("softmax regression", (), x[tr], y[tr], x[te], y[te], 1e-2, args.k, args.dtype)
    out["mlp"] = run_model("MLP 64-32-10 tanh", (32,), x[tr], y[tr], x[te], y[te], 1e-2, args.k, args.dtype)
    return out


if __name__ == "__main__":
    main()
