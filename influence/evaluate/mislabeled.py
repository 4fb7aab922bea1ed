"""Mislabel detection (:func:`mislabel`): flip labels, refit, rank the training points by
self-influence and the baselines (see :mod:`influence.evaluate`)."""
import collections
import time

import numpy as np

from ..common.errors import InfluenceError, param
from ..scoring import gradient_blocks, self_influence
from .baselines import SEED_RANDOM_SCORES
from .datamodeling import LDS_GTOL
from .metrics import detection_curve, flip_labels, found_at
from ..scoring import check_curvature
from ..jobs import damping_setting
from .retrain import EvalJob, RETRAIN_MAXITER, check_retrain

__all__ = ["mislabel", "MislabelResult", "MISLABEL_TOP"]

#: Default top fractions at which mislabel detection reports the share of flipped labels found.
MISLABEL_TOP = (0.05, 0.10, 0.20, 0.30)

MislabelResult = collections.namedtuple(
    "MislabelResult", "flipped rankings curves found auc top fraction refit_grad_norm seconds")
MislabelResult.__doc__ = """Result of :func:`mislabel`. ``flipped``: the training rows whose label was
flipped; ``rankings``: {method: training rows, most suspicious first} for "self_influence",
"grad_dot", "training_loss", "random"; ``curves``: {method: (n,) fraction of flipped rows among the
first c = 1..n checked}; ``found``: {method: [fraction found in the top k for k in ``top``]};
``auc``: {method: area under the curve}; ``fraction``; ``refit_grad_norm``: ‖∇R‖ after the refit on
the flipped labels; ``seconds``."""


class _MislabelJob(EvalJob):
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
                check_optimum=False, progress=self.progress, curvature=s["curvature"], **opts))
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
    from ..adapters.reference import LogisticRegression
    if isinstance(model, LogisticRegression) or getattr(model, "loss_name", None) == "binary_cross_entropy":
        return 2
    k = getattr(model, "n_classes", None)
    return int(k) if k else int(np.max(y)) + 1


def mislabel(model, train, fraction=0.1, seed=0, top=MISLABEL_TOP, method="exact", k=None, damping=None,
             gtol=LDS_GTOL, maxiter=RETRAIN_MAXITER, batch_size=None, folder=None, resume=False,
             progress=False, inputs=None, curvature="auto"):
    """Mislabel detection (module docstring): flip ⌊``fraction``·n⌋ labels (``seed``), refit from
    the model's weights with L-BFGS to ``gtol``, rank by self-influence (``method`` "exact" or
    "lanczos" with rank ``k``, see :func:`influence.self_influence`), by ‖g_i‖² (grad-dot), by
    training loss and at random; the share of flipped labels in the ``top`` fractions and the area
    under the detection curve. Returns :class:`MislabelResult`. Weights unchanged afterwards."""
    check_retrain(gtol, maxiter, None)
    train = model.validate(train, getattr(train, "name", "training data"))
    top = tuple(float(t) for t in top)
    if not top or any(not (0 < t <= 1) for t in top):
        raise ValueError("top=%r: pass fractions in (0, 1], e.g. (0.05, 0.1, 0.2)" % (top,))
    if method not in ("exact", "lanczos"):
        raise ValueError("method=%r is not one of 'exact', 'lanczos'" % (method,))
    if method == "lanczos" and k is None:
        raise InfluenceError("%s needs the rank %s (e.g. %s)" % (param("method", "lanczos"), param("k"), param("k", 50)),
                             parameter="k", suggestion=50)
    if train.y is None:
        raise ValueError("%s has no labels; mislabel detection flips labels" % train.name)
    y = np.asarray(train.y)
    new_y, flipped = flip_labels(y, fraction, _n_classes(model, y), seed)
    from ..data import Dataset
    flipped_train = model.validate(Dataset(train.x, new_y.astype(y.dtype), train.name + " (labels flipped)"),
                                   train.name)
    settings = {"fraction": float(fraction), "seed": int(seed), "method": method, "k": k,
                "damping": damping_setting(damping),
                "curvature": check_curvature(curvature), "gtol": float(gtol), "maxiter": int(maxiter), "batch_size": batch_size}
    start = time.perf_counter()
    job = _MislabelJob(model, train, None, folder, resume, None, progress, inputs, settings)
    job.flipped_train = flipped_train
    values, grad_dot, losses, grad_norm, seconds = job.run()
    n = len(train)
    rankings = {"self_influence": np.argsort(-values, kind="mergesort"),
                "grad_dot": np.argsort(-grad_dot, kind="mergesort"),
                "training_loss": np.argsort(-losses, kind="mergesort"),
                "random": np.random.RandomState(seed + SEED_RANDOM_SCORES).permutation(n)}
    curves = {m: detection_curve(r, flipped) for m, r in rankings.items()}
    found = {m: found_at(c, top) for m, c in curves.items()}
    auc = {m: float(np.mean(c)) for m, c in curves.items()}
    seconds["total"] = time.perf_counter() - start
    return MislabelResult(flipped, rankings, curves, found, auc, top, float(fraction), grad_norm, seconds)
