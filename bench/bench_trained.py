"""Networks as their users train them, scored at defaults: ``influence score`` (a fresh process, as a
user runs it) on (a) the CNN of examples/cnn_batchnorm.py (Convolution2D → BatchNormalization → ReLU
→ MaxPooling → Dropout → Dense, float32, 600 digits, 8 Adam epochs with CNTK's Trainer) and (b) an
LSTM sequence classifier (examples/lstm_sequences.py's network, float32, 400 sequences, 8 Adam epochs).
Neither is at an optimum; the default ``--curvature auto`` must take the Gauss-Newton matrix with an
automatic damping, converge (true residual ≤ rtol) and finish — issue 19's target: ≤ 30 s each.

    .venv/bin/python bench/bench_trained.py [--quick]

``main(argv)`` returns {"rows": [{"network", "n_train", "n_params", "exit", "seconds", "curvature",
"damping", "converged", "residual", "products"}], "load": 1-minute load averages before each run}.
"""
from __future__ import print_function

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import influence  # noqa: E402
from influence.adapters.cntk import import_cntk  # noqa: E402
from influence.data import save_npz  # noqa: E402


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return None


def _cnn(folder, n, epochs):
    import cnn_batchnorm
    C = import_cntk()
    images, labels = influence.load_digits()
    images = images.reshape(-1, 1, 8, 8).astype(np.float32)
    x, z = cnn_batchnorm.build(C, False, np.float32)
    cnn_batchnorm.train(C, x, z, images[:n], labels[:n], epochs)
    z.save(os.path.join(folder, "cnn.cntk"))
    np.savez(os.path.join(folder, "cnn-train.npz"), x=images[:n], y=labels[:n])
    np.savez(os.path.join(folder, "cnn-test.npz"), x=images[1500:1510], y=labels[1500:1510])
    return "cnn.cntk", "cnn-train.npz", "cnn-test.npz"


def _lstm(folder, n, epochs):
    import lstm_sequences
    C = import_cntk()
    seqs, labels = lstm_sequences.make_data(n + 10)
    seqs = [s.astype(np.float32) for s in seqs]
    with C.default_options(dtype=np.float32):
        x = C.sequence.input_variable(3, name="steps")
        z = C.layers.Dense(2, init=C.glorot_uniform(seed=2))(
            C.sequence.last(C.layers.Recurrence(C.layers.LSTM(4, init=C.glorot_uniform(seed=1)))(x)))
    y = C.input_variable(2, dtype=np.float32)
    loss = C.cross_entropy_with_softmax(z, y)
    trainer = C.Trainer(z, (loss, C.classification_error(z, y)),
                        [C.adam(z.parameters, C.learning_parameter_schedule(0.02), C.momentum_schedule(0.9))])
    onehot = np.eye(2, dtype=np.float32)[labels]
    for _ in range(epochs):
        for a in range(0, n, 32):
            trainer.train_minibatch({x: seqs[a:min(a + 32, n)], y: onehot[a:min(a + 32, n)]})
    z.save(os.path.join(folder, "lstm.cntk"))
    save_npz(os.path.join(folder, "lstm-train.npz"), seqs[:n], labels[:n])
    save_npz(os.path.join(folder, "lstm-test.npz"), seqs[n:], labels[n:])
    return "lstm.cntk", "lstm-train.npz", "lstm-test.npz"


def _score(folder, model, train, test):
    env = dict(os.environ, PYTHONPATH=ROOT)
    argv = [sys.executable, "-m", "influence", "score", "--model", os.path.join(folder, model), "--train",
            os.path.join(folder, train), "--test", os.path.join(folder, test), "--test-index", "0", "--json",
            "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          universal_newlines=True)
    seconds = time.perf_counter() - t0
    row = {"exit": proc.returncode, "seconds": seconds}
    if proc.returncode == 0:
        s = json.loads(proc.stdout)
        sol = s["solutions"][0]
        row.update(curvature=s["curvature"], damping=s["damping"], converged=sol["converged"],
                   residual=sol["residual"], products=sol["n_hvp"], not_converged=s.get("not_converged"))
    else:
        row["error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr else None
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="half the data and epochs")
    args = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="bench-trained-")
    scale = 2 if args.quick else 1
    rows, loads = [], []
    for name, make, n, epochs in (("CNN (BN + Dropout), float32", _cnn, 600 // scale, 8 // scale),
                                  ("LSTM classifier, float32", _lstm, 400 // scale, 8 // scale)):
        files = make(folder, n, epochs)
        model = influence.CNTKModel.load(os.path.join(folder, files[0]))
        loads.append(_loadavg())
        row = dict(network=name, n_train=n, epochs=epochs, n_params=model.n_params, **_score(folder, *files))
        rows.append(row)
        print("%-30s n=%4d d=%6d: exit %d in %.1f s, %s, damping %s, converged %s (residual %s, %s products)"
              % (name, n, model.n_params, row["exit"], row["seconds"], row.get("curvature"), row.get("damping"),
                 row.get("converged"), row.get("residual"), row.get("products")))
    return {"rows": rows, "load": loads}


if __name__ == "__main__":
    main()
