"""influence.evaluate on the NumPy reference models (both environments): the LDS metric on known
answers, the toolkit's LDS against a straightforward independent computation, subsets from the seed,
resume after an interruption, weights restored, leave-one-out and mislabel detection, the PNGs."""
import os
import sys

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import influence
from influence import evaluate as ev
from influence.evaluate import retrain as ev_retrain
from influence.jobs import JobFailed
from influence.models import SoftmaxRegression

from conftest import make_classification

#: |LDS| of scores independent of the outcomes, averaged over T test points of m subsets, has
#: standard error ≈ 1/√(T(m−1)); the test allows 5 of them.
INDEPENDENT_SIGMAS = 5.0
#: The toolkit's and the independent computation's measured losses agree to this (both retrain to a
#: tight gradient tolerance from the same start).
LOSS_ATOL = 1e-7
#: LDS values of the two computations agree to this (identical ranks give identical Spearman).
LDS_ATOL = 1e-9


@pytest.fixture(scope="module")
def problem():
    x, y = make_classification(90, 4, 3, seed=3)
    model = SoftmaxRegression(4, 3, l2=0.05)
    influence.fit(model, (x[:70], y[:70]), gtol=1e-10)
    return model, (x[:70], y[:70]), (x[70:], y[70:])


# ------------------------------------------------------------------------------------ the metric
def test_outcomes_linear_in_the_subset_give_lds_one_and_negated_scores_minus_one():
    rng = np.random.RandomState(0)
    n, T = 40, 6
    scores = rng.standard_normal((T, n))
    subsets = ev.draw_subsets(n, 30, 0.5, seed=1)
    kept = np.zeros((30, n))
    for j, rows in enumerate(subsets):
        kept[j, rows] = 1.0
    actual = 3.0 + 0.7 * (kept @ scores.T).T          # exactly linear in the subset indicator
    pred = ev.subset_predictions(scores, subsets, n)
    assert np.allclose(ev.linear_datamodeling_score(pred, actual), 1.0, atol=1e-12)
    neg = ev.subset_predictions(-scores, subsets, n)
    assert np.allclose(ev.linear_datamodeling_score(neg, actual), -1.0, atol=1e-12)
    # the leave-one-out form −(1/n) Σ_removed I differs by a factor and a constant: same LDS
    removed = -((1.0 - kept) @ scores.T).T / n
    assert np.allclose(ev.linear_datamodeling_score(removed, actual), 1.0, atol=1e-12)


def test_scores_independent_of_the_outcomes_give_lds_near_zero():
    rng = np.random.RandomState(5)
    n, T, m = 50, 40, 60
    subsets = ev.draw_subsets(n, m, 0.5, seed=2)
    pred = ev.subset_predictions(rng.standard_normal((T, n)), subsets, n)
    actual = rng.standard_normal((T, m))
    mean, se, count = ev.mean_and_error(ev.linear_datamodeling_score(pred, actual))
    assert count == T
    assert abs(mean) < INDEPENDENT_SIGMAS / np.sqrt(T * (m - 1)), mean
    assert 0 < se < 0.1


