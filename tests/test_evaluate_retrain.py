"""Retraining modes of influence.evaluate on the NumPy reference models (both environments): the
proximal (PBRF) objective and its gradient, proximal = warm at an optimum of a convex model, scratch =
warm for a convex model, "auto" picks by the optimum check, seeds and recipes refused where they mean
nothing, weights restored after an injected failure."""
import numpy as np
import pytest

import influence
from influence import evaluate as ev
from influence.common.errors import InfluenceError
from influence.data import Dataset
from influence.evaluate.retrain import retrain_columns, retraining
from influence.fitting import minimize_lbfgs
from influence.models import LogisticRegression, SoftmaxRegression

from conftest import make_classification


@pytest.fixture(scope="module")
def problem():
    x, y = make_classification(90, 4, 3, seed=3)
    model = SoftmaxRegression(4, 3, l2=0.05)
    influence.fit(model, (x[:70], y[:70]), gtol=1e-10)
    return model, (x[:70], y[:70]), (x[70:], y[70:])


def _data(model, xy, name="training data"):
    return model.validate(Dataset(xy[0], xy[1], name), name)


# ------------------------------------------------------------------------------- the objective
@pytest.mark.parametrize("loss,k", [("cross_entropy", 4), ("binary_cross_entropy", 1), ("squared_error", 3)])
def test_bregman_gradient_matches_finite_differences_and_vanishes_at_the_reference(loss, k):
    rng = np.random.RandomState(1)
    z_s = rng.standard_normal((5, k))
    z = z_s + 0.3 * rng.standard_normal((5, k))
    d, g = ev.bregman(loss, z, z_s)
    assert np.all(d > 0)
    num = np.zeros_like(z)
    h = 1e-6
    for i in range(5):
        for j in range(k):
            e = np.zeros_like(z)
            e[i, j] = h
            num[i, j] = (ev.bregman(loss, z + e, z_s)[0][i] - ev.bregman(loss, z - e, z_s)[0][i]) / (2 * h)
    assert np.allclose(g, num, atol=1e-7)
    d0, g0 = ev.bregman(loss, z_s, z_s)
    assert np.allclose(d0, 0.0, atol=1e-12) and np.allclose(g0, 0.0, atol=1e-12)


