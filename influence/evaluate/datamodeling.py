"""The linear datamodeling score (:func:`lds`): retraining on random subsets against the scores'
first-order predictions (see :mod:`influence.evaluate`)."""
import collections
import time

import numpy as np

from ..jobs import plain_options
from .baselines import damping_setting, method_names, parse_dampings
from .metrics import draw_subsets, linear_datamodeling_score, mean_and_error, subset_predictions
from .retrain import EvalJob, RETRAIN_MAXITER, check_retrain

__all__ = ["lds", "LDSResult", "LDS_GTOL"]

#: Default gradient tolerance (max |∂R_S/∂w|) of the LDS retrainings and of the reference optimum.
LDS_GTOL = 1e-6

LDSResult = collections.namedtuple(
    "LDSResult", "lds mean stderr subsets predicted actual target base n_train gtol grad_norms seconds "
                 "retrain seeds spread damping method_seconds")
LDSResult.__doc__ = """Result of :func:`lds`. ``lds``: {method: LDS per test point (T,)}; ``mean`` /
``stderr``: {method: mean over test points (NaN left out) / its standard error}; ``subsets``: (m, s)
sorted training rows of each subset; ``predicted``: {method: (T, m) predicted values};
``actual``: (T, m) measured values (loss or margin, ``target``); ``base``: (T,) the value at the
reference optimum; ``n_train``; ``gtol``; ``grad_norms``: ‖∇R_S‖ at the end of each retraining (m,);
``seconds``: {"scores", "retraining", "total"}; ``retrain``: the retraining mode used ("warm",
"proximal", "scratch"); ``seeds``: retrainings per subset; ``spread``: (T, m) the seed-to-seed
standard deviation of each measured value (0 with one seed); ``damping``: the scores' damping (a
number; the proximal term's λ); ``method_seconds``: {method: seconds per test point of its scores}."""


def _margin_terms(model, target, base_losses):
    if target not in ("loss", "margin"):
        raise ValueError("target=%r is not one of 'loss', 'margin'" % (target,))
    if target == "margin":
        loss = getattr(model, "loss_name", None)
        from ..adapters.reference import LogisticRegression, SoftmaxRegression
        if loss not in ("cross_entropy", "binary_cross_entropy") and \
                not isinstance(model, (SoftmaxRegression, LogisticRegression)):
            raise ValueError("target='margin' needs a cross-entropy loss (ℓ = −log p_y), the model's is %r; "
                             "use target='loss'" % (loss,))


def _to_margin(losses):
    """m = log p − log(1 − p) = −log(e^ℓ − 1) for ℓ = −log p."""
    return -np.log(np.expm1(np.maximum(np.asarray(losses, dtype=np.float64), 1e-300)))


class _LDSJob(EvalJob):
    kind = "evaluate-lds"

    def _compute(self):
        s = self.settings
        t0 = time.perf_counter()
        with self.model.preserving_params():
            at_model = self.model.per_example_losses(self.test, s["batch_size"])
        scores, scoring, mode, w_ref, base = self.scores_and_start(s, at_model)
        subsets = draw_subsets(len(self.train), s["subsets"], s["alpha"], s["seed"])
        actual, spread, grad_norms = self._retrain(s, w_ref, subsets, subsets.shape[1], self.spec(s, mode))
        t2 = time.perf_counter()
        return scores, at_model, base, subsets, actual, grad_norms, (scoring, t2 - t0 - scoring), mode, spread


