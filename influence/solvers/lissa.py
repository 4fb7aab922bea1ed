"""LiSSA: the stochastic Neumann series of Agarwal et al. (2017), as used by Koh & Liang (2017)::

    h₀ = s·x0 (default b),   hⱼ = b + hⱼ₋₁ − (H_Bⱼ + λI) hⱼ₋₁ / s,   x = mean over repeats of h / s

with a fresh random minibatch ``Bⱼ`` (``batch_size`` rows drawn with replacement) each step and ``H_B``
the undamped minibatch operator ``H.minibatch(idx, damping=0.0)`` (the model's L2 term stays in), λ the
total damping. Its fixed point is ``(H + λI) h/s = b``: the same system as CG on ``H + λI``; the scale
s only sets the step.

Convergence: the series Σⱼ (I − A/s)ʲ b converges to s·A⁻¹b iff every eigenvalue of ``A/s`` lies in
(0, 2), i.e. ``A = H + λI`` is positive definite and ``s > λ_max(A)/2``; the error after j steps decays
like ``(1 − λ_min(A)/s)ʲ``, so ``maxiter`` must be several times ``s/λ_min(A)``. ``scale="auto"`` takes
``s = AUTO_SCALE_FACTOR·λ̂`` with λ̂ a power-iteration estimate of λ_max(A) (twice the minimum, a margin
for minibatch Hessians, which spread wider than the full one). While the spectrum lies in (0, 2),
‖hⱼ‖ <= ‖h₀‖ + j‖b‖; an iterate beyond DIVERGENCE_SLACK times that (or non-finite) raises
:class:`DivergenceError` naming a scale that would work.

Stopping: every ``check_every`` steps the true residual ‖A x − b‖ of the current repeat's estimate is
measured with one full-data product, and the repeat stops when it is <= max(rtol·‖b‖, atol). With
the full operator (``batch_size=None`` or >= n, or a plain LinearOperator) the iteration is
deterministic and its residual is free (b − A hⱼ/s = hⱼ₊₁ − hⱼ): it is tested at every step. A
stochastic run's residual floors at the minibatch noise, so it usually runs ``maxiter`` steps,
reports ``converged=False`` and warns with the true residual.
"""
import inspect
import math
import time

import numpy as np

from .._numeric import norm
from ._common import (Progress, Products, Solution, DivergenceError, check_callback, check_common, check_int,
                      deprecated_arguments, not_positive_definite, operator_damping, residual_target,
                      warn_convergence, zero_solution, warn_deprecated)

__all__ = ["lissa", "LISSA_MAXITER", "LISSA_BATCH_SIZE", "LISSA_RTOL", "LISSA_CHECK_EVERY", "POWER_STEPS",
           "AUTO_SCALE_FACTOR", "DIVERGENCE_SLACK"]

#: Default steps per repeat and minibatch rows (see docs/solvers.md for the accuracy they reach).
LISSA_MAXITER = 5000
LISSA_BATCH_SIZE = 256
#: Default relative residual: loose, because a stochastic estimate's residual floors at the minibatch
#: noise (often 1e-1 or more although x is within a few % of the solution).
LISSA_RTOL = 1e-3
#: Fewest steps between two residual checks of a stochastic run; ``check_every=None`` takes
#: max(LISSA_CHECK_EVERY, n/(LISSA_CHECK_COST·batch_size)) so that the checks (one full product each,
#: n/batch_size minibatch products) cost at most LISSA_CHECK_COST of the steps.
LISSA_CHECK_EVERY = 100
LISSA_CHECK_COST = 0.1
#: Power-iteration products for ``scale="auto"`` and the factor s = AUTO_SCALE_FACTOR·λ̂_max.
POWER_STEPS = 20
AUTO_SCALE_FACTOR = 1.0
#: A LiSSA iterate with ‖hⱼ‖ > DIVERGENCE_SLACK·(‖h₀‖ + j‖b‖) is declared divergent.
DIVERGENCE_SLACK = 10.0


def _power_max(matvec, d, rng, steps):
    """Power-iteration estimate of the largest eigenvalue (Rayleigh quotient of the last iterate)."""
    v = rng.standard_normal(d)
    v /= norm(v)
    rq = 0.0
    for _ in range(steps):
        w = matvec(v)
        rq = float(v @ w)
        nw = norm(w)
        if not np.isfinite(nw) or nw == 0:
            break
        v = w / nw
    return rq


