"""How good are the scores? Leave-one-out, the linear datamodeling score and mislabel detection,
each against baselines scored through the same code.

Definitions (docs/concepts-influence.md): R(w) = (1/n) Σ_i ℓ(z_i, w) + (λ/2)‖w‖², w* = argmin R,
H = ∇²R(w*), I_up,loss(z_i, z_t) = −g_tᵀ H⁻¹ g_i (what :func:`influence.influence_scores` returns).

**Baselines** (the ``methods`` of every result): ``"influence"`` (I_up,loss); ``"grad_dot"`` — the
same formula with H replaced by the identity, −g_tᵀ g_i, computed by the same scoring code with
g_t in place of s_test; ``"random"`` — standard normal scores drawn from the seed. Mislabel detection
adds ``"training_loss"`` (rank by ℓ(z_i, w)) and ranks by self-influence g_iᵀ H⁻¹ g_i, its
grad-dot counterpart ‖g_i‖², training loss and a random permutation.

**Linear datamodeling score** (Park et al. 2023). Draw m subsets S_j of s = ⌊α·n⌋ training points
without replacement (:func:`draw_subsets`, from ``seed``); retrain on each, warm-started from w*, on
the subset's own objective R_S(w) = (1/s) Σ_{i∈S} ℓ(z_i, w) + (λ/2)‖w‖² to the gradient tolerance
``gtol`` (the full-data reference is first re-tightened to the same ``gtol``); record each test
point's loss f_t(S) = ℓ(z_t, w_S) (or its margin). R_S is R with the weights ε_i = 1/s − 1/n on the
kept points and ε_i = −1/n on the removed ones, so to first order (dℓ_t/dε_i = I_up,loss(z_i, z_t))::

    f̂_t(S) = ℓ(z_t, w*) + Σ_i ε_i I_ti = ℓ(z_t, w*) + (1/s) Σ_{i∈S} I_ti − (1/n) Σ_i I_ti
           = ℓ(z_t, w*) − (1/s) Σ_{i∉S} I_ti + (1/s − 1/n) Σ_i I_ti

With the 1/n objective of leave-one-out ((1/n) Σ_{i∈S} ℓ_i, see :mod:`influence.loo`) the same
argument gives f̂_t(S) = ℓ(z_t, w*) − (1/n) Σ_{i∉S} I_ti: a loss change is predicted by −Σ I_up,loss/n
over the REMOVED points. Since every subset has the same size s, the two predictions differ by a
positive factor n/s and a constant per test point, and Spearman's correlation ignores both: the LDS
is the same. LDS_t = Spearman over the m subsets of (f̂_t(S_j), f_t(S_j)); reported: the mean over
test points and its standard error (sample standard deviation / √T; test points whose measured
values are constant over the subsets give NaN and are left out, and counted).

The margin option: for a cross-entropy loss ℓ = −log p_y, the logit margin is
m = log p_y − log(1 − p_y) = −log(e^ℓ − 1), a decreasing function of ℓ with dm/dℓ = −1/(1 − p_y);
its influence is I_up,margin = −I_up,loss / (1 − p_y(w*)). Per test point the margin's ranks are the
loss's reversed on both sides, so its LDS equals the loss's: the option reports values in the units
researchers use, not a different score.

**Leave-one-out** (:func:`loo`): :func:`influence.verify_loo` for many test points at once: k
training points (half with the largest mean |I_up,loss|, half at random) removed one at a time,
the retrainings shared by every test point; predicted Δ_ti = −I_ti/n vs actual ℓ(z_t, w*_{−i}) −
ℓ(z_t, w*), Pearson/Spearman of the means over test points and pooled over all pairs.

**Mislabel detection** (:func:`mislabel`): flip ⌊fraction·n⌋ labels to another class (seeded), refit
(warm start), rank the training points; the detection curve is the fraction of flipped labels among
the first c checked, c = 1..n; reported: the fraction found in the top k % and the area under the
curve (x = c/n; random ≈ 0.5, perfect = 1 − fraction/2).

The retrainings are chunks of :func:`influence.chunks.run_chunks` (``chunk_size`` subsets each):
with ``folder`` they are checkpointed (:class:`influence.jobs.Checkpoint`), ``resume=True``
continues an interrupted run with exactly the same numbers, and ``executor`` (an
:class:`influence.cluster.DaskExecutor`, or a ``run_chunks`` executor callable) retrains them on Dask
workers. The model's weights are restored bit-identically afterwards, also on errors.
"""
import collections
import time

import numpy as np

from .chunks import run_chunks
from .fitting import _minimize
from .jobs import _Job, _plain_options, data_identity
from .kernels import gradient_blocks
from .loo import LOO_GTOL, pearson, spearman
from .scores import influence_scores, s_test, self_influence

