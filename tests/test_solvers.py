"""Inverse-HVP solvers on the NumPy reference models (float64), against exact dense solves.

Problems: logistic and softmax regression on 1000 examples whose L2 term is chosen so that the exact
Hessian has condition number ≈ 10 and ≈ 1e3 (checked numerically in ``test_problem_conditioning``).
"""
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from scipy.sparse.linalg import aslinearoperator

from conftest import make_classification
from influence import HessianOperator
from influence import solvers
from influence.solvers import (solve, Solution, ConvergenceWarning, NonPositiveCurvatureError,
                               DivergenceError, LowRankInverse)
from influence.models import LogisticRegression, SoftmaxRegression

#: Finite-difference HVP error (float64 central differences), relative to ‖H‖‖x‖.
FD_TOL = 1e-8
#: CG tolerance used in the tests, and the allowed error of x against np.linalg.solve (× cond).
CG_RTOL = 1e-8
#: direct / lanczos(k = d) against the exact solve.
DIRECT_TOL = 1e-8
#: LiSSA at its defaults (depth 5000, batch 256, auto scale): relative error of x.
LISSA_TOL = 0.05
#: Condition-number targets of the test Hessians and the accepted deviation factor.
CONDS = (10.0, 1e3)
COND_SLACK = 1.05


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def make_problem(kind, cond, n=1000, p=10, k=3, seed=0):
    """(model, data, exact Hessian) with the L2 term set so that cond(H) = ``cond``."""
    if kind == "logistic":
        x, y = make_classification(n, p, 2, seed=seed, cond=100.0)
        model = LogisticRegression(p, random_state=seed, scale=0.3)
    else:
        x, y = make_classification(n, p, k, seed=seed, cond=100.0)
        model = SoftmaxRegression(p, k, random_state=seed, scale=0.3)
    e = np.linalg.eigvalsh(model.hessian((x, y)))
    l2 = (e[-1] - cond * e[0]) / (cond - 1.0)
    assert l2 > 0
    model.l2 = l2
    return model, (x, y), model.hessian((x, y))


_CACHE = {}


def problem(kind, cond):
    key = (kind, cond)
    if key not in _CACHE:
        _CACHE[key] = make_problem(kind, cond)
    model, data, Hx = _CACHE[key]
    return model, data, Hx


def rhs(model, seed=1):
    return np.random.RandomState(seed).standard_normal(model.n_params)


PROBLEMS = [(kind, cond) for kind in ("logistic", "softmax") for cond in CONDS]


@pytest.mark.parametrize("kind,cond", PROBLEMS)
def test_problem_conditioning(kind, cond):
    _, _, Hx = problem(kind, cond)
    e = np.linalg.eigvalsh(Hx)
    assert cond / COND_SLACK <= e[-1] / e[0] <= cond * COND_SLACK


@pytest.mark.parametrize("kind,cond", PROBLEMS)
def test_cg_matches_exact(kind, cond):
    model, data, Hx = problem(kind, cond)
    b = rhs(model)
    H = HessianOperator(model, data)
    s = solve(H, b, method="cg", rtol=CG_RTOL)
    assert isinstance(s, Solution) and s.converged
    # residual against the EXACT Hessian: CG's tolerance plus the finite-difference error of the HVPs
    true_res = np.linalg.norm(Hx @ s.x - b)
    assert true_res <= CG_RTOL * np.linalg.norm(b) + FD_TOL * np.linalg.norm(Hx, 2) * np.linalg.norm(s.x)
    # the reported residual is measured with one more finite-difference product, so it carries its error
    fd_noise = FD_TOL * np.linalg.norm(Hx, 2) * np.linalg.norm(s.x) / np.linalg.norm(b)
    assert s.residual <= CG_RTOL + fd_noise
    exact = np.linalg.solve(Hx, b)
    assert _rel(s.x, exact) <= cond * (CG_RTOL + FD_TOL)
    assert s.n_hvp == H.n_hvp == s.n_iter + 1      # one extra product for the residual
    assert s.seconds >= 0


@pytest.mark.parametrize("kind,cond", PROBLEMS)
def test_direct_and_lanczos_full_rank(kind, cond):
    model, data, Hx = problem(kind, cond)
    b = rhs(model)
    exact = np.linalg.solve(Hx, b)
    H = HessianOperator(model, data)
    s = solve(H, b, method="direct")
    assert s.converged and s.n_hvp == model.n_params
    assert _rel(s.x, exact) <= DIRECT_TOL * max(1.0, cond / 100.0)
    assert s.residual <= 1e-12
    lz = solve(H, b, method="lanczos", k=model.n_params)
    assert lz.converged
    assert _rel(lz.x, s.x) <= 1e-10
    # k = d - 1 also takes the dense path, k < d - 1 goes through eigsh
    inv = solvers.lanczos_inverse(H, k=model.n_params - 1)
    assert inv.rank == model.n_params - 1


