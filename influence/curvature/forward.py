"""Forward differences of per-example losses along directions: g_iᵀ s for many rows without
per-example gradients, by forward passes at w ± r s. Shared by forward scoring
(:mod:`influence.scoring.kernels`) and the empirical Fisher product
(:class:`influence.curvature.FisherOperator`)::

    D_i(r) = (ℓ_i(w + r s) − ℓ_i(w − r s)) / 2r  ≈  g_iᵀ s            (central, O(r²))
    (16·D_i(r/4) − D_i(r)) / 15                  ≈  g_iᵀ s            (Richardson, O(r⁴))

:func:`forward_steps` chooses r per direction on a pilot subset (:func:`pilot_subset`),
:func:`forward_differences` evaluates any rows with those steps (batched forward passes). The result
for a row depends only on the row, the step and the batching."""
import collections

import numpy as np

from ..common.errors import InfluenceError, param
from .steps import GRID_RATIO, adaptive_difference

__all__ = ["ForwardStep", "forward_steps", "forward_differences", "pilot_subset", "validated", "PILOT_ROWS",
           "FORWARD_STENCIL"]

#: Rows (evenly spaced through the data) on which the forward-difference step is chosen per direction.
PILOT_ROWS = 512
#: Default stencil per dtype: "richardson" = (16·D(r/4) − D(r))/15 (4 passes, O(r⁴) truncation),
#: "central" = D(r) (2 passes, O(r²)).
FORWARD_STENCIL = {np.dtype(np.float32): "richardson", np.dtype(np.float64): "richardson"}


def validated(model, data, name):
    """``data`` checked against ``model`` (``model.validate``), named by its own name or ``name``."""
    return model.validate(data, getattr(data, "name", name))


def _dtype_default(table, model):
    return table.get(np.dtype(model.dtype), table[np.dtype(np.float64)])


ForwardStep = collections.namedtuple("ForwardStep", "r stencil error")
ForwardStep.__doc__ = """Step of the forward differences along one direction: absolute step ``r``, the
``stencil`` ("central" or "richardson"), and the estimated relative error (NaN when ``r`` was given)."""


def _check_directions(model, directions):
    directions = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    if directions.ndim != 2 or directions.shape[1] != model.n_params:
        raise ValueError("directions have shape %s but the model has %d parameters; pass (m, %d)"
                         % (directions.shape, model.n_params, model.n_params))
    if not np.all(np.isfinite(directions)):
        raise InfluenceError("directions contain NaN or Inf; check the solver's output (try %s > 0)" % param("damping"),
                             parameter="damping")
    return directions


def pilot_subset(data):
    """The :data:`PILOT_ROWS` rows (evenly spaced through ``data``, all of them when fewer) on which a
    finite-difference step is chosen."""
    n = len(data)
    return data.subset(np.unique(np.linspace(0, n - 1, min(n, PILOT_ROWS)).astype(np.int64)))


def forward_steps(model, data, directions, rel_step=None, stencil=None, batch_size=None):
    """Choose the forward-difference step for each direction (one :class:`ForwardStep` each).

    By default the step is chosen per direction by :func:`influence.curvature.hessian.adaptive_difference` applied
    to the per-example losses of :data:`PILOT_ROWS` rows spread through ``data`` (a few dozen cheap
    forward passes): it returns the step whose Richardson (or central) estimate has the smallest
    estimated error. With ``rel_step`` given, r = rel_step·(1 + ‖w‖)/‖s‖. Weights are restored.
    """
    data = validated(model, data, "data")
    directions = _check_directions(model, directions)
    stencil = _dtype_default(FORWARD_STENCIL, model) if stencil is None else stencil
    if stencil not in ("central", "richardson"):
        raise ValueError("stencil=%r is not one of 'central', 'richardson'" % (stencil,))
    if rel_step is not None and not (0 < rel_step < np.inf):
        raise ValueError("rel_step=%r must be a positive number (e.g. 1e-2), or None to choose it per "
                         "direction" % (rel_step,))
    pilot = pilot_subset(data)
    w0 = model.get_params().astype(np.float64)
    scale = 1.0 + np.sqrt(w0 @ w0)
    steps = []
    for s in directions:
        norm = np.sqrt(s @ s)
        if norm == 0:
            steps.append(ForwardStep(0.0, stencil, 0.0))
        elif rel_step is not None:
            steps.append(ForwardStep(rel_step * scale / norm, stencil, float("nan")))
        else:
            _, rich, (central, _) = adaptive_difference(
                lambda: model.per_example_losses(pilot, batch_size), model, s)
            best = rich if stencil == "richardson" else central
            steps.append(ForwardStep(best.r, stencil, best.error))
    return steps


def forward_differences(model, rows, directions, steps, batch_size=None):
    """D[j, i] = ∇ℓ(z_i, w)·directions[j] on ``rows`` with the given :class:`ForwardStep` per direction.

    Central: (ℓ_i(w + r s) − ℓ_i(w − r s)) / 2r, two batched passes over ``rows``; Richardson:
    (16·D(r/4) − D(r))/15, four passes. The result for a row depends only on the row, the step and
    the batching within ``rows``, so scoring a dataset chunk by chunk with the same steps is
    reproducible to the bit. Weights are restored bit-identically (also on exceptions).
    """
    rows = validated(model, rows, "data")
    directions = _check_directions(model, directions)
    dtype = model.dtype
    out = np.zeros((directions.shape[0], len(rows)))
    with model.preserving_params() as saved:
        w0 = saved.astype(np.float64)

        def diff(s, r):
            model.set_params((w0 + r * s).astype(dtype))
            plus = model.per_example_losses(rows, batch_size)
            model.set_params((w0 - r * s).astype(dtype))
            minus = model.per_example_losses(rows, batch_size)
            return (plus - minus) / (2.0 * r)

        for j, (s, step) in enumerate(zip(directions, steps)):
            if step.r == 0:
                continue
            d1 = diff(s, step.r)
            if step.stencil == "central":
                out[j] = d1
            else:
                q2 = GRID_RATIO ** 2
                out[j] = (diff(s, step.r * GRID_RATIO) - q2 * d1) / (1.0 - q2)
    return out
