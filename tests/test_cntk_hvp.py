"""influence.curvature.hessian and the CNTK adapter against closed forms (needs CNTK; skipped elsewhere)."""
import numpy as np
import pytest

import influence
from influence.adapters.cntk import build_network
from conftest import make_classification, softmax_reference

#: The notebook's toy: Hv must be 1 and 1 to this absolute tolerance in float32.
TOY_TOL = 1e-6
#: Relative error of HVPs of an L2 softmax regression vs the closed form.
SOFTMAX_HVP_TOL = {np.float32: 1e-3, np.float64: 1e-8}
#: CNTK and NumPy agree on loss and gradient up to the dtype's rounding.
ADAPTER_TOL = {np.float32: 1e-5, np.float64: 1e-12}

P, K = 6, 3


def _toy(C, seed):
    x = C.input_variable(1)
    h = C.layers.Dense(1, activation=None, init=C.uniform(1, seed=seed), bias=False)(x)
    return x, C.layers.Dense(1, activation=None, init=C.uniform(1, seed=seed + 1000), bias=False)(h)


def _values(y):
    return [np.array(p.value, copy=True) for p in y.parameters]


@pytest.mark.parametrize("seed", range(5))
def test_toy_example_is_exact_to_1e6_and_weights_untouched(cntk, seed):
    x, y = _toy(cntk, seed)
    before = _values(y)
    v = {p: np.ones(p.shape) for p in y.parameters}
    hv = influence.hvp(y, np.array([[1.0]], dtype=np.float32), v)
    assert set(hv) == set(y.parameters)
    for p in y.parameters:
        assert abs(float(hv[p]) - 1.0) <= TOY_TOL
    assert all(np.array_equal(a, b) for a, b in zip(before, _values(y)))
    # a flat vector gives a flat result; a dict feed keyed by the input works too
    flat = influence.hvp(y, {x: np.array([[1.0]])}, np.ones(2))
    assert flat.shape == (2,) and np.abs(flat - 1).max() <= TOY_TOL


def test_toy_fixed_step_reproduces_the_notebook(cntk):
    _, y = _toy(cntk, 0)
    hv = influence.hvp(y, np.array([[1.0]], dtype=np.float32), np.ones(2), r=1e-4)
    assert np.abs(hv - 1).max() > 1e-5      # float32 rounding at r = 1e-4, as the notebook saw


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def softmax(request, cntk):
    dtype = request.param
    x, y = make_classification(150, P, K, seed=3)
    model = influence.CNTKModel(build_network(P, K, dtype=dtype, seed=2), loss="cross_entropy", l2=0.02)
    ref, perm = softmax_reference(model, P, K)
    return dtype, model, ref, perm, (x, y)


def test_adapter_matches_numpy_model(softmax):
    dtype, model, ref, perm, data = softmax
    assert model.dtype == dtype and model.n_params == P * K + K
    assert model.loss(data) == pytest.approx(ref.loss(data), rel=ADAPTER_TOL[dtype])
    g = model.grad(data, batch_size=40)
    assert np.abs(g[perm] - ref.grad(data)).max() <= ADAPTER_TOL[dtype]
    np.testing.assert_allclose(model.per_example_losses(data), ref.per_example_losses(data),
                               rtol=ADAPTER_TOL[dtype] * 10)
    G = model.per_example_grads((data[0][:5], data[1][:5]))
    np.testing.assert_allclose(G[:, perm], ref.per_example_grads((data[0][:5], data[1][:5])),
                               atol=ADAPTER_TOL[dtype] * 10)


def test_softmax_hvp_matches_closed_form(softmax):
    dtype, model, ref, perm, data = softmax
    H = ref.hessian(data)
    before = model.get_params()
    op = influence.HessianOperator(model, data)
    rng = np.random.RandomState(0)
    u, v = rng.standard_normal((2, model.n_params))
    inv = np.argsort(perm)
    hv = op @ v
    exact = H @ v[perm]
    assert np.linalg.norm(hv[perm] - exact) / np.linalg.norm(exact) <= SOFTMAX_HVP_TOL[dtype]
    hu = op @ u
    assert abs(u @ hv - v @ hu) <= SOFTMAX_HVP_TOL[dtype] * np.linalg.norm(u) * np.linalg.norm(hv)
    assert np.array_equal(model.get_params(), before)
    # perm is a permutation, and mapped back to CNTK's order the exact product matches there too
    assert np.array_equal(np.sort(perm), np.arange(model.n_params))
    assert np.linalg.norm(hv - exact[inv]) / np.linalg.norm(exact) <= SOFTMAX_HVP_TOL[dtype]


