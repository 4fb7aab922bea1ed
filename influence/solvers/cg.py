"""Conjugate gradients (:func:`scipy.sparse.linalg.cg`) on ``(H + damping·I) x = b``, watching every
product for non-positive curvature and stopping on stagnation of inexact (float32) products."""
import time

import numpy as np
import scipy.sparse.linalg as spla

from ..common import compat as _compat
from ..common.numeric import norm
from ._common import (Progress, Products, Solution, check_callback, check_common, check_int, check_preconditioner,
                      deprecated_arguments, lanczos_ritz_min, not_positive_definite, operator_damping,
                      relative_residual, residual_target, warn_convergence, zero_solution)

__all__ = ["cg", "CG_RTOL", "CG_RTOL_FLOAT32", "CG_STAGNATION_FLOAT32", "CG_RESTARTS", "CURVATURE_STEPS"]

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
#: Restarts from the current iterate when SciPy's recursive residual met the target but the measured
#: one did not (rounding drift; inexact finite-difference products). Each restart costs one product.
CG_RESTARTS = 2
#: Lanczos steps spent estimating the negative eigenvalue after CG meets non-positive curvature.
CURVATURE_STEPS = 10


def _float32_model(H):
    model = getattr(H, "model", None)
    return model is not None and np.dtype(model.dtype) == np.float32


class _Stagnated(Exception):
    pass


@deprecated_arguments(positional=("damping", "rtol", "atol", "maxiter", "x0", "progress", "curvature_steps",
                                  "callback", "stagnation"))