def lds(model, train, test, subsets=50, alpha=0.5, seed=0, target="loss", gtol=LDS_GTOL,
        maxiter=RETRAIN_MAXITER, solver="auto", damping=0.0, scoring="gradient", batch_size=None,
        check_optimum=True, folder=None, resume=False, chunk_size=1, progress=False, executor=None,
        inputs=None, retrain="auto", seeds=1, recipe=None, train_fn=None, init=None, curvature="hessian", dampings=(),
        checkpoints=None, learning_rates=None,
        **solver_options):
    """The linear datamodeling score of the influence scores and the baselines (module docstring).

    ``subsets`` m subsets of ⌊``alpha``·n⌋ training points from ``seed``; each retrained (warm start
    from the reference optimum, the model's weights re-tightened to ``gtol``) with L-BFGS to
    max |∂R_S/∂w| <= ``gtol`` or ``maxiter`` iterations. ``target``: "loss" or "margin" (cross-entropy
    models). Scores: ``solver``/``damping``/``scoring``/``solver_options`` as in
    :func:`influence.influence_scores`. ``folder``/``resume``: checkpoint folder and resumption;
    ``chunk_size``: subsets per chunk; ``executor``: e.g. ``influence.dask.executor.DaskExecutor(client)``
    (``train`` loaded from a file every worker reads); ``inputs``: extra fingerprint identity.
    ``retrain``: "warm" (above), "proximal" (the PBRF objective from the trained weights,
    :mod:`influence.evaluate.proximal`, λ = the scores' ``damping``), "scratch" (``seeds`` runs per
    subset from fresh initialisations with ``recipe``, ``train_fn`` or ``init``,
    :mod:`influence.evaluate.scratch`; the measured value is their mean) or "auto" (warm at an
    optimum by :func:`influence.check_optimum`, proximal otherwise; ``result.retrain`` says which).
    ``curvature``: "hessian", "gauss-newton" or "fisher" in the influence scores; ``damping`` a
    number or "auto". Returns :class:`LDSResult`. Weights and Constants unchanged afterwards.
    """
    check_retrain(gtol, maxiter, chunk_size, retrain, seeds)
    _margin_terms(model, target, None)
    n = len(model.validate(train, getattr(train, "name", "training data")))
    draw_subsets(n, subsets, alpha, seed)           # refuse bad subsets/alpha before any work
    settings = {"subsets": int(subsets), "alpha": float(alpha), "seed": int(seed), "gtol": float(gtol),
                "maxiter": int(maxiter), "solver": solver, "damping": damping_setting(damping),
                "scoring": scoring, "batch_size": batch_size, "check_optimum": bool(check_optimum),
                "retrain": retrain, "seeds": int(seeds), "recipe": None if recipe is None else str(recipe),
                "train_fn": getattr(train_fn, "__name__", None if train_fn is None else repr(train_fn)),
                "init": init if init is None or isinstance(init, str) else "vector", "curvature": curvature,
                "dampings": [str(d) for d in dampings or ()],
                "checkpoints": None if not checkpoints else [c if isinstance(c, str) else "vector %d" % i
                                                             for i, c in enumerate(checkpoints)],
                "learning_rates": None if learning_rates is None else np.asarray(learning_rates, dtype=float).tolist(),
                "solver_options": plain_options(dict(solver_options, progress=None))}
    start = time.perf_counter()
    job = _LDSJob(model, train, test, folder, resume, chunk_size, progress, inputs, settings, executor)
    parse_dampings(dampings)                         # refused before any work
    job.solver_options, job.train_fn, job.checkpoints = solver_options, train_fn, checkpoints
    job.init_vector = None if init is None or isinstance(init, str) else np.asarray(init)
    scores, at_model, base, subs, actual, grad_norms, (t_scores, t_retrain), mode, spread = job.run()
    if target == "margin":
        scale = -1.0 / -np.expm1(-at_model)                    # −1/(1 − p_y), p_y = e^{−ℓ}
        scores = {m: v * scale[:, None] for m, v in scores.items()}
        margin = _to_margin(actual)
        spread = spread / -np.expm1(-actual)                   # |dm/dℓ| = 1/(1 − p_y), to first order
        actual, base = margin, _to_margin(base)
    methods = method_names(dampings, checkpoints)
    predicted = {m: subset_predictions(scores[m], subs, n, base) for m in methods}
    per_point = {m: linear_datamodeling_score(predicted[m], actual) for m in methods}
    stats = {m: mean_and_error(per_point[m]) for m in methods}
    seconds = {"scores": t_scores, "retraining": t_retrain, "total": time.perf_counter() - start}
    return LDSResult(per_point, {m: stats[m][0] for m in methods}, {m: stats[m][1] for m in methods},
                     subs, predicted, actual, target, base, n, float(gtol), grad_norms, seconds, mode, int(seeds),
                     spread, job.damping(job.settings), job.method_seconds)
