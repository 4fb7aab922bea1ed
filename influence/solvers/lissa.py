"""LiSSA: stochastic inverse-Hessian-vector products from minibatch Hessians.

Two variants solve the same system ``A x = b`` with ``A = H + λI`` (λ the total damping: the
operator's own plus ``damping``), using the undamped minibatch operators ``H_B = H.minibatch(idx,
damping=0.0)`` (the model's L2 term stays in) and ``A_B = H_B + λI``.

``variant="refined"`` (default): LiSSA with exact-residual refinement
------------------------------------------------------------------------
An outer loop keeps an iterate ``x`` and its TRUE residual ``r = b − A x`` (one full-data product per
round). Each round solves the correction equation ``A e = r`` by ``m`` steps of the stochastic
Richardson (Neumann) recursion on fresh minibatches (drawn without replacement, a new permutation
per epoch)::

    e₀ = 0,   eⱼ = eⱼ₋₁ + (r − A_Bⱼ eⱼ₋₁) / s,        x ← x + e_m,   r ← b − A x

Why there is no noise floor: classic LiSSA runs the recursion on ``b`` itself, so its minibatch
noise ``(A_B − A) hⱼ`` is proportional to the solution, ‖x‖, and never shrinks — its error floors at
a level set by the batch size. Here the noise term ``(A_B − A) eⱼ`` is proportional to the CORRECTION
``e ≈ A⁻¹r``, which shrinks with the residual: each round multiplies the error by a factor
``ρ ≈ max((1 − λ_min/s)^m, c·σ_B)`` (truncation of the series, and the relative minibatch noise σ_B
of the batch size), independent of how small the residual already is, so the error falls
geometrically, like the deterministic iteration, instead of flooring. This is iterative refinement
(and the control-variate idea of SVRG): the exact full product is spent where it matters, on the
residual, and the cheap noisy products on a problem whose answer is small.

When the inner recursion converges: in expectation ``E[eⱼ]`` follows the deterministic recursion
with ``A``, which converges iff the spectrum of ``A/s`` lies in (0, 2): ``A`` positive definite and
``s > λ_max(A)/2``; per step it contracts the slowest direction by ``1 − λ_min(A)/s``. Each
minibatch operator ``A_B`` must also not expand too much: its eigenvalues must stay below ``2s``,
and its negative curvature (a non-convex model's minibatch Hessian is indefinite, even at the
optimum) multiplies that direction by ``1 + |μ|/s`` in a step, which averages out only when it is
small. Hence ``s`` is taken from the TOP of the minibatch spectra, not the full one, and every round
is checked: an inner iterate beyond ``DIVERGENCE_SLACK·j·‖r‖/s`` (the bound of a convergent series)
is a divergence, and a round whose full residual grew is rejected (``x`` is kept, nothing is lost
but the round). With ``scale="auto"`` a divergent round doubles ``s`` and a rejected round doubles
the batch size (less noise; the batch grows no further than n), up to MAX_RESCALES times before
:class:`DivergenceError`; with a fixed ``scale`` a divergent round raises at once, naming a scale
that works. Momentum (heavy-ball/Chebyshev) is NOT used: on indefinite minibatch curvature it
diverges (see docs/solvers.md).

Spectrum estimate and up-front guidance: ``power_steps`` Lanczos steps (on the full operator, or on
a fixed subsample of ESTIMATE_ROWS rows when n is larger; again on the full operator when the
subsample shows negative curvature, which only the full one can prove) give Ritz values θ_max,
θ_min; a few power
steps on fresh minibatches from the top Ritz vector estimate the minibatch top μ̂. Then
``s = SCALE_FACTOR·max(θ_max, μ̂)``, ``κ̂ = s/θ_min`` and the inner length
``m = ⌈ln(INNER_REDUCTION⁻¹)·κ̂⌉`` (at least n/batch_size, so the full product costs at most as
much as the round's steps, and at least MIN_INNER_STEPS). The steps needed are ≈ κ̂·ln(‖b‖/target);
when that exceeds ``maxiter`` a :class:`ConvergenceWarning` says so BEFORE running and names the
damping that would make the tolerance reachable. θ_min is an upper bound on λ_min, so κ̂ errs low
(the digits MLP at damping 0: κ̂ ≈ 1e3 for a true 4e4): after every round the observed decay rate of
the residual is extrapolated too (from the third round on), and the same warning (once) comes as soon
as that needs more than EXTRAPOLATION_SLACK·maxiter steps. θ_min <= 0 proves ``A`` is not positive
definite: :class:`NonPositiveCurvatureError` naming the damping.

Stop rule: ‖r‖ is the true residual of the current ``x`` (up to the finite-difference error of the
product), so the solver stops as soon as ‖r‖ <= max(rtol·‖b‖, atol) and ``Solution.residual`` is that
same number — no extra product. Iterations are the inner steps: ``maxiter`` bounds them (all rounds
together), ``n_iter`` counts them, and ``callback(x)`` gets the current estimate ``x + eⱼ`` after each. With the full
operator (``batch_size=None`` or >= n, or a plain LinearOperator) each round is one deterministic
Richardson step with its residual checked.

``variant="classic"``: the recursion of Agarwal et al. (2017) / Koh & Liang (2017)
------------------------------------------------------------------------------------
::

    h₀ = s·x0 (default b),   hⱼ = b + hⱼ₋₁ − (H_Bⱼ + λI) hⱼ₋₁ / s,   x = mean over repeats of h / s

with a fresh random minibatch ``Bⱼ`` (``batch_size`` rows drawn with replacement) each step. Its
fixed point is ``(H + λI) h/s = b``. Convergence as above for the series Σⱼ (I − A/s)ʲ b; the error
after j steps decays like ``(1 − λ_min(A)/s)ʲ`` down to the minibatch-noise floor. ``scale="auto"``
takes ``s = AUTO_SCALE_FACTOR·λ̂`` with λ̂ a power-iteration estimate of λ_max(A). While the
spectrum lies in (0, 2), ‖hⱼ‖ <= ‖h₀‖ + j‖b‖; an iterate beyond DIVERGENCE_SLACK times that (or
non-finite) raises :class:`DivergenceError` naming a scale that would work. Every ``check_every``
steps the true residual of the current repeat's estimate is measured with one full-data product, and
the repeat stops when it is <= max(rtol·‖b‖, atol); a stochastic run's residual floors at the
minibatch noise, so it usually runs ``maxiter`` steps per repeat and warns with the true residual.
"""
import inspect
import math
import time

