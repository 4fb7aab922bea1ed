"""Inverse-HVP solvers on the NumPy reference models (float64), against exact dense solves.

Problems: logistic and softmax regression on 1000 examples whose L2 term is chosen so that the exact
Hessian has condition number ≈ 10 and ≈ 1e3 (checked numerically in ``test_problem_conditioning``).
"""
import re
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from scipy.sparse.linalg import aslinearoperator

from conftest import make_classification
from influence import HessianOperator
from influence import solvers
from influence.solvers.cg import CG_RESTARTS
from influence.solvers import (solve, Solution, ConvergenceWarning, NonPositiveCurvatureError,
                               DivergenceError, LowRankInverse)
from influence.solvers import dense
from influence.models import LogisticRegression, SoftmaxRegression

#: Finite-difference HVP error (float64 central differences), relative to ‖H‖‖x‖.
FD_TOL = 1e-8
#: CG tolerance used in the tests, and the allowed error of x against np.linalg.solve (× cond).
CG_RTOL = 1e-8
#: direct / lanczos(k = d) against the exact solve.
DIRECT_TOL = 1e-8
#: LiSSA at its defaults (5000 steps, batch 256, auto scale): relative error of x.
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
    # one product per iteration and one for the residual; SciPy < 1.12 recomputes its residual once
    # more; each restart (SciPy's recursive residual met rtol, the measured one did not) costs two
    assert s.n_hvp == H.n_hvp and s.n_iter + 1 <= s.n_hvp <= s.n_iter + 2 + 2 * CG_RESTARTS
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
def test_lissa_classic_defaults_within_tolerance(kind, cond):
    model, data, Hx = problem(kind, cond)
    b = rhs(model)
    H = HessianOperator(model, data)
    with pytest.warns(ConvergenceWarning, match="true residual"):   # minibatch noise: it runs maxiter steps
        s = solve(H, b, method="lissa", variant="classic")
    assert _rel(s.x, np.linalg.solve(Hx, b)) <= LISSA_TOL
    assert s.n_iter == solvers.LISSA_MAXITER
    # power iteration + minibatch steps + one full product per residual check + the final residual
    checks = solvers.LISSA_MAXITER // solvers.LISSA_CHECK_EVERY
    assert s.n_hvp == solvers.LISSA_MAXITER + solvers.POWER_STEPS + checks + 1
    # the reported residual is the true one (exact Hessian), up to the finite-difference error
    assert abs(s.residual - _rel(Hx @ s.x, b)) <= FD_TOL * cond


