"""float32 paths against float64 ground truth, on NumPy reference models that compute in float32.

A float32 model (``dtype=np.float32``) computes its losses and gradients in float32, like a float32
CNTK network; its float64 twin holds the same (float32-representable) weights, and its exact Hessian
(``hessian``, float64 always) is the ground truth. Each test checks two things: the float32 result is
within a named float32 tolerance of the truth, and float32 arithmetic really happened (dtypes, or an
error above what float64 arithmetic leaves), so that a model silently computing in float64 fails.
Paths exercised: cg's dtype-dependent default ``rtol`` and its convergence report, lanczos/eigsh on
float32 products, forward scoring's float32 steps, gradient scoring, self-influence.
"""
import warnings

import numpy as np
import pytest

import influence
from influence import solvers
from influence.curvature.hessian import HessianOperator
from influence.models import LogisticRegression, SoftmaxRegression
from influence.scoring.scores import forward_steps
from conftest import make_classification

#: float32 gradient vs the float64 twin's, relative ‖·‖₂ (measured ~1e-7: float32 rounding) ...
FLOAT32_GRAD_TOL = 1e-5
#: ... and above this floor, which float64 arithmetic on the same weights stays under (~1e-16).
FLOAT32_FLOOR = 1e-10
#: HessianOperator products of the float32 model vs the exact Hessian (measured ~1e-5..1e-4).
FLOAT32_HVP_TOL = 1e-3
#: cg at its float32 default rtol: relative error of x against the exact solve (measured 5e-5).
CG_FLOAT32_X_TOL = 1e-3
#: lanczos on float32 products: top-k eigenvalues and the rank-k solution (measured ~2e-5 / 5e-5).
LANCZOS_FLOAT32_TOL = 1e-3
#: Influence scores and self-influence, float32 vs the float64 closed form (measured ~1e-5).
SCORES_FLOAT32_TOL = 1e-3
#: Estimated relative error of a float32 forward-difference step: above float64's (~1e-11) level.
FORWARD_STEP_FLOAT32_FLOOR = 1e-9
#: Eigenpairs of the lanczos test (d = 28).
K = 8


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def twins():
    """A float32 softmax regression fitted to an optimum, its float64 twin with the same weights,
    the data and the exact (float64) Hessian there."""
    x, y = make_classification(400, 6, 4, seed=0)
    train, test = (x[:300], y[:300]), (x[300:303], y[300:303])
    m32 = SoftmaxRegression(6, 4, l2=0.01, dtype=np.float32)
    influence.fit(m32, train, gtol=1e-6)
    m64 = SoftmaxRegression(6, 4, l2=0.01, dtype=np.float64)
    m64.set_params(m32.get_params())
    assert np.array_equal(m64.get_params(), m32.get_params())
    return m32, m64, train, test, m64.hessian(train)


def _logistic_twins():
    x, y = make_classification(120, 5, 2, seed=3)
    m32 = LogisticRegression(5, l2=0.1, dtype=np.float32, scale=1.0)
    m64 = LogisticRegression(5, l2=0.1, dtype=np.float64)
    m64.set_params(m32.get_params())
    return m32, m64, (x, y)


@pytest.mark.parametrize("kind", ["softmax", "logistic"])
def test_float32_model_computes_in_float32(twins, kind):
    if kind == "softmax":
        m32, m64, data = twins[0], twins[1], twins[2]
    else:
        m32, m64, data = _logistic_twins()
    batch = next(m32._batches(data, None))
    assert m32._grad_sum(batch).dtype == np.float32
    assert m32._per_example_grads(batch).dtype == np.float32
    assert m32._per_example_losses(batch).dtype == np.float32
    assert np.asarray(m32._loss_sum(batch)).dtype == np.float32
    # the exact Hessian stays the float64 ground truth, identical for both twins
    assert m32.hessian(data).dtype == np.float64
    np.testing.assert_array_equal(m32.hessian(data), m64.hessian(data))
    # float32 rounding shows in the results, within float32 accuracy
    for f in ("grad_sum", "per_example_grads", "per_example_losses"):   # (grad ≈ 0 at the optimum)
        err = _rel(getattr(m32, f)(data), getattr(m64, f)(data))
        assert FLOAT32_FLOOR < err <= FLOAT32_GRAD_TOL, (f, err)
    err64 = _rel(m64.grad_sum(data, batch_size=7), m64.grad_sum(data))
    assert err64 <= FLOAT32_FLOOR


