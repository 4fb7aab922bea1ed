"""Property tests (hypothesis) on the NumPy reference models: the finite-difference HVP is linear and
symmetric for random sizes, dtypes, seeds and conditioning."""
import numpy as np
from hypothesis import given, settings, strategies as st, HealthCheck

from influence.hvp import HessianOperator
from influence.models import SoftmaxRegression, LogisticRegression
from conftest import make_classification

#: Relative tolerance of linearity/symmetry per dtype (float32 weights: FD error ~1e-4 at worst).
PROPERTY_TOL = {np.float64: 1e-7, np.float32: 2e-3}

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
    # and it is the exact Hessian's product
    H = m.hessian(data)
    assert np.linalg.norm(hv - H @ v) <= tol * np.linalg.norm(H @ v)
    assert np.array_equal(m.get_params(), before)
