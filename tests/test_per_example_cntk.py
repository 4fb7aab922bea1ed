"""Batched per-example gradients of CNTKModel (one forward/backward pass per block of rows) equal the
per-row loop, on networks a user brings (trained with CNTK's Trainer, saved and loaded); layers the
batched pass cannot handle fall back to the loop, named in the plan (needs CNTK)."""
import numpy as np
import pytest

import influence
from influence.adapters.cntk import per_example as cntk_per_example
from influence.adapters.cntk import build_cnn, build_network
from influence.data import Sequences
from cntk_nets import same_state, state, train_with_trainer

#: max over rows of ‖batched_i − loop_i‖ / ‖loop_i‖: float32 (CNTK's batched and one-row passes
#: round differently, measured up to ~7e-7 on a 784-100-10 MLP) and float64.
PEX_TOL = {np.float32: 1e-6, np.float64: 1e-12}

DTYPES = [np.float32, np.float64]


def row_error(batched, loop):
    assert batched.shape == loop.shape and batched.dtype == np.float64
    norms = np.linalg.norm(loop, axis=1)
    assert np.all(norms > 0), "a row with a zero gradient makes the relative error meaningless"
    return float(np.max(np.linalg.norm(batched - loop, axis=1) / norms))


def loop_grads(model, data, batch_size=None):
    model.per_example_method = "loop"
    try:
        return model.per_example_grads(data, batch_size)
    finally:
        model.per_example_method = "batched"


def _routes(model):
    return {(r["index"], r["name"]): r["route"] for r in model.per_example_plan().routes}


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=DTYPES, ids=["float32", "float64"])
def mlp(request, cntk, tmp_path_factory):
    dtype = request.param
    x, y = influence.load_digits()
    x, y = x[:150], y[:150]
    z = build_network(64, 10, hidden=(16, 12), dtype=dtype, seed=3)
    train_with_trainer(z, {z.arguments[0]: x.astype(dtype)}, y, epochs=3)
    path = str(tmp_path_factory.mktemp("mlp") / "mlp.model")
    z.save(path)
    return dtype, influence.CNTKModel.load(path, l2=0.01), (x, y)


@pytest.fixture(scope="module", params=DTYPES, ids=["float32", "float64"])
def cnn(request, cntk, tmp_path_factory):
    dtype = request.param
    x, y = influence.load_digits()
    x, y = x[:60].reshape(-1, 1, 8, 8), y[:60]
    z = build_cnn((1, 8, 8), 10, channels=(4, 3), dropout=0.3, dtype=dtype, seed=1)
    train_with_trainer(z, {z.arguments[0]: x.astype(dtype)}, y, epochs=3)
    path = str(tmp_path_factory.mktemp("cnn") / "cnn.model")
    z.save(path)
    return dtype, influence.CNTKModel.load(path, l2=0.01), (x, y)


# ---------------------------------------------------------------------------------------- equality
def test_trained_mlp_batched_equals_loop_on_the_layer_route(mlp):
    dtype, model, data = mlp
    plan = model.per_example_plan()
    assert set(_routes(model).values()) == {"layer"}
    assert plan.fallback == [] and plan.batched
    assert plan.layers == ["Dense 'hidden1'", "Dense 'hidden2'", "Dense 'output'"]
    assert "0 by the per-row loop" in str(plan)
    got = model.per_example_grads(data)
    assert got.shape == (150, model.n_params)
    assert row_error(got, loop_grads(model, data)) <= PEX_TOL[dtype]
    # the rows sum to grad_sum (the sum CNTK's Function.grad returns)
    total = model.grad_sum(data)
    assert np.linalg.norm(got.sum(axis=0) - total) <= 10 * PEX_TOL[dtype] * np.linalg.norm(total)


