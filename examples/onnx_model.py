"""Influence on a network stored as an ONNX file.

A CNTK MLP is trained with CNTK's Trainer on the bundled digits and exported with
``save(path, format=C.ModelFormat.ONNX)``. ``CNTKModel.load`` recognises the ONNX file, loads it with
``ModelFormat.ONNX`` and turns the weights (imported as Constants) into Parameters, so the model can
be fitted and scored like any other. (CNTK 2.7's ONNX import of convolutional networks runs only on a
fixed batch of one; such files are refused with a one-line message — save those with Function.save.)

    python examples/onnx_model.py [--small]
"""
import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import influence  # noqa: E402
from influence.adapters.cntk import build_network, import_cntk  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="200 training digits")
    args = p.parse_args(argv)
    C = import_cntk()
    n = 200 if args.small else 1000
    x, y = influence.load_digits()
    x = x.astype(np.float32)
    z = build_network(64, 10, hidden=(16,), dtype=np.float32, seed=0)
    lab = C.input_variable(10)
    trainer = C.Trainer(z, (C.cross_entropy_with_softmax(z, lab), C.classification_error(z, lab)),
                        [C.adam(z.parameters, C.learning_parameter_schedule(0.01), C.momentum_schedule(0.9))])
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(5):
        for a in range(0, n, 32):
            trainer.train_minibatch({z.arguments[0]: x[a:a + 32], lab: onehot[a:a + 32]})
    path = os.path.join(tempfile.mkdtemp(prefix="onnx-example-"), "mlp.onnx")
    z.save(path, format=C.ModelFormat.ONNX)

    model = influence.CNTKModel.load(path, l2=1e-3)
    same = float(np.abs(model.predict(x[:100]) - z.eval({z.arguments[0]: x[:100]})).max())
    print("loaded %s: %d parameters, outputs match the exported network to %.1e" % (path, model.n_params, same))
    fit = influence.fit(model, (x[:n], y[:n]))
    print("fit: R = %.4f, |grad R| = %.1e" % (fit.loss, fit.grad_norm))
    scores = influence.influence_scores(model, (x[:n], y[:n]), (x[1700:1701], y[1700:1701]), damping=0.1,
                                        check_optimum=False, rtol=1e-2)   # float32: FD products limit cg
    order = np.argsort(-influence.predicted_loss_change(scores, n))
    print("test digit %d: most helpful training digits %s" % (y[1700], [(int(i), int(y[i])) for i in order[:5]]))
    return {"scores": scores, "max_output_difference": same}


if __name__ == "__main__":
    main()