@pytest.mark.parametrize("kind,cond", PROBLEMS)
def test_lissa_defaults_within_tolerance(kind, cond):
    model, data, Hx = problem(kind, cond)
    b = rhs(model)
    H = HessianOperator(model, data)
    with pytest.warns(ConvergenceWarning, match="residual"):   # minibatch LiSSA always runs its depth
        s = solve(H, b, method="lissa")
    assert _rel(s.x, np.linalg.solve(Hx, b)) <= LISSA_TOL
    assert s.n_iter == solvers.LISSA_DEPTH
    assert s.n_hvp == solvers.LISSA_DEPTH + solvers.POWER_STEPS + 1


def test_lissa_deterministic_full_batch_converges():
    model, data, Hx = problem("logistic", 10.0)
    b = rhs(model)
    H = HessianOperator(model, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        s = solvers.lissa(H, b, batch_size=None, rtol=1e-10)
    assert s.converged and s.n_iter < solvers.LISSA_DEPTH
    assert _rel(s.x, np.linalg.solve(Hx, b)) <= 1e-7


def test_lissa_damping_same_system_as_cg():
    model, data, Hx = problem("softmax", 10.0)
    b = rhs(model)
    lam = 0.05
    exact = np.linalg.solve(Hx + lam * np.eye(len(b)), b)
    H = HessianOperator(model, data, damping=0.02)      # 0.02 in the operator + 0.03 extra
    c = solvers.cg(H, b, damping=0.03, rtol=1e-10)
    assert _rel(c.x, exact) <= 1e-7
    l = solvers.lissa(H, b, damping=0.03, batch_size=None, rtol=1e-12, depth=2000)
    assert _rel(l.x, exact) <= 1e-7
    d = solvers.direct(H, b, damping=0.03)
    assert _rel(d.x, exact) <= 1e-8
    lz = solvers.lanczos(H, b, damping=0.03, k=len(b))
    assert _rel(lz.x, exact) <= 1e-8
    inv = solvers.lanczos_inverse(H, k=len(b), damping=0.03)
    assert inv.damping == pytest.approx(0.05)
    np.testing.assert_allclose(inv.eigenvalues[::-1], np.linalg.eigvalsh(Hx), rtol=0, atol=1e-7)


def test_lissa_too_small_scale_diverges():
    model, data, Hx = problem("logistic", 10.0)
    lam_max = np.linalg.eigvalsh(Hx)[-1]
    H = HessianOperator(model, data)
    with pytest.raises(DivergenceError, match=r"pass scale >= ([0-9.e+-]+)") as info:
        solvers.lissa(H, rhs(model), scale=0.1 * lam_max)
    import re
    suggested = float(re.search(r"pass scale >= ([0-9.e+-]+)", str(info.value)).group(1))
    assert suggested >= 0.5 * lam_max * 0.99


def test_lissa_random_state_bit_for_bit():
    model, data, _ = problem("softmax", 10.0)
    b = rhs(model)
    runs = []
    for _ in range(2):
        H = HessianOperator(model, data)
        with pytest.warns(ConvergenceWarning):
            runs.append(solvers.lissa(H, b, depth=300, repeats=2, random_state=7).x)
    assert np.array_equal(runs[0], runs[1])
    H = HessianOperator(model, data)
    with pytest.warns(ConvergenceWarning):
        other = solvers.lissa(H, b, depth=300, repeats=2, random_state=8).x
    assert not np.array_equal(runs[0], other)


def test_lanczos_low_rank_inverse_reusable():
    model, data, Hx = problem("softmax", 10.0)
    H = HessianOperator(model, data)
    k = 5
    inv = solvers.lanczos_inverse(H, k=k, damping=0.01)
    assert isinstance(inv, LowRankInverse) and inv.converged and inv.rank == k
    w, V = np.linalg.eigh(Hx)
    np.testing.assert_allclose(inv.eigenvalues, w[::-1][:k], rtol=1e-6)
    B = np.random.RandomState(3).standard_normal((model.n_params, 4))
    Vk = V[:, ::-1][:, :k]
    expected = Vk @ np.diag(1.0 / (w[::-1][:k] + 0.01)) @ Vk.T @ B
    np.testing.assert_allclose(inv @ B, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(inv.apply(B[:, 0]), expected[:, 0], rtol=1e-6, atol=1e-8)
    s = solvers.lanczos(H, B[:, 0], k=k, damping=0.01)
    np.testing.assert_allclose(s.x, expected[:, 0], rtol=1e-6, atol=1e-8)
    assert 0 < s.residual < 1


@pytest.mark.parametrize("method", list(solvers.METHODS))
def test_zero_rhs(method):
    model, data, _ = problem("logistic", 10.0)
    H = HessianOperator(model, data)
    s = solve(H, np.zeros(model.n_params), method=method)
    assert s.converged and s.residual == 0.0 and s.n_hvp == 0 and not s.x.any()
    assert H.n_hvp == 0


def test_x0_not_modified_and_used():
    # cond 10: from an x0 near the solution the first residual is one finite-difference product,
    # whose noise (~FD_TOL·cond relative) must stay below rtol
    model, data, Hx = problem("logistic", 10.0)
    b = rhs(model)
    exact = np.linalg.solve(Hx, b)
    x0 = exact + 1e-3 * np.random.RandomState(5).standard_normal(len(b))
    keep = x0.copy()
    H = HessianOperator(model, data)
    s = solvers.cg(H, b, x0=x0, rtol=CG_RTOL)
    assert np.array_equal(x0, keep)
    assert s.converged and _rel(s.x, exact) <= 1e-5
    cold = solvers.cg(HessianOperator(model, data), b, rtol=CG_RTOL)
    assert s.n_iter <= cold.n_iter


def test_maxiter_one_warns():
    model, data, _ = problem("softmax", 1e3)
    H = HessianOperator(model, data)
    with pytest.warns(ConvergenceWarning, match="residual"):
        s = solvers.cg(H, rhs(model), maxiter=1)
    assert not s.converged and s.n_iter == 1 and s.residual > 1e-6
    with pytest.warns(ConvergenceWarning, match="residual"):
        s = solvers.lissa(H, rhs(model), depth=1)
    assert not s.converged and s.n_iter == 1


def _indefinite(d=12, neg=-0.5, seed=0):
    q, _ = np.linalg.qr(np.random.RandomState(seed).standard_normal((d, d)))
    w = np.linspace(1.0, 3.0, d)
    w[0] = neg
    return (q * w) @ q.T


def test_cg_non_positive_curvature():
    A = _indefinite()
    b = np.random.RandomState(1).standard_normal(12)
    with pytest.raises(NonPositiveCurvatureError, match="damping must exceed") as info:
        solvers.cg(aslinearoperator(A), b)
    # the estimate (a Lanczos upper bound) names a negative eigenvalue between −0.5 and 0
    assert "damping >" in str(info.value)
    # with damping beyond the negative eigenvalue it solves
    s = solvers.cg(aslinearoperator(A), b, damping=0.6, rtol=1e-10)
    assert _rel(s.x, np.linalg.solve(A + 0.6 * np.eye(12), b)) <= 1e-8


def test_direct_non_positive_definite_names_eigenvalue():
    A = _indefinite()
    with pytest.raises(NonPositiveCurvatureError, match=r"smallest eigenvalue is -0\.5"):
        solvers.direct(aslinearoperator(A), np.ones(12))


def test_lissa_indefinite_operator():
    A = _indefinite()
    with pytest.raises(ValueError, match="damping"):
        solvers.lissa(aslinearoperator(A), np.ones(12))


def test_plain_linear_operator_all_methods():
    A = _indefinite(neg=0.2)
    b = np.random.RandomState(2).standard_normal(12)
    exact = np.linalg.solve(A, b)
    for method in solvers.METHODS:
        opts = {"cg": {"rtol": 1e-12}, "lissa": {"rtol": 1e-12}, "lanczos": {"k": 12}}.get(method, {})
        s = solve(aslinearoperator(A), b, method=method, **opts)
        assert _rel(s.x, exact) <= 1e-8, method


def test_direct_refuses_large_dimension():
    d = solvers.DIRECT_MAX_DIM + 1
    op = aslinearoperator(np.eye(3))
    from scipy.sparse.linalg import LinearOperator
    big = LinearOperator((d, d), matvec=lambda v: v, dtype=np.float64)
    with pytest.raises(ValueError, match="method='cg'"):
        solvers.direct(big, np.ones(d))
    assert solvers.direct(op, np.ones(3)).converged


@pytest.mark.parametrize("call,match", [
    (lambda H, b: solve(H, b[:-1]), "shape"),
    (lambda H, b: solve(H, np.where(np.arange(b.size) == 0, np.nan, b)), "NaN"),
    (lambda H, b: solve(H, b, method="newton"), "method='newton'"),
    (lambda H, b: solve(H, b, damping=-1.0), "damping=-1.0"),
    (lambda H, b: solve(H, b, method="lissa", depth=0), "depth=0"),
    (lambda H, b: solve(H, b, method="lissa", repeats=0), "repeats=0"),
    (lambda H, b: solve(H, b, method="lissa", batch_size=0), "batch_size=0"),
    (lambda H, b: solve(H, b, method="lissa", scale=-2.0), "scale=-2.0"),
    (lambda H, b: solve(H, b, method="lissa", scale="big"), "scale='big'"),
    (lambda H, b: solve(H, b, method="cg", maxiter=0), "maxiter=0"),
    (lambda H, b: solve(H, b, method="cg", rtol=float("nan")), "rtol=nan"),
    (lambda H, b: solve(H, b, method="cg", x0=np.ones(3)), "x0 has shape"),
    (lambda H, b: solve(H, b, method="cg", depth=3), "'depth' is not accepted"),
    (lambda H, b: solve(H, b, method="lanczos", k=10 ** 6), "k=1000000"),
])
def test_bad_inputs(call, match):
    model, data, _ = problem("logistic", 10.0)
    H = HessianOperator(model, data)
    with pytest.raises(ValueError, match=match) as info:
        call(H, rhs(model))
    assert "\n" not in str(info.value)


def test_progress_bar_writes_to_stderr(capsys):
    model, data, _ = problem("logistic", 10.0)
    H = HessianOperator(model, data)
    s = solvers.cg(H, rhs(model), progress=True)
    out, err = capsys.readouterr()
    assert s.converged and out == ""
    quiet = solvers.cg(HessianOperator(model, data), rhs(model))
    out, err2 = capsys.readouterr()
    assert err2 == "" and np.array_equal(quiet.x, s.x)


def test_callbacks_see_iterates():
    model, data, Hx = problem("logistic", 10.0)
    b = rhs(model)
    seen = []
    s = solvers.cg(HessianOperator(model, data), b, rtol=1e-10, callback=seen.append)
    assert 1 <= len(seen) <= s.n_iter and np.allclose(seen[-1], s.x)
    steps = []
    with pytest.warns(ConvergenceWarning):
        l = solvers.lissa(HessianOperator(model, data), b, depth=50,
                          callback=lambda j, x: steps.append((j, x)))
    assert [j for j, _ in steps] == list(range(1, 51)) and np.array_equal(steps[-1][1], l.x)


def test_compat_shim_spelling():
    from influence import _compat
    import inspect
    import scipy.sparse.linalg as spla
    params = inspect.signature(spla.cg).parameters
    assert _compat.CG_USES_RTOL == ("rtol" in params)
    x, info = _compat.cg(aslinearoperator(np.diag([1.0, 2.0])), np.array([1.0, 1.0]), rtol=1e-12)
    assert info == 0 and np.allclose(x, [1.0, 0.5])


class _NoisyOperator(spla.LinearOperator):
    """A symmetric positive definite matrix whose products carry relative noise, like float32
    finite differences: CG's residual stalls near the noise level."""

    def __init__(self, A, noise, seed=0):
        self.A, self.noise, self.rng = A, noise, np.random.RandomState(seed)
        super(_NoisyOperator, self).__init__(dtype=np.float64, shape=A.shape)

    def _matvec(self, v):
        av = self.A @ np.ravel(v)
        return av + self.noise * np.linalg.norm(av) * self.rng.standard_normal(av.shape)


def test_cg_stagnation_stops_with_the_best_iterate():
    rng = np.random.RandomState(0)
    q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    A = (q * np.geomspace(1.0, 1e-4, 60)) @ q.T
    b = rng.standard_normal(60)
    # off by default for an operator without a float32 model: runs to maxiter
    with pytest.warns(ConvergenceWarning, match="after 300 iterations"):
        full = solvers.cg(_NoisyOperator(A, 1e-5), b, rtol=1e-12, maxiter=300)
    assert full.n_iter == 300 and not full.converged
    seen = []
    with pytest.warns(ConvergenceWarning, match="no progress in the last 20"):
        early = solvers.cg(_NoisyOperator(A, 1e-5), b, rtol=1e-12, maxiter=300, stagnation=20,
                           callback=seen.append)
    assert not early.converged and early.n_iter == len(seen) < 300
    # it returns the iterate 20 iterations before the stop (its best recursive residual), not the last
    assert np.array_equal(early.x, seen[-21]) and not np.array_equal(early.x, seen[-1])
    with pytest.raises(ValueError, match="stagnation=0"):
        solvers.cg(_NoisyOperator(A, 1e-5), b, stagnation=0)
