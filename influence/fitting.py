"""Fitting a model to a true optimum, and checking that it is at one.

Influence functions linearize the training objective around its minimizer::

    R(w) = (1/n) Σ_i ℓ(z_i, w) + (λ/2)·‖w‖²,     w* = argmin R,    ∇R(w*) = 0.

:func:`fit` runs full-batch L-BFGS (``scipy.optimize.minimize(method="L-BFGS-B")``) in float64 on the
flat parameter vector until ``max_i |∂R/∂w_i| <= gtol``; it is the one function of the toolkit that
changes the model's weights on purpose. :func:`check_optimum` measures ‖∇R(w)‖ with one full gradient
pass and the scoring functions warn with :class:`NotAtOptimumWarning` when it is not small.
"""
import collections
import time
import warnings

import numpy as np

from .common.errors import InfluenceError, param

__all__ = ["fit", "FitResult", "check_optimum", "OptimumCheck", "NotAtOptimumWarning",
           "OPTIMUM_RTOL", "OPTIMUM_BLOCKS"]

#: ``check_optimum`` accepts ‖∇R(w)‖ <= OPTIMUM_RTOL · σ_g, σ_g the RMS norm of the centred
#: per-example gradients ∇ℓ(z_i, w). At that level the non-optimality shifts the influence of a
#: typical point by ~0.1 % (the gradients g_i move by H·(w − w*) = ∇R(w)).
OPTIMUM_RTOL = 1e-3
#: Random blocks whose gradient sums give σ_g for free during the one gradient pass.
OPTIMUM_BLOCKS = 16


class NotAtOptimumWarning(UserWarning):
    """The weights are not at a minimum of the training objective (‖∇R(w)‖ is not small), so
    influence estimates (which assume ∇R(w) = 0) are unreliable. Fit first: ``influence.fit``."""


OptimumCheck = collections.namedtuple("OptimumCheck", "grad_norm scale threshold ok")
OptimumCheck.__doc__ = """Result of :func:`check_optimum`: ``grad_norm`` = ‖∇R(w)‖ (L2 term included),
``scale`` = σ_g (RMS norm of the centred per-example gradients, estimated), ``threshold`` =
``rtol·scale``, ``ok`` = ``grad_norm <= threshold``."""

FitResult = collections.namedtuple("FitResult", "loss grad_norm n_iter n_eval converged message seconds")
FitResult.__doc__ = """Result of :func:`fit`: final objective R(w) (L2 included), ‖∇R(w)‖₂ at the weights
set into the model (after rounding to the model's dtype), L-BFGS iterations and function evaluations,
``converged`` (max |∂R/∂w_i| <= gtol), scipy's message and the wall time."""


def _data(model, train):
    return model.validate(train, getattr(train, "name", "training data"))


def objective(model, data, n_total):
    """R(w) = Σ_{data} ℓ / n_total + (λ/2)‖w‖² and its gradient at the model's current weights.

    ``n_total`` is len(data) for an ordinary fit; leave-one-out retraining keeps the original n
    (the objective up-weighting by ε = −1/n describes)."""
    w = model.get_params().astype(np.float64)
    loss_sum, grad_sum = model.loss_and_grad_sum(data)
    return loss_sum / n_total + 0.5 * model.l2 * float(w @ w), grad_sum / n_total + model.l2 * w


def minimize_lbfgs(model, data, n_total, gtol, maxiter, maxcor, callback=None):
    """L-BFGS on the model's weights (which it leaves at the last evaluated point); returns scipy's
    OptimizeResult. The caller owns restoring weights on failure."""
    from scipy.optimize import minimize
    dtype = model.dtype

    def fun(w):
        model.set_params(np.asarray(w).astype(dtype))
        return objective(model, data, n_total)

    w0 = model.get_params().astype(np.float64)
    res = minimize(fun, w0, jac=True, method="L-BFGS-B", callback=callback,
                   options={"gtol": float(gtol), "ftol": 0.0, "maxiter": int(maxiter),
                            "maxcor": int(maxcor), "maxfun": 2 * int(maxiter) + 20})
    model.set_params(np.asarray(res.x).astype(dtype))
    return res