import numpy as np

from ..common.numeric import norm
from ._common import (Progress, Products, Solution, DivergenceError, check_callback, check_common, check_int,
                      check_preconditioner,
                      deprecated_arguments, lanczos_extremes, not_positive_definite, operator_damping,
                      residual_target, warn_convergence, zero_solution, warn_deprecated)

__all__ = ["lissa", "VARIANTS", "LISSA_MAXITER", "LISSA_BATCH_SIZE", "LISSA_RTOL", "LISSA_CHECK_EVERY",
           "POWER_STEPS", "AUTO_SCALE_FACTOR", "DIVERGENCE_SLACK", "REFINED_RTOL", "REFINED_MAXITER",
           "SCALE_FACTOR", "INNER_REDUCTION", "MIN_INNER_STEPS", "ESTIMATE_ROWS", "SCALE_PROBES",
           "MAX_RESCALES", "EXTRAPOLATION_SLACK"]

VARIANTS = ("refined", "classic")
#: Classic: default steps per repeat and minibatch rows (both variants: batch size).
LISSA_MAXITER = 5000
LISSA_BATCH_SIZE = 256
#: Classic: default relative residual: loose, because a stochastic estimate's residual floors at the
#: minibatch noise (often 1e-1 or more although x is within a few % of the solution).
LISSA_RTOL = 1e-3
#: Classic: fewest steps between two residual checks of a stochastic run; ``check_every=None`` takes
#: max(LISSA_CHECK_EVERY, n/(LISSA_CHECK_COST·batch_size)) so that the checks (one full product each,
#: n/batch_size minibatch products) cost at most LISSA_CHECK_COST of the steps.
LISSA_CHECK_EVERY = 100
LISSA_CHECK_COST = 0.1
#: Power-iteration products for the classic ``scale="auto"`` (the refined variant: Lanczos steps of its
#: spectrum estimate) and the classic factor s = AUTO_SCALE_FACTOR·λ̂_max.
POWER_STEPS = 20
AUTO_SCALE_FACTOR = 1.0
#: A classic LiSSA iterate with ‖hⱼ‖ > DIVERGENCE_SLACK·(‖h₀‖ + j‖b‖), or a refined inner iterate with
#: ‖eⱼ‖ > DIVERGENCE_SLACK·j·‖r‖/s, is declared divergent.
DIVERGENCE_SLACK = 10.0
#: Refined: default relative residual (measured: the digits softmax and MLP reach relative errors of
#: the influence scores at or below the residual, see docs/performance.md) and default budget of
#: minibatch steps over all rounds.
REFINED_RTOL = 1e-4
REFINED_MAXITER = 20000
#: Refined: s = SCALE_FACTOR·max(top Ritz value, top minibatch Rayleigh quotient).
SCALE_FACTOR = 1.0
#: Refined: each round's inner recursion is sized to shrink the slowest direction by this factor.
INNER_REDUCTION = 0.1
MIN_INNER_STEPS = 10
#: Refined: the spectrum estimate runs on a fixed random subsample of this many rows when n is larger.
ESTIMATE_ROWS = 4096
#: Refined: minibatch power steps estimating the top of the minibatch spectra.
SCALE_PROBES = 8
#: Refined: the mid-run warning comes when the residual's observed decay, extrapolated, needs more than
#: this many times maxiter (early rounds decay slower than later ones: the extrapolation after 2 rounds
#: was 1.44x the steps actually needed on the κ = 1e5 test problem damped to κ ≈ 200).
EXTRAPOLATION_SLACK = 1.5
#: Refined, scale="auto": divergent or rejected rounds tolerated (each doubles s or the batch size).
MAX_RESCALES = 8


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



