"""Influence scores on CNTK models: forward vs gradient scoring, agreement with the NumPy reference,
weights bit-identical (also after a failure mid-pass)."""
import numpy as np
import pytest

import influence
from influence.curvature.hessian import HessianOperator
from conftest import make_classification, softmax_reference

#: Forward (finite-difference) vs gradient scoring, relative ‖·‖₂ error (measured: float32 ~1e-3 on
#: MLPs — float32 loss rounding ~1e-7·|logits| limits it —, float64 ~1e-10).
FORWARD_TOL = {np.float32: 1e-3, np.float64: 1e-7}
#: CNTK float64 vs the NumPy SoftmaxRegression on the same weights, both via the direct solver
#: (the two finite-difference Hessians differ by ~1e-10).
REFERENCE_TOL = 1e-7


def _fitted(cntk, dtype, hidden=(), n=160, p=6, k=3, l2=0.05, seed=0):
    from influence.adapters.cntk import CNTKModel, build_network
    x, y = make_classification(n + 3, p, k, seed=seed)
    m = CNTKModel(build_network(p, k, hidden, "tanh", dtype=dtype, seed=seed), l2=l2)
    influence.fit(m, (x[:n], y[:n]), gtol=1e-8)
    return m, (x[:n], y[:n]), (x[n:], y[n:])


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden", [(), (8,)])
def test_forward_matches_gradient_scoring(cntk, dtype, hidden):
    m, train, test = _fitted(cntk, dtype, hidden)
    w = m.get_params()
    st = influence.s_test(m, train, test, solver="cg", damping=1e-3, check_optimum=False)
    fwd = influence.influence_scores(m, train, test, scoring="forward", s=st, check_optimum=False)
    grd = influence.influence_scores(m, train, test, scoring="gradient", s=st, check_optimum=False)
    assert fwd.shape == (3, 160)
    assert _rel(fwd, grd) <= FORWARD_TOL[dtype]
    assert np.array_equal(m.get_params(), w)


def test_cntk_scores_match_numpy_reference(cntk):
    m, train, test = _fitted(cntk, np.float64)
    ref, perm = softmax_reference(m, 6, 3)
    ops = [HessianOperator(mm, train, stencil="richardson") for mm in (m, ref)]
    got = influence.influence_scores(m, train, test, solver="direct", hessian=ops[0])
    exp = influence.influence_scores(ref, train, test, solver="direct", hessian=ops[1], scoring="gradient")
    assert _rel(got, exp) <= REFERENCE_TOL
    H = ref.hessian(train)
    G = ref.per_example_grads(train)
    closed = -(ref.per_example_grads(test) @ np.linalg.solve(H, G.T))
    assert _rel(got, closed) <= REFERENCE_TOL
    si = influence.self_influence(m, train, hessian=ops[0])
    assert _rel(si, np.sum(G * np.linalg.solve(H, G.T).T, axis=1)) <= REFERENCE_TOL


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_cntk_weights_restored_after_failure(cntk, monkeypatch, exc):
    m, train, test = _fitted(cntk, np.float32, (8,))
    w = m.get_params()
    st = influence.s_test(m, train, test, solver="cg", damping=1e-3, check_optimum=False)
    calls = {"n": 0}
    orig = m._per_example_losses

    def failing(batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise exc()
        return orig(batch)

    monkeypatch.setattr(m, "_per_example_losses", failing)
    with pytest.raises(exc):
        influence.influence_scores(m, train, test, s=st, batch_size=40, check_optimum=False)
    assert np.array_equal(m.get_params(), w)


def test_cntk_self_influence_lanczos_and_loo(cntk):
    m, train, test = _fitted(cntk, np.float64)
    w = m.get_params()
    exact = influence.self_influence(m, train)
    low = influence.self_influence(m, train, method="lanczos", k=m.n_params)
    assert _rel(low, exact) <= 1e-6
    res = influence.verify_loo(m, train, (test[0][:1], test[1][:1]), k=6, solver="cg")
    assert res.pearson >= 0.99
    assert np.array_equal(m.get_params(), w)
