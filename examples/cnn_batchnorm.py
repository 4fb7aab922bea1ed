"""Influence on a CNTK convolutional network with BatchNormalization and Dropout.

The network every CNTK tutorial builds — Convolution2D, BatchNormalization, ReLU, MaxPooling,
Dropout, Dense — is trained with CNTK's own Trainer on the bundled 8×8 digits shaped (1, 8, 8), saved
with Function.save and loaded with CNTKModel.load. The toolkit evaluates it in inference mode
(Dropout off, BatchNormalization by its running statistics, which it never updates), fits it to an
optimum of the L2-regularized objective, lists the most helpful/harmful training digits for a test
digit and checks the predictions against leave-one-out retraining.

    python examples/cnn_batchnorm.py            # 300 training digits
    python examples/cnn_batchnorm.py --small    # 40 digits

ReLU and max pooling make the loss piecewise smooth: L-BFGS stops near, not at, an optimum and the
finite-difference Hessian sees the kinks (docs/your-network.md); ``--smooth`` uses tanh and average
pooling instead, where leave-one-out agrees closely.
"""
import argparse
import os
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import influence  # noqa: E402
from influence.adapters.cntk import import_cntk  # noqa: E402


def build(C, smooth, dtype):
    act = C.tanh if smooth else C.relu
    pool = C.layers.AveragePooling if smooth else C.layers.MaxPooling
    with C.default_options(dtype=dtype):
        x = C.input_variable((1, 8, 8), dtype=dtype, name="features")
        h = C.layers.Convolution2D((3, 3), 4, pad=True, init=C.glorot_uniform(seed=1))(x)
        h = C.layers.BatchNormalization(map_rank=1)(h)
        h = pool((2, 2), strides=(2, 2))(act(h))
        h = C.layers.Dropout(0.3, seed=2)(h)
        return x, C.layers.Dense(10, init=C.glorot_uniform(seed=3))(h)


def train(C, x, z, images, labels, epochs):
    """CNTK's Trainer with Adam on softmax cross entropy, minibatches of 32 (as a user would)."""
    y = C.input_variable(10, dtype=z.output.dtype)
    loss = C.cross_entropy_with_softmax(z, y)
    learner = C.adam(z.parameters, C.learning_parameter_schedule(0.01), C.momentum_schedule(0.9))
    trainer = C.Trainer(z, (loss, C.classification_error(z, y)), [learner])
    onehot = np.eye(10, dtype=z.output.dtype)[labels]
    for _ in range(epochs):
        for a in range(0, len(labels), 32):
            trainer.train_minibatch({x: images[a:a + 32], y: onehot[a:a + 32]})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="40 training digits, 6 retrainings")
    p.add_argument("--smooth", action="store_true", help="tanh + average pooling instead of ReLU + max")
    args = p.parse_args(argv)
    C = import_cntk()
    n, k = (40, 6) if args.small else (300, 20)
    images, labels = influence.load_digits()
    images = images.reshape(-1, 1, 8, 8)
    train_x, train_y = images[:n], labels[:n]
    test = (images[1500:1501], labels[1500:1501])

    x, z = build(C, args.smooth, np.float64)
    train(C, x, z, train_x, train_y, epochs=5)
    path = os.path.join(tempfile.mkdtemp(prefix="cnn-example-"), "cnn.model")
    z.save(path)
    model = influence.CNTKModel.load(path, l2=0.01)
    print("loaded %s: %d parameters; inference mode rewrote %s" % (path, model.n_params, model.rewritten))

    # 1. As trained (a few Adam epochs, not at an optimum): the defaults take the Gauss-Newton matrix
    #    with an automatic damping, and say so. The scores predict the response to down-weighting
    #    points from these weights (docs/your-network.md), not a retraining from scratch.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        st = influence.s_test(model, (train_x, train_y), test)
    as_trained = influence.influence_scores(model, (train_x, train_y), test, s=st, check_optimum=False)
    print("as trained: %s; residual %.1e" % (st.curvature_reason, st.solutions[0].residual))
    order = np.argsort(influence.predicted_loss_change(as_trained, n))
    print("as trained: most helpful training digits %s" % [(int(i), int(train_y[i])) for i in order[::-1][:3]])

    # 2. Fitted to an optimum (L-BFGS in inference mode): the classical influence of the Hessian,
    #    checked against leave-one-out retraining.
    fit = influence.fit(model, (train_x, train_y), gtol=1e-8, maxiter=3000)
    print("fit (L-BFGS, inference mode): R = %.4f, |grad R| = %.2e, %d iterations"
          % (fit.loss, fit.grad_norm, fit.n_iter))
    damping = 0.01      # the ReLU kinks (and few examples per parameter) leave H nearly singular
    scores = influence.influence_scores(model, (train_x, train_y), test, damping=damping, check_optimum=False,
                                        curvature="hessian")
    change = influence.predicted_loss_change(scores, n)
    order = np.argsort(-change)
    print("test digit %d: most helpful training digits %s, most harmful %s"
          % (test[1][0], [(int(i), int(train_y[i])) for i in order[:3]],
             [(int(i), int(train_y[i])) for i in order[-3:]]))
    loo = influence.verify_loo(model, (train_x, train_y), test, k=k, damping=damping, scores=scores, gtol=1e-8)
    print("leave-one-out over %d removals: Pearson %.3f, Spearman %.3f" % (k, loo.pearson, loo.spearman))
    return {"scores": scores, "pearson": loo.pearson, "fit": fit, "as_trained": as_trained, "s_test": st}


if __name__ == "__main__":
    main()
