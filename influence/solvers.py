"""Inverse-Hessian-vector products: solve ``(H + damping·I) x = b``.

:func:`solve` dispatches to one of four methods; each returns a :class:`Solution`
``(x, converged, n_iter, n_hvp, residual, seconds)`` and none drops convergence information: a solver
that stops short sets ``converged=False`` and emits a :class:`ConvergenceWarning` naming the residual.

The system
----------
``H`` is a symmetric :class:`scipy.sparse.linalg.LinearOperator` — normally an
:class:`influence.HessianOperator`, which already includes the model's L2 term and its own
``H.damping``. Every solver takes ``damping`` (default 0) *on top of* the operator and solves::

    (H_op + damping·I) x = b,        H_op = ∇²R(w) + H.damping·I

so ``solve(H, b, method=m, damping=d)`` is the same linear system for every ``m``. Below
``A = H_op + damping·I`` and ``λ = H.damping + damping`` (the total damping).

Common fields
-------------
``residual`` is ``‖A x − b‖ / ‖b‖`` (0 for ``b = 0``). For cg, lissa and lanczos it is measured with
one extra product ``A x`` at the end (counted in ``n_hvp``); direct measures it against the dense
matrix it factorised. ``n_hvp`` counts Hessian-vector products actually evaluated (products of the
zero vector are free and not counted; a LiSSA minibatch product counts as one). The finite-difference
calibration of a :class:`HessianOperator` (a one-time ~10–24 gradients, see ``H.n_grad``) is not a
product. ``seconds`` is wall time. ``b = 0`` returns ``x = 0`` at once (``converged=True``).

Methods
-------
``cg``
    Conjugate gradients (:func:`scipy.sparse.linalg.cg`). Stops when ``‖r‖ <= max(rtol·‖b‖, atol)``.
    Every vector CG multiplies is watched: a direction with ``pᵀ A p <= 0`` proves ``A`` is not
    positive definite and raises :class:`NonPositiveCurvatureError` with an estimate of the
    negative eigenvalue (a few Lanczos steps started from that direction). Finite-difference
    products are inexact, so for a float32 model CG's residual stalls above ~1e-4 and then drifts:
    after ``stagnation`` iterations without progress it stops, returns its best iterate and warns.
``lissa``
    The stochastic Neumann series of Agarwal et al. (2017), as used by Koh & Liang (2017)::

        h₀ = b,   hⱼ = b + (1 − λ/s)·hⱼ₋₁ − H_Bⱼ hⱼ₋₁ / s,   x = mean over repeats of h_depth / s

    with a fresh random minibatch ``Bⱼ`` (``batch_size`` rows drawn with replacement) each step and
    ``H_B`` the *undamped* minibatch operator ``H.minibatch(idx, damping=0.0)`` (the model's L2 term is
    part of the objective and stays in). Its fixed point is ``(H + λI) h/s = b``: LiSSA with damping λ
    and scale s solves the same system as CG on ``H + λI``; the scale only sets the step.

    Convergence: the series Σⱼ (I − A/s)ʲ b converges to s·A⁻¹b iff every eigenvalue of ``A/s`` lies
    in (0, 2), i.e. ``A`` is positive definite and ``s > λ_max(A)/2``; the error after j steps decays
    like ``(1 − λ_min(A)/s)ʲ``, so ``depth`` must be several times ``s/λ_min(A)`` (≈ the condition
    number when ``s ≈ λ_max``). Minibatch Hessians spread wider than the full one, so
    ``scale="auto"`` (default) takes ``s = AUTO_SCALE_FACTOR · λ̂`` where ``λ̂`` is a power-iteration
    estimate of ``λ_max(A)`` (``power_steps`` products on the full operator) — twice the minimum.
    When a spectrum in (0, 2) holds, each partial sum obeys ``‖hⱼ‖ <= (j+1)‖b‖``; an iterate beyond
    ``DIVERGENCE_SLACK·(j+1)·‖b‖`` (or non-finite) stops the run with :class:`DivergenceError`,
    which names a scale that would work.

    Early stop: a repeat stops when the relative change per step ``‖hⱼ − hⱼ₋₁‖/‖hⱼ‖`` falls below
    ``rtol``. With minibatches the change per step stays at the minibatch-noise level (typically
    1e-3–1e-1), so a stochastic run normally uses its whole ``depth``, reports ``converged=False`` and
    warns with the residual it reached — that is LiSSA's nature, not a bug; use ``residual`` to judge
    the answer, or raise ``batch_size``/``repeats``. ``batch_size=None`` (or ``>= n``) uses the full
    operator: a deterministic Richardson iteration whose per-step test is meaningful. A plain
    LinearOperator without ``.minibatch`` is likewise used as it is, deterministically.
    ``random_state`` (int, RandomState or None) makes runs bit-for-bit repeatable.
``direct``
    The dense matrix from ``d`` products with the unit vectors (symmetrised), then a Cholesky solve.
    Refuses ``d > DIRECT_MAX_DIM``. A matrix that is not positive definite raises
    :class:`NonPositiveCurvatureError` naming its smallest eigenvalue.
``lanczos``
    The top-``k`` eigenpairs (θᵢ, vᵢ) of the undamped ``H`` by :func:`scipy.sparse.linalg.eigsh`
    (implicitly restarted Lanczos; ``H.damping`` is subtracted from the operator's eigenvalues) give the
    reusable rank-k inverse :class:`LowRankInverse` ``x = V diag(1/(θ + λ)) Vᵀ b`` (fit once with
    :func:`lanczos_inverse`, apply to many vectors). With ``k < d`` it is an approximation that ignores
    the complement of the top eigenspace; ``residual`` shows how much of ``b`` that leaves unexplained
    (``converged`` reports only whether the eigenpairs converged). ``k >= d − 1`` (eigsh needs
    ``k < d``) falls back to the dense eigendecomposition of :func:`dense_matrix`.

Errors
------
Bad arguments raise :class:`ValueError` with one line naming the value and the fix.
:class:`NonPositiveCurvatureError` and :class:`DivergenceError` are :class:`ValueError` subclasses:
both are cured by changing an argument (``damping``, ``scale``).
"""
import collections
import inspect
import sys
import time
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from . import _compat

