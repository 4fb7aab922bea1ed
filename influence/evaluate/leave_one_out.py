"""Checking influence predictions against actual leave-one-out retraining.

Sign convention (derivation). Up-weighting z_i by ε gives R_ε(w) = R(w) + ε·ℓ(z_i, w) with minimizer
w_ε; differentiating ∇R_ε(w_ε) = 0 at ε = 0 gives dw_ε/dε = −H⁻¹ g_i, hence

    d ℓ(z_test, w_ε)/dε = −g_testᵀ H⁻¹ g_i = I_up,loss(z_i, z_test).

Removing z_i is ε = −1/n, i.e. the objective R_{−i}(w) = (1/n) Σ_{j≠i} ℓ(z_j, w) + (λ/2)‖w‖²
(note 1/n, not 1/(n−1): renormalizing would also change the relative weight of the L2 term, a shift
of the same order as the effect measured). So

    predicted  Δ_i = −I_up,loss / n = g_testᵀ H⁻¹ g_i / n
    actual     Δ_i = ℓ(z_test, w*_{−i}) − ℓ(z_test, w*)

both "after removal minus before": the Pearson correlation of the two should be ≈ +1. With several
test points the test loss is their mean.
"""
import collections
import time

import numpy as np

from ..common.errors import InfluenceError, param
from ..fitting import check_optimum, minimize_lbfgs, objective
from ..jobs import plain_options
from ..scoring import influence_scores, predicted_loss_change, s_test
from .baselines import damping_setting, method_names, parse_dampings
from .metrics import explain_correlation, pearson, spearman
from .retrain import EvalJob, RETRAIN_MAXITER, check_retrain, retrain_columns, retraining

__all__ = ["verify_loo", "LOOResult", "loo", "LOOEvaluation", "pearson", "spearman", "LOO_GTOL"]

#: Default gradient tolerance (max |∂R/∂w_i|) of the leave-one-out retraining.
LOO_GTOL = 1e-9
#: Offset of the seed for the random half of the removed points of :func:`loo`.
SEED_LOO = 2

LOOResult = collections.namedtuple(
    "LOOResult", "indices predicted actual pearson spearman scores base_grad_norm grad_norms seconds retrain "
                 "damping noise note reference_moved")
LOOResult.__doc__ = """Result of :func:`verify_loo`. ``indices``: the training points removed;
``predicted``: −I_up,loss/n for them (mean over test points); ``actual``: ℓ(z_test, w*_{−i}) −
ℓ(z_test, w*) (mean over test points); ``pearson``/``spearman`` of the two; ``scores``: I_up,loss of
every training point (as returned by influence_scores); ``base_grad_norm``: ‖∇R‖ of the re-tightened
full-data reference optimum; ``grad_norms``: ‖∇R_{−i}‖ at the end of each retraining; ``seconds``:
dict of wall times (scores, retraining); ``retrain``: the retraining mode used; ``damping``: the damping of
the scores as a number (the λ of proximal retraining; NaN when ``scores`` were given and ``damping`` is
None or "auto"); ``noise``: per removed
point, the first-order estimate of how much the measured change is still off because the retrainings
stop at ``gtol``, |s·r_i| + |s·r_0| (s = (C + damping·I)⁻¹ ∇ℓ_test the scores' s_test, r_i and r_0 the
gradients left at the end of the retraining without i and of the reference; warm and proximal
retraining when the scores were computed here, else None); ``note``: None, or one sentence on why the
correlations are NaN or mean little (:func:`influence.evaluate.explain_correlation`); ``reference_moved``:
‖w* − w‖, how far re-tightening the model's weights w to ``gtol`` moved them (warm retraining with
scores computed here: the scores are computed at w*, where the retrainings start; else 0)."""



