"""Many test points at once: solve_many shares the factorisation (direct, lanczos) or recycles the
previous solutions (cg); solver="auto" plans direct vs cg (NumPy problems, no CNTK)."""
import warnings

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator, aslinearoperator

import influence
from influence.models import SoftmaxRegression
from influence.solvers import plan_solver, solve, solve_many
from influence.solvers import dense as dense_module
from conftest import make_classification

#: Shared factorisation vs one solve per vector: the same arithmetic up to the order of a BLAS call.
SHARED_TOL = 1e-10
#: cg to rtol 1e-10 per vector, with and without a recycled start: both within ~1e-10 of the solution.
CG_TOL = 1e-8
CG_RTOL = 1e-10
#: Rows in the span of 3 solutions: the Galerkin start's residual is about the solutions' own error
#: (~rtol), so cg needs a few iterations (measured 0-2 at rtol 1e-8, vs 71-72 cold); solutions to
#: SPAN_RTOL agree to cond(A)·SPAN_RTOL = 1e-5.
SPAN_RTOL = 1e-8
SPAN_TOL = 1e-5
MAX_SPAN_ITER = 5


def _spd(d, cond, seed=0):
    rng = np.random.RandomState(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.logspace(-np.log10(cond), 0, d)) @ Q.T


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def system():
    A = _spd(40, 1e3)
    rng = np.random.RandomState(1)
    base = rng.standard_normal((3, 40))
    B = rng.standard_normal((7, 3)) @ base + 0.1 * rng.standard_normal((7, 40))   # correlated rows
    B[4] = 0.0                                                                      # a zero row
    return A, B


@pytest.mark.parametrize("method,options", [("direct", {}), ("lanczos", {"k": 40}), ("cg", {"rtol": CG_RTOL})])
def test_many_equal_one_at_a_time(system, method, options):
    A, B = system
    many = solve_many(aslinearoperator(A), B, method, damping=0.01, **options)
    assert len(many) == len(B)
    for b, sol in zip(B, many):
        one = solve(aslinearoperator(A), b, method, damping=0.01, **options)
        if b.any():
            assert _rel(sol.x, one.x) <= (CG_TOL if method == "cg" else SHARED_TOL)
            exact = np.linalg.solve(A + 0.01 * np.eye(40), b)
            assert _rel(sol.x, exact) <= (CG_TOL if method == "cg" else SHARED_TOL)
            # the residual is measured per row
            true = np.linalg.norm((A + 0.01 * np.eye(40)) @ sol.x - b) / np.linalg.norm(b)
            assert sol.residual == pytest.approx(true, rel=1e-3, abs=1e-14)
            assert sol.converged
        else:
            assert not sol.x.any() and sol.residual == 0.0 and sol.converged


def test_direct_shares_the_d_products(system):
    A, B = system
    many = solve_many(aslinearoperator(A), B, "direct")
    assert [s.n_hvp for s in many] == [40, 0, 0, 0, 0, 0, 0]      # d products once, in the first row
    assert sum(s.n_hvp for s in many) == 40                         # not d·m = 280


def test_lanczos_decomposes_once(system):
    A, B = system
    many = solve_many(aslinearoperator(A), B, "lanczos", k=10)
    one = solve(aslinearoperator(A), B[0], "lanczos", k=10)
    fit = one.n_hvp - 1                                             # one's own residual product
    assert many[0].n_hvp == fit + 1
    assert [s.n_hvp for s in many[1:]] == [1, 1, 1, 0, 1, 1]       # residual products only
    assert _rel(many[0].x, one.x) <= SHARED_TOL


def test_cg_recycling_solves_rows_in_the_span_of_previous_solutions(system):
    A, _ = system
    rng = np.random.RandomState(2)
    B = rng.standard_normal((6, 3)) @ rng.standard_normal((3, 40))     # rank 3: rows 3.. in the span
    cold = solve_many(aslinearoperator(A), B, "cg", rtol=SPAN_RTOL, recycle=False)
    warm = solve_many(aslinearoperator(A), B, "cg", rtol=SPAN_RTOL)
    assert warm[0].n_hvp == cold[0].n_hvp                                 # nothing to recycle yet
    # the Galerkin start leaves the solutions' own error (~rtol): a few iterations instead of ~70
    assert all(w.n_iter <= MAX_SPAN_ITER for w in warm[3:]) and min(c.n_iter for c in cold) > 50
    assert sum(s.n_hvp for s in warm) < 0.6 * sum(s.n_hvp for s in cold)
    for c, w in zip(cold, warm):
        assert _rel(w.x, c.x) <= SPAN_TOL and w.converged


