"""Finite-difference step rules shared by every finite-difference product (the Hessian's central
differences of gradients, the Gauss-Newton operator's differences of outputs) and by forward scoring:
the shifted weights of a central difference, the adaptive step search with Richardson extrapolation
(theory: :mod:`influence.curvature.hessian` and docs/concepts-hvp.md). Weights are always restored
from an exact saved copy."""
import collections

import numpy as np

from ..adapters.base import preserved_params
from ..common.numeric import norm

__all__ = ["central_difference", "adaptive_difference", "Step", "step_scale", "shifted_weights",
           "combine_central", "GRID_RATIO", "GRID_START", "GRID_POINTS", "PATIENCE"]

#: Ratio between consecutive relative steps of the adaptive grid (Richardson weight 16/15 for 1/4).
GRID_RATIO = 0.25
#: Largest relative step tried, and the number of grid points at most, per dtype.
GRID_START = 1.0
GRID_POINTS = {np.dtype(np.float32): 9, np.dtype(np.float64): 13}
#: Grid points evaluated past the best estimate before the search stops (the estimate has turned).
PATIENCE = 2

Step = collections.namedtuple("Step", "t r error n_evals")
Step.__doc__ = """A finite-difference step: relative size ``t``, absolute ``r = t·(1+‖w‖)/‖v‖``, the
estimated relative error of the value it produced, and the function evaluations spent."""


def step_scale(w0, v):
    """(1 + ‖w0‖)/‖v‖: the absolute step per unit of relative step ``t`` (r = t·step_scale)."""
    return (1.0 + norm(np.asarray(w0, dtype=np.float64))) / norm(v)


def shifted_weights(w0, v, r, dtype):
    """The two weight vectors of a central difference, ``w0 + r v`` and ``w0 − r v``: formed in float64
    from ``w0`` (float64), then rounded once to the model's ``dtype`` (what the model is set to)."""
    step = r * v
    return (w0 + step).astype(dtype, copy=False), (w0 - step).astype(dtype, copy=False)


def combine_central(f_plus, f_minus, r):
    """(f_plus − f_minus) / 2r in float64 (a new array)."""
    diff = np.asarray(f_plus, dtype=np.float64) - np.asarray(f_minus, dtype=np.float64)
    diff *= 0.5 / r
    return diff


def _difference(f, params, w0, v, r):
    """(f(w0 + r v) − f(w0 − r v)) / 2r; the caller restores the weights."""
    w_plus, w_minus = shifted_weights(w0, v, r, params.dtype)
    params.set_params(w_plus)
    f_plus = np.asarray(f(), dtype=np.float64)
    params.set_params(w_minus)
    return combine_central(f_plus, f(), r)


def central_difference(f, params, v, r=None, rel_step=None):
    """Central difference of ``f`` along ``v`` (2 evaluations of ``f``), with absolute step ``r`` or
    relative step ``rel_step`` (r = rel_step·(1 + ‖w‖)/‖v‖).

    ``params`` has ``get_params()``, ``set_params(w)`` (exact) and ``dtype``; ``f()`` evaluates at the
    current weights and returns an array. Weights are restored exactly afterwards.
    """
    if (r is None) == (rel_step is None):
        raise ValueError("give exactly one of r (absolute step) and rel_step (relative step)")
    v = np.asarray(v, dtype=np.float64)
    with preserved_params(params) as w0:
        w0 = w0.astype(np.float64)
        if r is None:
            r = rel_step * step_scale(w0, v)
        return _difference(f, params, w0, v, float(r))


def _rel_err(a, b):
    scale = max(norm(np.ravel(b)), np.finfo(np.float64).tiny)
    err = norm(np.ravel(a - b)) / scale
    return err if np.isfinite(err) else np.inf


def adaptive_difference(f, params, v):
    """Derivative of ``f`` along ``v`` with an automatically chosen step (see the module docstring).

    Returns ``(value, step, (central_step, central_value))``: ``value`` is the best Richardson
    extrapolant and ``step`` its :class:`Step`; ``central_step`` is the best step for the plain
    central difference (what :class:`HessianOperator` reuses) and ``central_value`` the central
    difference at that step. Costs 2 evaluations of ``f`` per grid point tried (typically 10–24).
    """
    v = np.asarray(v, dtype=np.float64)
    dtype = np.dtype(params.dtype)
    n_points = GRID_POINTS.get(dtype, GRID_POINTS[np.dtype(np.float64)])
    patience = PATIENCE if getattr(params, "smooth", True) else n_points
    with preserved_params(params) as w0:
        w0 = w0.astype(np.float64)
        scale = step_scale(w0, v)
        ts, ds = [], []
        best_r = best_c = None            # (error, k)
        for k in range(n_points):
            t = GRID_START * GRID_RATIO ** k
            ts.append(t)
            ds.append(_difference(f, params, w0, v, t * scale))
            if k >= 1:                      # R_{k-1} and the central estimate of D_{k-1}
                r_prev = (ds[k] - GRID_RATIO ** 2 * ds[k - 1]) / (1.0 - GRID_RATIO ** 2)
                c_err = _rel_err(ds[k - 1], r_prev)
                if best_c is None or c_err < best_c[0]:
                    best_c = (c_err, k - 1, ds[k - 1])
            if k >= 2:                      # error of R_{k-2} from R_{k-1}
                r_a = (ds[k - 1] - GRID_RATIO ** 2 * ds[k - 2]) / (1.0 - GRID_RATIO ** 2)
                r_b = (ds[k] - GRID_RATIO ** 2 * ds[k - 1]) / (1.0 - GRID_RATIO ** 2)
                e = _rel_err(r_a, r_b)
                if best_r is None or e < best_r[0]:
                    best_r = (e, k - 2, r_a)
                if k - 2 - best_r[1] >= patience and k - 1 - best_c[1] >= patience:
                    break
        n_evals = 2 * len(ds)
    err, k, value = best_r
    step = Step(ts[k], ts[k] * scale, err, n_evals)
    c_err, kc, c_value = best_c
    central = Step(ts[kc], ts[kc] * scale, c_err, 0)
    return value, step, (central, c_value)
