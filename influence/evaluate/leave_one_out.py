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
import sys
import time

import numpy as np

from ..common.errors import InfluenceError, param
from ..fitting import minimize_lbfgs, objective
from ..jobs import plain_options
from ..scoring import influence_scores, predicted_loss_change, s_test
from .baselines import METHODS
from .metrics import pearson, spearman
from ..scoring import check_curvature
from ..jobs import damping_setting
from .retrain import EvalJob, RETRAIN_MAXITER, check_retrain

__all__ = ["verify_loo", "LOOResult", "loo", "LOOEvaluation", "pearson", "spearman", "LOO_GTOL"]

#: Default gradient tolerance (max |∂R/∂w_i|) of the leave-one-out retraining.
LOO_GTOL = 1e-9
#: Offset of the seed for the random half of the removed points of :func:`loo`.
SEED_LOO = 2

LOOResult = collections.namedtuple(
    "LOOResult", "indices predicted actual pearson spearman scores base_grad_norm grad_norms seconds")
LOOResult.__doc__ = """Result of :func:`verify_loo`. ``indices``: the training points removed;
``predicted``: −I_up,loss/n for them (mean over test points); ``actual``: ℓ(z_test, w*_{−i}) −
ℓ(z_test, w*) (mean over test points); ``pearson``/``spearman`` of the two; ``scores``: I_up,loss of
every training point (as returned by influence_scores); ``base_grad_norm``: ‖∇R‖ of the re-tightened
full-data reference optimum; ``grad_norms``: ‖∇R_{−i}‖ at the end of each retraining; ``seconds``:
dict of wall times (scores, retraining)."""



def verify_loo(model, train, test, indices=None, k=20, damping=None, random_state=0, solver="cg",
               scoring="forward", gtol=LOO_GTOL, maxiter=5000, scores=None, batch_size=None, progress=False,
               curvature="auto", **solver_options):
    """Retrain without each of ``k`` training points and compare the actual change of the test loss
    with the influence prediction (see the module docstring for the sign convention).

    ``indices``: the points to remove; by default ``k // 2`` with the largest |I_up,loss| (mean over
    test points) and the rest drawn at random (``random_state``) from the others. Each retraining is a
    warm-started L-BFGS from w* on R_{−i} (1/n weights) to max |∂R_{−i}/∂w| <= ``gtol``. The reference
    w* is first re-tightened to the same ``gtol`` on the full data so both sides of the difference are
    optimized alike (the model's own weights are not changed). ``scores``: precomputed I_up,loss
    (skips :func:`influence_scores`, which otherwise runs with ``solver``, ``scoring``, ``damping``).
    Restores the model's weights bit-identically (also on exceptions). ``progress``: bars (stderr) over
    the solve, the scoring chunks and the retrainings. Returns :class:`LOOResult`.
    """
    train = model.validate(train, getattr(train, "name", "training data"))
    test = model.validate(test, getattr(test, "name", "test data"))
    n = len(train)
    times = {}
    t0 = time.time()
    if scores is None:
        st = s_test(model, train, test, solver, damping, batch_size, curvature=curvature,
                    **dict({"progress": progress}, **solver_options))
        scores = influence_scores(model, train, test, scoring=scoring, batch_size=batch_size,
                                  s=st, check_optimum=False, progress=progress)
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
    actual, grad_norms = np.empty(indices.size), np.empty(indices.size)
    with model.preserving_params():
        minimize_lbfgs(model, train, n, gtol, maxiter, 30)
        base_grad_norm = float(np.linalg.norm(objective(model, train, n)[1]))
        w_ref = model.get_params()
        base = float(np.mean(model.per_example_losses(test, batch_size)))
        everything = np.arange(n)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=indices.size, desc="retraining", unit="point", file=sys.stderr, leave=False,
                       dynamic_ncols=True)
        try:
            for j, i in enumerate(indices):
                model.set_params(w_ref)
                rest = train.subset(np.delete(everything, i))
                minimize_lbfgs(model, rest, n, gtol, maxiter, 30)
                grad_norms[j] = np.linalg.norm(objective(model, rest, n)[1])
                actual[j] = float(np.mean(model.per_example_losses(test, batch_size))) - base
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    times["retraining"] = time.time() - t0
    return LOOResult(indices, predicted, actual, pearson(predicted, actual), spearman(predicted, actual),
                     scores, base_grad_norm, grad_norms, times)