def fit(model, train, l2=None, gtol=1e-6, maxiter=2000, maxcor=30, callback=None):
    """Minimize R(w) = (1/n) Σ_i ℓ(z_i, w) + (l2/2)‖w‖² over the flat weights by full-batch L-BFGS.

    ``l2`` (if given) is first stored in ``model.l2``. Runs scipy's L-BFGS-B in float64 with the
    gradient from ``model.grad`` semantics (one forward and one backward pass over the data per
    evaluation) until max_i |∂R/∂w_i| <= ``gtol`` (scipy's projected-gradient test), ``maxiter``
    iterations, or a line search that can make no more progress (the usual end for float32 models,
    whose gradients carry float32 rounding). The final weights are set into the model.

    If anything raises midway (KeyboardInterrupt included) the original weights AND ``model.l2`` are
    restored bit-identically before the exception propagates. Returns a :class:`FitResult`.
    """
    data = _data(model, train)
    if l2 is not None:
        l2 = float(l2)
        if not np.isfinite(l2) or l2 < 0:
            raise InfluenceError("%s must be a finite number >= 0" % param("l2", l2), parameter="l2")
    if not (gtol > 0):
        raise ValueError("gtol=%r must be positive (e.g. 1e-6)" % (gtol,))
    start = time.time()
    saved_w, saved_l2 = model.get_params(), model.l2
    try:
        if l2 is not None:
            model.l2 = l2
        res = minimize_lbfgs(model, data, len(data), gtol, maxiter, maxcor, callback)
        loss, grad = objective(model, data, len(data))
    except BaseException:
        model.l2 = saved_l2
        model.set_params(saved_w)
        raise
    return FitResult(loss, float(np.linalg.norm(grad)), int(res.nit), int(res.nfev),
                     bool(np.max(np.abs(grad)) <= gtol), str(res.message), time.time() - start)


def check_optimum(model, train, rtol=OPTIMUM_RTOL, batch_size=None, random_state=0):
    """Is ``w`` a minimum of R? One full gradient pass, split over ``OPTIMUM_BLOCKS`` random blocks.

    ‖∇R(w)‖ is compared with σ_g, the RMS norm of the centred per-example gradients, estimated from
    the block sums S_j of the same pass: σ_g² ≈ Σ_j ‖S_j − b_j·ḡ‖² / Σ_j b_j(1 − b_j/n) (b_j the block
    sizes, ḡ the mean data gradient). ``ok`` is ‖∇R(w)‖ <= ``rtol``·σ_g. Weights are not changed.
    """
    data = _data(model, train)
    n = len(data)
    rng = np.random.RandomState(random_state)
    order = rng.permutation(n)
    blocks = [b for b in np.array_split(order, min(OPTIMUM_BLOCKS, n)) if b.size]
    piece = model.batch_size if batch_size is None else int(batch_size)

    def block_sum(rows):
        # gathered a piece at a time, so a memory-mapped training set is never copied whole
        rows = np.sort(rows)
        return np.sum([model.grad_sum(data.subset(rows[a:a + piece]), batch_size)
                       for a in range(0, rows.size, piece)], axis=0)
    sums = [block_sum(b) for b in blocks]
    total = np.sum(sums, axis=0)
    mean = total / n
    grad = mean + model.l2 * model.get_params().astype(np.float64)
    if len(blocks) > 1:
        num = sum(float(np.sum((s - b.size * mean) ** 2)) for s, b in zip(sums, blocks))
        den = sum(b.size * (1.0 - b.size / float(n)) for b in blocks)
        scale = np.sqrt(num / den)
    else:
        scale = float(np.linalg.norm(total))
    gnorm = float(np.linalg.norm(grad))
    threshold = float(rtol) * float(scale)
    return OptimumCheck(gnorm, float(scale), threshold, bool(gnorm <= threshold))


def warn_if_not_optimal(model, train, rtol=OPTIMUM_RTOL, batch_size=None, stacklevel=3):
    """Run :func:`check_optimum` and warn with :class:`NotAtOptimumWarning` when it fails."""
    chk = check_optimum(model, train, rtol, batch_size)
    if not chk.ok:
        warnings.warn("the weights are not at a minimum of the training objective: ‖∇R(w)‖ = %.3g > "
                      "%.0e·σ_g = %.3g (σ_g = %.3g, RMS per-example gradient norm); influence "
                      "estimates assume ∇R(w) = 0 — fit first with influence.fit(model, train)"
                      % (chk.grad_norm, rtol, chk.threshold, chk.scale), NotAtOptimumWarning,
                      stacklevel=stacklevel)
    return chk
