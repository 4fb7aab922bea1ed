"""Networks a CNTK user brings, trained with CNTK's own Trainer (helpers for the CNTK tests)."""
import numpy as np

from influence.adapters.cntk import import_cntk


def train_with_trainer(z, feeds, labels, epochs=3, minibatch=32, lr=0.01, seed=0, learner="adam"):
    """Train network output ``z`` with ``Trainer`` + Adam on softmax cross entropy.

    ``feeds``: {input Variable: array, CSR matrix or list of sequences}; ``labels``: integer classes
    (n,). ``learner="sgd"`` for sparse inputs (CNTK 2.7 has no Adam update for sparse gradients)."""
    C = import_cntk()
    dtype = np.dtype(z.output.dtype)
    k = int(np.prod(z.output.shape))
    lab = C.input_variable(k, dtype=dtype, name="train_labels")
    loss = C.cross_entropy_with_softmax(z, lab)
    if learner == "adam":
        learner = C.adam(z.parameters, C.learning_parameter_schedule(lr), C.momentum_schedule(0.9))
    else:
        learner = C.sgd(z.parameters, C.learning_parameter_schedule(lr))
    trainer = C.Trainer(z, (loss, C.classification_error(z, lab)), [learner])
    onehot = np.eye(k, dtype=dtype)[np.asarray(labels)]
    n = len(onehot)
    rng = np.random.RandomState(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        for a in range(0, n, minibatch):
            rows = order[a:a + minibatch]
            batch = {var: ([data[i] for i in rows] if isinstance(data, list) else data[rows])
                     for var, data in feeds.items()}
            batch[lab] = onehot[rows]
            trainer.train_minibatch(batch)
    return z


def state(function):
    """Copies of every Parameter and Constant of ``function`` (what must stay bit-identical)."""
    return [np.array(v.value, copy=True) for v in list(function.parameters) + list(function.constants)]


def same_state(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def two_input_network(n, dtype, hidden=5, epochs=2, seed=0):
    """A network with two named inputs ``a`` (4 features) and ``b`` (3), spliced into a tanh Dense layer
    and a Dense(2), trained with the Trainer on the label [a₀ + b₁ > 0]; returns (z, a, b, y)."""
    C = import_cntk()
    rng = np.random.RandomState(seed)
    a, b = rng.standard_normal((n, 4)), rng.standard_normal((n, 3))
    y = (a[:, 0] + b[:, 1] > 0).astype(np.int64)
    with C.default_options(dtype=dtype):
        xa = C.input_variable(4, dtype=dtype, name="a")
        xb = C.input_variable(3, dtype=dtype, name="b")
        h = C.layers.Dense(hidden, activation=C.tanh, init=C.glorot_uniform(seed=1))(C.splice(xa, xb))
        z = C.layers.Dense(2, init=C.glorot_uniform(seed=2))(h)
    train_with_trainer(z, {xa: a.astype(dtype), xb: b.astype(dtype)}, y, epochs=epochs)
    return z, a, b, y