__all__ = ["solve", "Solution", "ConvergenceWarning", "NonPositiveCurvatureError", "DivergenceError",
           "cg", "lissa", "direct", "lanczos", "lanczos_inverse", "LowRankInverse", "dense_matrix",
           "METHODS", "DIRECT_MAX_DIM"]

#: Largest dimension :func:`direct` (and the dense fallback of lanczos) accepts: d products and a
#: d×d float64 matrix (2000 → 32 MB).
DIRECT_MAX_DIM = 2000
#: Default relative tolerance of :func:`cg`, by the dtype of the model behind a HessianOperator:
#: float32 finite-difference products carry ~1e-5..1e-4 relative error, so CG's residual cannot
#: fall much below 1e-4 there (measured on digits softmax regression: it stalls near 2e-5).
CG_RTOL = 1e-6
CG_RTOL_FLOAT32 = 1e-4
#: For a float32 model CG stops (not converged, keeping its best iterate) when its residual has not
#: improved for this many iterations: with float32 finite-difference products it stalls and then
#: drifts upward (digits softmax: best 2e-5 at iteration ~60, 4e-3 after 6,500). Not applied to
#: float64 products, where long plateaus of the residual are normal on ill-conditioned problems
#: (digits MLP: flat for more than 50 iterations, then converged to 9e-7 at iteration 362).
CG_STAGNATION_FLOAT32 = 200
#: Lanczos steps spent estimating the negative eigenvalue after CG meets non-positive curvature.
CURVATURE_STEPS = 10
#: LiSSA defaults (see docs/solvers.md for the accuracy they reach on the test problems).
LISSA_DEPTH = 5000
LISSA_BATCH_SIZE = 256
LISSA_RTOL = 1e-7
#: Power-iteration products for ``scale="auto"`` and the factor s = AUTO_SCALE_FACTOR·λ̂_max.
POWER_STEPS = 20
AUTO_SCALE_FACTOR = 1.0
#: A LiSSA iterate with ‖hⱼ‖ > DIVERGENCE_SLACK·(j+1)·‖b‖ is declared divergent.
DIVERGENCE_SLACK = 10.0
#: Default number of eigenpairs for lanczos.
LANCZOS_K = 20

Solution = collections.namedtuple("Solution", "x converged n_iter n_hvp residual seconds")
Solution.__doc__ = """Result of an inverse-HVP solve: ``x`` (float64, shape (d,)); ``converged`` (bool);
``n_iter`` (CG iterations, LiSSA steps summed over repeats, eigsh products for lanczos, 1 for direct);
``n_hvp`` (Hessian-vector products spent); ``residual`` = ‖(H+λI)x − b‖/‖b‖; ``seconds`` (wall time)."""


class ConvergenceWarning(UserWarning):
    """A solver stopped before meeting its tolerance; the message names the residual reached."""


class NonPositiveCurvatureError(ValueError):
    """``H + damping·I`` is not positive definite; the message estimates the negative eigenvalue
    that the damping must exceed."""