def test_hessian_operator_float32(twins):
    m32, _, train, _, H = twins
    op = HessianOperator(m32, train)
    v = np.random.RandomState(1).standard_normal(m32.n_params)
    assert _rel(op @ v, H @ v) <= FLOAT32_HVP_TOL
    assert op.calibration["central"].error > FLOAT32_FLOOR     # a float32-sized error estimate


def test_cg_float32_default_rtol(twins):
    m32, m64, train, test, H = twins
    b = m64.per_example_grads(test)[0]
    exact = np.linalg.solve(H, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", solvers.ConvergenceWarning)
        s32 = influence.solve(HessianOperator(m32, train), b, method="cg")
        s64 = influence.solve(HessianOperator(m64, train), b, method="cg")
    assert s32.converged and s32.residual <= solvers.CG_RTOL_FLOAT32
    assert _rel(s32.x, exact) <= CG_FLOAT32_X_TOL
    # the float32 default stops earlier, at a residual float64 products go below
    assert s32.residual > solvers.CG_RTOL >= s64.residual
    assert s32.n_iter < s64.n_iter


def test_cg_float32_reports_an_unreachable_rtol_honestly(twins):
    """rtol below what float32 products allow: cg must not claim convergence (the reported residual
    is the true one and exceeds rtol), warns naming the residual, and still returns an x as good as
    float32 allows."""
    m32, m64, train, test, H = twins
    b = m64.per_example_grads(test)[1]
    rtol = 1e-10
    with pytest.warns(solvers.ConvergenceWarning, match="residual"):
        s = influence.solve(HessianOperator(m32, train), b, method="cg", rtol=rtol, maxiter=2000)
    assert s.residual > rtol
    assert not s.converged, "cg claims convergence at rtol=%g with residual %.3g" % (rtol, s.residual)
    assert _rel(s.x, np.linalg.solve(H, b)) <= CG_FLOAT32_X_TOL


def test_lanczos_float32_eigsh_path(twins):
    m32, m64, train, test, H = twins
    assert K < m32.n_params - 1                      # eigsh, not the dense fallback
    evals, evecs = np.linalg.eigh(H)
    top, V = evals[::-1][:K], evecs[:, ::-1][:, :K]
    inv = influence.lanczos_inverse(HessianOperator(m32, train), k=K)
    assert inv.converged
    assert _rel(inv.eigenvalues, top) <= LANCZOS_FLOAT32_TOL
    assert _rel(inv.eigenvalues, top) > FLOAT32_FLOOR
    b = m64.per_example_grads(test)[0]
    s = influence.solve(HessianOperator(m32, train), b, method="lanczos", k=K, damping=0.0)
    assert _rel(s.x, V @ ((V.T @ b) / top)) <= LANCZOS_FLOAT32_TOL


@pytest.mark.parametrize("scoring", ["forward", "gradient"])
def test_influence_scores_float32(twins, scoring):
    m32, m64, train, test, H = twins
    G, gt = m64.per_example_grads(train), m64.per_example_grads(test)
    expected = -(gt @ np.linalg.solve(H, G.T))
    got = influence.influence_scores(m32, train, test, solver="direct", scoring=scoring)
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert _rel(got, expected) <= SCORES_FLOAT32_TOL


def test_forward_steps_float32(twins):
    m32, m64, train, test, H = twins
    s = np.linalg.solve(H, m64.per_example_grads(test).T).T
    for step32, step64 in zip(forward_steps(m32, train, s), forward_steps(m64, train, s)):
        assert step32.error > FORWARD_STEP_FLOAT32_FLOOR >= step64.error
        assert step32.r > step64.r        # float32 rounding pushes the best step up


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_self_influence_float32(twins, method):
    m32, m64, train, _, H = twins
    G = m64.per_example_grads(train)
    expected = np.sum(G * np.linalg.solve(H, G.T).T, axis=1)
    options = {"k": m32.n_params - 2} if method == "lanczos" else {}
    got = influence.self_influence(m32, train, method=method, **options)
    assert _rel(got, expected) <= SCORES_FLOAT32_TOL