def test_cnn_with_batchnorm_pooling_dropout_batched_equals_loop(cnn):
    dtype, model, data = cnn
    routes = _routes(model)
    names = [r["name"] for r in model.per_example_plan().routes]
    # convolutions and the output Dense layer by layer; BatchNormalization's scale and bias directly
    assert {routes[k] for k in routes if k[1] in ("W", "b")} == {"layer"}
    assert {routes[k] for k in routes if k[1] in ("scale", "bias")} == {"direct"}
    assert names.count("scale") == 2 and model.per_example_plan().fallback == []
    assert "Convolution 'conv1'" in model.per_example_plan().layers
    before = state(model.output)
    got = model.per_example_grads(data, batch_size=25)
    assert row_error(got, loop_grads(model, data)) <= PEX_TOL[dtype]
    assert same_state(before, state(model.output))   # weights and BN running statistics untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_convolution_geometries_match_cntk(cntk, dtype):
    """Padding (auto, none, asymmetric per axis), strides, even and odd kernels, 1-D and 2-D."""
    C = cntk
    rng = np.random.RandomState(0)
    cases = [((2, 9, 7), (3, 3), (2, 1), True), ((2, 9, 7), (2, 4), (1, 2), True),
             ((2, 9, 7), (3, 2), (2, 3), False), ((3, 8, 8), (4, 4), (3, 2), True),
             ((2, 8, 7), (3, 3), (1, 1), [True, False]), ((2, 11), (4,), (2,), True)]
    for shape, kernel, strides, pad in cases:
        with C.default_options(dtype=dtype):
            x = C.input_variable(shape, dtype=dtype, name="features")
            h = C.layers.Convolution(kernel, 3, strides=strides, pad=pad, activation=C.tanh,
                                     init=C.glorot_uniform(seed=1), name="conv")(x)
            z = C.layers.Dense(3, init=C.glorot_uniform(seed=2), name="out")(h)
        model = influence.CNTKModel(z)
        data = (rng.standard_normal((9,) + shape), rng.randint(0, 3, 9))
        assert set(_routes(model).values()) == {"layer"}, (shape, kernel, strides, pad)
        err = row_error(model.per_example_grads(data), loop_grads(model, data))
        assert err <= PEX_TOL[dtype], (shape, kernel, strides, pad, err)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_lstm_falls_back_to_the_loop_named_and_exact(cntk, tmp_path, dtype):
    C = cntk
    rng = np.random.RandomState(1)
    seqs = [rng.standard_normal((rng.randint(1, 7), 4)).astype(dtype) for _ in range(40)]
    y = rng.randint(0, 3, 40)
    with C.default_options(dtype=dtype):
        x = C.sequence.input_variable(4, dtype=dtype, name="features")
        h = C.layers.Recurrence(C.layers.LSTM(5, init=C.glorot_uniform(seed=3)), name="rnn")(x)
        z = C.layers.Dense(3, init=C.glorot_uniform(seed=4), name="out")(C.sequence.last(h))
    train_with_trainer(z, {x: seqs}, y, epochs=2)
    path = str(tmp_path / "lstm.model")
    z.save(path)
    model = influence.CNTKModel.load(path)
    plan = model.per_example_plan()
    routes = _routes(model)
    assert routes[(0, "W")] == routes[(1, "b")] == "layer"          # the output Dense layer
    loop = [r for r in plan.routes if r["route"] == "loop"]
    assert sorted(r["name"] for r in loop) == ["H", "W", "b"]        # the LSTM's weights
    assert len(plan.fallback) == 3 and all("LSTM" in f for f in plan.fallback)
    assert "3 by the per-row loop" in str(plan) and "LSTM" in str(plan)
    data = (Sequences.from_list(seqs), y)
    assert row_error(model.per_example_grads(data, batch_size=16), loop_grads(model, data)) <= PEX_TOL[dtype]


def test_convolution_without_bias_falls_back_and_dense_without_bias_goes_direct(cntk):
    C = cntk
    dtype = np.float64
    rng = np.random.RandomState(2)
    with C.default_options(dtype=dtype):
        x = C.input_variable((2, 6, 5), dtype=dtype, name="features")
        h = C.layers.Convolution((3, 3), 3, pad=True, bias=False, activation=C.tanh,
                                 init=C.glorot_uniform(seed=1), name="nobias_conv")(x)
        h = C.layers.Dense(4, bias=False, activation=C.tanh, init=C.glorot_uniform(seed=2), name="nobias")(h)
        z = C.layers.Dense(3, init=C.glorot_uniform(seed=3), name="out")(h)
    model = influence.CNTKModel(z)
    plan = model.per_example_plan()
    by_layer = {r["index"]: r for r in plan.routes}
    assert by_layer[2]["route"] == "direct" and "nobias" in by_layer[2]["reason"]
    assert by_layer[3]["route"] == "loop"
    assert len(plan.fallback) == 1 and "nobias_conv" in plan.fallback[0] and "no bias" in plan.fallback[0]
    data = (rng.standard_normal((11, 2, 6, 5)), rng.randint(0, 3, 11))
    assert row_error(model.per_example_grads(data), loop_grads(model, data)) <= PEX_TOL[dtype]


@pytest.mark.parametrize("exclude", [["scale", "bias"], "b", "W"])
def test_exclude_keeps_the_layout_of_the_loop(cntk, cnn, exclude):
    dtype, model, (x, y) = cnn
    part = influence.CNTKModel(model.output, l2=0.01, exclude=exclude)
    names = exclude if isinstance(exclude, list) else [exclude]
    assert all(r["name"] not in names for r in part.per_example_plan().routes)
    assert part.per_example_plan().fallback == []
    got = part.per_example_grads((x[:20], y[:20]))
    assert got.shape == (20, part.n_params) and part.n_params < model.n_params
    assert row_error(got, loop_grads(part, (x[:20], y[:20]))) <= PEX_TOL[dtype]