def test_lissa_deterministic_full_batch_converges():
    model, data, Hx = problem("logistic", 10.0)
    b = rhs(model)
    H = HessianOperator(model, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        s = solvers.lissa(H, b, batch_size=None, rtol=1e-8)
    assert s.converged and s.n_iter < solvers.LISSA_MAXITER and s.residual <= 1e-8
    assert _rel(s.x, np.linalg.solve(Hx, b)) <= 1e-7


def test_lissa_damping_same_system_as_cg():
    model, data, Hx = problem("softmax", 10.0)
    b = rhs(model)
    lam = 0.05
    exact = np.linalg.solve(Hx + lam * np.eye(len(b)), b)
    H = HessianOperator(model, data, damping=0.02)      # 0.02 in the operator + 0.03 extra
    c = solvers.cg(H, b, damping=0.03, rtol=1e-10)
    assert _rel(c.x, exact) <= 1e-7
    l = solvers.lissa(H, b, damping=0.03, batch_size=None, rtol=1e-9, maxiter=2000)
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
    suggested = float(re.search(r"pass scale >= ([0-9.e+-]+)", str(info.value)).group(1))
    assert suggested >= 0.5 * lam_max * 0.99


def test_lissa_random_state_bit_for_bit():
    model, data, _ = problem("softmax", 10.0)
    b = rhs(model)
    runs = []
    for _ in range(2):
        H = HessianOperator(model, data)
        with pytest.warns(ConvergenceWarning):
            runs.append(solvers.lissa(H, b, maxiter=300, repeats=2, random_state=7, variant="classic").x)
    assert np.array_equal(runs[0], runs[1])
    H = HessianOperator(model, data)
    with pytest.warns(ConvergenceWarning):
        other = solvers.lissa(H, b, maxiter=300, repeats=2, random_state=8, variant="classic").x
    assert not np.array_equal(runs[0], other)
    with pytest.warns(ConvergenceWarning):         # random_state=None is the fixed seed 0
        default = solvers.lissa(HessianOperator(model, data), b, maxiter=300, variant="classic")
    with pytest.warns(ConvergenceWarning):
        zero = solvers.lissa(HessianOperator(model, data), b, maxiter=300, random_state=0, variant="classic")
    assert np.array_equal(default.x, zero.x)


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
        s = solvers.lissa(H, rhs(model), maxiter=1)
    assert not s.converged and s.n_iter == 1


def _indefinite(d=12, neg=-0.5, seed=0):
    q, _ = np.linalg.qr(np.random.RandomState(seed).standard_normal((d, d)))
    w = np.linspace(1.0, 3.0, d)
    w[0] = neg
    return (q * w) @ q.T


def _numbers(message):
    """(smallest eigenvalue, required damping, suggested damping, margin) from the not-PD message."""
    smallest = float(re.search(r"smallest eigenvalue is (?:at most )?(-?[0-9.e+-]+)", message).group(1))
    need = float(re.search(r"pass damping > (-?[0-9.e+-]+)", message).group(1))
    suggested = float(re.search(r"e\.g\. damping=(-?[0-9.e+-]+)", message).group(1))
    margin = float(re.search(r"margin (-?[0-9.e+-]+)", message).group(1))
    return smallest, need, suggested, margin


def test_cg_non_positive_curvature():
    A = _indefinite()
    b = np.random.RandomState(1).standard_normal(12)
    with pytest.raises(NonPositiveCurvatureError, match="at most") as info:
        solvers.cg(aslinearoperator(A), b, damping=0.1)
    smallest, need, suggested, margin = _numbers(str(info.value))
    # the estimate (a Lanczos upper bound) of λ_min(A + 0.1 I) = −0.4 lies in [−0.4, 0]
    assert -0.4 - 1e-9 <= smallest <= 0
    assert need == pytest.approx(0.1 - smallest, rel=1e-3)
    assert suggested == pytest.approx(need + margin, rel=1e-2) and suggested > 0.5
    # the damping it suggests solves
    s = solvers.cg(aslinearoperator(A), b, damping=suggested, rtol=1e-10)
    assert _rel(s.x, np.linalg.solve(A + suggested * np.eye(12), b)) <= 1e-8


@pytest.mark.parametrize("method", ["direct", "lanczos"])
def test_non_positive_definite_message_numbers(method):
    """λ_min(H) = −0.5 and damping=0.1: λ_min(H + 0.1 I) = −0.4, the damping to pass is > 0.5 (not 0.4)."""
    A = _indefinite(neg=-0.5)
    opts = {"lanczos": {"k": 12}}.get(method, {})
    with pytest.raises(NonPositiveCurvatureError) as info:
        solve(aslinearoperator(A), np.ones(12), method=method, damping=0.1, **opts)
    message = str(info.value)
    assert "\n" not in message and "damping=0.1" in message
    smallest, need, suggested, margin = _numbers(message)
    assert smallest == pytest.approx(-0.4, abs=1e-6)
    assert need == pytest.approx(0.5, abs=1e-6)
    assert margin == pytest.approx(solvers._common.NPD_MARGIN * 0.4)
    assert suggested == pytest.approx(0.5 + margin, rel=1e-2)
    assert solve(aslinearoperator(A), np.ones(12), method=method, damping=suggested, **opts).converged
    # the operator's own damping counts: H_op = H + 0.3 I, extra damping 0.1 -> pass damping > 0.2
    op = _Damped(A, 0.3)
    with pytest.raises(NonPositiveCurvatureError, match=r"pass damping > 0\.2\b") as info:
        solve(op, np.ones(12), method=method, damping=0.1, **opts)
    assert "own damping 0.3" in str(info.value)


class _Damped(spla.LinearOperator):
    """A + damping·I with the attribute ``damping``, like a HessianOperator."""

    def __init__(self, A, damping):
        self.A, self.damping = A, damping
        super(_Damped, self).__init__(dtype=np.float64, shape=A.shape)

    def _matvec(self, v):
        return self.A @ np.ravel(v) + self.damping * np.ravel(v)


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


def _identity(d):
    return spla.LinearOperator((d, d), matvec=lambda v: np.ravel(v).copy(), dtype=np.float64)


def test_dense_refusal_states_memory(monkeypatch):
    monkeypatch.setattr(dense, "available_memory", lambda: 10 ** 6)        # 1 MB available
    d = 200                                                                 # 2 matrices: 0.64 MB > 0.5 MB
    with pytest.raises(ValueError, match="method='cg'") as info:
        solvers.direct(_identity(d), np.ones(d))
    message = str(info.value)
    assert "\n" not in message and "d=200" in message and "2 d×d float64 matrices = 0.64 MB" in message
    assert "0.5 MB allowed" in message and "1 MB available" in message
    assert "DENSE_MEMORY_FRACTION" in message
    with pytest.raises(ValueError, match="d=200"):
        solvers.lanczos_inverse(_identity(d), k=d)                          # the dense path of lanczos too
    assert solvers.dense_matrix(_identity(d))[0].shape == (d, d)            # one matrix alone fits
    assert solvers.direct(_identity(150), np.ones(150)).converged          # 0.36 MB fits
    monkeypatch.setattr(dense, "DENSE_MEMORY_FRACTION", 0.7)                # the override users can set
    assert solvers.direct(_identity(d), np.ones(d)).converged
    # no /proc/meminfo: the fixed fallback, stated as assumed
    monkeypatch.setattr(dense, "available_memory", lambda: None)
    monkeypatch.setattr(dense, "DENSE_FALLBACK_MEMORY", 10 ** 6)
    monkeypatch.setattr(dense, "DENSE_MEMORY_FRACTION", 0.5)
    with pytest.raises(ValueError, match="assumed"):
        solvers.direct(_identity(d), np.ones(d))


def test_dense_path_readme_dimension():
    """d = 2410 (the README's mlp:32 digits model) is not refused on this machine."""
    d = 2410
    dense.check_dense_memory(d, 2)
    s = solvers.direct(_identity(d), np.arange(1.0, d + 1))
    assert s.converged and s.n_hvp == d and s.residual <= 1e-14


def test_available_memory_reads_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemAvailable:   12345678 kB\n")
    assert dense.available_memory(str(f)) == 12345678 * 1024
    assert dense.available_memory(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("call,match", [
    (lambda H, b: solve(H, b[:-1]), "shape"),
    (lambda H, b: solve(H, np.where(np.arange(b.size) == 0, np.nan, b)), "NaN"),
    (lambda H, b: solve(H, b, method="newton"), "method='newton'"),
    (lambda H, b: solve(H, b, damping=-1.0), "damping=-1.0"),
    (lambda H, b: solve(H, b, method="lissa", maxiter=0), "maxiter=0"),
    (lambda H, b: solve(H, b, method="lissa", check_every=0), "check_every=0"),
    (lambda H, b: solve(H, b, method="lissa", maxiter=5, depth=6), "pass only maxiter"),
    (lambda H, b: solve(H, b, method="direct", maxiter=5), "maxiter=5: method='direct' has no iterations"),
    (lambda H, b: solve(H, b, method="direct", x0=b), "x0 was given: method='direct'"),
    (lambda H, b: solve(H, b, method="lanczos", x0=b), "x0 was given: method='lanczos'"),
    (lambda H, b: solve(H, b, method="cg", atol=-1.0), "atol=-1.0"),
    (lambda H, b: solve(H, b, method="cg", callback=3), "callback=3"),
    (lambda H, b: solve(H, b, method="lissa", random_state="x"), "random_state='x'"),
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
    assert s.converged and out == "" and "cg:" in err
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
        l = solvers.lissa(HessianOperator(model, data), b, maxiter=50, callback=steps.append, variant="classic")
    assert len(steps) == 50 and np.array_equal(steps[-1], l.x)


def test_compat_shim_spelling():
    from influence.common import compat as _compat
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


# ---------------------------------------------------------------------------------------- one signature
def test_every_solver_has_the_common_signature():
    """inspect.signature: (H, b, *, <the common parameters in order, same defaults>, <keyword-only extras>)."""
    import inspect
    common = list(solvers._common.COMMON_PARAMETERS.items())
    for f in list(solvers.METHODS.values()) + [solve]:
        params = list(inspect.signature(f).parameters.values())
        assert [p.name for p in params[:2]] == ["H", "b"], f.__name__
        rest = [p for p in params[2:] if p.name != "method"]
        assert [(p.name, p.default) for p in rest[:len(common)]] == common, f.__name__
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in rest), f.__name__
    extras = {m: solvers.dispatch.method_extras(m) for m in solvers.METHODS}
    assert extras == {"cg": ["stagnation", "curvature_steps", "preconditioner"],
                      "lissa": ["variant", "scale", "batch_size", "repeats", "power_steps", "check_every",
                                "inner_steps", "preconditioner"],
                      "direct": [], "lanczos": ["k", "ncv", "eigsh_tol"]}


def _spd(d=12, cond=10.0, seed=0):
    q, _ = np.linalg.qr(np.random.RandomState(seed).standard_normal((d, d)))
    return (q * np.geomspace(cond, 1.0, d)) @ q.T


FULL_RANK = {"lanczos": {"k": 12}}


@pytest.mark.parametrize("method", list(solvers.METHODS))
def test_rtol_and_atol_bound_the_residual_for_every_method(method):
    A = _spd()
    b = np.random.RandomState(1).standard_normal(12)
    opts = FULL_RANK.get(method, {})
    for rtol, atol in [(1e-6, 0.0), (0.0, 1e-5 * np.linalg.norm(b)), (1e-9, 1e-7)]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            s = solve(aslinearoperator(A), b, method=method, rtol=rtol, atol=atol, **opts)
        true = np.linalg.norm(A @ s.x - b)
        assert s.converged and true <= max(rtol * np.linalg.norm(b), atol) * (1 + 1e-6), (rtol, atol)
        assert s.residual == pytest.approx(true / np.linalg.norm(b), rel=1e-6, abs=1e-15)


@pytest.mark.parametrize("method", ["cg", "lissa"])
def test_iterative_methods_stop_at_the_residual_target(method):
    """A loose rtol stops early: the residual is below it, and well above what a tight rtol reaches."""
    A = _spd(cond=100.0)
    b = np.random.RandomState(1).standard_normal(12)
    loose = solve(aslinearoperator(A), b, method=method, rtol=1e-2)
    tight = solve(aslinearoperator(A), b, method=method, rtol=1e-10, maxiter=100000)
    assert loose.converged and 1e-4 < loose.residual <= 1e-2
    assert tight.converged and tight.residual <= 1e-10 and loose.n_iter < tight.n_iter


def test_unreachable_target_of_lanczos_is_reported():
    A = _spd()
    b = np.random.RandomState(1).standard_normal(12)
    s = solve(aslinearoperator(A), b, method="lanczos", k=3)          # no rtol: the eigenpairs decide
    assert s.converged and s.residual > 0.1
    with pytest.warns(ConvergenceWarning, match="lanczos: relative residual"):
        s = solve(aslinearoperator(A), b, method="lanczos", k=3, rtol=1e-6)
    assert not s.converged


@pytest.mark.parametrize("method,maxiter,n_iter", [("cg", 2, 2), ("lissa", 3, 3)])
def test_maxiter_counts_iterations(method, maxiter, n_iter):
    A = _spd(cond=100.0)
    b = np.random.RandomState(1).standard_normal(12)
    seen = []
    with pytest.warns(ConvergenceWarning, match="residual"):
        s = solve(aslinearoperator(A), b, method=method, maxiter=maxiter, rtol=1e-12, callback=seen.append)
    assert not s.converged and s.n_iter == n_iter == len(seen)


def test_lissa_maxiter_is_per_repeat():
    model, data, _ = problem("logistic", 10.0)
    with pytest.warns(ConvergenceWarning):
        s = solvers.lissa(HessianOperator(model, data), rhs(model), maxiter=7, repeats=3, rtol=0, variant="classic")
    assert s.n_iter == 21


@pytest.mark.parametrize("method", list(solvers.METHODS))
def test_callback_gets_a_copy_of_each_iterate(method):
    A = _spd()
    b = np.random.RandomState(1).standard_normal(12)
    seen = []

    def keep(x):
        seen.append(x.copy())
        x[:] = np.nan                  # scribbling on it must not change the solve

    s = solve(aslinearoperator(A), b, method=method, rtol=1e-8, callback=keep, **FULL_RANK.get(method, {}))
    assert np.all(np.isfinite(s.x)) and s.residual <= 1e-8
    expected = {"direct": 1, "lanczos": 1}.get(method, s.n_iter)   # no iterations: once, with the result
    assert len(seen) == expected
    np.testing.assert_allclose(seen[-1], s.x, rtol=1e-6)


@pytest.mark.parametrize("method", list(solvers.METHODS))
def test_zero_rhs_every_method_with_options(method):
    A = _spd()
    seen = []
    s = solve(aslinearoperator(A), np.zeros(12), method=method, rtol=1e-8, callback=seen.append,
              **FULL_RANK.get(method, {}))
    assert s.converged and s.residual == 0.0 and s.n_hvp == 0 and s.n_iter == 0 and not s.x.any()


@pytest.mark.parametrize("method", ["cg", "lissa"])
def test_x0_is_used_and_never_modified(method):
    A = _spd(cond=100.0)
    b = np.random.RandomState(1).standard_normal(12)
    exact = np.linalg.solve(A, b)
    x0 = exact + 1e-6 * np.random.RandomState(2).standard_normal(12)
    keep = x0.copy()
    warm = solve(aslinearoperator(A), b, method=method, x0=x0, rtol=1e-4, maxiter=100000)
    cold = solve(aslinearoperator(A), b, method=method, rtol=1e-4, maxiter=100000)
    assert np.array_equal(x0, keep)
    assert warm.converged and cold.converged and warm.n_iter < cold.n_iter


# ---------------------------------------------------------------------------------------- lissa's stop
def test_lissa_stops_on_its_true_residual():
    model, data, Hx = problem("logistic", 10.0)
    b = rhs(model)
    H = HessianOperator(model, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        s = solvers.lissa(H, b, rtol=0.5, check_every=10, batch_size=64, variant="classic")
    assert s.converged and s.n_iter < solvers.LISSA_MAXITER and s.n_iter % 10 == 0
    true = _rel(Hx @ s.x, b)
    assert s.residual <= 0.5 and abs(s.residual - true) <= FD_TOL * 10
    # minibatch noise keeps a tight target out of reach: all steps, a warning with the true residual
    pattern = r"true residual ‖\(H\+λI\)x−b‖/‖b‖ = ([0-9][0-9.e+-]*[0-9])"
    with pytest.warns(ConvergenceWarning, match=pattern) as rec:
        t = solvers.lissa(HessianOperator(model, data), b, rtol=1e-9, maxiter=400, check_every=50, batch_size=64,
                          variant="classic")
    assert t.n_iter == 400 and not t.converged
    reported = float(re.search(pattern, str(rec[0].message)).group(1))
    assert reported == pytest.approx(t.residual, rel=1e-2)
    assert abs(t.residual - _rel(Hx @ t.x, b)) <= FD_TOL * 10


def test_lissa_default_check_interval_bounds_the_check_cost():
    model, data, _ = problem("logistic", 10.0)           # n = 1000, batch 8: checks every 1250 steps
    H = HessianOperator(model, data)
    with pytest.warns(ConvergenceWarning):
        s = solvers.lissa(H, rhs(model), batch_size=8, maxiter=2500, rtol=0, scale=5.0, variant="classic")
    assert s.n_hvp == 2500 + 2 + 1                        # steps + 2 checks + the final residual


# ---------------------------------------------------------------------------------------- deprecations
@pytest.mark.filterwarnings("ignore::influence.solvers.ConvergenceWarning")
def test_deprecated_spellings_warn_and_still_work():
    A = _spd()
    op = aslinearoperator(A)
    b = np.random.RandomState(1).standard_normal(12)
    with pytest.warns(DeprecationWarning, match=r"lissa\(depth=...\): use maxiter="):
        old = solvers.lissa(op, b, depth=40, rtol=0, variant="classic")
    with pytest.warns(ConvergenceWarning):
        new = solvers.lissa(op, b, maxiter=40, rtol=0, variant="classic")
    assert old.n_iter == 40 and np.array_equal(old.x, new.x)
    with pytest.warns(DeprecationWarning, match="depth"):
        via_solve = solve(op, b, method="lissa", depth=40, rtol=0, variant="classic")
    assert np.array_equal(via_solve.x, new.x)
    steps = []
    with pytest.warns(DeprecationWarning, match=r"f\(step, x\)"):
        solvers.lissa(op, b, maxiter=5, rtol=0, callback=lambda j, x: steps.append(j), variant="classic")
    assert steps == [1, 2, 3, 4, 5]
    with pytest.warns(DeprecationWarning, match="by position"):
        pos = solvers.cg(op, b, 0.5, 1e-10)                     # the old positional (damping, rtol)
    assert np.array_equal(pos.x, solvers.cg(op, b, damping=0.5, rtol=1e-10).x)
    with pytest.warns(DeprecationWarning, match="by position"):
        assert solvers.direct(op, b, 0.5).residual <= 1e-12
    with pytest.warns(DeprecationWarning, match=r"lanczos\(tol=...\): use eigsh_tol="):
        lz = solvers.lanczos(op, b, k=4, tol=1e-10)
    assert np.array_equal(lz.x, solvers.lanczos(op, b, k=4, eigsh_tol=1e-10).x)
    with pytest.warns(DeprecationWarning, match="by position"):
        inv = solvers.lanczos_inverse(op, 4, 0.5)
    assert inv.damping == 0.5
    with pytest.raises(TypeError, match="positional"):
        solvers.direct(op, b, 0.5, 1e-6)


def test_self_influence_not_positive_definite_names_the_damping_to_pass():
    """The scores path uses the same message: λ_min(H) = −0.5 with damping=0.1 -> pass damping > 0.5
    (it used to say 0.4, the magnitude of λ_min(H + 0.1 I)), and raises NonPositiveCurvatureError."""
    import influence
    x, y = make_classification(30, 11, 2, seed=3)
    model = LogisticRegression(11, random_state=0)
    assert model.n_params == 12
    H = aslinearoperator(_indefinite(neg=-0.5))
    with pytest.raises(NonPositiveCurvatureError) as info:
        influence.self_influence(model, (x, y), damping=0.1, hessian=H, check_optimum=False)
    smallest, need, suggested, _ = _numbers(str(info.value))
    assert str(info.value).startswith("self_influence: ")
    assert smallest == pytest.approx(-0.4, abs=1e-6) and need == pytest.approx(0.5, abs=1e-6)
    values = influence.self_influence(model, (x, y), damping=suggested, hessian=H, check_optimum=False)
    assert values.shape == (30,) and np.all(values > 0)
