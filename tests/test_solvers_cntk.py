"""Inverse-HVP solvers on a CNTK softmax regression, against the closed-form solve of the NumPy
reference model with the same weights (skipped where CNTK is not importable)."""
import warnings

import numpy as np
import pytest

from conftest import make_classification, softmax_reference
from influence import HessianOperator, CNTKModel
from influence import solvers
from influence.solvers import ConvergenceWarning

#: Relative error of x against the closed form: cg in float64 / float32, lissa (both dtypes).
CG_TOL_F64 = 1e-6
CG_TOL_F32 = 1e-3
LISSA_TOL = 0.05
#: LiSSA settings for these well-conditioned (cond ≈ 5) problems: maxiter ≫ s/λ_min keeps it fast;
#: per-example Hessians of 21 parameters are rank one, so a 256-row minibatch Hessian is noisy (≈ 30 %
#: relative) and 4 repeats bring the error of x from ≈ 4 % to ≈ 2 %.
LISSA_MAXITER = 150
LISSA_REPEATS = 4
L2 = 0.1
N, P, K = 300, 6, 3


def _problem(dtype, seed=0, with_perm=False):
    from influence.adapters.cntk import build_network
    x, y = make_classification(N, P, K, seed=seed, cond=3.0)
    z = build_network(P, K, dtype=dtype, seed=seed)
    model = CNTKModel(z, loss="cross_entropy", l2=L2)
    ref, perm = softmax_reference(model, P, K)
    Hx = ref.hessian((x, y))
    b = np.random.RandomState(seed + 1).standard_normal(model.n_params)
    exact = np.empty_like(b)
    exact[perm] = np.linalg.solve(Hx, b[perm])
    return (model, (x, y), b, exact, Hx) + ((perm,) if with_perm else ())


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("dtype,tol,rtol", [(np.float64, CG_TOL_F64, 1e-9), (np.float32, CG_TOL_F32, 1e-4)])
def test_cntk_cg_matches_closed_form(cntk, dtype, tol, rtol):
    model, data, b, exact, Hx = _problem(dtype)
    e = np.linalg.eigvalsh(Hx)
    assert e[-1] / e[0] < 30
    H = HessianOperator(model, data)
    w_before = model.get_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)   # rtol is above the float32 HVP noise
        s = solvers.solve(H, b, method="cg", rtol=rtol)
    assert s.converged
    assert _rel(s.x, exact) <= tol
    assert s.n_hvp == H.n_hvp
    assert np.array_equal(model.get_params(), w_before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cntk_lissa_matches_closed_form(cntk, dtype):
    model, data, b, exact, Hx, perm = _problem(dtype, with_perm=True)
    H = HessianOperator(model, data)
    with pytest.warns(ConvergenceWarning):
        s = solvers.solve(H, b, method="lissa", variant="classic", maxiter=LISSA_MAXITER, repeats=LISSA_REPEATS,
                          random_state=0)
    assert _rel(s.x, exact) <= LISSA_TOL
    # the reported residual is the true one: against the closed-form Hessian
    Hb = np.empty_like(b)
    Hb[perm] = Hx @ s.x[perm]
    assert abs(s.residual - _rel(Hb, b)) <= (CG_TOL_F32 if dtype == np.float32 else CG_TOL_F64)


def test_cntk_lanczos_top_eigenpairs(cntk):
    model, data, b, exact, Hx = _problem(np.float64)
    H = HessianOperator(model, data)
    inv = solvers.lanczos_inverse(H, k=3)
    np.testing.assert_allclose(inv.eigenvalues, np.linalg.eigvalsh(Hx)[::-1][:3], rtol=1e-6)