def verify_loo(model, train, test, indices=None, k=20, damping=0.0, random_state=0, solver="cg",
               scoring="forward", gtol=LOO_GTOL, maxiter=5000, scores=None, batch_size=None, retrain="auto",
               seeds=1, recipe=None, train_fn=None, init=None, progress=False, curvature="auto", **solver_options):
    """Retrain without each of ``k`` training points and compare the actual change of the test loss
    with the influence prediction (see the module docstring for the sign convention).

    ``indices``: the points to remove; by default ``k // 2`` with the largest |I_up,loss| (mean over
    test points) and the rest drawn at random (``random_state``) from the others. Each retraining is a
    warm-started L-BFGS from w* on R_{−i} (1/n weights) to max |∂R_{−i}/∂w| <= ``gtol``. The reference
    w* is first re-tightened to the same ``gtol`` on the full data so both sides of the difference are
    optimized alike (the model's own weights are not changed), and the scores are computed at w* too, so
    that prediction and measurement share their weights (``result.reference_moved`` says how far w* is
    from the model's weights). ``scores``: precomputed I_up,loss, used as given (skips
    :func:`influence_scores`, which otherwise runs with ``solver``, ``scoring``, ``damping``).
    ``retrain``: "warm" (above), "proximal" (the PBRF objective from the trained weights with
    λ = ``damping``, against the test loss at those weights), "scratch" (``seeds`` runs without the
    point from fresh initialisations with ``recipe``/``train_fn``/``init`` — see
    :mod:`influence.evaluate.scratch` — minus the same seeds' runs on all the data), or "auto" (warm
    at an optimum, proximal otherwise; ``result.retrain`` says which).
    ``curvature``/``damping`` as in :func:`influence.s_test` (the proximal λ is the damping the scores
    used); ``progress``: bars (stderr) over the solve and the scoring chunks.
    Restores the model's weights (and Constants) bit-identically (also on exceptions). Returns :class:`LOOResult`.
    """
    check_retrain(gtol, maxiter, None, retrain, seeds)
    train = model.validate(train, getattr(train, "name", "training data"))
    test = model.validate(test, getattr(test, "name", "test data"))
    n = len(train)
    times = {}
    mode = retrain
    if mode == "auto":
        mode = "warm" if check_optimum(model, train, batch_size=batch_size).ok else "proximal"
    t0 = time.time()
    st = None
    moved = 0.0
    if scores is None:
        with model.preserving_params():
            if mode == "warm":
                # predictions and measurements at the same weights: the retrainings start from the reference
                # optimum re-tightened to gtol, so the scores are computed there too. A fit stopped at a
                # looser tolerance can lie far from it along a flat direction where the Hessian differs
                # (docs/evaluation.md, "The README's verify example, explained": 0.066 away, Pearson 0.47
                # with the trained weights' Hessian, 0.988 with the reference's)
                w = model.get_params()
                minimize_lbfgs(model, train, n, gtol, maxiter, 30)
                moved = float(np.linalg.norm(model.get_params().astype(np.float64) - w.astype(np.float64)))
            st = s_test(model, train, test, solver, damping, batch_size, curvature=curvature,
                        **dict({"progress": progress}, **solver_options))
            scores = influence_scores(model, train, test, scoring=scoring, batch_size=batch_size, s=st,
                                      check_optimum=False, progress=progress)
        if damping is None or (isinstance(damping, str) and damping == "auto"):
            damping = st.damping                # what the scores used: the proximal λ
    times["scores"] = time.time() - t0
    mean_scores = np.atleast_2d(scores).mean(axis=0)
    if mean_scores.shape != (n,):
        raise ValueError("scores have shape %s; expected (%d,) or (n_test, %d)"
                         % (np.shape(scores), n, n))
    if indices is None:
        k = int(min(k, n))
        top = np.argsort(-np.abs(mean_scores), kind="mergesort")[:k // 2]
        rest = np.setdiff1d(np.arange(n), top)
        rng = np.random.RandomState(random_state)
        rand = rng.choice(rest, size=k - top.size, replace=False)
        indices = np.concatenate([top, rand])
    else:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0 or indices.min() < -n or indices.max() >= n:
            raise ValueError("indices must be a non-empty list of training rows in 0..%d" % (n - 1))
        indices = indices % n
    predicted = predicted_loss_change(mean_scores[indices], n)
    t0 = time.time()
    s_mean = None
    if st is not None and mode == "warm":
        s_mean = np.atleast_2d(st.vectors).mean(axis=0)   # the test loss is the mean over the test points
    if mode == "warm":
        actual, grad_norms, base_grad_norm, noise = _warm_loo(model, train, test, indices, gtol, maxiter,
                                                              batch_size, s_mean)
    else:
        actual, grad_norms, base_grad_norm = _other_loo(model, train, test, indices, gtol, maxiter, batch_size,
                                                        retraining(mode, damping, seeds, recipe, train_fn, init,
                                                                   random_state))
        noise = None
    times["retraining"] = time.time() - t0
    lam = float("nan") if damping is None or isinstance(damping, str) else float(damping)
    return LOOResult(indices, predicted, actual, pearson(predicted, actual), spearman(predicted, actual),
                     scores, base_grad_norm, grad_norms, times, mode, lam, noise,
                     explain_correlation(predicted, actual, noise), moved)


def _warm_loo(model, train, test, indices, gtol, maxiter, batch_size, s=None):
    """(actual, gradient norms left, the reference's, noise or None). The noise of change j: the test
    loss still moves by ≈ −s·r when a retraining ending with gradient r is finished (one Newton step
    w − C⁻¹r, s = C⁻¹∇ℓ_test), so the measured difference is off by up to |s·r_j| + |s·r_0|."""
    n = len(train)
    actual, grad_norms, noise = np.empty(indices.size), np.empty(indices.size), np.empty(indices.size)
    with model.preserving_params():
        minimize_lbfgs(model, train, n, gtol, maxiter, 30)
        r0 = objective(model, train, n)[1]
        base_grad_norm = float(np.linalg.norm(r0))
        w_ref = model.get_params()
        base = float(np.mean(model.per_example_losses(test, batch_size)))
        everything = np.arange(n)
        for j, i in enumerate(indices):
            model.set_params(w_ref)
            rest = train.subset(np.delete(everything, i))
            minimize_lbfgs(model, rest, n, gtol, maxiter, 30)
            r = objective(model, rest, n)[1]
            grad_norms[j] = np.linalg.norm(r)
            actual[j] = float(np.mean(model.per_example_losses(test, batch_size))) - base
            if s is not None:
                noise[j] = abs(float(s @ r)) + abs(float(s @ r0))
    return actual, grad_norms, base_grad_norm, (noise if s is not None else None)


def _other_loo(model, train, test, indices, gtol, maxiter, batch_size, spec):
    """Proximal: from the trained weights, against their test loss. Scratch: the mean over the seeds
    without the point minus the mean over the SAME seeds on all the data (common random numbers)."""
    n = len(train)
    everything = np.arange(n)
    w_s = model.get_params()
    if spec["mode"] == "scratch":
        full = retrain_columns(model, train, test, w_s, [everything], n, gtol, maxiter, batch_size, spec)
        base, base_grad_norm = float(np.mean(full[:len(test), 0])), float(full[-1, 0])
    else:
        with model.preserving_params():
            base = float(np.mean(model.per_example_losses(test, batch_size)))
        base_grad_norm = float("nan")
    actual, grad_norms = np.empty(indices.size), np.empty(indices.size)
    for j, i in enumerate(indices):
        col = retrain_columns(model, train, test, w_s, [np.delete(everything, i)], n, gtol, maxiter, batch_size, spec)
        actual[j] = float(np.mean(col[:len(test), 0])) - base
        grad_norms[j] = col[-1, 0]
    return actual, grad_norms, base_grad_norm


# ------------------------------------------------------------------------------------ many test points
LOOEvaluation = collections.namedtuple(
    "LOOEvaluation", "indices predicted actual pearson spearman pooled_pearson pooled_spearman "
                     "n_train grad_norms seconds retrain seeds spread damping method_seconds")
LOOEvaluation.__doc__ = """Result of :func:`loo`. ``indices``: the k training points removed;
``predicted``: {method: (T, k) predicted test-loss changes −I/n}; ``actual``: (T, k) measured
changes; ``pearson`` / ``spearman``: {method: correlation of the means over test points (as
verify_loo)}; ``pooled_pearson`` / ``pooled_spearman``: {method: over all (test point, removed point)
pairs}; ``grad_norms``: (k,); ``seconds``; ``retrain``, ``seeds``, ``spread`` (T, k) and ``damping`` as in
:class:`influence.evaluate.LDSResult` (with scratch retraining the changes are measured from the mean
over the k retrainings, since the trained weights are not where a run from scratch ends)."""


class _LOOJob(EvalJob):
    kind = "evaluate-loo"

    def _compute(self):
        s = self.settings
        t0 = time.perf_counter()
        with self.model.preserving_params():
            at_model = self.model.per_example_losses(self.test, s["batch_size"])
        scores, scoring, mode, w_ref, base = self.scores_and_start(s, at_model)
        n = len(self.train)
        idx = s["indices"]
        if idx is None:
            mean_abs = np.abs(scores["influence"]).mean(axis=0)
            k = min(s["k"], n)
            top = np.argsort(-mean_abs, kind="mergesort")[:k // 2]
            rest = np.setdiff1d(np.arange(n), top)
            rand = np.random.RandomState(s["seed"] + SEED_LOO).choice(rest, size=k - top.size, replace=False)
            idx = np.concatenate([top, rand])
        idx = np.asarray(idx, dtype=np.int64)
        everything = np.arange(n)
        kept = np.array([np.delete(everything, i) for i in idx])
        after, spread, grad_norms = self._retrain(s, w_ref, kept, n, self.spec(s, mode))
        if mode == "scratch":
            # the trained weights are no reference for runs from scratch: changes from their mean
            base = after.mean(axis=1)
        t2 = time.perf_counter()
        return scores, idx, after - base[:, None], grad_norms, (scoring, t2 - t0 - scoring), mode, spread


def loo(model, train, test, k=20, seed=0, indices=None, gtol=LOO_GTOL, maxiter=RETRAIN_MAXITER,
        solver="auto", damping=0.0, scoring="gradient", batch_size=None, check_optimum=True, folder=None,
        resume=False, chunk_size=1, progress=False, executor=None, inputs=None, retrain="auto", seeds=1,
        recipe=None, train_fn=None, init=None, curvature="hessian", dampings=(), checkpoints=None,
        learning_rates=None, **solver_options):
    """Leave-one-out for many test points at once, influence vs the baselines (module docstring).

    ``indices``: the training points to remove (default: ``k // 2`` with the largest mean
    |I_up,loss| over the test points and the rest drawn from ``seed``). Each retraining (warm start
    from the reference optimum re-tightened to ``gtol``, objective R_{−i} with 1/n weights as in
    :func:`influence.verify_loo`) serves every test point. Other arguments (``retrain``, ``seeds``,
    ``recipe``, ``train_fn``, ``init``, ``curvature`` included) as in :func:`lds`.
    Returns :class:`LOOEvaluation`. Weights and Constants unchanged afterwards.
    """
    check_retrain(gtol, maxiter, chunk_size, retrain, seeds)
    n = len(model.validate(train, getattr(train, "name", "training data")))
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0 or indices.min() < 0 or indices.max() >= n:
            raise ValueError("indices must be a non-empty list of training rows in 0..%d" % (n - 1))
        indices = indices.tolist()
    elif int(k) < 2:
        raise InfluenceError("%s: correlations need at least 2 removed training points (e.g. %s)"
                             % (param("k", k), param("k", 20)), parameter="k", suggestion=20)
    settings = {"k": int(k), "seed": int(seed), "indices": indices, "gtol": float(gtol), "maxiter": int(maxiter),
                "solver": solver, "damping": damping_setting(damping), "scoring": scoring,
                "batch_size": batch_size, "check_optimum": bool(check_optimum),
                "retrain": retrain, "seeds": int(seeds), "recipe": None if recipe is None else str(recipe),
                "train_fn": getattr(train_fn, "__name__", None if train_fn is None else repr(train_fn)),
                "init": init if init is None or isinstance(init, str) else "vector", "curvature": curvature,
                "dampings": [str(d) for d in dampings or ()],
                "checkpoints": None if not checkpoints else [c if isinstance(c, str) else "vector %d" % i
                                                             for i, c in enumerate(checkpoints)],
                "learning_rates": None if learning_rates is None else np.asarray(learning_rates, dtype=float).tolist(),
                "solver_options": plain_options(dict(solver_options, progress=None))}
    start = time.perf_counter()
    job = _LOOJob(model, train, test, folder, resume, chunk_size, progress, inputs, settings, executor)
    parse_dampings(dampings)                         # refused before any work
    job.solver_options, job.train_fn, job.checkpoints = solver_options, train_fn, checkpoints
    job.init_vector = None if init is None or isinstance(init, str) else np.asarray(init)
    scores, idx, actual, grad_norms, (t_scores, t_retrain), mode, spread = job.run()
    methods = method_names(dampings, checkpoints)
    predicted = {m: -scores[m][:, idx] / float(n) for m in methods}
    mean_actual = actual.mean(axis=0)
    pear = {m: pearson(predicted[m].mean(axis=0), mean_actual) for m in methods}
    spear = {m: spearman(predicted[m].mean(axis=0), mean_actual) for m in methods}
    ppear = {m: pearson(predicted[m].ravel(), actual.ravel()) for m in methods}
    pspear = {m: spearman(predicted[m].ravel(), actual.ravel()) for m in methods}
    seconds = {"scores": t_scores, "retraining": t_retrain, "total": time.perf_counter() - start}
    return LOOEvaluation(idx, predicted, actual, pear, spear, ppear, pspear, n, grad_norms, seconds, mode,
                         int(seeds), spread, job.damping(job.settings), job.method_seconds)