__all__ = ["lds", "loo", "mislabel", "LDSResult", "LOOEvaluation", "MislabelResult", "draw_subsets",
           "subset_predictions", "linear_datamodeling_score", "mean_and_error", "baseline_scores",
           "flip_labels", "detection_curve", "plot", "summary", "METHODS", "LDS_GTOL", "MISLABEL_TOP",
           "RETRAIN_MAXITER"]

#: Score methods of lds/loo, in report order: the influence scores and the baselines.
METHODS = ("influence", "grad_dot", "random")
#: Default gradient tolerance (max |∂R_S/∂w|) of the LDS retrainings and of the reference optimum.
LDS_GTOL = 1e-6
#: Default top fractions at which mislabel detection reports the share of flipped labels found.
MISLABEL_TOP = (0.05, 0.10, 0.20, 0.30)
#: Default L-BFGS iterations at most per retraining.
RETRAIN_MAXITER = 2000
#: L-BFGS memory of the retrainings (as verify_loo).
_MAXCOR = 30
#: Offsets of the seed for the independent random streams (subsets, random baseline, flips).
_SEED_RANDOM_SCORES = 1
_SEED_LOO = 2

LDSResult = collections.namedtuple(
    "LDSResult", "lds mean stderr subsets predicted actual target base n_train gtol grad_norms seconds")
LDSResult.__doc__ = """Result of :func:`lds`. ``lds``: {method: LDS per test point (T,)}; ``mean`` /
``stderr``: {method: mean over test points (NaN left out) / its standard error}; ``subsets``: (m, s)
sorted training rows of each subset; ``predicted``: {method: (T, m) predicted values};
``actual``: (T, m) measured values (loss or margin, ``target``); ``base``: (T,) the value at the
reference optimum; ``n_train``; ``gtol``; ``grad_norms``: ‖∇R_S‖ at the end of each retraining (m,);
``seconds``: {"scores", "retraining", "total"}."""

LOOEvaluation = collections.namedtuple(
    "LOOEvaluation", "indices predicted actual pearson spearman pooled_pearson pooled_spearman "
                     "n_train grad_norms seconds")
LOOEvaluation.__doc__ = """Result of :func:`loo`. ``indices``: the k training points removed;
``predicted``: {method: (T, k) predicted test-loss changes −I/n}; ``actual``: (T, k) measured
changes; ``pearson`` / ``spearman``: {method: correlation of the means over test points (as
verify_loo)}; ``pooled_pearson`` / ``pooled_spearman``: {method: over all (test point, removed point)
pairs}; ``grad_norms``: (k,); ``seconds``."""

MislabelResult = collections.namedtuple(
    "MislabelResult", "flipped rankings curves found auc top fraction refit_grad_norm seconds")
MislabelResult.__doc__ = """Result of :func:`mislabel`. ``flipped``: the training rows whose label was
flipped; ``rankings``: {method: training rows, most suspicious first} for "self_influence",
"grad_dot", "training_loss", "random"; ``curves``: {method: (n,) fraction of flipped rows among the
first c = 1..n checked}; ``found``: {method: [fraction found in the top k for k in ``top``]};
``auc``: {method: area under the curve}; ``fraction``; ``refit_grad_norm``: ‖∇R‖ after the refit on
the flipped labels; ``seconds``."""


# ------------------------------------------------------------------------------------ the metrics
def draw_subsets(n, m, alpha=0.5, seed=0):
    """(m, ⌊α·n⌋) int64 array: row j = the sorted training rows of subset j, drawn without
    replacement; the same ``seed`` gives the same subsets."""
    n, m = int(n), int(m)
    if m < 2:
        raise ValueError("subsets=%r: the LDS is a correlation over subsets; pass at least 2 (e.g. 50)" % (m,))
    if not (0 < alpha < 1):
        raise ValueError("alpha=%r must lie strictly between 0 and 1 (e.g. 0.5)" % (alpha,))
    size = int(np.floor(alpha * n))
    if size < 1 or size >= n:
        raise ValueError("alpha=%r keeps %d of %d training points; choose alpha so that 1 <= alpha*n < n"
                         % (alpha, size, n))
    rng = np.random.RandomState(seed)
    return np.array([np.sort(rng.choice(n, size=size, replace=False)) for _ in range(m)], dtype=np.int64)