class _Sampler(object):
    """Minibatch row indices drawn without replacement: a new permutation each epoch, sorted slices."""

    def __init__(self, n, batch_size, rng):
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.perm, self.pos = None, n

    def __call__(self):
        if self.pos + self.batch_size > self.n:
            self.perm = self.rng.permutation(self.n)
            self.pos = 0
        idx = np.sort(self.perm[self.pos:self.pos + self.batch_size])
        self.pos += self.batch_size
        return idx


def _reachable_damping(s, lam_min, damping, steps, log_reduction):
    """The ``damping=`` argument for which κ = (s + Δ)/(λ_min + Δ) needs at most ``steps`` steps."""
    k = steps / log_reduction                  # the largest κ the budget allows
    if k <= 1.0:
        return None
    delta = max(0.0, (s - k * lam_min) / (k - 1.0))
    return damping + 1.05 * delta


def _refined(H, d, b, damping, x0, rtol, atol, maxiter, callback, progress, rng, scale, batch_size,
             power_steps, inner_steps, t0, root=None):
    """The refined variant (see the module docstring). Returns a Solution. ``root``: v ↦ M^½ v of a
    preconditioner M ≈ A⁻¹: the correction steps then run on M^½ A M^½ ẽ = M^½ r, e = M^½ ẽ (its
    spectrum estimated and its scale chosen in that system); the outer residual stays the true one."""
    full = Products(H, damping)                 # A = H_op + damping·I
    total_damping = operator_damping(H) + damping
    n = getattr(H, "n_examples", None)
    stochastic = hasattr(H, "minibatch") and n is not None and batch_size is not None and batch_size < n
    if stochastic and getattr(H, "rel_step", 0.0) is None and hasattr(H, "calibrate"):
        H.calibrate(b)                          # one finite-difference step for every minibatch operator
    counts = {"mb": 0, "est": 0}

    def minibatch_product(v, idx):
        counts["mb"] += 1
        if root is not None:
            v = root(v)
        out = np.asarray(H.minibatch(idx, damping=0.0).matvec(v), dtype=np.float64).reshape(-1) + total_damping * v
        return out if root is None else root(out)

    def system(product):                        # the product of the system the correction steps run in
        return product if root is None else (lambda v: root(product(root(v))))
    T = (lambda v: v) if root is None else root

    # -- spectrum estimate: Lanczos on the full operator or a fixed subsample, then minibatch probes
    if stochastic and n > ESTIMATE_ROWS:
        sub = H.minibatch(np.sort(rng.choice(n, ESTIMATE_ROWS, replace=False)), damping=0.0)

        def estimate_product(v):
            counts["est"] += 1
            return np.asarray(sub.matvec(v), dtype=np.float64).reshape(-1) + total_damping * v
        estimate_product = system(estimate_product)
    else:
        estimate_product = system(full)
    start = rng.standard_normal(d)
    theta_min, theta_max, u = lanczos_extremes(estimate_product, start, min(power_steps, d))
    if not theta_min > 0 and stochastic and n > ESTIMATE_ROWS:
        # a subsample's curvature can be negative where the full one is not: only the full operator
        # proves it (and then gives the estimate)
        theta_min, theta_max, u = lanczos_extremes(system(full), start, min(power_steps, d))
    if not theta_min > 0:
        raise not_positive_definite("lissa: %d Lanczos steps found a Ritz value %.4g <= 0"
                                    % (min(power_steps, d), theta_min), theta_min, damping,
                                    operator_damping(H), upper_bound=True)
    sampler = _Sampler(n, batch_size, rng) if stochastic else None
    top = theta_max
    if stochastic:                              # the minibatch spectra reach higher than the full one
        v = u
        for _ in range(SCALE_PROBES):
            w = minibatch_product(v, sampler())
            top = max(top, float(v @ w))
            nw = norm(w)
            if not (np.isfinite(nw) and nw > 0):
                break
            v = w / nw
    auto = scale is None
    s = SCALE_FACTOR * top if auto else scale
    kappa = s / theta_min
    log_reduction = math.log(1.0 / INNER_REDUCTION)
    if inner_steps is None:
        inner_steps = 1 if not stochastic else max(MIN_INNER_STEPS, int(math.ceil(log_reduction * kappa)),
                                                   int(math.ceil(n / float(batch_size))))
    bnorm = norm(b)
    target = residual_target(rtol, atol, bnorm)
    full_t = system(full)
    needed = int(math.ceil(kappa * math.log(max(bnorm / target, 1.0)))) if target > 0 else None
    warned = needed is not None and needed > maxiter
    if warned:
        _warn_unreachable("the estimated condition number κ ≈ %.3g (scale s ≈ %.3g, λ_min ≈ %.3g from %d Lanczos "
                          "steps)" % (kappa, s, theta_min, min(power_steps, d)),
                          kappa, s, damping, needed, target, bnorm, maxiter)

    x = np.zeros(d) if x0 is None else x0.copy()
    r = b - full(x) if x.any() else b.copy()
    rnorm = norm(r)
    accepted = [rnorm]                          # the residual norms of the accepted iterates

    def rnorm_accepted(value):
        accepted.append(value)
        return value

    n_iter, rescales, stalled = 0, 0, False
    bar = Progress(progress, maxiter, "lissa")
    try:
        while rnorm > target and n_iter < maxiter:
            m = min(inner_steps, maxiter - n_iter)
            rt = T(r)                           # the residual in the system of the correction steps
            rtnorm = norm(rt)
            e = rt / s                          # the first step from e₀ = 0 needs no product
            diverged = None
            for j in range(1, m + 1):
                if j > 1:
                    e = e + (rt - (minibatch_product(e, sampler()) if stochastic else full_t(e))) / s
                    en = norm(e)
                    if not np.isfinite(en) or en > DIVERGENCE_SLACK * j * rtnorm / s:
                        diverged = (j, en)
                        break
                n_iter += 1
                bar.update(rnorm / bnorm)
                if callback is not None:
                    callback(n_iter, x + T(e))
            if diverged is not None:
                if not auto or rescales >= MAX_RESCALES:
                    raise _refined_divergence(s, top, theta_min, diverged, rnorm, auto, rescales,
                                              batch_size if stochastic else None, damping, n)
                s *= 2.0
                rescales += 1
                continue
            x_new = x + T(e)
            r_new = b - full(x_new)
            rn_new = norm(r_new)
            if rn_new < rnorm:
                x, r, rnorm = x_new, r_new, rnorm_accepted(rn_new)
                if not warned and target > 0 and rnorm > target and len(accepted) > 2:
                    # the observed decay of the residual per step, over all rounds so far
                    rate = math.log(accepted[0] / rnorm) / max(n_iter, 1)
                    needed = (n_iter + int(math.ceil(math.log(rnorm / target) / rate))) if rate > 0 else None
                    if needed is not None and needed > EXTRAPOLATION_SLACK * maxiter:   # optimistic estimate
                        warned = True
                        _warn_unreachable("the residual falls by a factor e every %d steps (κ ≈ %.3g observed "
                                          "in the rounds so far; the Lanczos estimate was %.3g)"
                                          % (math.ceil(1.0 / rate), 1.0 / rate, kappa),
                                          1.0 / rate, s, damping, needed, target, bnorm, maxiter)
                continue
            # the round made the residual worse: minibatch noise (grow the batch) or the floor of the
            # finite-difference products (nothing left to gain)
            if stochastic and sampler.batch_size < n and rescales < MAX_RESCALES:
                sampler.batch_size = min(n, 2 * sampler.batch_size)
                rescales += 1
                continue
            stalled = True
            break
    finally:
        bar.close()
    residual = rnorm / bnorm
    converged = rnorm <= target
    if not converged:
        why = ("the residual stopped decreasing (the accuracy of the finite-difference products, or "
               "minibatch noise at batch_size=%s); " % (sampler.batch_size if stochastic else None)
               if stalled else "maxiter=%d minibatch steps ran out; " % maxiter)
        warn_convergence("lissa stopped short of max(rtol, atol/‖b‖) = %.3g: %strue residual "
                         "‖(H+λI)x−b‖/‖b‖ = %.3g. Raise maxiter or damping, loosen rtol, or use method='cg'"
                         % (target / bnorm, why, residual))
    n_hvp = full.count + counts["mb"] + counts["est"]
    return Solution(x, bool(converged), n_iter, n_hvp, residual, time.time() - t0)


