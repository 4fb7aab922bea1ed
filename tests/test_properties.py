"""Property tests (hypothesis) on the NumPy reference models: the finite-difference HVP is linear and
symmetric for random sizes, dtypes, seeds and conditioning."""
import numpy as np
from hypothesis import example, given, settings, strategies as st, HealthCheck

from influence.curvature.hessian import HessianOperator
from influence.models import SoftmaxRegression, LogisticRegression
from conftest import make_classification

#: Relative tolerance of linearity/symmetry per dtype (float32 weights: FD error ~1e-4 at worst).
PROPERTY_TOL = {np.float64: 1e-7, np.float32: 2e-3}
#: ‖Hv − H_exact v‖ ≤ tol·‖H‖‖v‖. The step is calibrated along one pseudo-random direction; along a
#: direction whose third derivative is far larger the truncation error is too: in float32 that reached
#: 3.6e-3 (the @example below; 800 random float32 problems stayed under 4.5e-4). Smaller steps, which
#: would help there, raised rounding errors elsewhere (a float32 CNN's dense H) - so this is a stated
#: limit of the float32 operator (docs/concepts-hvp.md), not a target.
EXACT_TOL = {np.float64: 1e-7, np.float32: 5e-3}

problems = st.fixed_dictionaries({
    "n": st.integers(5, 60), "p": st.integers(1, 6), "k": st.integers(2, 4),
    "dtype": st.sampled_from([np.float64, np.float32]), "seed": st.integers(0, 2 ** 16),
    "l2": st.sampled_from([1e-3, 1e-1, 1.0]), "cond": st.sampled_from([None, 10.0, 1e3]),
    "logistic": st.booleans(), "batch": st.integers(1, 64),
})


def _build(pr):
    x, y = make_classification(pr["n"], pr["p"], pr["k"], seed=pr["seed"],
                               cond=pr["cond"] if pr["p"] > 1 and pr["n"] >= pr["p"] else None)
    if pr["logistic"]:
        m = LogisticRegression(pr["p"], l2=pr["l2"], dtype=pr["dtype"], random_state=pr["seed"], scale=1.0)
        y = (y > 0).astype(np.int64)
    else:
        m = SoftmaxRegression(pr["p"], pr["k"], l2=pr["l2"], dtype=pr["dtype"], random_state=pr["seed"], scale=1.0)
    return m, (x, y)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pr=problems, a=st.floats(-3, 3).filter(lambda a: abs(a) > 1e-2))
@example(pr={"n": 24, "p": 3, "k": 2, "dtype": np.float32, "seed": 769, "l2": 1e-3, "cond": 10.0,
             "logistic": False, "batch": 14}, a=-3.0)
def test_hvp_is_linear_symmetric_and_leaves_weights(pr, a):
    m, data = _build(pr)
    before = m.get_params()
    tol = PROPERTY_TOL[pr["dtype"]]
    op = HessianOperator(m, data, batch_size=pr["batch"])
    rng = np.random.RandomState(pr["seed"])
    u, v = rng.standard_normal((2, m.n_params))
    hu, hv = op @ u, op @ v
    scale = np.linalg.norm(hu) + np.linalg.norm(hv)
    assert np.linalg.norm(op @ (u + a * v) - (hu + a * hv)) <= tol * (1 + abs(a)) * scale
    assert abs(u @ hv - v @ hu) <= tol * np.linalg.norm(u) * np.linalg.norm(v) * scale
    # and it is the exact Hessian's product, to the finite-difference accuracy measured against the
    # operator's scale ‖H‖‖v‖ (float32 models compute in float32: along a direction of tiny curvature
    # the error relative to ‖Hv‖ itself is not bounded, e.g. n=5, p=5, k=2, l2=1e-3, seed 42343)
    H = m.hessian(data)
    assert np.linalg.norm(hv - H @ v) <= EXACT_TOL[pr["dtype"]] * np.linalg.norm(H, 2) * np.linalg.norm(v)
    assert np.array_equal(m.get_params(), before)


solver_problems = st.fixed_dictionaries({
    "d": st.integers(1, 12), "seed": st.integers(0, 2 ** 16), "cond": st.sampled_from([1.0, 10.0, 1e3]),
    "damping": st.sampled_from([0.0, 1e-3, 0.5]), "dtype": st.sampled_from([np.float64, np.float32]),
})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pr=solver_problems, method=st.sampled_from(["cg", "direct", "lanczos", "lissa"]))
def test_solvers_meet_residual_bounds_and_leave_x0_and_b(pr, method):
    """On an SPD matrix of the given condition number: cg/direct/full-rank lanczos/deterministic lissa
    reach their residual (converged means residual <= rtol, for every method); the reported residual is
    the true one; the callback sees one copy per iteration; b and x0 are never modified."""
    from scipy.sparse.linalg import aslinearoperator
    from influence import solvers
    rng = np.random.RandomState(pr["seed"])
    d = pr["d"]
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = (q * np.geomspace(1.0, 1.0 / pr["cond"], d)) @ q.T
    A = (A + A.T) / 2
    b = rng.standard_normal(d).astype(pr["dtype"])
    b_before = b.copy()
    x0 = rng.standard_normal(d)
    x0_before = x0.copy()
    lam = pr["damping"]
    options = {"cg": {"rtol": 1e-10, "x0": x0}, "direct": {}, "lanczos": {"k": d},
               "lissa": {"batch_size": None, "maxiter": 200000, "rtol": 1e-10, "x0": x0}}[method]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seen = []
        sol = solvers.solve(aslinearoperator(A), b, method=method, damping=lam, callback=seen.append, **options)
    M = A + lam * np.eye(d)
    true = np.linalg.norm(M @ sol.x - b) / np.linalg.norm(b)
    assert abs(true - sol.residual) <= 1e-8 + 1e-6 * true
    bound = {"cg": 1e-9, "direct": 1e-9, "lanczos": 1e-8, "lissa": 1e-6}[method]
    assert sol.residual <= bound * max(1.0, np.linalg.cond(M) / 1e3)
    if sol.converged and method in ("cg", "lissa"):
        assert sol.residual <= options["rtol"] * (1 + 1e-6) + 1e-15
    assert len(seen) == ({"direct": 1, "lanczos": 1}.get(method, sol.n_iter) if sol.n_hvp else 0)
    assert np.array_equal(b, b_before) and b.dtype == b_before.dtype
    assert np.array_equal(x0, x0_before)
