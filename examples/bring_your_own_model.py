"""Bring your own CNTK model: build it your way, train it with CNTK, save it, then explain it.

1. A network written with plain ``cntk.layers`` (a Sequential with its own names) and a loss Function
   with its own one-hot label input, as you would write it without this package.
2. Trained briefly with CNTK's own Trainer and Adam learner, then saved with ``Function.save``
   (the network output, and the loss Function).
3. Loaded with ``influence.CNTKModel.load`` in the two ways it accepts:
   a. the network OUTPUT plus a named loss:  ``CNTKModel.load(path, loss="cross_entropy", l2=...)``
      (integer labels; the adapter creates its own label input);
   b. the LOSS Function itself:  ``CNTKModel.load(path, loss=None, features="pixels", labels="digit",
      l2=...)`` (labels fed as they are, here one-hot rows).
4. Influence needs the weights at an optimum of the training objective (1/n)Σℓ + (l2/2)‖w‖²; a short
   SGD run is not there yet, so ``influence.fit`` (full-batch L-BFGS) finishes the job.
5. Scores from Python: ``influence.influence_scores`` for a test digit, ``influence.self_influence``
   over the training set; both forms give the same answers.

    python examples/bring_your_own_model.py           # ~20 s
    python examples/bring_your_own_model.py --small   # fewer digits
"""
from __future__ import print_function

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import influence  # noqa: E402
from influence.adapters.cntk import import_cntk  # noqa: E402
from influence.evaluate.leave_one_out import spearman  # noqa: E402

L2 = 1e-2


def build(C, hidden):
    """Your network, your names. float64: finite-difference HVPs are ~1e4 times more accurate than in
    float32 (float32 works too, with tolerances around 1e-4)."""
    pixels = C.input_variable(64, dtype=np.float64, name="pixels")
    digit = C.input_variable(10, dtype=np.float64, name="digit")          # one-hot labels
    with C.default_options(dtype=np.float64):
        net = C.layers.Sequential([
            C.layers.Dense(hidden, activation=C.tanh, init=C.glorot_uniform(seed=1), name="my_hidden"),
            C.layers.Dense(10, activation=None, init=C.glorot_uniform(seed=2), name="my_logits"),
        ], name="my_net")
    logits = net(pixels)
    my_loss = C.cross_entropy_with_softmax(logits, digit, name="my_loss")
    return pixels, digit, logits, my_loss