def _preconditioner_root(M, d, variant):
    """v ↦ M^½ v of a preconditioner for the refined variant (None when there is none)."""
    if M is None:
        return None
    check_preconditioner(M, d)                  # the shape and string checks every solver shares
    root = getattr(M, "solve_sqrt", None)
    if variant != "refined" or not callable(root):
        raise ValueError("lissa takes a preconditioner only with variant='refined' and with a symmetric square "
                         "root (an influence.EKFAC, whose solve_sqrt it uses); for any other LinearOperator "
                         "use method='cg'")
    return lambda v: np.asarray(root(v), dtype=np.float64).reshape(-1)


def _warn_unreachable(why, kappa, s, damping, needed, target, bnorm, maxiter):
    """The ConvergenceWarning for a tolerance out of reach within ``maxiter``, with the damping that
    brings it within reach (κ(Δ) = (s + Δ)/(s/κ + Δ)) and cg's cost for comparison."""
    log_reduction = math.log(bnorm / target)
    cure = _reachable_damping(s, s / kappa, damping, maxiter, log_reduction)
    warn_convergence(
        "lissa: %s: ≈ %d minibatch steps are needed to reach max(rtol, atol/‖b‖) = %.3g, more than "
        "maxiter=%d, so this run will stop short: pass %smaxiter >= %d, or use method='cg' (≈ √κ·ln(2/rtol) "
        "≈ %d full products)" % (why, needed, target / bnorm, maxiter,
                                 "damping=%.3g (κ then ≈ %.3g), or " % (cure, (s + cure - damping) /
                                                                         (s / kappa + cure - damping))
                                 if cure is not None else "", needed,
                                 int(math.ceil(math.sqrt(kappa) * math.log(2.0 * bnorm / target)))))