def _check_scale(scale):
    if isinstance(scale, str):
        if scale != "auto":
            raise ValueError("scale=%r is not 'auto' or a positive number; pass scale='auto'" % (scale,))
        return None
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise ValueError("scale=%r is not 'auto' or a positive number; pass scale='auto'" % (scale,))
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError("scale=%r must be a positive finite number (above λ_max(H+λI)/2); pass "
                         "scale='auto'" % (scale,))
    return scale


def _step_callback(callback):
    """``callback(x)``; the old two-argument form ``callback(step, x)`` is deprecated."""
    if callback is None:
        return None
    try:
        required = [p for p in inspect.signature(callback).parameters.values()
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return lambda j, x: callback(x)
    if len(required) >= 2:
        warn_deprecated("lissa(callback=f) with f(step, x): use f(x)")
        return callback
    return lambda j, x: callback(x)


def _divergence(full, h, d, rng, scale, lam_max, power_steps, damping, step, rep, hn, bound):
    """The error for a blown-up LiSSA iterate: non-positive curvature, or the scale that would work."""
    rayleigh = None
    hnorm = norm(h) if np.all(np.isfinite(h)) else 0.0
    if hnorm > 0 and np.isfinite(hnorm):
        u = h / hnorm
        rayleigh = float(u @ full(u))
    head = ("lissa diverged at step %d of repeat %d (‖h‖ = %.3g > %g·(‖h₀‖ + j‖b‖) = %.3g) with scale=%.4g"
            % (step, rep + 1, hn, DIVERGENCE_SLACK, bound, scale))
    if rayleigh is not None and rayleigh <= 0:
        return not_positive_definite(head + "; the diverging direction has curvature %.4g" % rayleigh,
                                     rayleigh, damping, operator_damping(full.H), upper_bound=True)
    if lam_max is None:
        lam_max = _power_max(full, d, rng, power_steps)
    top = max(lam_max, rayleigh or 0.0)
    if scale < top:
        suggested = 1.5 * top
        why = ("the Neumann series needs the spectrum of (H+λI)/s inside (0, 2) but λ_max(H+λI) ≈ %.4g "
               "(power iteration)" % top)
    else:   # the full operator is fine: minibatch Hessians spread beyond 2s (or are indefinite)
        suggested = 2.0 * scale
        why = ("λ_max(H+λI) ≈ %.4g (power iteration) is below the scale, so the minibatch Hessians spread "
               "beyond 2s or have negative curvature (raise batch_size or damping, or the scale)" % top)
    err = DivergenceError(head + ": %s; pass scale >= %.4g (e.g. scale=%.3g)" % (why, suggested, suggested))
    err.suggested_scale = suggested
    return err


@deprecated_arguments(positional=("damping", "scale", "depth", "repeats", "batch_size", "rtol", "random_state",
                                  "progress", "power_steps", "callback"),
                      renamed={"depth": "maxiter"})
def lissa(H, b, *, damping=0.0, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None, progress=False,
          random_state=None, scale="auto", batch_size=LISSA_BATCH_SIZE, repeats=1, power_steps=POWER_STEPS,
          check_every=None):
    """Solve ``(H + damping·I) x = b`` by LiSSA (stochastic Neumann series; see the module docstring).

    ``rtol``/``atol``: stop a repeat when its true residual ‖(H+λI)x − b‖ <= max(rtol·‖b‖, atol),
    measured every ``check_every`` steps (``rtol=None``: :data:`LISSA_RTOL`; rtol = atol = 0 runs every
    step). ``maxiter``: steps per repeat (default :data:`LISSA_MAXITER`; formerly ``depth``). ``x0``:
    start h₀ = s·x0 instead of b (never modified). ``callback(x)``: the current repeat's estimate
    x_j = h_j/s after each step (a fresh array). ``progress``: tqdm bar on stderr. ``random_state``:
    seed (int; None = seed 0) or RandomState: same seed, same result bit for bit.

    Extras: ``scale``: ``"auto"`` or a positive number s (must exceed λ_max(H+λI)/2). ``batch_size``:
    rows per minibatch Hessian (drawn with replacement); ``None`` or ``>= n`` uses the full operator
    deterministically. ``repeats``: independent runs averaged. ``power_steps``: products for the auto
    scale. ``check_every``: steps between residual checks of a stochastic run (see
    :data:`LISSA_CHECK_EVERY`).
    """
    t0 = time.time()
    H, d, b, damping, x0, rtol, atol, rng = check_common(H, b, damping, x0, rtol, atol, random_state)
    rtol = LISSA_RTOL if rtol is None else rtol
    maxiter = LISSA_MAXITER if maxiter is None else check_int(maxiter, "maxiter", LISSA_MAXITER)
    repeats = check_int(repeats, "repeats", 1)
    batch_size = check_int(batch_size, "batch_size", LISSA_BATCH_SIZE, allow_none=True)
    power_steps = check_int(power_steps, "power_steps", POWER_STEPS)
    check_every = check_int(check_every, "check_every", LISSA_CHECK_EVERY, allow_none=True)
    step_callback = _step_callback(check_callback(callback))
    scale = _check_scale(scale)
    if not b.any():
        return zero_solution(d, t0)

    full = Products(H, damping)            # A = H_op + damping·I
    total_damping = operator_damping(H) + damping
    n = getattr(H, "n_examples", None)
    stochastic = (hasattr(H, "minibatch") and n is not None and batch_size is not None and batch_size < n)
    if check_every is None:
        check_every = max(LISSA_CHECK_EVERY, int(math.ceil(n / (LISSA_CHECK_COST * batch_size)))) \
            if stochastic else 1
    lam_max = None
    if scale is None:
        lam_max = _power_max(full, d, rng, power_steps)
        if not lam_max > 0:
            raise not_positive_definite("lissa: the power iteration found a Rayleigh quotient %.4g <= 0"
                                        % lam_max, lam_max, damping, operator_damping(H), upper_bound=True)
        scale = AUTO_SCALE_FACTOR * lam_max
    if stochastic and getattr(H, "rel_step", 0.0) is None and hasattr(H, "calibrate"):
        H.calibrate(b)                       # one step for every minibatch operator
    mb_count = [0]

    def minibatch_product(h):
        idx = np.sort(rng.randint(0, n, size=batch_size))
        mb_count[0] += 1
        return np.asarray(H.minibatch(idx, damping=0.0).matvec(h), dtype=np.float64).reshape(-1) \
            + total_damping * h

    bnorm = norm(b)
    target = residual_target(rtol, atol, bnorm)
    h0 = b.copy() if x0 is None else scale * x0
    h0norm = norm(h0)
    bar = Progress(progress, maxiter * repeats, "lissa")
    estimates, n_iter, last = [], 0, np.inf
    try:
        for rep in range(repeats):
            h = h0.copy()
            for j in range(1, maxiter + 1):
                if stochastic:
                    h_new = b + h - minibatch_product(h) / scale
                else:
                    step = b - full(h) / scale       # = b − A x for x = h/s: the residual, for free
                    last = norm(step)
                    if last <= target:
                        break
                    h_new = h + step
                n_iter += 1
                hn = norm(h_new)
                bound = DIVERGENCE_SLACK * (h0norm + j * bnorm)
                if not np.isfinite(hn) or hn > bound:
                    raise _divergence(full, h_new if np.all(np.isfinite(h_new)) else h, d, rng, scale,
                                      lam_max, power_steps, damping, j, rep, hn, bound)
                h = h_new
                if step_callback is not None:
                    step_callback(j, h / scale)
                if stochastic and j % check_every == 0:
                    last = norm(full(h / scale) - b)
                    if last <= target:
                        bar.update(last / bnorm)
                        break
                bar.update(last / bnorm if np.isfinite(last) else None)
            estimates.append(h)
    finally:
        bar.close()
    x = np.mean(estimates, axis=0) / scale
    residual = norm(full(x) - b) / bnorm
    converged = residual <= target / bnorm
    if not converged:
        warn_convergence(
            "lissa ran maxiter=%d steps x %d repeat(s) without its residual reaching max(rtol, atol/‖b‖) = "
            "%.3g%s; true residual ‖(H+λI)x−b‖/‖b‖ = %.3g. Raise maxiter, batch_size or repeats, loosen "
            "rtol, or use method='cg'" % (maxiter, repeats, target / bnorm,
                                          " (minibatch noise; checked every %d steps)" % check_every
                                          if stochastic else "", residual))
    return Solution(x, bool(converged), n_iter, full.count + mb_count[0], residual, time.time() - t0)