def test_constant_outcomes_give_nan_and_are_left_out_of_the_mean():
    lds = ev.linear_datamodeling_score([[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [5, 5, 5]])
    assert lds[0] == pytest.approx(1.0) and np.isnan(lds[1])
    mean, se, count = ev.mean_and_error(lds)
    assert mean == pytest.approx(1.0) and count == 1 and np.isnan(se)


def test_subsets_are_reproducible_from_the_seed():
    a, b, c = ev.draw_subsets(101, 7, 0.3, 4), ev.draw_subsets(101, 7, 0.3, 4), ev.draw_subsets(101, 7, 0.3, 5)
    assert a.shape == (7, 30) and np.array_equal(a, b) and not np.array_equal(a, c)
    for row in a:
        assert np.all(np.diff(row) > 0) and row.min() >= 0 and row.max() < 101


@pytest.mark.parametrize("kwargs, match", [({"m": 1}, "at least 2"), ({"alpha": 1.0}, "strictly between"),
                                           ({"alpha": 0.001}, "keeps 0 of")])
def test_bad_subsets_are_refused(kwargs, match):
    args = dict(n=100, m=5, alpha=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ev.draw_subsets(args["n"], args["m"], args["alpha"])


# ------------------------------------------------------------------------------------ LDS end to end
def _softmax_loss_grad(w, x, y, k, l2):
    """Mean softmax cross-entropy + (l2/2)‖w‖² and its gradient, written out here (flat w = [W, b])."""
    p = x.shape[1]
    W, b = w[:k * p].reshape(k, p), w[k * p:]
    s = x @ W.T + b
    s = s - s.max(axis=1, keepdims=True)
    prob = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(prob[np.arange(len(y)), y])) + 0.5 * l2 * w @ w
    r = prob.copy()
    r[np.arange(len(y)), y] -= 1.0
    grad = np.concatenate([(r.T @ x).ravel(), r.sum(axis=0)]) / len(y) + l2 * w
    return loss, grad


def _test_losses(w, x, y, k):
    p = x.shape[1]
    s = x @ w[:k * p].reshape(k, p).T + w[k * p:]
    m = s.max(axis=1)
    return m + np.log(np.exp(s - m[:, None]).sum(axis=1)) - s[np.arange(len(y)), y]


def test_lds_equals_an_independent_retrain_loop_with_scipy_spearman(problem):
    model, (x, y), (xt, yt) = problem
    w_before = model.get_params()
    res = ev.lds(model, (x, y), (xt, yt), subsets=20, alpha=0.5, seed=7, gtol=1e-9)
    assert np.array_equal(model.get_params(), w_before)
    n, k, l2 = len(x), 3, model.l2
    w0 = model.get_params()
    # influence: −g_tᵀ H⁻¹ g_i with the exact Hessian and per-example gradients from the formulas
    H = model.hessian((x, y))
    G, Gt = model.per_example_grads((x, y)), model.per_example_grads((xt, yt))
    I = -Gt @ np.linalg.solve(H, G.T)
    predicted, actual = [], []
    for rows in res.subsets:
        removed = np.setdiff1d(np.arange(n), rows)
        predicted.append(-I[:, removed].sum(axis=1) / n)          # −Σ_removed I_up,loss / n
        opt = scipy.optimize.minimize(_softmax_loss_grad, w0, args=(x[rows], y[rows], k, l2), jac=True,
                                      method="L-BFGS-B", options={"gtol": 1e-11, "ftol": 0, "maxiter": 5000})
        actual.append(_test_losses(opt.x, xt, yt, k))
    predicted, actual = np.array(predicted).T, np.array(actual).T
    assert np.allclose(res.actual, actual, atol=LOSS_ATOL)
    mine = np.array([scipy.stats.spearmanr(p, a).correlation for p, a in zip(predicted, actual)])
    assert np.allclose(res.lds["influence"], mine, atol=LDS_ATOL)
    assert res.mean["influence"] == pytest.approx(np.mean(mine), abs=LDS_ATOL)
    assert res.stderr["influence"] == pytest.approx(np.std(mine, ddof=1) / np.sqrt(len(mine)), abs=LDS_ATOL)
    # on this convex model the influence scores beat the baselines
    assert res.mean["influence"] > 0.9 and res.mean["influence"] > res.mean["grad_dot"]
    assert abs(res.mean["random"]) < 0.5


def test_margin_lds_equals_loss_lds(problem):
    model, train, test = problem
    a = ev.lds(model, train, test, subsets=8, seed=1)
    b = ev.lds(model, train, test, subsets=8, seed=1, target="margin")
    assert np.allclose(a.lds["influence"], b.lds["influence"], atol=1e-12)
    assert np.allclose(b.actual, -np.log(np.expm1(a.actual)))
    assert b.target == "margin"


def test_resume_after_an_interruption_gives_the_same_numbers(problem, tmp_path, monkeypatch):
    model, train, test = problem
    folder = str(tmp_path / "run.partial")
    whole = ev.lds(model, train, test, subsets=6, seed=3)
    real = ev_retrain.retrain_columns
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt                  # Ctrl-C during the 4th retraining
        return real(*args, **kwargs)
    monkeypatch.setattr(ev_retrain, "retrain_columns", failing)
    w = model.get_params()
    with pytest.raises(KeyboardInterrupt):
        ev.lds(model, train, test, subsets=6, seed=3, folder=folder)
    assert np.array_equal(model.get_params(), w)
    assert os.path.isdir(folder)
    # another seed is another job: refused, naming the difference
    with pytest.raises(ValueError, match="differs in seed"):
        ev.lds(model, train, test, subsets=6, seed=4, folder=folder, resume=True)
    calls[:] = [0] * 10                             # no more failures
    resumed = ev.lds(model, train, test, subsets=6, seed=3, folder=folder, resume=True)
    assert len(calls) == 10 + 3                      # the 3 subsets done before Ctrl-C were reused
    assert not os.path.exists(folder)
    for m in ev.METHODS:
        assert np.array_equal(resumed.lds[m], whole.lds[m])
    assert np.array_equal(resumed.actual, whole.actual)


def test_executor_callable_computes_the_chunks(problem):
    model, train, test = problem
    seen = []

    def executor(missing, on_done):
        for a, b in missing:
            seen.append((a, b))
            on_done(a, b, ev_retrain.retrain_columns(model, model.validate(train), model.validate(test),
                                              executor.w0, executor.kept[a:b], executor.kept.shape[1],
                                              ev.LDS_GTOL, ev.RETRAIN_MAXITER, None))
    ref = ev.lds(model, train, test, subsets=4, seed=2, chunk_size=2)
    executor.kept = ref.subsets
    with model.preserving_params():
        ev_retrain.minimize_lbfgs(model, model.validate(train), len(train[0]), ev.LDS_GTOL, ev.RETRAIN_MAXITER, 30)
        executor.w0 = model.get_params()
    res = ev.lds(model, train, test, subsets=4, seed=2, chunk_size=2, executor=executor)
    assert seen == [(0, 2), (2, 4)]
    assert np.array_equal(res.actual, ref.actual)


# ------------------------------------------------------------------------------------ loo, mislabel
def test_loo_for_many_test_points_matches_verify_loo(problem):
    model, train, test = problem
    w = model.get_params()
    res = ev.loo(model, train, test, k=6, seed=0)
    assert np.array_equal(model.get_params(), w)
    assert res.actual.shape == (len(test[0]), 6) and res.predicted["influence"].shape == res.actual.shape
    ref = influence.verify_loo(model, train, test, indices=res.indices, solver="direct", scoring="gradient")
    assert np.allclose(res.actual.mean(axis=0), ref.actual, atol=1e-9)
    assert np.allclose(res.predicted["influence"].mean(axis=0), ref.predicted, rtol=1e-5, atol=1e-12)
    assert res.pearson["influence"] > 0.99 and res.pooled_pearson["influence"] > 0.99
    assert set(res.pearson) == set(ev.METHODS)


#: The first-order noise estimate bounds how far a loose retraining's measured change is from a tight
#: one's, within this factor (it is one Newton step's worth: exact for a quadratic, close near one).
NOISE_FACTOR = 2.0


def test_verify_loo_noise_bounds_what_a_loose_tolerance_costs(problem):
    """LOOResult.noise: |s·r_i| + |s·r_0| from the gradients the retrainings leave. Retrained to gtol
    1e-4, each measured change is within NOISE_FACTOR × its noise of the change retrained to 1e-11;
    at 1e-11 the noise is far below the changes, and there is no note."""
    model, train, test = problem
    idx = [0, 5, 11, 17, 23, 40]
    tight = influence.verify_loo(model, train, test, indices=idx, solver="direct", scoring="gradient", gtol=1e-11)
    loose = influence.verify_loo(model, train, test, indices=idx, solver="direct", scoring="gradient", gtol=1e-4)
    assert tight.note is None and tight.retrain == "warm"
    assert np.all(tight.noise < 1e-3 * np.abs(tight.actual))
    off = np.abs(loose.actual - tight.actual)
    assert np.all(off <= NOISE_FACTOR * loose.noise + 1e-14), (off, loose.noise)
    assert np.max(off) > 100 * np.max(tight.noise)          # the loose runs are measurably off
    given = influence.verify_loo(model, train, test, indices=idx, scores=tight.scores)
    assert given.noise is None                              # no s_test computed here: no estimate


def test_verify_loo_scores_where_its_retrainings_start():
    """Warm verify re-tightens the model's weights to gtol before retraining; the predictions come from
    the same re-tightened weights (an independent fit of a copy to gtol, scored there), not from the
    looser fit the model holds, whose weights stay untouched."""
    x, y = make_classification(80, 4, 3, seed=5)
    train, test = (x[:60], y[:60]), (x[60:], y[60:])
    model = SoftmaxRegression(4, 3, l2=0.01)
    influence.fit(model, train, gtol=1e-3)
    w = model.get_params()
    idx = [0, 3, 7, 12]
    res = influence.verify_loo(model, train, test, indices=idx, solver="direct", scoring="gradient", gtol=1e-10,
                               retrain="warm")
    assert np.array_equal(model.get_params(), w) and res.retrain == "warm"
    tight = SoftmaxRegression(4, 3, l2=0.01)
    tight.set_params(w)
    influence.fit(tight, train, gtol=1e-10)
    expected = influence.predicted_loss_change(
        influence.influence_scores(tight, train, test, solver="direct", scoring="gradient").mean(axis=0), 60)[idx]
    np.testing.assert_allclose(res.predicted, expected, rtol=1e-6)
    assert res.reference_moved == pytest.approx(np.linalg.norm(tight.get_params() - w), rel=1e-3)
    assert res.reference_moved > 1e-4                        # the loose fit was measurably elsewhere
    at_model = influence.predicted_loss_change(
        influence.influence_scores(model, train, test, solver="direct", scoring="gradient").mean(axis=0), 60)[idx]
    assert not np.allclose(res.predicted, at_model, rtol=1e-6)


def test_evaluate_loo_and_lds_score_where_their_retrainings_start():
    """As verify: warm evaluations score at the re-tightened reference, not at a looser fit's weights."""
    x, y = make_classification(80, 4, 3, seed=5)
    train, test = (x[:60], y[:60]), (x[60:], y[60:])
    model = SoftmaxRegression(4, 3, l2=0.01)
    influence.fit(model, train, gtol=1e-3)
    w = model.get_params()
    tight = SoftmaxRegression(4, 3, l2=0.01)
    tight.set_params(w)
    influence.fit(tight, train, gtol=1e-10)
    expected = influence.influence_scores(tight, train, test, solver="direct", scoring="gradient")
    res = ev.loo(model, train, test, k=4, retrain="warm", gtol=1e-10, solver="direct", check_optimum=False)
    np.testing.assert_allclose(res.predicted["influence"], -expected[:, res.indices] / 60, rtol=1e-6)
    lds = ev.lds(model, train, test, subsets=3, retrain="warm", gtol=1e-10, solver="direct", check_optimum=False)
    np.testing.assert_allclose(lds.predicted["influence"], ev.subset_predictions(expected, lds.subsets, 60, lds.base),
                               rtol=1e-6)
    assert np.array_equal(model.get_params(), w)


def test_explain_correlation_says_why_it_is_nan_or_meaningless():
    p = np.array([1.0, -2.0, 3.0])
    assert ev.explain_correlation(p, np.array([0.5, -1.0, 2.0])) is None
    assert "exactly 0" in ev.explain_correlation(p, np.zeros(3))
    assert np.isnan(ev.pearson(p, np.zeros(3)))
    assert "the same (0.25)" in ev.explain_correlation(p, np.full(3, 0.25))
    assert "every prediction is the same" in ev.explain_correlation(np.zeros(3), p)
    assert "not finite" in ev.explain_correlation(p, np.array([1.0, np.nan, 2.0]))
    assert "within its retraining noise" in ev.explain_correlation(p, np.array([1e-9, -1e-9, 2e-9]),
                                                                   noise=np.full(3, 1e-8))
    assert "at least 2" in ev.explain_correlation(p[:1], p[:1])


def test_flip_labels_and_detection_curve():
    y = np.arange(50) % 4
    new, flipped = ev.flip_labels(y, 0.2, 4, seed=1)
    assert flipped.size == 10 and np.all(new[flipped] != y[flipped])
    assert np.array_equal(np.delete(new, flipped), np.delete(y, flipped))
    again, same = ev.flip_labels(y, 0.2, 4, seed=1)
    assert np.array_equal(again, new) and np.array_equal(same, flipped)
    perfect = np.concatenate([flipped, np.setdiff1d(np.arange(50), flipped)])
    curve = ev.detection_curve(perfect, flipped)
    assert curve[9] == 1.0 and curve[0] == 0.1 and np.mean(curve) == pytest.approx((5.5 + 40) / 50)
    with pytest.raises(ValueError, match="integer class labels"):
        ev.flip_labels(y.astype(float), 0.2, 4)
    with pytest.raises(ValueError, match="flips no label"):
        ev.flip_labels(y, 0.001, 4)


def test_mislabel_ranks_and_reports_every_baseline(problem):
    model, train, _ = problem
    w = model.get_params()
    res = ev.mislabel(model, train, fraction=0.2, seed=0, top=(0.1, 0.5))
    assert np.array_equal(model.get_params(), w)
    assert set(res.auc) == {"self_influence", "grad_dot", "training_loss", "random"}
    assert res.flipped.size == 14
    for m, r in res.rankings.items():
        assert sorted(r) == list(range(70))
        assert len(res.found[m]) == 2 and 0 <= res.auc[m] <= 1
    assert res.auc["self_influence"] > 0.6          # the flipped labels are found well above chance


def test_weights_restored_when_a_retraining_fails(problem, monkeypatch):
    model, train, test = problem
    w = model.get_params()

    def boom(*args, **kwargs):
        model.set_params(w + 1.0)
        raise KeyboardInterrupt
    monkeypatch.setattr(ev_retrain, "minimize_lbfgs", boom)
    for call in (lambda: ev.lds(model, train, test, subsets=3),
                 lambda: ev.mislabel(model, train)):
        with pytest.raises(KeyboardInterrupt):
            call()
        assert np.array_equal(model.get_params(), w)


# ------------------------------------------------------------------------------------ pictures
def test_plot_writes_a_png_or_says_how_to_get_matplotlib(problem, tmp_path, monkeypatch):
    model, train, test = problem
    res = ev.lds(model, train, test, subsets=4)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            ev.plot(res, str(tmp_path / "x.png"))
        return
    for r in (res, ev.loo(model, train, test, k=3), ev.mislabel(model, train, fraction=0.2)):
        path = str(tmp_path / ("%s.png" % type(r).__name__))
        ev.plot(r, path)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        ev.plot(res, str(tmp_path / "y.png"))


def test_retrainings_on_a_dask_cluster_give_the_same_numbers(tmp_path):
    pytest.importorskip("distributed")
    from influence import dask as cluster
    x, y = make_classification(80, 4, 3, seed=4)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x[:60], y=y[:60])
    train = influence.load_npz(path)
    model = SoftmaxRegression(4, 3, l2=0.05)
    influence.fit(model, train, gtol=1e-10)
    here = ev.lds(model, train, (x[60:], y[60:]), subsets=4, seed=1, chunk_size=2)
    with pytest.raises(ValueError, match="in-memory arrays"):
        ev.lds(model, (x[:60], y[:60]), (x[60:], y[60:]), subsets=4,
               executor=cluster.DaskExecutor(object()))
    with cluster.connect("local:1") as client:
        there = ev.lds(model, train, (x[60:], y[60:]), subsets=4, seed=1, chunk_size=2,
                       executor=cluster.DaskExecutor(client))
    assert np.array_equal(there.subsets, here.subsets)
    assert np.allclose(there.actual, here.actual, rtol=0, atol=1e-12)
    assert np.array_equal(there.lds["influence"], here.lds["influence"])
