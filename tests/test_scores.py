"""Influence scores, self-influence and leave-one-out checks on the NumPy reference models (no CNTK)."""
import warnings

import numpy as np
import pytest

import influence
from influence.curvature.hessian import HessianOperator
from influence.models import SoftmaxRegression, LogisticRegression
from influence.scoring.scores import directional_derivatives, predicted_loss_change
from conftest import make_classification

#: Scores vs the closed form −g_testᵀH⁻¹g_i with the exact Hessian, direct solver, Richardson HVPs,
#: float64 (measured: forward ~2e-11, gradient ~1e-13).
CLOSED_FORM_TOL = 1e-8
#: Same quantity computed two ways (batch sizes, chunking): only float64 rounding differs.
BATCH_TOL = 1e-9
#: self_influence lanczos with k = d vs exact (measured ~1e-11).
LANCZOS_TOL = 1e-8
#: Leave-one-out check on a small L2 logistic regression.
LOO_PEARSON = 0.99


@pytest.fixture(scope="module")
def problem():
    x, y = make_classification(150, 5, 3, seed=0)
    train, test = (x[:120], y[:120]), (x[120:124], y[120:124])
    m = SoftmaxRegression(5, 3, l2=0.05)
    res = influence.fit(m, train, gtol=1e-10)
    assert res.grad_norm < 1e-7
    H = m.hessian(train)
    G = m.per_example_grads(train)
    gt = m.per_example_grads(test)
    expected = -(gt @ np.linalg.solve(H, G.T))
    selfinf = np.sum(G * np.linalg.solve(H, G.T).T, axis=1)
    return m, train, test, expected, selfinf, H


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _op(m, train, batch_size=None):
    return HessianOperator(m, train, batch_size=batch_size, stencil="richardson")


@pytest.mark.parametrize("scoring", ["forward", "gradient"])
def test_scores_match_closed_form(problem, scoring):
    m, train, test, expected, _, _ = problem
    w = m.get_params()
    got = influence.influence_scores(m, train, test, solver="direct", scoring=scoring,
                                     hessian=_op(m, train))
    assert got.shape == (4, 120)
    assert _rel(got, expected) <= CLOSED_FORM_TOL
    assert np.array_equal(m.get_params(), w)
    # one test point (one row) -> shape (n_train,)
    one = influence.influence_scores(m, train, (test[0][:1], test[1][:1]), solver="direct",
                                     scoring=scoring, hessian=_op(m, train))
    assert one.shape == (120,)
    assert _rel(one, expected[0]) <= CLOSED_FORM_TOL


def test_s_test_rows_and_solutions(problem):
    m, train, test, _, _, H = problem
    st = influence.s_test(m, train, test, solver="direct", hessian=_op(m, train))
    gt = m.per_example_grads(test)
    assert st.vectors.shape == (4, m.n_params) and len(st.solutions) == 4
    assert _rel(st.vectors, np.linalg.solve(H, gt.T).T) <= CLOSED_FORM_TOL
    assert all(s.converged for s in st.solutions)
    damped = influence.s_test(m, train, test, solver="cg", damping=0.1, rtol=1e-12)
    assert damped.damping == 0.1
    assert _rel(damped.vectors, np.linalg.solve(H + 0.1 * np.eye(m.n_params), gt.T).T) <= 1e-6


def test_predicted_loss_change_sign():
    scores = np.array([2.0, -4.0])
    assert np.allclose(predicted_loss_change(scores, 10), [-0.2, 0.4])


@pytest.mark.parametrize("scoring", ["forward", "gradient"])
def test_scores_do_not_depend_on_batch_size(problem, scoring):
    m, train, test, _, _, _ = problem
    st = influence.s_test(m, train, test, solver="direct", hessian=_op(m, train))
    a = influence.influence_scores(m, train, test, scoring=scoring, s=st)
    b = influence.influence_scores(m, train, test, scoring=scoring, s=st, batch_size=7)
    assert _rel(b, a) <= BATCH_TOL