def test_cg_recycled_start_is_exact_for_a_repeated_row(system):
    A, B = system
    sols = solve_many(aslinearoperator(A), np.vstack([B[0], 2.0 * B[0]]), "cg", rtol=1e-8)
    assert sols[1].n_iter <= 1                                     # the start already solves it


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "direct", "maxiter": 3}, "maxiter"),
    ({"method": "direct", "recycle": True}, "recycle"),
    ({"method": "cg", "x0": np.zeros(40)}, "x0"),
    ({"method": "cg", "callback": print}, "callback"),
    ({"method": "nope"}, "method='nope'"),
    ({"method": "cg", "k": 3}, "'k'"),
])
def test_bad_arguments_name_the_fix(system, kwargs, match):
    A, B = system
    with pytest.raises(ValueError, match=match):
        solve_many(aslinearoperator(A), B, **kwargs)


def test_bad_right_hand_sides(system):
    A, _ = system
    with pytest.raises(ValueError, match=r"\(m, 40\)"):
        solve_many(aslinearoperator(A), np.ones((3, 41)), "cg")
    with pytest.raises(ValueError, match="NaN"):
        solve_many(aslinearoperator(A), np.full((2, 40), np.nan), "cg")


# ------------------------------------------------------------------------------------------- auto
def _identity_like(d):
    return LinearOperator((d, d), matvec=lambda v: 2.0 * v, dtype=np.float64)


def test_plan_small_d_many_points_is_direct():
    plan = plan_solver(_identity_like(50), 100, hvp_seconds=1e-3)
    assert plan.method == "direct" and plan.n_hvp == 50 and plan.m == 100
    assert "direct" in str(plan) and "products" in str(plan)


def test_plan_large_d_one_point_is_cg():
    plan = plan_solver(_identity_like(5000), 1, hvp_seconds=1e-3)
    assert plan.method == "cg" and plan.n_hvp == 302


def test_plan_large_d_many_points_is_direct_when_it_fits(monkeypatch):
    monkeypatch.setattr(dense_module, "available_memory", lambda meminfo=None: 10 ** 12)
    from influence.solvers import plan as plan_module
    monkeypatch.setattr(plan_module, "available_memory", lambda meminfo=None: 10 ** 12)
    assert plan_solver(_identity_like(5000), 100, hvp_seconds=1e-3).method == "direct"
    # ... and cg when the two dense matrices do not fit
    monkeypatch.setattr(plan_module, "available_memory", lambda meminfo=None: 10 ** 8)
    plan = plan_solver(_identity_like(5000), 100, hvp_seconds=1e-3)
    assert plan.method == "cg" and "memory" in plan.reason


def test_plan_times_one_product_and_respects_allow_direct():
    plan = plan_solver(aslinearoperator(_spd(20, 10.0)), 5)
    assert plan.hvp_seconds > 0 and plan.method == "direct"
    assert plan_solver(aslinearoperator(_spd(20, 10.0)), 5, allow_direct=False).method == "cg"
    with pytest.raises(ValueError, match="m >= 1"):
        plan_solver(aslinearoperator(_spd(20, 10.0)), 0)


@pytest.fixture(scope="module")
def softmax():
    x, y = make_classification(150, 5, 3, seed=0)
    m = SoftmaxRegression(5, 3, l2=0.05)
    influence.fit(m, (x[:120], y[:120]), gtol=1e-10)
    return m, (x[:120], y[:120]), (x[120:130], y[120:130])


def test_s_test_auto_records_its_plan_and_shares(softmax):
    m, train, test = softmax
    H = influence.HessianOperator(m, train, stencil="richardson")
    st = influence.s_test(m, train, test, solver="auto", hessian=H)
    assert st.plan is not None and st.plan.method == "direct" and st.plan.m == 10 and st.plan.n == 120
    assert sum(s.n_hvp for s in st.solutions) == m.n_params          # d products, not d·m
    ref = influence.s_test(m, train, test, solver="cg", hessian=H, rtol=1e-10)
    assert ref.plan is None
    assert _rel(st.vectors, ref.vectors) <= 1e-6
    # an option only cg takes makes auto plan cg
    st = influence.s_test(m, train, test, solver="auto", hessian=H, maxiter=500)
    assert st.plan.method == "cg" and st.plan.reason.startswith("direct was excluded")
    with pytest.raises(ValueError, match="solver='auto'"):
        influence.s_test(m, train, test, solver="bogus", hessian=H)


def test_influence_scores_auto_equal_direct(softmax):
    m, train, test = softmax
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = influence.influence_scores(m, train, test, solver="auto", scoring="gradient")
    ref = influence.influence_scores(m, train, test, solver="direct", scoring="gradient")
    assert _rel(auto, ref) <= SHARED_TOL
