"""The finite-difference HVP core and HessianOperator on the NumPy reference models (no CNTK)."""
import numpy as np
import pytest

from influence.curvature.hessian import HessianOperator, adaptive_difference, central_difference
from influence.models import SoftmaxRegression, LogisticRegression
from conftest import make_classification

#: float64 central differences at the calibrated step: the error floor measured is ~1e-10.
FLOAT64_HVP_TOL = 1e-8
#: float32 model (float32 weights and arithmetic; measured ~1e-5..1e-4).
FLOAT32_HVP_TOL = 1e-3
#: Richardson extrapolation in float64.
RICHARDSON_TOL = 1e-10


def _problem(dtype=np.float64, l2=0.05, seed=0):
    x, y = make_classification(120, 5, 3, seed=seed)
    m = SoftmaxRegression(5, 3, l2=l2, dtype=dtype, random_state=seed, scale=1.0)
    return m, (x, y)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("dtype,tol", [(np.float64, FLOAT64_HVP_TOL), (np.float32, FLOAT32_HVP_TOL)])
def test_operator_matches_exact_hessian(dtype, tol):
    m, data = _problem(dtype)
    H = m.hessian(data)
    op = HessianOperator(m, data)
    rng = np.random.RandomState(1)
    for _ in range(3):
        v = rng.standard_normal(m.n_params)
        assert _rel(op @ v, H @ v) <= tol
    assert op.n_hvp == 3
    # steady state: 2 full-data gradient passes per product after the one-time calibration
    n_cal = op.calibration["richardson"].n_evals
    assert op.n_grad == n_cal + 3 * 2


def test_operator_symmetry_linearity_damping_and_batches():
    m, data = _problem()
    rng = np.random.RandomState(2)
    u, v = rng.standard_normal((2, m.n_params))
    op = HessianOperator(m, data)
    uHv, vHu = u @ (op @ v), v @ (op @ u)
    assert abs(uHv - vHu) <= FLOAT64_HVP_TOL * np.linalg.norm(u) * np.linalg.norm(op @ v)
    assert _rel(op @ (3.0 * v), 3.0 * (op @ v)) <= FLOAT64_HVP_TOL
    damped = HessianOperator(m, data, damping=0.5, rel_step=op.rel_step)
    assert _rel(damped @ v, op @ v + 0.5 * v) <= FLOAT64_HVP_TOL
    batched = HessianOperator(m, data, batch_size=7, rel_step=op.rel_step)
    assert _rel(batched @ v, op @ v) <= FLOAT64_HVP_TOL
    assert op.dtype == np.float64 and op.shape == (m.n_params, m.n_params)


def test_zero_vector_costs_nothing():
    m, data = _problem()
    op = HessianOperator(m, data)
    out = op @ np.zeros(m.n_params)
    assert not out.any() and op.n_grad == 0 and op.n_hvp == 1


def test_richardson_stencil_is_more_accurate():
    m, data = _problem()
    H = m.hessian(data)
    v = np.random.RandomState(3).standard_normal(m.n_params)
    op = HessianOperator(m, data, stencil="richardson")
    op @ v                                                   # calibrates
    assert _rel(op @ v, H @ v) <= RICHARDSON_TOL


def test_adaptive_difference_on_a_bilinear_function_takes_a_large_step():
    # f(w) = grad of w0*w1 = (w1, w0); its Hessian is [[0,1],[1,0]] exactly: the best step is large.
    class Params(object):
        dtype = np.dtype(np.float32)

        def __init__(self):
            self.w = np.array([0.3, -0.7], dtype=np.float32)

        def get_params(self):
            return self.w.copy()

        def set_params(self, w):
            self.w = np.array(w, dtype=np.float32)

    p = Params()
    before = p.get_params()
    f = lambda: p.w[::-1].astype(np.float64)
    value, step, (central, _) = adaptive_difference(f, p, np.ones(2))
    assert np.abs(value - 1.0).max() <= 1e-6
    assert step.t >= 0.25
    assert np.array_equal(p.get_params(), before)
    # the notebook's fixed r = 1e-4 in float32 is ~1.7e-4 off
    assert np.abs(central_difference(f, p, np.ones(2), 1e-4) - 1.0).max() > 1e-5


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_injected_failure_restores_weights_bit_identically(exc, fail_at):
    m, data = _problem(np.float32)
    before = m.get_params()
    op = HessianOperator(m, data)
    calls = [0]
    original = m._grad_sum

    def failing(batch):
        calls[0] += 1
        if calls[0] == fail_at:
            raise exc("injected")
        return original(batch)

    m._grad_sum = failing
    with pytest.raises(exc):
        op @ np.ones(m.n_params)
    assert np.array_equal(m.get_params(), before) and m.get_params().dtype == before.dtype


def test_operator_rejects_bad_arguments():
    m, data = _problem()
    with pytest.raises(ValueError, match="damping=-1"):
        HessianOperator(m, data, damping=-1)
    with pytest.raises(ValueError, match="stencil"):
        HessianOperator(m, data, stencil="forward")
    op = HessianOperator(m, data)
    with pytest.raises(ValueError, match="NaN or Inf"):
        op @ np.full(m.n_params, np.nan)
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(m, (np.zeros((0, 5)), np.zeros(0, int)))
    with pytest.raises(ValueError, match="expects"):
        HessianOperator(m, (np.zeros((4, 6)), np.zeros(4, int)))


def test_logistic_regression_operator():
    x, y = make_classification(80, 3, 2, seed=4)
    m = LogisticRegression(3, l2=0.01, scale=1.0)
    v = np.arange(1.0, 5.0)
    assert _rel(HessianOperator(m, (x, y)) @ v, m.hessian((x, y)) @ v) <= FLOAT64_HVP_TOL