def test_softmax_bregman_is_the_kl_divergence():
    rng = np.random.RandomState(2)
    z_s, z = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    p_s = np.exp(z_s) / np.exp(z_s).sum(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert np.allclose(ev.bregman("cross_entropy", z, z_s)[0], (p_s * np.log(p_s / p)).sum(axis=1), atol=1e-12)


def test_bregman_of_an_unknown_loss_names_the_other_modes():
    with pytest.raises(InfluenceError, match="retrain='scratch'"):
        ev.bregman("hinge", np.zeros((1, 2)), np.zeros((1, 2)))


@pytest.mark.parametrize("make", [lambda: SoftmaxRegression(4, 3, l2=0.05),
                                  lambda: LogisticRegression(4, l2=0.02)])
def test_proximal_objective_gradient_matches_finite_differences(make):
    x, y = make_classification(40, 4, 3, seed=7)
    model = make()
    if isinstance(model, LogisticRegression):
        y = (y > 0).astype(np.int64)
    train = _data(model, (x, y))
    rng = np.random.RandomState(0)
    w_s = 0.5 * rng.standard_normal(model.n_params)          # not an optimum
    model.set_params(w_s)
    z_s = model.outputs(train)
    w = w_s + 0.2 * rng.standard_normal(model.n_params)
    removed = np.array([3, 11, 29])
    model.set_params(w)
    f, g = ev.proximal_objective(model, train, removed, w_s, z_s, damping=0.3)
    num = np.zeros_like(g)
    h = 1e-6
    for i in range(model.n_params):
        e = np.zeros_like(w)
        e[i] = h
        model.set_params(w + e)
        fp = ev.proximal_objective(model, train, removed, w_s, z_s, 0.3)[0]
        model.set_params(w - e)
        fm = ev.proximal_objective(model, train, removed, w_s, z_s, 0.3)[0]
        num[i] = (fp - fm) / (2 * h)
    assert np.allclose(g, num, rtol=1e-6, atol=1e-8)
    # at w_s with nothing removed the objective and its gradient are zero
    model.set_params(w_s)
    f0, g0 = ev.proximal_objective(model, train, [], w_s, z_s, 0.3)
    assert abs(f0) < 1e-14 and np.allclose(g0, 0.0, atol=1e-14)


def test_proximal_retraining_minimises_its_objective(problem):
    model, train, _ = problem
    train = _data(model, train)
    w_s = model.get_params()
    with model.preserving_params():
        res = ev.proximal_retrain(model, train, [5, 6], w_s, damping=0.1, gtol=1e-10, maxiter=500)
        w = model.get_params()
        z_s = None
        model.set_params(w_s)
        z_s = model.outputs(train)
        model.set_params(w)
        f, g = ev.proximal_objective(model, train, [5, 6], w_s, z_s, 0.1)
        assert np.max(np.abs(g)) < 1e-8 and np.allclose(g, res.jac, atol=1e-12)   # float64 line-search floor
        # any nearby point is higher
        rng = np.random.RandomState(3)
        for _ in range(5):
            model.set_params(w + 1e-3 * rng.standard_normal(w.size))
            assert ev.proximal_objective(model, train, [5, 6], w_s, z_s, 0.1)[0] > f
    assert np.array_equal(model.get_params(), w_s)


# ---------------------------------------------------------------- proximal = warm on a convex model
def test_proximal_with_zero_damping_at_an_optimum_is_warm_leave_one_out(problem):
    model, train, test = problem
    train = _data(model, train)
    n = len(train)
    w_s = model.get_params()
    with model.preserving_params():
        for i in (0, 17, 42):
            rest = train.subset(np.delete(np.arange(n), i))
            model.set_params(w_s)
            minimize_lbfgs(model, rest, n, 1e-11, 2000, 30)
            w_warm = model.get_params()
            ev.proximal_retrain(model, train, [i], w_s, 0.0, 1e-11, 2000)
            w_prox = model.get_params()
            assert np.linalg.norm(w_prox - w_warm) <= 1e-6 * np.linalg.norm(w_warm - w_s)
            assert np.linalg.norm(w_warm - w_s) > 1e-4             # the removal moved the weights


def test_small_damping_keeps_the_direction_of_warm_retraining(problem):
    model, train, _ = problem
    train = _data(model, train)
    n = len(train)
    w_s = model.get_params()
    removed = np.arange(0, 70, 9)
    with model.preserving_params():
        minimize_lbfgs(model, train.subset(np.setdiff1d(np.arange(n), removed)), n, 1e-11, 2000, 30)
        step_warm = model.get_params() - w_s
        for damping in (1e-3, 1e-2):
            ev.proximal_retrain(model, train, removed, w_s, damping, 1e-11, 2000)
            step = model.get_params() - w_s
            cos = step @ step_warm / np.linalg.norm(step) / np.linalg.norm(step_warm)
            assert cos > 0.999
            assert np.linalg.norm(step) < np.linalg.norm(step_warm)      # the proximal term holds it back


def test_lds_with_proximal_retraining_equals_warm_at_an_optimum(problem):
    model, train, test = problem
    warm = ev.lds(model, train, test, subsets=12, alpha=0.9, seed=1, retrain="warm", gtol=1e-9)
    prox = ev.lds(model, train, test, subsets=12, alpha=0.9, seed=1, retrain="proximal", gtol=1e-9)
    assert warm.retrain == "warm" and prox.retrain == "proximal"
    # not the same optimum: the warm objective weights the kept points 1/s, the proximal (ε = −1/n)
    # 1/n, so the L2 term weighs more in the proximal one; the outcomes still move together
    for t in range(warm.actual.shape[0]):
        assert np.corrcoef(warm.actual[t], prox.actual[t])[0, 1] > 0.99
    for m in ev.METHODS:
        assert abs(warm.mean[m] - prox.mean[m]) < 0.02


def test_auto_is_warm_at_an_optimum_and_proximal_off_it(problem):
    model, train, test = problem
    res = ev.lds(model, train, test, subsets=4, alpha=0.9, seed=2)
    assert res.retrain == "warm"
    w = model.get_params()
    off = SoftmaxRegression(4, 3, l2=0.05)
    off.set_params(w + 0.05)
    res = ev.loo(off, train, test, k=4, seed=0, damping=0.1, check_optimum=False)
    assert res.retrain == "proximal" and res.damping == 0.1
    assert np.array_equal(off.get_params(), (w + 0.05).astype(off.dtype))
    with pytest.warns(influence.NotAtOptimumWarning):        # the Hessian scores, off the optimum
        one = ev.verify_loo(off, train, (test[0][:2], test[1][:2]), k=6, damping=0.1)
    assert one.retrain == "proximal"
    # the measured change is what the proximal objective predicts to first order: same signs mostly
    assert np.corrcoef(one.predicted, one.actual)[0, 1] > 0.9


def test_proximal_with_damping_auto_uses_the_mean_eigenvalue(problem):
    model, train, test = problem
    res = ev.lds(model, train, test, subsets=3, alpha=0.9, seed=0, retrain="proximal", damping="auto",
                 curvature="gauss-newton")
    assert res.damping > 0
    op = influence.GaussNewtonOperator(model, train)
    assert np.isclose(res.damping, influence.curvature.auto_damping(op), rtol=1e-12)


def test_a_multiple_of_the_mean_eigenvalue_is_the_damping_of_the_scores_and_the_proximal_term(problem):
    model, train, test = problem
    res = ev.loo(model, train, test, k=3, seed=0, retrain="proximal", damping="0.5x", curvature="gauss-newton")
    mean = influence.curvature.mean_eigenvalue(influence.GaussNewtonOperator(model, _data(model, train)))[0]
    assert np.isclose(res.damping, 0.5 * mean, rtol=1e-12)
    with pytest.raises(InfluenceError, match="damping='-1x'"):
        ev.lds(model, train, test, subsets=3, damping="-1x")
    one = ev.verify_loo(model, train, (test[0][:2], test[1][:2]), k=2, damping=0.25, retrain="proximal")
    assert one.retrain == "proximal" and one.damping == 0.25


# ------------------------------------------------------------------------------------- scratch
def test_scratch_retraining_of_a_convex_model_reaches_the_warm_optimum(problem):
    model, train, test = problem
    warm = ev.lds(model, train, test, subsets=10, alpha=0.5, seed=4, retrain="warm", gtol=1e-9)
    scratch = ev.lds(model, train, test, subsets=10, alpha=0.5, seed=4, retrain="scratch", seeds=2, gtol=1e-9)
    assert scratch.retrain == "scratch" and scratch.seeds == 2
    assert np.allclose(scratch.actual, warm.actual, atol=1e-6)
    assert np.allclose(scratch.spread, 0.0, atol=1e-7)          # every seed reaches the same optimum
    for m in ev.METHODS:
        assert abs(scratch.mean[m] - warm.mean[m]) < 0.05


def test_scratch_seeds_reach_train_fn_and_their_spread_is_reported(problem):
    model, train, test = problem
    calls = []

    def train_fn(m, data, seed):
        # a deliberately seed-dependent "training run": L-BFGS stopped early from a random start
        calls.append(seed)
        m.set_params(np.random.RandomState(seed).standard_normal(m.n_params) * 0.1)
        minimize_lbfgs(m, data, len(data), 1e-12, 3, 5)
    w = model.get_params()
    res = ev.loo(model, train, test, indices=[1, 2, 3], retrain="scratch", seeds=3, train_fn=train_fn)
    assert sorted(calls) == list(range(9))                      # distinct seeds for every run
    assert res.spread.shape == (len(test[0]), 3) and np.all(res.spread > 0)
    assert np.array_equal(model.get_params(), w)


def test_bad_retraining_settings_are_refused_with_the_parameter(problem):
    model, train, test = problem
    with pytest.raises(InfluenceError, match="retrain='cold'"):
        ev.lds(model, train, test, subsets=3, retrain="cold")
    with pytest.raises(InfluenceError, match="seeds=3.*retrain='scratch'"):
        ev.loo(model, train, test, k=3, retrain="proximal", seeds=3)
    with pytest.raises(InfluenceError, match="seeds=0"):
        ev.lds(model, train, test, subsets=3, retrain="scratch", seeds=0)
    with pytest.raises(InfluenceError, match="learner"):
        ev.parse_recipe("adamw lr=0.1")
    with pytest.raises(InfluenceError, match="'lr=x' is not a number|lr='x'"):
        ev.parse_recipe("adam lr=x")
    with pytest.raises(InfluenceError, match="key=value"):
        ev.parse_recipe("sgd speed=3")
    assert ev.parse_recipe("momentum_sgd lr=0.1 epochs=3") == ev.Recipe("momentum_sgd", 0.1, 0.9, 3, 64)


def test_weights_restored_after_a_failure_inside_a_retraining(problem):
    model, train, test = problem
    train_d, test_d = _data(model, train), _data(model, test, "test data")
    w = model.get_params()

    class Boom(Exception):
        pass
    real = model.outputs
    count = [0]

    def failing(data, batch_size=None):
        count[0] += 1
        if count[0] == 4:
            model.set_params(np.zeros(model.n_params))          # a half-done retraining ...
            raise Boom()
        return real(data, batch_size)
    model.outputs = failing
    try:
        with pytest.raises(Boom):
            retrain_columns(model, train_d, test_d, w, [np.arange(60)], 70, 1e-8, 100, None,
                            retraining("proximal", 0.1))
    finally:
        del model.outputs
    assert np.array_equal(model.get_params(), w)                # ... undone


# ------------------------------------------------------------------- the damping sweep and TracIn
def test_damping_sweep_and_tracin_are_scored_methods_beside_the_others(problem):
    model, train, test = problem
    train_d, test_d = _data(model, train), _data(model, test, "test data")
    rng = np.random.RandomState(8)
    w = model.get_params()
    checkpoints = [w + 0.1 * rng.standard_normal(w.size), w + 0.05 * rng.standard_normal(w.size)]
    res = ev.lds(model, train, test, subsets=6, alpha=0.9, seed=1, retrain="warm", dampings=["0.01x", "1x", 0.5],
                 checkpoints=checkpoints, learning_rates=[0.1, 0.2])
    names = ["influence", "grad_dot", "influence λ=0.01x", "influence λ=1x", "influence λ=0.5", "tracin", "random"]
    assert list(res.mean) == names and set(res.method_seconds) == set(names)
    assert all(v >= 0 for v in res.method_seconds.values())
    assert np.array_equal(model.get_params(), w)
    # "1x" is the mean eigenvalue of the Hessian, trace/d (exact for this model: 10 probes estimate it)
    mean = influence.curvature.mean_eigenvalue(influence.HessianOperator(model, train_d))[0]
    st = influence.s_test(model, train_d, test_d, "direct", mean, check_optimum=False).vectors
    g = model.per_example_grads(train_d)
    n = len(train_d)
    direct = -st @ g.T
    expected = ev.subset_predictions(direct, res.subsets, n, res.base)
    assert np.allclose(res.predicted["influence λ=1x"], expected, rtol=1e-6, atol=1e-9)
    # TracIn: −Σ_k lr_k g_test(w_k)·g_i(w_k)
    total = 0
    with model.preserving_params():
        for wk, lr in zip(checkpoints, [0.1, 0.2]):
            model.set_params(wk)
            total = total - lr * model.per_example_grads(test_d) @ model.per_example_grads(train_d).T
    assert np.allclose(res.predicted["tracin"], ev.subset_predictions(total, res.subsets, n, res.base), rtol=1e-9)


def test_bad_sweeps_and_checkpoints_are_refused(problem):
    model, train, test = problem
    with pytest.raises(InfluenceError, match="dampings="):
        ev.lds(model, train, test, subsets=3, dampings=["lots"])
    with pytest.raises(InfluenceError, match="dampings="):
        ev.loo(model, train, test, k=3, dampings=["-1x"])
    with pytest.raises(InfluenceError, match="checkpoints=.*parameters"):
        ev.lds(model, train, test, subsets=3, checkpoints=[np.zeros(3)])
    w = model.get_params()
    with pytest.raises(InfluenceError, match="learning_rates="):
        ev.lds(model, train, test, subsets=3, checkpoints=[w, w], learning_rates=[1, 2, 3])
