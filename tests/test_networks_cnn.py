"""A user's CNN (Convolution2D + BatchNormalization + ReLU + MaxPooling + Dropout + Dense), trained with
CNTK's Trainer, saved and loaded: everything the toolkit evaluates runs in inference mode, nothing
the model holds changes (needs CNTK)."""
import numpy as np
import pytest

import influence
from influence.adapters.cntk import build_cnn
from influence.adapters.cntk.graph import inference_graph
from cntk_nets import same_state, state, train_with_trainer

#: |uᵀHv − vᵀHu| / |uᵀHv|. Not asserted for the ReLU/max-pooling CNN in float32: a finite
#: difference of its gradient straddles ReLU kinks at every step float32 rounding allows (measured
#: 0.43 on this network; see docs/your-network.md); asserted for it in float64 and for the same
#: architecture with tanh + average pooling in float32.
SYMMETRY_TOL = {np.float32: 1e-3, np.float64: 1e-8}
#: ‖forward − gradient scores‖ / ‖gradient scores‖.
SCORING_TOL = {np.float32: 1e-3, np.float64: 1e-7}
#: Inference graph vs CNTK's own eval of the user's network (float32, absolute).
EVAL_TOL = 1e-6
#: Leave-one-out Pearson on the CNN in float64 at an optimum.
LOO_PEARSON = 0.95

N = 120


def _digits(n=N):
    x, y = influence.load_digits()
    return x[:n].reshape(-1, 1, 8, 8), y[:n]


@pytest.fixture(scope="module", params=[("relu", np.float32), ("relu", np.float64), ("tanh", np.float32)],
                ids=["relu-float32", "relu-float64", "tanh-float32"])
def cnn(request, cntk, tmp_path_factory):
    activation, dtype = request.param
    x, y = _digits()
    z = build_cnn((1, 8, 8), 10, channels=(4,), dropout=0.3, activation=activation,
                  pooling="max" if activation == "relu" else "average", dtype=dtype, seed=1)
    train_with_trainer(z, {z.arguments[0]: x.astype(dtype)}, y, epochs=3)
    path = str(tmp_path_factory.mktemp("cnn") / "cnn.model")
    z.save(path)
    model = influence.CNTKModel.load(path, l2=0.01)
    return dtype, model, (x, y)


def test_inference_graph_equals_cntk_eval_and_rewrites_bn_and_dropout(cnn):
    dtype, model, (x, y) = cnn
    assert any("BatchNormalization" in r for r in model.rewritten)
    assert any("Dropout" in r for r in model.rewritten)
    reference = model.output.eval({model.output.arguments[0]: x.astype(dtype)})
    got = model.predict(x)
    assert np.abs(got - reference).max() <= (EVAL_TOL if dtype == np.float32 else 1e-12) * max(1, np.abs(reference).max())
    # the Parameters are shared: the inference graph moves when the user's weights move
    w = model.get_params()
    with model.preserving_params():
        model.set_params(w * 1.1)
        moved = model.output.eval({model.output.arguments[0]: x[:5].astype(dtype)})
        assert np.abs(model.predict(x[:5]) - moved).max() <= 1e-5 * max(1, np.abs(moved).max())
    assert np.array_equal(model.get_params(), w)


def test_gradients_and_hvp_are_repeatable_and_symmetric(cnn):
    dtype, model, data = cnn
    before = state(model.output)
    pred = model.predict(data[0])
    g1, g2 = model.grad_sum(data), model.grad_sum(data)
    assert np.array_equal(g1, g2)
    assert np.array_equal(model.per_example_grads((data[0][:3], data[1][:3])),
                          model.per_example_grads((data[0][:3], data[1][:3])))
    op = influence.HessianOperator(model, data)
    u, v = np.random.RandomState(0).standard_normal((2, model.n_params))
    hv = op @ v
    assert np.array_equal(hv, op @ v)
    hu = op @ u
    sym = abs(u @ hv - v @ hu) / abs(u @ hv)
    if model.smooth or dtype == np.float64:
        assert sym <= SYMMETRY_TOL[dtype], sym
    assert same_state(before, state(model.output))
    assert np.array_equal(pred, model.predict(data[0]))


def test_forward_and_gradient_scoring_agree(cnn):
    dtype, model, (x, y) = cnn
    before = state(model.output)
    train = (x[:60], y[:60])
    s = np.random.RandomState(2).standard_normal((1, model.n_params))
    fwd = influence.directional_derivatives(model, train, s)[0]
    grd = model.per_example_grads(train) @ s[0]
    rel = np.linalg.norm(fwd - grd) / np.linalg.norm(grd)
    if model.smooth or dtype == np.float64:
        assert rel <= SCORING_TOL[dtype], rel
    assert same_state(before, state(model.output))