def subset_predictions(scores, subsets, n_train, base=None):
    """(T, m) first-order predictions f̂_t(S_j) = base_t + (1/s) Σ_{i∈S_j} I_ti − (1/n) Σ_i I_ti of the
    value after retraining on each subset with the mean-over-subset objective (module docstring);
    ``scores``: (T, n) I_up,loss; ``subsets``: (m, s) rows; ``base``: (T,) (default 0)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    subsets = np.atleast_2d(np.asarray(subsets))
    n = int(n_train)
    if scores.shape[1] != n:
        raise ValueError("scores have %d columns but n_train=%d" % (scores.shape[1], n))
    kept = np.zeros((len(subsets), n))
    kept[np.repeat(np.arange(len(subsets)), subsets.shape[1]), subsets.ravel()] = 1.0
    pred = scores @ kept.T / float(subsets.shape[1]) - scores.sum(axis=1, keepdims=True) / float(n)
    return pred if base is None else pred + np.asarray(base, dtype=np.float64).reshape(-1, 1)


def linear_datamodeling_score(predicted, actual):
    """LDS per test point: Spearman correlation (ranks with ties averaged) over the subsets (columns)
    of ``predicted`` and ``actual`` (T, m); NaN for a row that is constant on either side."""
    predicted, actual = np.atleast_2d(predicted), np.atleast_2d(actual)
    if predicted.shape != actual.shape:
        raise ValueError("predicted %s and actual %s differ in shape" % (predicted.shape, actual.shape))
    return np.array([spearman(p, a) for p, a in zip(predicted, actual)])


def mean_and_error(values):
    """(mean, standard error, count) of the finite entries of ``values`` (se: sample std / √count;
    NaN with fewer than 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    se = float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(np.mean(v)), se, int(v.size)


def flip_labels(y, fraction, n_classes, seed=0):
    """(new labels, flipped rows): ⌊fraction·n⌋ rows drawn without replacement from ``seed``, each
    label moved to another class uniformly, (y + U{1..C−1}) mod C."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError("mislabel detection needs integer class labels y of shape (n,); got %s %s"
                         % (y.dtype, y.shape))
    if not (0 < fraction < 1):
        raise ValueError("fraction=%r must lie strictly between 0 and 1 (e.g. 0.1)" % (fraction,))
    n = y.size
    count = int(np.floor(fraction * n))
    if count < 1:
        raise ValueError("fraction=%r flips no label of %d; pass a larger fraction" % (fraction, n))
    if n_classes < 2:
        raise ValueError("n_classes=%r: flipping a label needs at least 2 classes" % (n_classes,))
    rng = np.random.RandomState(seed)
    flipped = np.sort(rng.choice(n, size=count, replace=False))
    out = y.copy()
    out[flipped] = (out[flipped] + rng.randint(1, n_classes, size=count)) % n_classes
    return out, flipped


def detection_curve(ranking, flipped):
    """(n,) fraction of the ``flipped`` rows among the first c = 1..n rows of ``ranking``."""
    hit = np.isin(np.asarray(ranking), np.asarray(flipped)).astype(np.float64)
    return np.cumsum(hit) / float(len(flipped))


def _found(curve, top):
    n = curve.size
    return [float(curve[max(1, int(round(k * n))) - 1]) for k in top]


# ------------------------------------------------------------------------------------ scores
def baseline_scores(model, train, test, seed=0, solver="auto", damping=0.0, scoring="gradient",
                    batch_size=None, check_optimum=True, progress=False, **solver_options):
    """{method: (T, n) scores} for :data:`METHODS`: I_up,loss (s_test by ``solver``: "auto" picks
    direct for small models, which factorises H once for every test point), grad-dot −g_tᵀ g_i
    (the same :func:`influence.influence_scores` call, g_t stacked under s_test: one pass of
    per-example gradients serves both) and random."""
    test = model.validate(test, getattr(test, "name", "test data"))
    st = s_test(model, train, test, solver, damping, batch_size, check_optimum=check_optimum,
                **dict(solver_options, progress=progress))
    with model.preserving_params():
        g_test = model.per_example_grads(test, batch_size)
    # one scoring pass for both: the rows of s are s_test (influence) and g_test (grad-dot)
    both = np.atleast_2d(influence_scores(model, train, test.subset(np.tile(np.arange(len(test)), 2)),
                                          scoring=scoring, s=np.vstack([st.vectors, g_test]),
                                          batch_size=batch_size, check_optimum=False, progress=progress))
    out = {"influence": both[:len(test)], "grad_dot": both[len(test):]}
    out["random"] = np.random.RandomState(seed + _SEED_RANDOM_SCORES).standard_normal(out["influence"].shape)
    return out


# ------------------------------------------------------------------------------------ retraining
def _retrain_columns(model, train, test, w0, kept, norm, gtol, maxiter, batch_size):
    """(T + 1, len(kept)): each column the test losses after retraining on the rows kept[j] (warm
    start w0, objective Σ_kept ℓ / norm + L2, to gtol); last row ‖∇R‖ of the last L-BFGS point."""
    out = np.empty((len(test) + 1, len(kept)))
    with model.preserving_params():
        for j, rows in enumerate(kept):
            model.set_params(w0)
            res = _minimize(model, train.subset(np.asarray(rows)), norm, gtol, maxiter, _MAXCOR)
            out[:-1, j] = model.per_example_losses(test, batch_size)
            out[-1, j] = float(np.linalg.norm(res.jac))
    return out


def _retrain_task(job, start, stop):
    """A Dask task: retrain the job's subsets start..stop on this worker (model and data cached)."""
    from .cluster import _worker_data, _worker_model
    model, lock = _worker_model(job)
    data = _worker_data(job, model)
    with lock:
        test = model.validate(job.test, job.test.name)
        return _retrain_columns(model, data, test, job.w0, job.kept[start:stop], job.norm, job.gtol,
                                job.maxiter, job.batch_size)


def _dask_runner(executor, model, train, test, w0, kept, norm, gtol, maxiter, batch_size):
    """The run_chunks executor that retrains on the workers of a DaskExecutor's client: the model,
    test rows and subsets travel once (one job task), every worker reads the training file."""
    from . import cluster
    if executor._taken is None or executor._taken.get("path") != train.source:
        executor.check(model, train)
    job = cluster._Job(model, train, np.zeros((0, model.n_params)), None, "gradient", batch_size,
                       executor._taken)
    from .data import Dataset
    # the test rows travel as plain arrays (a validated Dataset remembers the client's model, which
    # does not pickle) and are validated again by the worker's model
    plain = Dataset(test.x if not hasattr(test.x, "filename") else np.array(test.x),
                    None if test.y is None else np.array(test.y), test.name)
    job.test, job.w0, job.kept, job.norm = plain, np.asarray(w0), np.asarray(kept), norm
    job.gtol, job.maxiter = gtol, maxiter
    return cluster.chunk_executor(executor.client, job, _retrain_task, executor.retries, "retrain")


class _Prefixed(object):
    """A Checkpoint's chunks under a name prefix (the retrainings' chunks beside other arrays)."""

    def __init__(self, checkpoint, prefix):
        self.checkpoint, self.prefix = checkpoint, prefix
        self.stats = checkpoint.stats

    def load_chunk(self, a, b):
        return self.checkpoint.load_array("%s-%08d-%08d" % (self.prefix, a, b))

    def save_chunk(self, a, b, values):
        self.checkpoint.save_array("%s-%08d-%08d" % (self.prefix, a, b), values)


def _check_executor(executor, model, train):
    if executor is not None and hasattr(executor, "check"):
        executor.check(model, train)


# ------------------------------------------------------------------------------------ jobs
class _EvalJob(_Job):
    """Shared by the three evaluations: checkpoint life cycle (lock, fingerprint, resume) from
    :class:`influence.jobs._Job`; scores, the reference optimum and the retrainings saved in it."""

    def __init__(self, model, train, test, folder, resume, chunk_size, progress, inputs, settings,
                 executor=None):
        train = model.validate(train, getattr(train, "name", "training data"))
        _Job.__init__(self, model, train, folder, resume, 1 if chunk_size is None else chunk_size, progress,
                      inputs)
        self.test = None if test is None else model.validate(test, getattr(test, "name", "test data"))
        self.settings = settings
        self.executor = executor
        self.solver_options = {}
        _check_executor(executor, model, train)

    def _settings(self):
        out = dict(self.settings)
        if self.test is not None:
            out["test"] = data_identity(self.test)
        return out

    def _array(self, name, compute):
        ckpt = self.checkpoint
        saved = ckpt.load_array(name) if ckpt is not None else None
        if saved is not None:
            return saved
        value = np.asarray(compute())
        if ckpt is not None:
            ckpt.save_array(name, value)
        return value

    def _scores(self, s):
        names = ("influence", "grad_dot")
        saved = [self.checkpoint.load_array("scores_" + m) if self.checkpoint is not None else None for m in names]
        if all(v is not None for v in saved):
            out = dict(zip(names, saved))
            out["random"] = np.random.RandomState(s["seed"] + _SEED_RANDOM_SCORES).standard_normal(saved[0].shape)
            return out
        out = baseline_scores(self.model, self.train, self.test, s["seed"], s["solver"], s["damping"],
                              s["scoring"], s["batch_size"], s["check_optimum"], self.progress,
                              **self.solver_options)
        if self.checkpoint is not None:
            for m in names:
                self.checkpoint.save_array("scores_" + m, out[m])
        return out

    def _reference(self, s, data=None):
        """(w_ref, test losses at w_ref, ‖∇R‖): the model's optimum re-tightened to gtol on ``data``."""
        data = self.train if data is None else data

        def compute():
            with self.model.preserving_params():
                res = _minimize(self.model, data, len(data), s["gtol"], s["maxiter"], _MAXCOR)
                w = self.model.get_params().astype(np.float64)
                base = self.model.per_example_losses(self.test, s["batch_size"]) if self.test is not None \
                    else np.zeros(0)
            return np.concatenate([[float(np.linalg.norm(res.jac))], base, w])
        packed = self._array("reference", compute)
        T = 0 if self.test is None else len(self.test)
        return packed[1 + T:].astype(self.model.dtype), packed[1:1 + T], float(packed[0])

    def _retrain(self, s, w0, kept, norm):
        ckpt = None if self.checkpoint is None else _Prefixed(self.checkpoint, "retrain")
        runner = None
        if self.executor is not None:
            runner = self.executor if not hasattr(self.executor, "bind") else _dask_runner(
                self.executor, self.model, self.train, self.test, w0, kept, norm, s["gtol"], s["maxiter"],
                s["batch_size"])

        def compute(a, b):
            return _retrain_columns(self.model, self.train, self.test, w0, kept[a:b], norm, s["gtol"],
                                    s["maxiter"], s["batch_size"])
        values, _ = run_chunks(compute, len(kept), self.chunk_size, ckpt, self.progress, "retraining", runner)
        return values[:-1], values[-1]


def _check_retrain(gtol, maxiter, chunk_size):
    if not (gtol > 0):
        raise ValueError("gtol=%r must be positive (e.g. 1e-6)" % (gtol,))
    if int(maxiter) < 1:
        raise ValueError("maxiter=%r must be a positive integer (e.g. 2000)" % (maxiter,))
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError("chunk_size=%r must be a positive integer (subsets per chunk)" % (chunk_size,))


def _margin_terms(model, target, base_losses):
    if target not in ("loss", "margin"):
        raise ValueError("target=%r is not one of 'loss', 'margin'" % (target,))
    if target == "margin":
        loss = getattr(model, "loss_name", None)
        from .models import LogisticRegression, SoftmaxRegression
        if loss not in ("cross_entropy", "binary_cross_entropy") and \
                not isinstance(model, (SoftmaxRegression, LogisticRegression)):
            raise ValueError("target='margin' needs a cross-entropy loss (ℓ = −log p_y), the model's is %r; "
                             "use target='loss'" % (loss,))


def _to_margin(losses):
    """m = log p − log(1 − p) = −log(e^ℓ − 1) for ℓ = −log p."""
    return -np.log(np.expm1(np.maximum(np.asarray(losses, dtype=np.float64), 1e-300)))


class _LDSJob(_EvalJob):
    kind = "evaluate-lds"

    def _compute(self):
        s = self.settings
        t0 = time.perf_counter()
        with self.model.preserving_params():
            at_model = self.model.per_example_losses(self.test, s["batch_size"])
        scores = self._scores(s)
        t1 = time.perf_counter()
        w_ref, base, _ = self._reference(s)
        subsets = draw_subsets(len(self.train), s["subsets"], s["alpha"], s["seed"])
        actual, grad_norms = self._retrain(s, w_ref, subsets, subsets.shape[1])
        t2 = time.perf_counter()
        return scores, at_model, base, subsets, actual, grad_norms, (t1 - t0, t2 - t1)


def lds(model, train, test, subsets=50, alpha=0.5, seed=0, target="loss", gtol=LDS_GTOL,
        maxiter=RETRAIN_MAXITER, solver="auto", damping=0.0, scoring="gradient", batch_size=None,
        check_optimum=True, folder=None, resume=False, chunk_size=1, progress=False, executor=None,
        inputs=None, **solver_options):
    """The linear datamodeling score of the influence scores and the baselines (module docstring).

    ``subsets`` m subsets of ⌊``alpha``·n⌋ training points from ``seed``; each retrained (warm start
    from the reference optimum, the model's weights re-tightened to ``gtol``) with L-BFGS to
    max |∂R_S/∂w| <= ``gtol`` or ``maxiter`` iterations. ``target``: "loss" or "margin" (cross-entropy
    models). Scores: ``solver``/``damping``/``scoring``/``solver_options`` as in
    :func:`influence.influence_scores`. ``folder``/``resume``: checkpoint folder and resumption;
    ``chunk_size``: subsets per chunk; ``executor``: e.g. ``influence.cluster.DaskExecutor(client)``
    (``train`` loaded from a file every worker reads); ``inputs``: extra fingerprint identity.
    Returns :class:`LDSResult`. Weights unchanged afterwards.
    """
    _check_retrain(gtol, maxiter, chunk_size)
    _margin_terms(model, target, None)
    n = len(model.validate(train, getattr(train, "name", "training data")))
    draw_subsets(n, subsets, alpha, seed)           # refuse bad subsets/alpha before any work
    settings = {"subsets": int(subsets), "alpha": float(alpha), "seed": int(seed), "gtol": float(gtol),
                "maxiter": int(maxiter), "solver": solver, "damping": float(damping), "scoring": scoring,
                "batch_size": batch_size, "check_optimum": bool(check_optimum),
                "solver_options": _plain_options(dict(solver_options, progress=None))}
    start = time.perf_counter()
    job = _LDSJob(model, train, test, folder, resume, chunk_size, progress, inputs, settings, executor)
    job.solver_options = solver_options
    scores, at_model, base, subs, actual, grad_norms, (t_scores, t_retrain) = job.run()
    if target == "margin":
        scale = -1.0 / -np.expm1(-at_model)                    # −1/(1 − p_y), p_y = e^{−ℓ}
        scores = {m: v * scale[:, None] for m, v in scores.items()}
        actual, base = _to_margin(actual), _to_margin(base)
    predicted = {m: subset_predictions(scores[m], subs, n, base) for m in METHODS}
    per_point = {m: linear_datamodeling_score(predicted[m], actual) for m in METHODS}
    stats = {m: mean_and_error(per_point[m]) for m in METHODS}
    seconds = {"scores": t_scores, "retraining": t_retrain, "total": time.perf_counter() - start}
    return LDSResult(per_point, {m: stats[m][0] for m in METHODS}, {m: stats[m][1] for m in METHODS},
                     subs, predicted, actual, target, base, n, float(gtol), grad_norms, seconds)


class _LOOJob(_EvalJob):
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
            rand = np.random.RandomState(s["seed"] + _SEED_LOO).choice(rest, size=k - top.size, replace=False)
            idx = np.concatenate([top, rand])
        idx = np.asarray(idx, dtype=np.int64)
        w_ref, base, _ = self._reference(s)
        everything = np.arange(n)
        kept = np.array([np.delete(everything, i) for i in idx])
        after, grad_norms = self._retrain(s, w_ref, kept, n)
        t2 = time.perf_counter()
        return scores, idx, after - base[:, None], grad_norms, (t1 - t0, t2 - t1)


def loo(model, train, test, k=20, seed=0, indices=None, gtol=LOO_GTOL, maxiter=RETRAIN_MAXITER,
        solver="auto", damping=0.0, scoring="gradient", batch_size=None, check_optimum=True, folder=None,
        resume=False, chunk_size=1, progress=False, executor=None, inputs=None, **solver_options):
    """Leave-one-out for many test points at once, influence vs the baselines (module docstring).

    ``indices``: the training points to remove (default: ``k // 2`` with the largest mean
    |I_up,loss| over the test points and the rest drawn from ``seed``). Each retraining (warm start
    from the reference optimum re-tightened to ``gtol``, objective R_{−i} with 1/n weights as in
    :func:`influence.verify_loo`) serves every test point. Other arguments as in :func:`lds`.
    Returns :class:`LOOEvaluation`. Weights unchanged afterwards.
    """
    _check_retrain(gtol, maxiter, chunk_size)
    n = len(model.validate(train, getattr(train, "name", "training data")))
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0 or indices.min() < 0 or indices.max() >= n:
            raise ValueError("indices must be a non-empty list of training rows in 0..%d" % (n - 1))
        indices = indices.tolist()
    elif int(k) < 2:
        raise ValueError("k=%r: correlations need at least 2 removed training points (e.g. k=20)" % (k,))
    settings = {"k": int(k), "seed": int(seed), "indices": indices, "gtol": float(gtol), "maxiter": int(maxiter),
                "solver": solver, "damping": float(damping), "scoring": scoring, "batch_size": batch_size,
                "check_optimum": bool(check_optimum),
                "solver_options": _plain_options(dict(solver_options, progress=None))}
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


class _MislabelJob(_EvalJob):
    kind = "evaluate-mislabel"

    def _compute(self):
        s = self.settings
        t0 = time.perf_counter()
        flipped_train = self.flipped_train
        model = self.model
        with model.preserving_params():
            w_refit, _, grad_norm = self._reference(s, flipped_train)
            t1 = time.perf_counter()
            model.set_params(w_refit)
            opts = {"k": s["k"]} if s["method"] == "lanczos" else {}
            if s["method"] == "lanczos":
                opts["random_state"] = s["seed"]
            values = self._array("self_influence", lambda: self_influence(
                model, flipped_train, s["method"], damping=s["damping"], batch_size=s["batch_size"],
                check_optimum=False, progress=self.progress, **opts))
            t2 = time.perf_counter()

            def norms():
                return np.concatenate([np.sum(G * G, axis=1) for G in
                                       gradient_blocks(model, flipped_train, 0, len(flipped_train), s["batch_size"])])
            grad_dot = self._array("grad_norms_squared", norms)
            losses = model.per_example_losses(flipped_train, s["batch_size"])
        t3 = time.perf_counter()
        return values, grad_dot, losses, grad_norm, {"refit": t1 - t0, "self_influence": t2 - t1,
                                                     "baselines": t3 - t2}


def _n_classes(model, y):
    from .models import LogisticRegression
    if isinstance(model, LogisticRegression) or getattr(model, "loss_name", None) == "binary_cross_entropy":
        return 2
    k = getattr(model, "n_classes", None)
    return int(k) if k else int(np.max(y)) + 1


def mislabel(model, train, fraction=0.1, seed=0, top=MISLABEL_TOP, method="exact", k=None, damping=0.0,
             gtol=LDS_GTOL, maxiter=RETRAIN_MAXITER, batch_size=None, folder=None, resume=False,
             progress=False, inputs=None):
    """Mislabel detection (module docstring): flip ⌊``fraction``·n⌋ labels (``seed``), refit from
    the model's weights with L-BFGS to ``gtol``, rank by self-influence (``method`` "exact" or
    "lanczos" with rank ``k``, see :func:`influence.self_influence`), by ‖g_i‖² (grad-dot), by
    training loss and at random; the share of flipped labels in the ``top`` fractions and the area
    under the detection curve. Returns :class:`MislabelResult`. Weights unchanged afterwards."""
    _check_retrain(gtol, maxiter, None)
    train = model.validate(train, getattr(train, "name", "training data"))
    top = tuple(float(t) for t in top)
    if not top or any(not (0 < t <= 1) for t in top):
        raise ValueError("top=%r: pass fractions in (0, 1], e.g. (0.05, 0.1, 0.2)" % (top,))
    if method not in ("exact", "lanczos"):
        raise ValueError("method=%r is not one of 'exact', 'lanczos'" % (method,))
    if method == "lanczos" and k is None:
        raise ValueError("method='lanczos' needs the rank k (e.g. k=50)")
    if train.y is None:
        raise ValueError("%s has no labels; mislabel detection flips labels" % train.name)
    y = np.asarray(train.y)
    new_y, flipped = flip_labels(y, fraction, _n_classes(model, y), seed)
    from .data import Dataset
    flipped_train = model.validate(Dataset(train.x, new_y.astype(y.dtype), train.name + " (labels flipped)"),
                                   train.name)
    settings = {"fraction": float(fraction), "seed": int(seed), "method": method, "k": k,
                "damping": float(damping), "gtol": float(gtol), "maxiter": int(maxiter), "batch_size": batch_size}
    start = time.perf_counter()
    job = _MislabelJob(model, train, None, folder, resume, None, progress, inputs, settings)
    job.flipped_train = flipped_train
    values, grad_dot, losses, grad_norm, seconds = job.run()
    n = len(train)
    rankings = {"self_influence": np.argsort(-values, kind="mergesort"),
                "grad_dot": np.argsort(-grad_dot, kind="mergesort"),
                "training_loss": np.argsort(-losses, kind="mergesort"),
                "random": np.random.RandomState(seed + _SEED_RANDOM_SCORES).permutation(n)}
    curves = {m: detection_curve(r, flipped) for m, r in rankings.items()}
    found = {m: _found(c, top) for m, c in curves.items()}
    auc = {m: float(np.mean(c)) for m, c in curves.items()}
    seconds["total"] = time.perf_counter() - start
    return MislabelResult(flipped, rankings, curves, found, auc, top, float(fraction), grad_norm, seconds)


# ------------------------------------------------------------------------------------ reports
def summary(result, details=False):
    """A JSON-able dict of ``result`` (of :func:`lds`, :func:`loo` or :func:`mislabel`): the headline
    numbers of every method; ``details=True`` adds the per-test-point values, predictions,
    measurements and subsets (what ``influence evaluate --out`` writes)."""
    def plain(d):
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
    if isinstance(result, LDSResult):
        out = {"metric": "lds", "target": result.target, "subsets": int(result.subsets.shape[0]),
               "subset_size": int(result.subsets.shape[1]), "n_train": result.n_train,
               "n_test": int(result.actual.shape[0]), "mean": plain(result.mean), "stderr": plain(result.stderr),
               "finite": {m: int(np.isfinite(result.lds[m]).sum()) for m in METHODS}, "gtol": result.gtol,
               "max_grad_norm": float(np.max(result.grad_norms)), "seconds": result.seconds}
        if details:
            out.update(lds={m: result.lds[m].tolist() for m in METHODS}, subset_rows=result.subsets.tolist(),
                       predicted={m: result.predicted[m].tolist() for m in METHODS},
                       actual=result.actual.tolist(), base=result.base.tolist())
    elif isinstance(result, LOOEvaluation):
        out = {"metric": "loo", "k": int(len(result.indices)), "n_train": result.n_train,
               "n_test": int(result.actual.shape[0]), "pearson": plain(result.pearson),
               "spearman": plain(result.spearman), "pooled_pearson": plain(result.pooled_pearson),
               "pooled_spearman": plain(result.pooled_spearman),
               "max_grad_norm": float(np.max(result.grad_norms)), "seconds": result.seconds}
        if details:
            out.update(indices=result.indices.tolist(), actual=result.actual.tolist(),
                       predicted={m: result.predicted[m].tolist() for m in METHODS})
    elif isinstance(result, MislabelResult):
        out = {"metric": "mislabel", "fraction": result.fraction, "flipped_count": int(result.flipped.size),
               "n_train": int(result.curves["random"].size), "top": list(result.top),
               "found": result.found, "auc": result.auc, "refit_grad_norm": result.refit_grad_norm,
               "seconds": result.seconds}
        if details:
            out.update(flipped=result.flipped.tolist(),
                       rankings={m: r.tolist() for m, r in result.rankings.items()})
    else:
        raise ValueError("summary(result=%s): pass the result of influence.evaluate.lds, loo or mislabel"
                         % type(result).__name__)
    return out


# ------------------------------------------------------------------------------------ pictures
_LABELS = {"influence": "influence (H⁻¹)", "grad_dot": "grad-dot (H → I)", "random": "random",
           "self_influence": "self-influence", "training_loss": "training loss"}


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("drawing the PNG needs matplotlib (%s); pip install matplotlib, or drop the "
                          "picture (--plot)" % str(e).splitlines()[0])
    return plt


def plot(result, path, title=None):
    """Draw ``result`` (of :func:`lds`, :func:`loo` or :func:`mislabel`) as a PNG at ``path``:
    per-test-point LDS (lds), predicted vs actual loss change (loo), detection curves (mislabel).
    Needs matplotlib (ImportError with the fix otherwise)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        if isinstance(result, LDSResult):
            order = np.argsort(-result.lds["influence"], kind="mergesort")
            x = np.arange(1, order.size + 1)
            for m in METHODS:
                ax.plot(x, result.lds[m][order], ".", ms=4,
                        label="%s: %.3f ± %.3f" % (_LABELS[m], result.mean[m], result.stderr[m]))
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set_xlabel("test point (sorted by the influence scores' LDS)")
            ax.set_ylabel("LDS (Spearman over %d subsets)" % result.subsets.shape[0])
            default = "Linear datamodeling score (%s)" % result.target
        elif isinstance(result, LOOEvaluation):
            for m in ("influence", "grad_dot"):
                pred = result.predicted[m].mean(axis=0)
                pred = pred / (np.max(np.abs(pred)) or 1.0) * np.max(np.abs(result.actual.mean(axis=0)))
                ax.plot(result.actual.mean(axis=0), pred, "o", ms=4,
                        label="%s: Pearson %.3f" % (_LABELS[m], result.pearson[m]))
            lim = np.max(np.abs(result.actual.mean(axis=0))) or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8)
            ax.set_xlabel("actual test-loss change (retrained without the point)")
            ax.set_ylabel("predicted (grad-dot rescaled to the same range)")
            default = "Leave-one-out: %d removed points" % len(result.indices)
        elif isinstance(result, MislabelResult):
            for m, c in result.curves.items():
                ax.plot(np.arange(1, c.size + 1) / float(c.size), c, label="%s: AUC %.3f" % (_LABELS[m], result.auc[m]))
            ax.set_xlabel("fraction of the training data checked")
            ax.set_ylabel("fraction of flipped labels found")
            default = "Mislabel detection (%.0f %% flipped)" % (100 * result.fraction)
        else:
            raise ValueError("plot(result=%s): pass the result of influence.evaluate.lds, loo or mislabel"
                             % type(result).__name__)
        ax.set_title(title or default)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