def test_self_influence_exact_and_lanczos(problem):
    m, train, _, _, selfinf, _ = problem
    w = m.get_params()
    op = _op(m, train)
    exact = influence.self_influence(m, train, method="exact", hessian=op)
    assert _rel(exact, selfinf) <= CLOSED_FORM_TOL
    low = influence.self_influence(m, train, method="lanczos", k=m.n_params, hessian=op)
    assert _rel(low, exact) <= LANCZOS_TOL
    chunked = influence.self_influence(m, train, method="exact", hessian=op, batch_size=9)
    assert _rel(chunked, exact) <= BATCH_TOL
    assert np.array_equal(m.get_params(), w)


def test_directional_derivatives_match_gradients(problem):
    m, train, _, _, _, _ = problem
    rng = np.random.RandomState(3)
    S = rng.standard_normal((2, m.n_params))
    expected = S @ m.per_example_grads(train).T
    for stencil in ("central", "richardson"):
        got = directional_derivatives(m, train, S, stencil=stencil)
        assert _rel(got, expected) <= (CLOSED_FORM_TOL if stencil == "richardson" else 1e-5)
    assert not directional_derivatives(m, train, np.zeros(m.n_params)).any()
    with pytest.raises(ValueError):
        directional_derivatives(m, train, np.ones(3))


class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
@pytest.mark.parametrize("what", ["forward", "gradient", "self", "loo"])
def test_weights_restored_after_failure_mid_pass(problem, monkeypatch, exc, what):
    m, train, test, _, _, _ = problem
    w = m.get_params()
    st = influence.s_test(m, train, test, solver="direct", hessian=_op(m, train))
    calls = {"n": 0}
    orig_losses, orig_grads, orig_pe = m._per_example_losses, m._grad_sum, m._per_example_grads

    def failing(orig):
        def f(batch):
            calls["n"] += 1
            if calls["n"] >= 3:       # from the 3rd call on: a chunk retried (run_chunks) fails again
                raise exc()
            return orig(batch)
        return f

    monkeypatch.setattr(m, "_per_example_losses", failing(orig_losses))
    monkeypatch.setattr(m, "_grad_sum", failing(orig_grads))
    monkeypatch.setattr(m, "_per_example_grads", failing(orig_pe))
    with pytest.raises(exc):
        if what in ("forward", "gradient"):
            influence.influence_scores(m, train, test, scoring=what, s=st, batch_size=16,
                                       check_optimum=False)
        elif what == "self":
            influence.self_influence(m, train, check_optimum=False, batch_size=16)
        else:
            influence.verify_loo(m, train, test, k=2, scores=np.ones(120))
    assert calls["n"] >= 3
    assert np.array_equal(m.get_params(), w)


def test_not_at_optimum_warning(problem):
    m, train, test, _, _, _ = problem
    with warnings.catch_warnings():
        warnings.simplefilter("error", influence.NotAtOptimumWarning)
        influence.s_test(m, train, test, solver="direct")
    raw = SoftmaxRegression(5, 3, l2=0.05, scale=1.0)
    chk = influence.check_optimum(raw, train)
    assert not chk.ok and chk.grad_norm > chk.threshold
    with pytest.warns(influence.NotAtOptimumWarning):
        influence.influence_scores(raw, train, test, solver="direct", scoring="gradient")


def test_verify_loo_logistic_regression():
    x, y = make_classification(100, 4, 2, seed=1)
    train, test = (x[:80], y[:80]), (x[80:81], y[80:81])
    m = LogisticRegression(4, l2=0.01)
    influence.fit(m, train, gtol=1e-10)
    w = m.get_params()
    res = influence.verify_loo(m, train, test, k=10, solver="direct")
    assert res.pearson >= LOO_PEARSON and res.spearman >= 0.9
    assert len(res.indices) == 10 and len(set(res.indices)) == 10
    # the first half are the largest |I_up,loss|
    order = np.argsort(-np.abs(res.scores))
    assert set(res.indices[:5]) == set(order[:5])
    assert np.allclose(res.predicted, -res.scores[res.indices] / 80)
    assert np.array_equal(m.get_params(), w)
    # explicit indices, several test points (mean test loss)
    res2 = influence.verify_loo(m, train, (x[80:84], y[80:84]), indices=[0, 5, 7], solver="direct")
    assert list(res2.indices) == [0, 5, 7] and res2.scores.shape == (4, 80)
    assert np.array_equal(m.get_params(), w)


def test_spearman_handles_ties():
    from influence.evaluate.leave_one_out import spearman, pearson
    assert spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