def _refined_divergence(s, top, theta_min, diverged, rnorm, auto, rescales, batch_size, damping, n):
    """The DivergenceError of the refined variant, naming a scale (and the other knobs) that work."""
    j, en = diverged
    suggested = 2.0 * max(s, top)
    head = ("lissa diverged at inner step %d (‖e‖ = %.3g > %g·j·‖r‖/s = %.3g) with scale=%.4g%s"
            % (j, en, DIVERGENCE_SLACK, DIVERGENCE_SLACK * j * rnorm / s, s,
               " after %d doublings of the automatic scale" % rescales if auto else ""))
    cure = ("" if batch_size is None else
            "; if it persists the minibatch curvature is too indefinite: raise batch_size (now %d, n = %d) "
            "or damping (now %.3g)" % (batch_size, n, damping))
    err = DivergenceError(head + ": the minibatch Hessians' spectra reach beyond 2s (estimated top %.4g, "
                          "λ_min ≈ %.3g); pass scale >= %.4g (e.g. scale=%.3g)%s"
                          % (top, theta_min, suggested, suggested, cure))
    err.suggested_scale = suggested
    return err


def _classic(H, d, b, damping, x0, rtol, atol, maxiter, step_callback, progress, rng, scale, batch_size,
             repeats, power_steps, check_every, t0):
    """The classic variant (see the module docstring). Returns a Solution."""
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


@deprecated_arguments(positional=("damping", "scale", "depth", "repeats", "batch_size", "rtol", "random_state",
                                  "progress", "power_steps", "callback"),
                      renamed={"depth": "maxiter"})