class DivergenceError(ValueError):
    """LiSSA's Neumann series diverged; the message names a scale that would work, also available as
    the attribute ``suggested_scale`` (None when the cure is damping, not the scale)."""

    suggested_scale = None


# ---------------------------------------------------------------------------------------- helpers
def _norm(a):
    return float(np.sqrt(np.dot(a, a)))


def _check_operator(H):
    if isinstance(H, np.ndarray):
        H = spla.aslinearoperator(H)
    if not hasattr(H, "matvec") or not hasattr(H, "shape"):
        raise ValueError("H is a %s; pass an influence.HessianOperator or a scipy LinearOperator"
                         % type(H).__name__)
    shape = tuple(H.shape)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError("H has shape %s; pass a square (d, d) symmetric operator" % (shape,))
    return H, int(shape[0])


def _check_rhs(b, d, name="b"):
    try:
        b = np.array(b, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("%s is not numeric; pass a float vector of length %d" % (name, d))
    if b.shape != (d,):
        raise ValueError("%s has shape %s but H is %d×%d; pass a flat vector of shape (%d,)"
                         % (name, b.shape, d, d, d))
    if not np.all(np.isfinite(b)):
        raise ValueError("%s contains NaN or Inf; pass finite values" % name)
    return b


def _check_nonneg(value, name, example):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError("%s=%r is not a number; pass e.g. %s=%s" % (name, value, name, example))
    if not np.isfinite(v) or v < 0:
        raise ValueError("%s=%r must be a finite number >= 0; pass e.g. %s=%s" % (name, value, name, example))
    return v


def _check_int(value, name, example, allow_none=False, minimum=1):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError("%s=%r must be an integer >= %d; pass e.g. %s=%s"
                         % (name, value, minimum, name, example))
    return int(value)


def _operator_damping(H):
    d = getattr(H, "damping", 0.0)
    try:
        return float(d)
    except (TypeError, ValueError):
        return 0.0


def _rng(random_state):
    if isinstance(random_state, np.random.RandomState):
        return random_state
    try:
        return np.random.RandomState(random_state)
    except (TypeError, ValueError):
        raise ValueError("random_state=%r is not an int, None or numpy RandomState; pass e.g. "
                         "random_state=0" % (random_state,))


class _Products(object):
    """``v ↦ H v + shift·v`` in float64, counting the products evaluated (zero vectors are free)."""

    def __init__(self, H, shift=0.0):
        self.H = H
        self.shift = float(shift)
        self.count = 0

    def __call__(self, v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if not v.any():
            return np.zeros_like(v)
        self.count += 1
        out = np.asarray(self.H.matvec(v), dtype=np.float64).reshape(-1)
        if self.shift:
            out = out + self.shift * v
        return out


def _zero_solution(d, t0):
    return Solution(np.zeros(d), True, 0, 0, 0.0, time.time() - t0)


def _relative_residual(ax, b):
    return _norm(ax - b) / _norm(b)


def _warn(message):
    warnings.warn(message, ConvergenceWarning, stacklevel=3)


class _Progress(object):
    """A tqdm bar on stderr showing the residual (a plain stderr line per second without tqdm)."""

    def __init__(self, enabled, total, desc):
        self.bar = None
        self.plain = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        except ImportError:
            self.plain = [desc, 0, time.time()]

    def update(self, residual=None, n=1):
        if self.bar is not None:
            self.bar.update(n)
            if residual is not None:
                self.bar.set_postfix_str("residual %.2e" % residual, refresh=False)
        elif self.plain is not None:
            self.plain[1] += n
            if time.time() - self.plain[2] >= 1.0:
                self.plain[2] = time.time()
                sys.stderr.write("%s: %d, residual %s\n" % (self.plain[0], self.plain[1],
                                                           "?" if residual is None else "%.2e" % residual))

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _lanczos_ritz_min(matvec, v, steps):
    """Smallest Ritz value of ``steps`` Lanczos steps (full reorthogonalisation) started from ``v``:
    an upper bound on the smallest eigenvalue that is usually close to it."""
    q = v / _norm(v)
    basis, alphas, betas = [], [], []
    for _ in range(steps):
        w = matvec(q)
        alpha = float(q @ w)
        basis.append(q)
        alphas.append(alpha)
        for u in basis:                      # full reorthogonalisation (twice is enough)
            w = w - (u @ w) * u
        for u in basis:
            w = w - (u @ w) * u
        beta = _norm(w)
        if beta <= 1e-12 * max(abs(alpha), 1e-300) or len(basis) == v.size:
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    T = np.diag(alphas) + np.diag(betas[:k - 1], 1) + np.diag(betas[:k - 1], -1)
    return float(np.linalg.eigvalsh(T)[0])


def _not_pd_message(what, smallest, bound_word, damping, total_damping):
    need = total_damping - smallest  # the total damping that would make the smallest eigenvalue 0
    extra_needed = damping + abs(smallest)
    return ("%s: H + damping·I is not positive definite, its smallest eigenvalue is %s%.4g (total damping "
            "now %.4g). The damping must exceed the magnitude of the negative eigenvalue: pass "
            "damping > %.4g (e.g. damping=%.3g) on top of the operator's own damping, i.e. a total "
            "damping above %.4g" % (what, bound_word, smallest, total_damping, extra_needed,
                                    damping + 2.0 * abs(smallest) + 1e-12, need))


# ---------------------------------------------------------------------------------------- cg
def _default_cg_rtol(H):
    model = getattr(H, "model", None)
    if model is not None and np.dtype(model.dtype) == np.float32:
        return CG_RTOL_FLOAT32
    return CG_RTOL


class _Stagnated(Exception):
    pass


def cg(H, b, damping=0.0, rtol=None, atol=0.0, maxiter=None, x0=None, progress=False,
       curvature_steps=CURVATURE_STEPS, callback=None, stagnation=None):
    """Solve ``(H + damping·I) x = b`` by conjugate gradients (see the module docstring).

    ``rtol``/``atol``: stop when ``‖r‖ <= max(rtol·‖b‖, atol)``; ``rtol`` defaults to
    :data:`CG_RTOL` (1e-6), or :data:`CG_RTOL_FLOAT32` (1e-4) for a float32 model, whose
    finite-difference products are not accurate enough for less. ``stagnation``: stop, not
    converged, when the residual has not improved for that many iterations, and return the best
    iterate seen; default :data:`CG_STAGNATION_FLOAT32` for a float32 model, off otherwise. ``maxiter``: iterations (default SciPy's 10·d). ``x0``: initial guess (never modified). ``progress``: tqdm bar on stderr with the
    residual (CG's recursive residual; off by default). ``curvature_steps``: Lanczos steps spent
    estimating the negative eigenvalue when a direction has ``pᵀ(H+λI)p <= 0``. ``callback(x)``
    (optional) receives a copy of the iterate after each iteration.
    """
    t0 = time.time()
    H, d = _check_operator(H)
    b = _check_rhs(b, d)
    damping = _check_nonneg(damping, "damping", "0.01")
    rtol = _check_nonneg(_default_cg_rtol(H) if rtol is None else rtol, "rtol", "1e-6")
    atol = _check_nonneg(atol, "atol", "0.0")
    if stagnation is None and _default_cg_rtol(H) == CG_RTOL_FLOAT32:
        stagnation = CG_STAGNATION_FLOAT32
    stagnation = _check_int(stagnation, "stagnation", 200, allow_none=True)
    maxiter = _check_int(maxiter, "maxiter", 100, allow_none=True)
    curvature_steps = _check_int(curvature_steps, "curvature_steps", 10)
    if callback is not None and not callable(callback):
        raise ValueError("callback=%r is not callable; pass a function f(x) or None" % (callback,))
    if x0 is not None:
        x0 = _check_rhs(x0, d, "x0")           # a float64 copy: the caller's array is never touched
    if not b.any():
        return _zero_solution(d, t0)
    total_damping = _operator_damping(H) + damping
    products = _Products(H, damping)
    bnorm = _norm(b)
    x0_nonzero = x0 is not None and bool(x0.any())
    state = {"r": None if x0_nonzero else b.copy(), "last": None, "n_dir": 0,
             "x_prev": x0.copy() if x0_nonzero else np.zeros(d), "best": (np.inf, None, 0)}
    bar = _Progress(progress, maxiter if maxiter is not None else 10 * d, "cg")

    def matvec(v):
        v = np.array(v, dtype=np.float64).reshape(-1)
        if not v.any():
            return np.zeros_like(v)
        av = products(v)
        curvature = float(v @ av)
        if not curvature > 0:
            rayleigh = curvature / float(v @ v)
            try:
                ritz = _lanczos_ritz_min(products, v, min(curvature_steps, d))
            except Exception:  # noqa: BLE001 - the estimate is a courtesy; report the bound we have
                ritz = rayleigh
            smallest = min(ritz, rayleigh)
            raise NonPositiveCurvatureError(
                "cg met a direction p with pᵀ(H+λI)p/pᵀp = %.4g <= 0 (non-positive curvature). %s"
                % (rayleigh, _not_pd_message("estimate from %d Lanczos steps" % min(curvature_steps, d),
                                             smallest, "at most ", damping, total_damping)))
        if state["r"] is None and np.array_equal(v, x0):
            state["r"] = b - av                 # SciPy's initial residual b − A x0
        else:
            state["n_dir"] += 1
            state["last"] = (v, av)
        return av

    def on_iteration(xk):
        xk = np.asarray(xk, dtype=np.float64).reshape(-1)
        if state["last"] is not None and state["r"] is not None:
            p, q = state["last"]
            alpha = float((xk - state["x_prev"]) @ p) / float(p @ p)
            state["r"] = state["r"] - alpha * q
            state["last"] = None
            res = _norm(state["r"]) / bnorm
            bar.update(res)
            if callback is not None:
                callback(xk.copy())
            best_res, _, best_at = state["best"]
            if res < best_res:
                state["best"] = (res, xk.copy(), state["n_dir"])
            elif stagnation is not None and state["n_dir"] - best_at >= stagnation:
                state["x_prev"] = xk.copy()
                raise _Stagnated()
        state["x_prev"] = xk.copy()

    op = spla.LinearOperator((d, d), matvec=matvec, rmatvec=matvec, dtype=np.float64)
    stalled = False
    try:
        x, info = _compat.cg(op, b, x0=None if x0 is None else x0.copy(), rtol=rtol, atol=atol,
                             maxiter=maxiter, callback=on_iteration)
    except _Stagnated:
        stalled, info = True, 1
        x = state["best"][1]
    finally:
        bar.close()
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    residual = _relative_residual(products(x), b)
    target = max(rtol, atol / bnorm)
    converged = bool(info == 0 or residual <= target)
    if not converged:
        why = ("after %d iterations (maxiter=%s)" % (state["n_dir"], maxiter if maxiter is not None else 10 * d)
               if info > 0 else "on a breakdown (scipy info=%d)" % info)
        if stalled:
            why = ("after %d iterations: no progress in the last %d (the finite-difference products "
                   "limit the accuracy%s; returning the best iterate, from iteration %d)"
                   % (state["n_dir"], stagnation,
                      ", a float64 model solves tighter" if _default_cg_rtol(H) == CG_RTOL_FLOAT32 else "",
                      state["best"][2]))
        _warn("cg stopped %s with relative residual %.3g > rtol=%.3g; raise maxiter, increase damping, "
              "or loosen rtol" % (why, residual, target))
    return Solution(x, converged, state["n_dir"], products.count, residual, time.time() - t0)


# ---------------------------------------------------------------------------------------- lissa
def _power_max(matvec, d, rng, steps):
    """Power-iteration estimate of the largest eigenvalue (Rayleigh quotient of the last iterate)."""
    v = rng.standard_normal(d)
    v /= _norm(v)
    rq = 0.0
    for _ in range(steps):
        w = matvec(v)
        rq = float(v @ w)
        nw = _norm(w)
        if not np.isfinite(nw) or nw == 0:
            break
        v = w / nw
    return rq


def lissa(H, b, damping=0.0, scale="auto", depth=LISSA_DEPTH, repeats=1, batch_size=LISSA_BATCH_SIZE,
          rtol=LISSA_RTOL, random_state=0, progress=False, power_steps=POWER_STEPS, callback=None):
    """Solve ``(H + damping·I) x = b`` by LiSSA (stochastic Neumann series; see the module docstring).

    ``scale``: ``"auto"`` or a positive number s (must exceed λ_max(H+λI)/2). ``depth``: steps per
    repeat. ``repeats``: independent runs averaged. ``batch_size``: rows per minibatch Hessian (drawn
    with replacement); ``None`` or ``>= n`` uses the full operator deterministically. ``rtol``: stop a
    repeat when ``‖hⱼ − hⱼ₋₁‖/‖hⱼ‖ < rtol`` (``None`` or 0: always run ``depth`` steps).
    ``random_state``: seed (int), RandomState or None. ``power_steps``: products for the auto scale.
    ``progress``: tqdm bar on stderr (relative change per step). ``callback(step, x_j)`` (optional)
    receives the current repeat's estimate ``x_j = h_j/s`` after each step (a fresh array).
    """
    t0 = time.time()
    H, d = _check_operator(H)
    b = _check_rhs(b, d)
    damping = _check_nonneg(damping, "damping", "0.01")
    depth = _check_int(depth, "depth", LISSA_DEPTH)
    repeats = _check_int(repeats, "repeats", 1)
    batch_size = _check_int(batch_size, "batch_size", LISSA_BATCH_SIZE, allow_none=True)
    power_steps = _check_int(power_steps, "power_steps", POWER_STEPS)
    rtol = 0.0 if rtol is None else _check_nonneg(rtol, "rtol", "1e-7")
    if callback is not None and not callable(callback):
        raise ValueError("callback=%r is not callable; pass a function f(step, x) or None" % (callback,))
    auto = isinstance(scale, str)
    if auto and scale != "auto":
        raise ValueError("scale=%r is not 'auto' or a positive number; pass scale='auto'" % (scale,))
    if not auto:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise ValueError("scale=%r is not 'auto' or a positive number; pass scale='auto'" % (scale,))
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError("scale=%r must be a positive finite number (above λ_max(H+λI)/2); pass "
                             "scale='auto'" % (scale,))
    rng = _rng(random_state)
    if not b.any():
        return _zero_solution(d, t0)

    full = _Products(H, damping)            # A = H_op + damping·I
    total_damping = _operator_damping(H) + damping
    n = getattr(H, "n_examples", None)
    stochastic = (hasattr(H, "minibatch") and n is not None and batch_size is not None and batch_size < n)
    lam_max = None
    if auto:
        lam_max = _power_max(full, d, rng, power_steps)
        if not lam_max > 0:
            raise NonPositiveCurvatureError(_not_pd_message(
                "lissa: the power iteration found a Rayleigh quotient %.4g <= 0" % lam_max, lam_max,
                "at most ", damping, total_damping))
        scale = AUTO_SCALE_FACTOR * lam_max
    if stochastic and getattr(H, "rel_step", 0.0) is None and hasattr(H, "calibrate"):
        H.calibrate(b)                       # one step for every minibatch operator
    mb_count = [0]

    def step_product(h):
        if not stochastic:
            return full(h)
        idx = np.sort(rng.randint(0, n, size=batch_size))
        mb_count[0] += 1
        return np.asarray(H.minibatch(idx, damping=0.0).matvec(h), dtype=np.float64).reshape(-1) \
            + total_damping * h

    bnorm = _norm(b)
    bar = _Progress(progress, depth * repeats, "lissa")
    estimates, n_iter, all_stopped, last_change = [], 0, True, np.inf
    try:
        for rep in range(repeats):
            h = b.copy()
            stopped = False
            for j in range(1, depth + 1):
                h_new = b + h - step_product(h) / scale
                n_iter += 1
                hn = _norm(h_new)
                if not np.isfinite(hn) or hn > DIVERGENCE_SLACK * (j + 1) * bnorm:
                    raise _divergence(full, h_new if np.all(np.isfinite(h_new)) else h, d, rng, scale,
                                      lam_max, power_steps, damping, total_damping, j, rep, hn, bnorm)
                last_change = _norm(h_new - h) / hn if hn > 0 else 0.0
                h = h_new
                bar.update(last_change)
                if callback is not None:
                    callback(j, h / scale)
                if rtol > 0 and last_change < rtol:
                    stopped = True
                    break
            all_stopped = all_stopped and stopped
            estimates.append(h)
    finally:
        bar.close()
    x = np.mean(estimates, axis=0) / scale
    residual = _relative_residual(full(x), b)
    converged = bool(rtol > 0 and all_stopped)
    if not converged:
        _warn("lissa ran depth=%d steps x %d repeat(s) without the relative change per step falling below "
              "rtol=%.3g (last %.3g%s); residual ‖(H+λI)x−b‖/‖b‖ = %.3g. Raise depth, batch_size or repeats"
              % (depth, repeats, rtol, last_change,
                 ", minibatch noise" if stochastic else "", residual))
    n_hvp = full.count + mb_count[0]
    return Solution(x, converged, n_iter, n_hvp, residual, time.time() - t0)


def _divergence(full, h, d, rng, scale, lam_max, power_steps, damping, total_damping, step, rep, hn, bnorm):
    """The DivergenceError for a blown-up LiSSA iterate, with the scale that would work."""
    rayleigh = None
    hnorm = _norm(h) if np.all(np.isfinite(h)) else 0.0
    if hnorm > 0 and np.isfinite(hnorm):
        u = h / hnorm
        rayleigh = float(u @ full(u))
    if lam_max is None:
        lam_max = _power_max(full, d, rng, power_steps)
    head = ("lissa diverged at step %d of repeat %d (‖h‖ = %.3g > %g·(j+1)·‖b‖ = %.3g) with scale=%.4g"
            % (step, rep + 1, hn, DIVERGENCE_SLACK, DIVERGENCE_SLACK * (step + 1) * bnorm, scale))
    if rayleigh is not None and rayleigh <= 0:
        return DivergenceError(head + "; the diverging direction has curvature %.4g <= 0. %s"
                               % (rayleigh, _not_pd_message("lissa", rayleigh, "at most ", damping,
                                                            total_damping)))
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


# ---------------------------------------------------------------------------------------- direct
def dense_matrix(H, damping=0.0):
    """The dense symmetrised ``H + damping·I`` from d products with the unit vectors (float64).

    Refuses d > DIRECT_MAX_DIM. Returns ``(A, n_hvp)``."""
    H, d = _check_operator(H)
    damping = _check_nonneg(damping, "damping", "0.01")
    if d > DIRECT_MAX_DIM:
        raise ValueError("H has dimension d=%d > DIRECT_MAX_DIM=%d: the dense matrix would need d "
                         "products and %.0f MB; use method='cg' (or 'lanczos' with k << d)"
                         % (d, DIRECT_MAX_DIM, d * d * 8 / 1e6))
    products = _Products(H, damping)
    A = np.empty((d, d))
    e = np.zeros(d)
    for i in range(d):
        e[i] = 1.0
        A[:, i] = products(e)
        e[i] = 0.0
    return 0.5 * (A + A.T), products.count


def direct(H, b, damping=0.0):
    """Solve ``(H + damping·I) x = b`` with the dense matrix (d products) and a Cholesky solve."""
    t0 = time.time()
    H, d = _check_operator(H)
    b = _check_rhs(b, d)
    damping = _check_nonneg(damping, "damping", "0.01")
    if d > DIRECT_MAX_DIM:
        dense_matrix(H, damping)             # raises the size error
    if not b.any():
        return _zero_solution(d, t0)
    A, n_hvp = dense_matrix(H, damping)
    try:
        factor = scipy.linalg.cho_factor(A, lower=True, check_finite=True)
    except np.linalg.LinAlgError:
        smallest = float(scipy.linalg.eigvalsh(A)[0])
        raise NonPositiveCurvatureError(_not_pd_message("direct", smallest, "", damping,
                                                        _operator_damping(H) + damping))
    x = scipy.linalg.cho_solve(factor, b)
    residual = _relative_residual(A @ x, b)
    return Solution(x, True, 1, n_hvp, residual, time.time() - t0)


# ---------------------------------------------------------------------------------------- lanczos
class LowRankInverse(object):
    """``V diag(1/(θ + λ)) Vᵀ``: the inverse of ``H + λI`` restricted to the span of ``V``.

    ``eigenvalues`` θ (descending) are of the UNDAMPED H, ``eigenvectors`` V (d × k, orthonormal
    columns), ``damping`` λ the total damping (operator's + extra). ``apply(B)`` (or ``self @ B``)
    takes one vector (d,) or the columns of a matrix (d, m). ``n_hvp``, ``seconds`` and ``converged``
    describe the fit. :meth:`with_damping` reuses the eigenpairs with another total damping.
    """

    def __init__(self, eigenvalues, eigenvectors, damping=0.0, converged=True, n_hvp=0, seconds=0.0):
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
        self.eigenvectors = np.asarray(eigenvectors, dtype=np.float64)
        if self.eigenvectors.ndim != 2 or self.eigenvectors.shape[1] != self.eigenvalues.size:
            raise ValueError("eigenvectors have shape %s for %d eigenvalues; pass a (d, k) matrix"
                             % (self.eigenvectors.shape, self.eigenvalues.size))
        self.damping = _check_nonneg(damping, "damping", "0.01")
        shifted = self.eigenvalues + self.damping
        if self.eigenvalues.size and not np.all(shifted > 0):
            smallest = float(shifted.min())
            raise NonPositiveCurvatureError(_not_pd_message(
                "lanczos (among the top-%d eigenpairs)" % self.eigenvalues.size, smallest, "",
                0.0, self.damping))
        self._inv = 1.0 / shifted
        self.converged = bool(converged)
        self.n_hvp = int(n_hvp)
        self.seconds = float(seconds)

    @property
    def shape(self):
        d = self.eigenvectors.shape[0]
        return (d, d)

    @property
    def rank(self):
        return self.eigenvalues.size

    def with_damping(self, damping):
        """The same eigenpairs with total damping ``damping``."""
        return LowRankInverse(self.eigenvalues, self.eigenvectors, damping, self.converged, 0, 0.0)

    def apply(self, B):
        B = np.asarray(B, dtype=np.float64)
        d = self.eigenvectors.shape[0]
        if B.ndim not in (1, 2) or B.shape[0] != d:
            raise ValueError("B has shape %s; pass a vector (%d,) or a matrix (%d, m)" % (B.shape, d, d))
        coef = self.eigenvectors.T @ B
        coef = coef * (self._inv if B.ndim == 1 else self._inv[:, None])
        return self.eigenvectors @ coef

    def __matmul__(self, B):
        return self.apply(B)

    def __repr__(self):
        return "LowRankInverse(rank=%d, d=%d, damping=%g)" % (self.rank, self.shape[0], self.damping)


def lanczos_inverse(H, k=None, damping=0.0, tol=0.0, maxiter=None, ncv=None, random_state=0):
    """Fit the rank-k inverse of ``H + damping·I`` from the top-k eigenpairs (see :class:`LowRankInverse`).

    ``k`` defaults to min(d, LANCZOS_K); ``k >= d − 1`` uses the dense eigendecomposition (d products,
    d <= DIRECT_MAX_DIM). ``tol``/``maxiter``/``ncv`` go to eigsh; ``random_state`` seeds its start
    vector. Eigenpairs eigsh could not converge are dropped with a :class:`ConvergenceWarning`.
    """
    t0 = time.time()
    H, d = _check_operator(H)
    damping = _check_nonneg(damping, "damping", "0.01")
    k = min(d, LANCZOS_K) if k is None else _check_int(k, "k", min(d, LANCZOS_K))
    if k > d:
        raise ValueError("k=%d exceeds the dimension d=%d; pass k <= %d" % (k, d, d))
    tol = _check_nonneg(tol, "tol", "0")
    maxiter = _check_int(maxiter, "maxiter", 1000, allow_none=True)
    own = _operator_damping(H)
    total = own + damping
    converged = True
    if k >= d - 1:
        A, n_hvp = dense_matrix(H)           # H_op, including its own damping
        w, V = scipy.linalg.eigh(A)
        w, V = w[::-1][:k] - own, V[:, ::-1][:, :k]
    else:
        products = _Products(H)
        op = spla.LinearOperator((d, d), matvec=products, rmatvec=products, dtype=np.float64)
        v0 = _rng(random_state).standard_normal(d)
        try:
            w, V = spla.eigsh(op, k=k, which="LA", v0=v0, tol=tol, maxiter=maxiter, ncv=ncv)
        except spla.ArpackNoConvergence as e:
            w, V = e.eigenvalues, e.eigenvectors
            converged = False
            warnings.warn("lanczos: eigsh converged only %d of k=%d eigenpairs; keeping those. Raise "
                          "maxiter or tol" % (len(w), k), ConvergenceWarning, stacklevel=2)
        order = np.argsort(w)[::-1]
        w, V = np.asarray(w)[order] - own, np.asarray(V)[:, order]
        n_hvp = products.count
    return LowRankInverse(w, V, total, converged, n_hvp, time.time() - t0)


def lanczos(H, b, k=None, damping=0.0, tol=0.0, maxiter=None, ncv=None, random_state=0):
    """Solve ``(H + damping·I) x ≈ b`` with the rank-k inverse of :func:`lanczos_inverse`.

    ``converged`` reports whether the k eigenpairs converged; ``residual`` (one extra product) shows
    the part of the system the rank-k inverse leaves out.
    """
    t0 = time.time()
    H, d = _check_operator(H)
    b = _check_rhs(b, d)
    damping = _check_nonneg(damping, "damping", "0.01")
    if not b.any():
        return _zero_solution(d, t0)
    inv = lanczos_inverse(H, k, damping, tol, maxiter, ncv, random_state)
    x = inv.apply(b)
    full = _Products(H, damping)
    residual = _relative_residual(full(x), b)
    n_hvp = inv.n_hvp + full.count
    return Solution(x, inv.converged, inv.n_hvp, n_hvp, residual, time.time() - t0)


# ---------------------------------------------------------------------------------------- dispatch
METHODS = collections.OrderedDict([("cg", cg), ("lissa", lissa), ("direct", direct), ("lanczos", lanczos)])


def _parameters(f):
    return [p for p in inspect.signature(f).parameters if p not in ("H", "b")]


def solve(H, b, method="cg", **options):
    """Solve ``(H + damping·I) x = b`` with ``method`` in ``METHODS`` ('cg', 'lissa', 'direct',
    'lanczos'); ``options`` go to that function. Returns a :class:`Solution`."""
    if method not in METHODS:
        raise ValueError("method=%r is not one of %s; pass e.g. method='cg'" % (method, ", ".join(METHODS)))
    f = METHODS[method]
    allowed = _parameters(f)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError("option %s is not accepted by method=%r; valid options: %s"
                         % (", ".join(repr(u) for u in unknown), method, ", ".join(allowed)))
    return f(H, b, **options)