def test_hvp_function_on_a_loss_function(softmax, cntk):
    # influence.curvature.hessian on the raw CNTK loss (summed over the batch) = n·(H − l2·I)·v
    dtype, model, ref, perm, (x, y) = softmax
    onehot = np.eye(K)[y]
    feed = {model.features: x, model.labels: onehot}
    v = np.random.RandomState(5).standard_normal(model.n_params)
    hv = influence.hvp(model.loss_function, feed, v)
    exact = len(x) * (ref.hessian((x, y)) - ref.l2 * np.eye(model.n_params)) @ v[perm]
    assert np.linalg.norm(hv[perm] - exact) / np.linalg.norm(exact) <= SOFTMAX_HVP_TOL[dtype]


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_failure_between_plus_and_minus_gradients_restores_weights(cntk, exc):
    model = influence.CNTKModel(build_network(P, K, seed=1), l2=0.01)
    data = make_classification(50, P, K)
    before = model.get_params()
    op = influence.HessianOperator(model, data, rel_step=1e-2)
    original, calls = model._grad_sum, [0]

    def failing(batch):
        calls[0] += 1
        if calls[0] == 2:          # after g(w + r v), before g(w − r v)
            raise exc("injected")
        return original(batch)

    model._grad_sum = failing
    with pytest.raises(exc):
        op @ np.ones(model.n_params)
    assert np.array_equal(model.get_params(), before)


def test_bad_input_is_refused_with_weights_untouched(cntk):
    z = build_network(P, K, seed=4)
    model = influence.CNTKModel(z, l2=0.01)
    before = model.get_params()
    x, y = make_classification(20, P, K)
    cases = [
        ((np.ones((20, P + 1)), y), "expects"),
        ((np.array([["a"] * P] * 20), y), "dtype"),
        ((np.where(np.eye(20, P) > 0, np.nan, x), y), "NaN or Inf"),
        ((np.zeros((0, P)), np.zeros(0, int)), "empty"),
        ((x, y + K), "outside 0..2"),
        ((x, y.astype(float)), "integer class labels"),
    ]
    for data, needle in cases:
        with pytest.raises(ValueError) as err:
            influence.HessianOperator(model, data) @ np.ones(model.n_params)
        assert needle in str(err.value) and "\n" not in str(err.value)
    params = z.parameters
    feed = np.ones((3, P), dtype=np.float32)
    loss = model.loss_function
    with pytest.raises(ValueError, match="no entry for parameter"):
        influence.hvp(loss, {model.features: feed, model.labels: np.eye(K)[[0, 1, 2]]},
                      {params[0]: np.ones(params[0].shape)})
    with pytest.raises(ValueError, match="has shape"):
        influence.hvp(loss, {model.features: feed, model.labels: np.eye(K)[[0, 1, 2]]},
                      {p: np.ones(3) for p in params})
    with pytest.raises(ValueError, match="expects shape"):
        influence.hvp(z, np.ones((3, P + 2)), np.ones(model.n_params))
    with pytest.raises(ValueError, match="loss="):
        influence.CNTKModel(z, loss="hinge")
    assert np.array_equal(model.get_params(), before)


def test_other_losses_match_closed_forms(cntk):
    x, y = make_classification(40, P, 2, seed=6)
    logit = influence.CNTKModel(build_network(P, 1, dtype=np.float64, seed=1), loss="binary_cross_entropy")
    s = logit.predict(x)[:, 0]
    np.testing.assert_allclose(logit.per_example_losses((x, y)), np.logaddexp(0, s) - y * s, rtol=1e-12)
    reg = influence.CNTKModel(build_network(P, 2, dtype=np.float64, seed=1), loss="squared_error")
    t = np.random.RandomState(0).standard_normal((40, 2))
    z = reg.predict(x)
    np.testing.assert_allclose(reg.per_example_losses((x, t)), ((z - t) ** 2).sum(1), rtol=1e-12)


def test_save_load_roundtrip_and_loss_function_form(cntk, tmp_path):
    model = influence.CNTKModel(build_network(P, K, hidden=(4,), seed=7), l2=0.01)
    path = str(tmp_path / "m.cntk")
    model.save(path)
    again = influence.CNTKModel.load(path, l2=0.01)
    assert np.array_equal(again.get_params(), model.get_params())
    data = make_classification(30, P, K)
    assert again.loss(data) == model.loss(data)
    as_loss = influence.CNTKModel(model.loss_function, loss=None, l2=0.01)
    assert as_loss.labels is model.labels or as_loss.labels.name == "labels"
    with pytest.raises(ValueError, match="not a CNTK model"):
        (tmp_path / "junk.cntk").write_text("junk")
        influence.CNTKModel.load(str(tmp_path / "junk.cntk"))


def test_loss_function_inputs_named_by_name_or_variable(cntk, tmp_path):
    # the label input first among the arguments, unusual names: naming must still work either way
    digit = cntk.input_variable(K, name="digit")
    pixels = cntk.input_variable(P, name="pixels")
    z = cntk.layers.Dense(K)(pixels)
    loss = cntk.cross_entropy_with_softmax(z, digit)
    path = str(tmp_path / "loss.cntk")
    loss.save(path)
    by_name = influence.CNTKModel.load(path, loss=None, features="pixels", labels="digit")
    assert by_name.features.name == "pixels" and by_name.labels.name == "digit"
    by_var = influence.CNTKModel(loss, loss=None, features=pixels)
    assert by_var.features.uid == pixels.uid and by_var.labels.uid == digit.uid
    with pytest.raises(ValueError, match="not an input"):
        influence.CNTKModel(loss, loss=None, features="nope")
