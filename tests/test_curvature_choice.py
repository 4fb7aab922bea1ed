"""curvature= on s_test / influence_scores / self_influence and the jobs: "auto" takes the Hessian at
an optimum and the Gauss-Newton matrix (damping "auto") elsewhere, says so, and records it; explicit
choices solve the system they name (checked against dense matrices)."""
import warnings

import numpy as np
import pytest

import influence
from influence.common.errors import InfluenceError
from influence.curvature import GaussNewtonOperator
from influence.curvature.damping import DAMPING_FACTOR
from influence.models import SoftmaxRegression
from conftest import make_classification

#: Relative agreement of s_test with a dense solve (cg's default tolerance is 1e-5 relative residual).
SOLVE_RTOL = 1e-4


def _problem(fitted):
    x, y = make_classification(150, 6, 3, seed=4)
    model = SoftmaxRegression(6, 3, l2=0.01, random_state=0)
    if fitted:
        influence.fit(model, (x, y), gtol=1e-10)
    return model, (x[:120], y[:120]) if not fitted else (x, y), (x[120:123], y[120:123])


def _dense(op):
    return np.column_stack([op.matvec(e) for e in np.eye(op.shape[0])])


def test_auto_uses_the_hessian_at_an_optimum():
    model, train, test = _problem(fitted=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", influence.NotAtOptimumWarning)
        st = influence.s_test(model, train, test)
    assert st.curvature == "hessian" and st.damping == 0.0 and "at an optimum" in st.curvature_reason


def test_auto_uses_gauss_newton_with_auto_damping_off_the_optimum_and_says_so():
    model, train, test = _problem(fitted=False)
    seen = []
    with pytest.warns(influence.NotAtOptimumWarning, match="Gauss-Newton matrix, damping"):
        st = influence.s_test(model, train, test, on_curvature=seen.append)
    assert st.curvature == "gauss-newton" and len(seen) == 1
    op = seen[0].operator
    assert op.damping_auto and st.damping == pytest.approx(DAMPING_FACTOR * op.mean_eigenvalue, rel=1e-12)
    assert "not at a minimum" in st.curvature_reason and "auto" in st.curvature_reason
    # the system solved is (G + λ I) s = g_test, G built independently of the operator's own damping
    G = _dense(GaussNewtonOperator(model, train))
    g = model.per_example_grads(test)
    expected = np.linalg.solve(G + st.damping * np.eye(G.shape[0]), g.T).T
    assert np.abs(st.vectors - expected).max() <= SOLVE_RTOL * np.abs(expected).max()


@pytest.mark.parametrize("curvature", ["gauss-newton", "fisher"])
def test_explicit_curvature_and_numeric_damping_solve_that_system(curvature):
    model, train, test = _problem(fitted=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", influence.NotAtOptimumWarning)   # an explicit choice: no warning
        st = influence.s_test(model, train, test, damping=0.05, curvature=curvature, rtol=1e-10)
    op = (influence.GaussNewtonOperator if curvature == "gauss-newton" else influence.FisherOperator)(model, train)
    A = _dense(op) + 0.05 * np.eye(model.n_params)
    expected = np.linalg.solve(A, model.per_example_grads(test).T).T
    assert st.curvature == curvature and st.damping == 0.05
    assert np.abs(st.vectors - expected).max() <= SOLVE_RTOL * np.abs(expected).max()
    scores = influence.influence_scores(model, train, test, damping=0.05, curvature=curvature, rtol=1e-10,
                                        scoring="gradient")
    assert np.allclose(scores, -expected @ model.per_example_grads(train).T, rtol=SOLVE_RTOL, atol=1e-12)


def test_the_hessian_off_the_optimum_warns_naming_the_gauss_newton_choice():
    model, train, test = _problem(fitted=False)
    with pytest.warns(influence.NotAtOptimumWarning, match="curvature='gauss-newton'"):
        st = influence.s_test(model, train, test, curvature="hessian", damping=0.01)
    assert st.curvature == "hessian" and st.damping == 0.01


def test_self_influence_follows_the_same_choice():
    model, train, _ = _problem(fitted=False)
    seen = []
    with pytest.warns(influence.NotAtOptimumWarning):
        values = influence.self_influence(model, train, on_curvature=seen.append)
    cur = seen[0]
    assert cur.kind == "gauss-newton"
    A = _dense(cur.operator)            # includes the auto damping
    G = model.per_example_grads(train)
    assert np.allclose(values, np.einsum("ij,ji->i", G, np.linalg.solve(A, G.T)), rtol=1e-8)


def test_bad_curvature_and_damping_are_refused_in_one_line():
    model, train, test = _problem(fitted=True)
    with pytest.raises(InfluenceError, match=r"curvature='newton' is not one of auto, hessian, gauss-newton, fisher") as e:
        influence.s_test(model, train, test, curvature="newton")
    assert e.value.parameter == "curvature"
    with pytest.raises(InfluenceError, match=r"damping='lots' is not a number nor 'auto'"):
        influence.s_test(model, train, test, damping="lots")


def test_the_jobs_record_the_curvature_in_their_fingerprint(tmp_path):
    model, train, test = _problem(fitted=True)
    job = influence.jobs.ScoreJob(model, train, test, folder=str(tmp_path / "a"), curvature="gauss-newton")
    assert job._settings()["curvature"] == "gauss-newton" and job._settings()["damping"] is None
    other = influence.jobs.ScoreJob(model, train, test, folder=str(tmp_path / "b"))
    assert other._settings() != job._settings()
    with pytest.raises(InfluenceError, match="curvature"):
        influence.jobs.SelfInfluenceJob(model, train, curvature="hessian-free")


def test_ekfac_curvature_answers_without_iterations():
    model, train, test = _problem(fitted=True)
    st = influence.s_test(model, train, test, curvature="ekfac", damping=0.01)
    ek = influence.EKFAC(model, train, damping=0.01)
    assert st.curvature == "ekfac" and "no iterations" in st.curvature_reason
    assert all(s.n_hvp == 0 and s.converged for s in st.solutions)
    np.testing.assert_allclose(st.vectors, ek.solve(model.per_example_grads(test)), rtol=1e-12, atol=0)
    values = influence.self_influence(model, train, curvature="ekfac", damping=0.01)
    np.testing.assert_allclose(values, influence.curvature.self_influence_ekfac(model, train, ek), rtol=1e-12)