def train_with_cntk(C, pixels, digit, logits, my_loss, x, onehot, epochs, seed=0):
    """CNTK's own training loop: Trainer + Adam, minibatches of 32."""
    error = C.classification_error(logits, digit)
    learner = C.adam(logits.parameters, lr=C.learning_parameter_schedule(0.01), momentum=0.9,
                     l2_regularization_weight=0.0)
    trainer = C.Trainer(logits, (my_loss, error), [learner])
    rng = np.random.RandomState(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for start in range(0, len(x), 32):
            b = perm[start:start + 32]
            trainer.train_minibatch({pixels: x[b], digit: onehot[b]})
    return trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--self-method", default="exact", choices=["exact", "lanczos"],
                   help="self_influence method (exact: dense Hessian from d HVPs; lanczos: rank 20)")
    p.add_argument("--small", action="store_true", help="200 training digits, 8 hidden units, lanczos")
    p.add_argument("--keep", metavar="DIR", help="save the model files here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.small:
        args.n_train, args.hidden, args.self_method = 200, 8, "lanczos"
    self_options = {"method": args.self_method}
    if args.self_method == "lanczos":
        self_options["k"] = 20
    C = import_cntk()
    x, y = influence.load_digits()
    perm = np.random.RandomState(0).permutation(len(x))
    tr, te = perm[:args.n_train], perm[args.n_train:]
    train, test = (x[tr], y[tr]), (x[te], y[te])
    onehot = np.eye(10)[y]

    # 1-2. your model, trained and saved your way
    pixels, digit, logits, my_loss = build(C, args.hidden)
    t = time.time()
    trainer = train_with_cntk(C, pixels, digit, logits, my_loss, x[tr], onehot[tr], args.epochs)
    print("CNTK Trainer + Adam, %d epochs: last minibatch loss %.3f (%.1f s)"
          % (args.epochs, trainer.previous_minibatch_loss_average, time.time() - t))
    folder = args.keep or tempfile.mkdtemp(prefix="byom-")
    if not os.path.isdir(folder):
        os.makedirs(folder)
    net_path, loss_path = os.path.join(folder, "my_net.model"), os.path.join(folder, "my_loss.model")
    logits.save(net_path)
    my_loss.save(loss_path)
    print("saved %s (network output) and %s (loss Function)" % (net_path, loss_path))

    try:
        # 3a. the network output + a named loss; integer labels
        model = influence.CNTKModel.load(net_path, loss="cross_entropy", l2=L2)
        print("\n(a) CNTKModel.load(%r, loss='cross_entropy', l2=%g): %d parameters, input %r"
              % (os.path.basename(net_path), L2, model.n_params, model.features.name))
        opt = influence.check_optimum(model, train)
        print("    after the Trainer: ‖∇R‖ = %.2e, at an optimum: %s" % (opt.grad_norm, opt.ok))
        # 4. finish the optimisation of the regularized objective
        fit = influence.fit(model, train, gtol=1e-7)
        print("    influence.fit (L-BFGS): %d iterations, ‖∇R‖ = %.2e, converged %s"
              % (fit.n_iter, fit.grad_norm, fit.converged))
        pred = np.argmax(model.predict(test[0]), axis=1)
        wrong = np.flatnonzero(pred != test[1])
        j = int(wrong[0]) if wrong.size else 0
        point = (test[0][j:j + 1], test[1][j:j + 1])
        print("    test accuracy %.3f; explaining test digit #%d (label %d, predicted %d)"
              % (np.mean(pred == test[1]), j, test[1][j], pred[j]))

        # 5. scores from Python
        t = time.time()
        scores = influence.influence_scores(model, train, point, solver="cg")
        delta = influence.predicted_loss_change(scores, len(tr))
        order = np.argsort(-delta, kind="mergesort")
        print("    influence_scores (cg, forward scoring) in %.1f s" % (time.time() - t))
        print("    most helpful: %s" % ", ".join("#%d (label %d) %+.2e" % (i, train[1][i], delta[i])
                                                for i in order[:5]))
        print("    most harmful: %s" % ", ".join("#%d (label %d) %+.2e" % (i, train[1][i], delta[i])
                                                for i in order[::-1][:5]))
        t = time.time()
        selfi = influence.self_influence(model, train, **self_options)
        top = np.argsort(-selfi, kind="mergesort")[:5]
        print("    self_influence (%s) in %.1f s; highest (most likely mislabeled): %s"
              % (args.self_method, time.time() - t, ", ".join("#%d (label %d)" % (i, train[1][i]) for i in top)))

        # 3b. the loss Function itself: name its inputs; one-hot labels as the loss expects them
        model_b = influence.CNTKModel.load(loss_path, loss=None, features="pixels", labels="digit", l2=L2)
        how = "CNTKModel.load(%r, loss=None, features='pixels', labels='digit', l2=%g)"
        train_b = (x[tr], onehot[tr])
        fit_b = influence.fit(model_b, train_b, gtol=1e-7)
        print("\n(b) %s: labels input %r, fit ‖∇R‖ = %.2e"
              % (how % (os.path.basename(loss_path), L2), model_b.labels.name, fit_b.grad_norm))
        scores_b = influence.influence_scores(model_b, train_b, (point[0], onehot[te][j:j + 1]), solver="cg")
        selfi_b = influence.self_influence(model_b, train_b, **self_options)
        agree = {"scores_spearman": spearman(scores, scores_b), "self_spearman": spearman(selfi, selfi_b),
                 "scores_rel_diff": float(np.linalg.norm(scores - scores_b) / np.linalg.norm(scores))}
        print("    same objective, same answers: influence Spearman %.4f (relative difference %.1e), "
              "self-influence Spearman %.4f" % (agree["scores_spearman"], agree["scores_rel_diff"],
                                                agree["self_spearman"]))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {"n_params": model.n_params, "test_index": j, "fit": fit, "scores": scores, "self_influence": selfi,
            "agreement": agree}


if __name__ == "__main__":
    main()
