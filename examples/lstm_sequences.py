"""Influence on a CNTK LSTM classifier of variable-length sequences, data in a ragged .npz.

A sequence-to-one classifier (``C.sequence.input_variable``, ``Recurrence(LSTM)``,
``sequence.last``, ``Dense(2)``) is trained with CNTK's Trainer on synthetic sequences of 2–9 steps
(label: is the sum of the first feature positive?). The sequences are saved ragged in an ``.npz``
(``x.steps`` = all steps concatenated, ``x.lengths`` = steps per sequence; no pickled objects) and
read back memory-mapped by ``influence.load_npz``. The per-example loss is the loss of a whole
sequence; batches are formed by total steps. Then: fit, influence of every training sequence on a
test sequence, self-influence with a few labels flipped. Finally the same training sequences are
written in CNTK Text Format (one line per step, the sequence id first, the one-hot label on the first
line of each sequence), read back with ``influence.load_data(path, model)`` and scored again: the
scores equal those from the ``.npz``.

    python examples/lstm_sequences.py [--small]
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import influence  # noqa: E402
from influence.adapters.cntk import import_cntk  # noqa: E402
from influence.data import save_npz  # noqa: E402


def make_data(n, seed=0):
    rng = np.random.RandomState(seed)
    seqs = [rng.standard_normal((t, 3)) for t in rng.randint(2, 10, n)]
    labels = np.array([int(s[:, 0].sum() > 0) for s in seqs])
    return seqs, labels


#: Scores from the .ctf vs from the .npz: the same float64 values (written with repr, exact) and the
#: same computation, so they agree to rounding.
CTF_NPZ_RTOL = 1e-10


def write_ctf(path, seqs, labels, n_classes=2, feature="steps", label="labels"):
    """Sequences in CNTK Text Format: one line per step, ``<id> |steps v1 v2 v3``; the label
    (one-hot, the stream named after the model's label input) once, on a sequence's first line."""
    with open(path, "w") as f:
        for i, (s, c) in enumerate(zip(seqs, labels)):
            for t, step in enumerate(s):
                line = "%d |%s %s" % (i, feature, " ".join(repr(float(v)) for v in step))
                if t == 0:
                    line += " |%s %s" % (label, " ".join("1" if k == c else "0" for k in range(n_classes)))
                f.write(line + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="24 training sequences, LSTM of width 2")
    args = p.parse_args(argv)
    C = import_cntk()
    n, width = (24, 2) if args.small else (200, 4)
    seqs, labels = make_data(n + 1)
    flipped = np.arange(0, n, 8)                      # a few mislabeled sequences
    labels[flipped] = 1 - labels[flipped]
    with C.default_options(dtype=np.float64):
        x = C.sequence.input_variable(3, name="steps")
        z = C.layers.Dense(2, init=C.glorot_uniform(seed=2))(
            C.sequence.last(C.layers.Recurrence(C.layers.LSTM(width, init=C.glorot_uniform(seed=1)))(x)))
    y = C.input_variable(2, dtype=np.float64)
    loss = C.cross_entropy_with_softmax(z, y)
    trainer = C.Trainer(z, (loss, C.classification_error(z, y)),
                        [C.adam(z.parameters, C.learning_parameter_schedule(0.02), C.momentum_schedule(0.9))])
    onehot = np.eye(2)[labels]
    for _ in range(5):
        for a in range(0, n, 10):
            trainer.train_minibatch({x: seqs[a:a + 10], y: onehot[a:a + 10]})

    folder = tempfile.mkdtemp(prefix="lstm-example-")
    save_npz(os.path.join(folder, "train.npz"), seqs[:n], labels[:n])
    train = influence.load_npz(os.path.join(folder, "train.npz"))
    test = (seqs[n:], labels[n:])
    print("train: %r" % (train.x,))
    model = influence.CNTKModel(z, l2=0.01, batch_size=64)       # batch_size counts steps here
    fit = influence.fit(model, train, gtol=1e-6)
    print("fit: R = %.4f, |grad R| = %.1e" % (fit.loss, fit.grad_norm))
    scores = influence.influence_scores(model, train, test, damping=0.01, check_optimum=False)
    order = np.argsort(-influence.predicted_loss_change(scores, n))
    print("most helpful training sequences for the test sequence: %s" % order[:5].tolist())
    si = influence.self_influence(model, train, method="lanczos", k=8, damping=0.01, check_optimum=False)
    top = np.argsort(-si)[:len(flipped)]
    found = len(set(top.tolist()) & set(flipped.tolist()))
    print("self-influence: %d of the %d flipped labels among the %d highest" % (found, len(flipped), len(top)))

    ctf_path = os.path.join(folder, "train.ctf")           # the same sequences in CNTK Text Format
    write_ctf(ctf_path, seqs[:n], labels[:n], label=model.labels.name)
    train_ctf = influence.load_data(ctf_path, model)        # streams matched to the inputs by name
    scores_ctf = influence.influence_scores(model, train_ctf, test, damping=0.01, check_optimum=False)
    diff = np.abs(scores_ctf - scores).max() / np.abs(scores).max()
    print("CTF: %d sequences from %s, scores equal the .npz ones (max rel. difference %.1e)"
          % (len(train_ctf), os.path.basename(ctf_path), diff))
    if diff > CTF_NPZ_RTOL:
        raise RuntimeError("scores from %s differ from the .npz ones by %.1e" % (ctf_path, diff))
    return {"scores": scores, "self_influence": si, "found": found, "fit": fit,
            "scores_ctf": scores_ctf, "ctf_npz_difference": diff}


if __name__ == "__main__":
    main()