class Boom(Exception):
    pass


def test_state_is_bit_identical_after_an_injected_failure(cnn, monkeypatch):
    dtype, model, (x, y) = cnn
    before, pred = state(model.output), model.predict(x)
    calls = {"n": 0}
    real = type(model)._per_example_losses

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom()
        return real(self, batch)
    monkeypatch.setattr(type(model), "_per_example_losses", failing)
    s = np.random.RandomState(1).standard_normal((1, model.n_params))
    with pytest.raises(Boom):
        influence.directional_derivatives(model, (x, y), s, rel_step=1e-3)
    monkeypatch.undo()
    assert same_state(before, state(model.output))
    assert np.array_equal(pred, model.predict(x))


def test_exclude_leaves_parameters_out(cnn, cntk):
    dtype, model, data = cnn
    names = [p.name for p in model.output.parameters]
    m = influence.CNTKModel(model.output, exclude=["scale", "bias"])
    assert m.n_params == model.n_params - 2 * 4
    assert {p.name for p in m.excluded} == {"scale", "bias"}
    m2 = influence.CNTKModel(model.output, exclude=lambda p: p.name == "W")
    assert m2.n_params == model.n_params - sum(int(np.prod(p.shape)) for p in model.output.parameters
                                               if p.name == "W")
    g = m.grad_sum(data)
    assert g.shape == (m.n_params,) and np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="exclude=.*'gamma'.*names no parameter"):
        influence.CNTKModel(model.output, exclude=["gamma"])
    with pytest.raises(ValueError, match="leaves out all"):
        influence.CNTKModel(model.output, exclude=set(names))


def test_loo_pearson_on_the_cnn_in_float64(cntk, tmp_path):
    # tanh + average pooling: L-BFGS cannot fit the ReLU/max-pooling CNN to an optimum (measured: it
    # stops at ‖∇R‖ ≈ 1e-3 on the kinks, and leave-one-out Pearson is then 0.84); small and 5 classes
    # so that the 6 retrainings take seconds
    x, y = influence.load_digits()
    keep = y < 5
    x, y = x[keep].reshape(-1, 1, 8, 8), y[keep]
    z = build_cnn((1, 8, 8), 5, channels=(2,), dropout=0.3, activation="tanh", pooling="average",
                  dtype=np.float64, seed=1)
    train_with_trainer(z, {z.arguments[0]: x[:50]}, y[:50], epochs=3)
    z.save(str(tmp_path / "cnn.model"))
    model = influence.CNTKModel.load(str(tmp_path / "cnn.model"), l2=0.05)
    train, test = (x[:50], y[:50]), (x[300:301], y[300:301])
    before = state(model.output)
    fit = influence.fit(model, train, gtol=1e-8)
    res = influence.verify_loo(model, train, test, k=6, gtol=1e-8)
    assert res.pearson >= LOO_PEARSON, (res.pearson, fit)
    constants = len(list(model.output.constants))
    assert same_state(before[-constants:], state(model.output)[-constants:])   # BN statistics untouched


def test_training_ops_hidden_in_a_block_and_random_ops_are_refused(cntk):
    C = cntk
    x = C.input_variable(4, name="features")

    @C.BlockFunction("MyBlock", "my_block")
    def block(a):
        return C.layers.Dropout(0.5)(C.tanh(a))
    z = C.layers.Dense(2)(block(x))
    with pytest.raises(ValueError, match="MyBlock.*contains a Dropout op"):
        inference_graph(z)
    noisy = C.layers.Dense(2)(x + C.random.normal_like(x))
    with pytest.raises(ValueError, match="RandomDistribution.*random numbers"):
        influence.CNTKModel(noisy)


def test_hvp_function_runs_in_inference_mode(cntk):
    C = cntk
    x = C.input_variable(3, name="features")
    h = C.layers.BatchNormalization()(C.layers.Dense(4, activation=C.tanh, init=C.glorot_uniform(seed=1))(x))
    y = C.reduce_sum(C.square(C.layers.Dense(1, init=C.glorot_uniform(seed=2))(C.layers.Dropout(0.5)(h))))
    data = np.random.RandomState(0).standard_normal((16, 3)).astype(np.float32)
    before = state(y)
    v = np.random.RandomState(1).standard_normal(sum(int(np.prod(p.shape)) for p in y.parameters))
    assert np.array_equal(influence.hvp(y, data, v, r=1e-2), influence.hvp(y, data, v, r=1e-2))
    assert same_state(before, state(y))
