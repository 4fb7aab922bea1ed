"""influence.fit: full-batch L-BFGS to an optimum, restoring weights on failure (NumPy models)."""
import numpy as np
import pytest

import influence
from influence.models import SoftmaxRegression
from conftest import make_classification


def _data():
    return make_classification(200, 6, 3, seed=2)


def test_fit_reaches_optimum_and_sets_l2():
    data = _data()
    m = SoftmaxRegression(6, 3, l2=0.0)
    res = influence.fit(m, data, l2=0.01, gtol=1e-8)
    assert m.l2 == 0.01
    g = m.grad(data)
    assert res.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-6, abs=1e-12)
    assert np.max(np.abs(g)) <= 1e-7
    assert res.loss == pytest.approx(m.loss(data), rel=1e-12)
    assert res.n_iter > 0 and res.seconds >= 0
    assert influence.check_optimum(m, data).ok


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_fit_restores_weights_and_l2_on_failure(monkeypatch, exc):
    data = _data()
    m = SoftmaxRegression(6, 3, l2=0.5)
    w = m.get_params()
    calls = {"n": 0}
    orig = m._grad_sum

    def failing(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise exc()
        return orig(batch)

    monkeypatch.setattr(m, "_grad_sum", failing)
    with pytest.raises(exc):
        influence.fit(m, data, l2=0.01)
    assert np.array_equal(m.get_params(), w) and m.l2 == 0.5


def test_fit_float32_model():
    data = _data()
    m = SoftmaxRegression(6, 3, l2=0.01, dtype=np.float32)
    res = influence.fit(m, data)
    assert m.get_params().dtype == np.float32
    assert res.grad_norm < 1e-4


def test_fit_rejects_bad_arguments():
    m = SoftmaxRegression(6, 3)
    with pytest.raises(ValueError):
        influence.fit(m, _data(), l2=-1.0)
    with pytest.raises(ValueError):
        influence.fit(m, _data(), gtol=0)