def cg(H, b, *, damping=0.0, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None, progress=False,
       random_state=None, stagnation=None, curvature_steps=CURVATURE_STEPS, preconditioner=None):
    """Solve ``(H + damping·I) x = b`` by conjugate gradients.

    Stops when ``‖(H+λI)x − b‖ <= max(rtol·‖b‖, atol)``; ``rtol=None`` is :data:`CG_RTOL` (1e-6), or
    :data:`CG_RTOL_FLOAT32` (1e-4) for a float32 model, whose finite-difference products cannot
    resolve less. ``maxiter``: iterations (default SciPy's 10·d). ``x0``: initial guess (never
    modified). ``callback(x)``: a copy of the iterate after each iteration. ``progress``: tqdm bar on
    stderr with CG's recursive residual. ``random_state``: checked and not used (CG is deterministic).

    Extras: ``stagnation``: stop, not converged, when the residual has not improved for that many
    iterations, returning the best iterate seen (default :data:`CG_STAGNATION_FLOAT32` for a float32
    model, off otherwise). ``curvature_steps``: Lanczos steps spent estimating the negative
    eigenvalue when a direction has ``pᵀ(H+λI)p <= 0`` (raises :class:`NonPositiveCurvatureError`).
    ``preconditioner``: M ≈ (H + damping·I)⁻¹, symmetric positive definite — an
    :class:`influence.EKFAC` (its ``solve`` is applied) or any LinearOperator; preconditioned CG
    then needs far fewer products when M captures the spectrum. The stopping test and the returned
    ``residual`` stay those of the UNpreconditioned system, ‖(H+λI)x − b‖/‖b‖; M's applications
    are not counted in ``n_hvp``.
    """
    t0 = time.time()
    H, d, b, damping, x0, rtol, atol, _ = check_common(H, b, damping, x0, rtol, atol, random_state)
    float32 = _float32_model(H)
    if rtol is None:
        rtol = CG_RTOL_FLOAT32 if float32 else CG_RTOL
    if stagnation is None and float32:
        stagnation = CG_STAGNATION_FLOAT32
    stagnation = check_int(stagnation, "stagnation", 200, allow_none=True)
    maxiter = check_int(maxiter, "maxiter", 100, allow_none=True)
    curvature_steps = check_int(curvature_steps, "curvature_steps", CURVATURE_STEPS)
    callback = check_callback(callback)
    M = check_preconditioner(preconditioner, d)
    if not b.any():
        return zero_solution(d, t0)
    products = Products(H, damping)
    bnorm = norm(b)
    state = {"n_it": 0, "best": (np.inf, None, 0)}

    def start(x_start):                          # SciPy's state for one run from x_start
        nonzero = x_start is not None and bool(x_start.any())
        state.update(r=None if nonzero else b.copy(), last=None, x0=x_start,
                     x_prev=x_start.copy() if nonzero else np.zeros(d))
    bar = Progress(progress, maxiter if maxiter is not None else 10 * d, "cg")

    def matvec(v):
        v = np.array(v, dtype=np.float64).reshape(-1)
        if not v.any():
            return np.zeros_like(v)
        av = products(v)
        curvature = float(v @ av)
        if not curvature > 0:
            rayleigh = curvature / float(v @ v)
            steps = min(curvature_steps, d)
            try:
                ritz = lanczos_ritz_min(products, v, steps)
            except Exception:  # noqa: BLE001 - the estimate is a courtesy; report the bound we have
                ritz = rayleigh
            raise not_positive_definite(
                "cg met a direction p with pᵀ(H+λI)p/pᵀp = %.4g <= 0; estimate from %d Lanczos steps"
                % (rayleigh, steps), min(ritz, rayleigh), damping, operator_damping(H), upper_bound=True)
        if state["r"] is None and np.array_equal(v, state["x0"]):
            state["r"] = b - av                 # SciPy's initial residual b − A x0
        else:
            state["last"] = (v, av)
        return av

    def on_iteration(xk):                       # SciPy calls it once per iteration
        xk = np.asarray(xk, dtype=np.float64).reshape(-1)
        state["n_it"] += 1
        res = None
        if state["last"] is not None and state["r"] is not None:
            p, q = state["last"]
            alpha = float((xk - state["x_prev"]) @ p) / float(p @ p)
            state["r"] = state["r"] - alpha * q
            state["last"] = None
            res = norm(state["r"]) / bnorm
        bar.update(res)
        if callback is not None:
            callback(xk.copy())
        if res is not None:
            best_res, _, best_at = state["best"]
            if res < best_res:
                state["best"] = (res, xk.copy(), state["n_it"])
            elif stagnation is not None and state["n_it"] - best_at >= stagnation:
                state["x_prev"] = xk.copy()
                raise _Stagnated()
        state["x_prev"] = xk.copy()

    op = spla.LinearOperator((d, d), matvec=matvec, rmatvec=matvec, dtype=np.float64)
    stalled = False
    target = residual_target(rtol, atol, bnorm) / bnorm
    limit = maxiter if maxiter is not None else 10 * d
    x = x0
    try:
        for restart in range(CG_RESTARTS + 1):
            start(x)
            try:
                x, info = _compat.cg(op, b, x0=None if x is None else x.copy(), rtol=rtol, atol=atol,
                                     maxiter=limit - state["n_it"], callback=on_iteration, M=M)
            except _Stagnated:
                stalled, info = True, 1
                x = state["best"][1]
            x = np.asarray(x, dtype=np.float64).reshape(-1)
            residual = relative_residual(products(x), b)
            # SciPy stops on its recursive residual, which drifts from the true one: restart from x
            if info != 0 or residual <= target or state["n_it"] >= limit:
                break
    finally:
        bar.close()
    converged = bool(residual <= target)       # the measured residual, not SciPy's recursive estimate
    if not converged:
        if info == 0:
            why = ("after %d iterations and %d restarts, each ending with its recursive residual below "
                   "the target but the measured one above it (the finite-difference products are not "
                   "exact enough%s)" % (state["n_it"], CG_RESTARTS, ", a float64 model solves tighter"
                                        if float32 else ""))
        elif info > 0:
            why = "after %d iterations (maxiter=%s)" % (state["n_it"], limit)
        else:
            why = "on a breakdown (scipy info=%d)" % info
        if stalled:
            why = ("after %d iterations: no progress in the last %d (the finite-difference products "
                   "limit the accuracy%s; returning the best iterate, from iteration %d)"
                   % (state["n_it"], stagnation, ", a float64 model solves tighter" if float32 else "",
                      state["best"][2]))
        warn_convergence("cg stopped %s with relative residual %.3g > max(rtol, atol/‖b‖)=%.3g; raise "
                         "maxiter, increase damping, or loosen rtol" % (why, residual, target))
    return Solution(x, converged, state["n_it"], products.count, residual, time.time() - t0)