def test_tied_weights_go_direct(cntk):
    C = cntk
    dtype = np.float64
    with C.default_options(dtype=dtype):
        x = C.input_variable(5, dtype=dtype, name="features")
        W = C.parameter((5, 5), init=C.glorot_uniform(seed=2), dtype=dtype, name="tied")
        b = C.parameter(5, dtype=dtype, name="tb")
        h = C.tanh(C.times(C.tanh(C.times(x, W) + b), W) + b)
        z = C.layers.Dense(3, init=C.glorot_uniform(seed=3), name="out")(h)
    model = influence.CNTKModel(z)
    routes = {r["name"]: r for r in model.per_example_plan().routes}
    assert routes["tied"]["route"] == "direct" and "used 2 times" in routes["tied"]["reason"]
    rng = np.random.RandomState(3)
    data = (rng.standard_normal((8, 5)), rng.randint(0, 3, 8))
    assert row_error(model.per_example_grads(data), loop_grads(model, data)) <= PEX_TOL[dtype]


# ---------------------------------------------------------------------------------------- batching
def test_batch_size_and_block_size_independence(mlp, cnn, monkeypatch):
    for dtype, model, (x, y) in (mlp, cnn):
        reference = model.per_example_grads((x, y))
        for batch_size in (1, 7, len(x)):
            assert row_error(model.per_example_grads((x, y), batch_size), reference) <= PEX_TOL[dtype]
        prepared = model.prepare((x, y), batch_size=13)        # feeds converted to CNTK Values once
        assert row_error(model.per_example_grads(prepared), reference) <= PEX_TOL[dtype]
        # blocks of rows inside a batch (bounded memory) do not change the result
        monkeypatch.setattr(cntk_per_example, "BLOCK_BYTES", 5 * model.per_example_plan().row_bytes())
        assert model.per_example_plan().rows_per_block() == 5
        assert row_error(model.per_example_grads((x, y)), reference) <= PEX_TOL[dtype]
        monkeypatch.undo()


def test_weights_unchanged_and_no_leak_into_other_passes(mlp):
    dtype, model, data = mlp
    before = state(model.output)
    loss = model.loss(data)
    g = model.grad(data)
    model.per_example_grads(data, batch_size=32)
    assert same_state(before, state(model.output))
    assert model.loss(data) == loss                       # the batched graph is a separate clone
    assert np.array_equal(model.grad(data), g)


def test_loop_method_and_bad_method(mlp):
    dtype, model, (x, y) = mlp
    model.per_example_method = "rowwise"
    try:
        with pytest.raises(ValueError, match="per_example_method='rowwise'.*'batched' or 'loop'"):
            model.per_example_grads((x[:3], y[:3]))
    finally:
        model.per_example_method = "batched"


def test_s_test_and_gradient_scoring_use_the_batched_path(mlp, monkeypatch):
    dtype, model, (x, y) = mlp
    calls = {"n": 0}
    original = cntk_per_example.PerExamplePlan.__call__

    def counting(self, batch, out=None):
        calls["n"] += 1
        return original(self, batch, out)

    monkeypatch.setattr(cntk_per_example.PerExamplePlan, "__call__", counting)
    train, test = (x[:100], y[:100]), (x[100:103], y[100:103])
    st = influence.s_test(model, train, test, solver="cg", damping=2.0, check_optimum=False)
    assert calls["n"] >= 1                           # g_test
    calls["n"] = 0
    scores = influence.influence_scores(model, train, test, scoring="gradient", s=st, check_optimum=False)
    assert calls["n"] >= 1                           # the training gradients
    model.per_example_method = "loop"
    try:
        reference = influence.influence_scores(model, train, test, scoring="gradient", s=st,
                                               check_optimum=False)
    finally:
        model.per_example_method = "batched"
    assert np.asarray(scores).shape == (3, 100)
    assert np.linalg.norm(scores - reference) <= 10 * PEX_TOL[dtype] * np.linalg.norm(reference)


def test_top_level_times_with_map_axes(cntk):
    """C.times outside any layer block, on an input (3, 4) with W (4, 5): a bias broadcast over the
    map axis; the weight gradient sums the outer products over it."""
    C = cntk
    dtype = np.float64
    with C.default_options(dtype=dtype):
        x = C.input_variable((3, 4), dtype=dtype, name="features")
        W = C.parameter((4, 5), init=C.glorot_uniform(seed=2), dtype=dtype, name="Wm")
        b = C.parameter(5, init=0.1, dtype=dtype, name="bm")
        z = C.layers.Dense(3, init=C.glorot_uniform(seed=3), name="out")(C.tanh(C.times(x, W) + b))
    model = influence.CNTKModel(z)
    assert set(_routes(model).values()) == {"layer"}
    assert any(layer.startswith("Times node") for layer in model.per_example_plan().layers)
    rng = np.random.RandomState(4)
    data = (rng.standard_normal((9, 3, 4)), rng.randint(0, 3, 9))
    assert row_error(model.per_example_grads(data), loop_grads(model, data)) <= PEX_TOL[dtype]