def lissa(H, b, *, damping=0.0, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None, progress=False,
          random_state=None, variant="refined", scale="auto", batch_size=LISSA_BATCH_SIZE, repeats=1,
          power_steps=POWER_STEPS, check_every=None, inner_steps=None, preconditioner=None):
    """Solve ``(H + damping·I) x = b`` by stochastic Neumann series (see the module docstring).

    ``variant="refined"`` (default): exact-residual refinement. ``rtol``/``atol``: stop when the true
    residual ‖(H+λI)x − b‖ <= max(rtol·‖b‖, atol) (``rtol=None``: :data:`REFINED_RTOL`), checked with
    one full product per round; ``Solution.residual`` is that residual. ``maxiter``: minibatch steps
    over all rounds (default :data:`REFINED_MAXITER`); a spectrum estimate that says it is too few warns
    before running. ``callback(x)``: the current estimate x + eⱼ after each step. ``inner_steps``: steps
    per round (default from the estimated condition number). ``power_steps``: Lanczos steps of the
    spectrum estimate.

    ``variant="classic"``: the Koh & Liang recursion. ``rtol``/``atol`` as above, measured every
    ``check_every`` steps (``rtol=None``: :data:`LISSA_RTOL`); ``maxiter``: steps per repeat (default
    :data:`LISSA_MAXITER`; formerly ``depth``); ``repeats``: independent runs averaged; ``callback(x)``:
    after each step; ``power_steps``: power-iteration products of the auto scale.

    Both: ``x0`` start (never modified). ``progress``: tqdm bar on stderr. ``random_state``: seed (int;
    None = seed 0) or RandomState: same seed, same result bit for bit. ``scale``: ``"auto"`` or a
    positive number s (must exceed λ_max(H+λI)/2, and the minibatch spectra's top/2). ``batch_size``:
    rows per minibatch Hessian; ``None`` or ``>= n`` uses the full operator deterministically.
    ``preconditioner`` (refined only): M ≈ (H + λI)⁻¹ with a symmetric square root — an
    :class:`influence.EKFAC` (``solve_sqrt``): each round's correction steps run on M^½ A M^½ with
    the scale estimated for that system; the outer residual and the stop rule stay the true ones.
    """
    t0 = time.time()
    H, d, b, damping, x0, rtol, atol, rng = check_common(H, b, damping, x0, rtol, atol, random_state)
    if variant not in VARIANTS:
        raise ValueError("variant=%r is not one of %s; pass variant='refined' (default) or 'classic'"
                         % (variant, ", ".join(repr(v) for v in VARIANTS)))
    batch_size = check_int(batch_size, "batch_size", LISSA_BATCH_SIZE, allow_none=True)
    power_steps = check_int(power_steps, "power_steps", POWER_STEPS)
    repeats = check_int(repeats, "repeats", 1)
    check_every = check_int(check_every, "check_every", LISSA_CHECK_EVERY, allow_none=True)
    inner_steps = check_int(inner_steps, "inner_steps", 1000, allow_none=True)
    step_callback = _step_callback(check_callback(callback))
    scale = _check_scale(scale)
    if variant == "refined":
        if repeats != 1 or check_every is not None:
            raise ValueError("%s applies to variant='classic' only; drop it (the refined variant checks its "
                             "true residual once per round)" % ("repeats=%r" % repeats if repeats != 1
                                                                else "check_every=%r" % check_every))
        rtol = REFINED_RTOL if rtol is None else rtol
        maxiter = REFINED_MAXITER if maxiter is None else check_int(maxiter, "maxiter", REFINED_MAXITER)
    else:
        if inner_steps is not None:
            raise ValueError("inner_steps=%r applies to variant='refined' only; drop it" % inner_steps)
        rtol = LISSA_RTOL if rtol is None else rtol
        maxiter = LISSA_MAXITER if maxiter is None else check_int(maxiter, "maxiter", LISSA_MAXITER)
    root = _preconditioner_root(preconditioner, d, variant)
    if not b.any():
        return zero_solution(d, t0)
    if variant == "refined":
        return _refined(H, d, b, damping, x0, rtol, atol, maxiter, step_callback, progress, rng, scale,
                        batch_size, power_steps, inner_steps, t0, root)
    return _classic(H, d, b, damping, x0, rtol, atol, maxiter, step_callback, progress, rng, scale, batch_size,
                    repeats, power_steps, check_every, t0)