# ------------------------------------------------------------------------------------ many test points
LOOEvaluation = collections.namedtuple(
    "LOOEvaluation", "indices predicted actual pearson spearman pooled_pearson pooled_spearman "
                     "n_train grad_norms seconds")
LOOEvaluation.__doc__ = """Result of :func:`loo`. ``indices``: the k training points removed;
``predicted``: {method: (T, k) predicted test-loss changes −I/n}; ``actual``: (T, k) measured
changes; ``pearson`` / ``spearman``: {method: correlation of the means over test points (as
verify_loo)}; ``pooled_pearson`` / ``pooled_spearman``: {method: over all (test point, removed point)
pairs}; ``grad_norms``: (k,); ``seconds``."""


class _LOOJob(EvalJob):
    kind = "evaluate-loo"

    def _compute(self):
        s = self.settings
        t0 = time.perf_counter()
        scores = self._scores(s)
        t1 = time.perf_counter()
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
        w_ref, base, _ = self._reference(s)
        everything = np.arange(n)
        kept = np.array([np.delete(everything, i) for i in idx])
        after, grad_norms = self._retrain(s, w_ref, kept, n)
        t2 = time.perf_counter()
        return scores, idx, after - base[:, None], grad_norms, (t1 - t0, t2 - t1)


def loo(model, train, test, k=20, seed=0, indices=None, gtol=LOO_GTOL, maxiter=RETRAIN_MAXITER,
        solver="auto", damping=None, scoring="gradient", batch_size=None, check_optimum=True, folder=None,
        resume=False, chunk_size=1, progress=False, executor=None, inputs=None, curvature="auto", **solver_options):
    """Leave-one-out for many test points at once, influence vs the baselines (module docstring).

    ``indices``: the training points to remove (default: ``k // 2`` with the largest mean
    |I_up,loss| over the test points and the rest drawn from ``seed``). Each retraining (warm start
    from the reference optimum re-tightened to ``gtol``, objective R_{−i} with 1/n weights as in
    :func:`influence.verify_loo`) serves every test point. Other arguments as in :func:`lds`.
    Returns :class:`LOOEvaluation`. Weights unchanged afterwards.
    """
    check_retrain(gtol, maxiter, chunk_size)
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
                "solver": solver, "damping": damping_setting(damping),
                "curvature": check_curvature(curvature), "scoring": scoring, "batch_size": batch_size,
                "check_optimum": bool(check_optimum),
                "solver_options": plain_options(dict(solver_options, progress=None))}
    start = time.perf_counter()
    job = _LOOJob(model, train, test, folder, resume, chunk_size, progress, inputs, settings, executor)
    job.solver_options = solver_options
    scores, idx, actual, grad_norms, (t_scores, t_retrain) = job.run()
    predicted = {m: -scores[m][:, idx] / float(n) for m in METHODS}
    mean_actual = actual.mean(axis=0)
    pear = {m: pearson(predicted[m].mean(axis=0), mean_actual) for m in METHODS}
    spear = {m: spearman(predicted[m].mean(axis=0), mean_actual) for m in METHODS}
    ppear = {m: pearson(predicted[m].ravel(), actual.ravel()) for m in METHODS}
    pspear = {m: spearman(predicted[m].ravel(), actual.ravel()) for m in METHODS}
    seconds = {"scores": t_scores, "retraining": t_retrain, "total": time.perf_counter() - start}
    return LOOEvaluation(idx, predicted, actual, pear, spear, ppear, pspear, n, grad_norms, seconds)
