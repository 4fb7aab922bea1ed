"""ONNX files exported by CNTK itself, loaded with CNTKModel.load (needs CNTK)."""
import numpy as np
import pytest

import influence
from influence.adapters.cntk import build_cnn, build_network
from cntk_nets import train_with_trainer

#: ONNX-loaded network vs the network it was exported from (float32 outputs).
ONNX_TOL = 1e-6


def test_onnx_mlp_loads_with_parameters_and_scores(cntk, tmp_path):
    C = cntk
    rng = np.random.RandomState(0)
    x, y = rng.standard_normal((80, 6)).astype(np.float32), rng.randint(0, 3, 80)
    z = build_network(6, 3, hidden=(5,), dtype=np.float32, seed=3)
    train_with_trainer(z, {z.arguments[0]: x}, y, epochs=2)
    path = str(tmp_path / "mlp.onnx")
    z.save(path, format=C.ModelFormat.ONNX)
    model = influence.CNTKModel.load(path, l2=0.01)
    assert model.n_params == 6 * 5 + 5 + 5 * 3 + 3
    ref = z.eval({z.arguments[0]: x})
    assert np.abs(model.predict(x) - ref).max() <= ONNX_TOL * max(1, np.abs(ref).max())
    # the same file without the .onnx extension is recognised too
    other = str(tmp_path / "mlp.model")
    with open(path, "rb") as src, open(other, "wb") as dst:
        dst.write(src.read())
    assert influence.CNTKModel.load(other).n_params == model.n_params
    w = model.get_params()
    H = influence.HessianOperator(model, (x, y))
    u, v = rng.standard_normal((2, model.n_params))
    hv = H @ v
    assert np.array_equal(hv, H @ v)
    assert abs(u @ hv - v @ (H @ u)) / abs(u @ hv) <= 1e-3
    assert np.array_equal(model.get_params(), w)
    influence.fit(model, (x, y), gtol=1e-5)
    w = model.get_params()
    scores = influence.influence_scores(model, (x, y), (x[:1], y[:1]), damping=0.01, check_optimum=False)
    assert scores.shape == (80,) and np.all(np.isfinite(scores))
    assert np.array_equal(model.get_params(), w)


def test_onnx_cnn_and_unknown_ops_are_refused_in_one_line(cntk, tmp_path):
    C = cntk
    z = build_cnn((1, 8, 8), 10, channels=(2,), dtype=np.float32, seed=1)
    path = str(tmp_path / "cnn.onnx")
    z.save(path, format=C.ModelFormat.ONNX)
    with pytest.raises(ValueError) as e:
        influence.CNTKModel.load(path)
    assert "cnn.onnx" in str(e.value) and "\n" not in str(e.value)
    assert "Function.save" in str(e.value)
    # an op CNTK's importer does not know: rename Tanh in an exported MLP's protobuf
    mlp = build_network(6, 3, hidden=(5,), dtype=np.float32, seed=3)
    good = str(tmp_path / "mlp.onnx")
    mlp.save(good, format=C.ModelFormat.ONNX)
    blob = open(good, "rb").read()
    assert blob.count(b"Tanh") >= 1
    bad = str(tmp_path / "bad.onnx")
    with open(bad, "wb") as f:
        f.write(blob.replace(b"Tanh", b"Tanq"))
    with pytest.raises(ValueError, match="cannot import this ONNX model") as e:
        influence.CNTKModel.load(bad)
    assert "\n" not in str(e.value)
