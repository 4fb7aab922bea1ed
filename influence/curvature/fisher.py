"""The empirical Fisher matrix as a ``LinearOperator``; works for any loss.

    F = (1/n) Σ_i g_i g_iᵀ + l2·I,        g_i = ∇ℓ(z_i, w)  (no L2 term)

(what pyDVL calls "Gauss-Newton"). Positive semi-definite at any weights. A product F·v is

1. c_i = g_iᵀ v for every training example by the forward-difference kernel of scoring
   (:func:`influence.scoring.kernels.forward_differences`: 4 forward passes of the per-example losses with
   the default Richardson stencil, 2 with ``stencil="central"``), at a relative step calibrated once
   by :func:`influence.scoring.kernels.forward_steps` on a fixed pseudo-random direction;
2. Σ_i c_i g_i by one backward pass of Σ_i c_i ℓ_i (``Model.weighted_grad_sum``: CNTK's backward
   pass seeded with the root gradients c on the per-example loss).

Weights are restored bit-identically by the kernels (``finally``).
"""
import numpy as np

from .hessian import CALIBRATION_SEED
from .forward import FORWARD_STENCIL, forward_differences, forward_steps
from ._operator import CurvatureOperator

__all__ = ["FisherOperator"]


class FisherOperator(CurvatureOperator):
    """(F + damping·I)·v, F the empirical Fisher of ``model`` on ``data`` (module docstring).

    The interface of :class:`influence.HessianOperator` and
    :class:`~influence.curvature.GaussNewtonOperator` (``damping`` a number or ``"auto"``, counters
    ``n_hvp``, ``n_forward``, ``n_backward``, ``calibrate``, ``minibatch``). ``stencil``: the forward
    kernel's, by default the scoring default for the model's dtype (``kernels.FORWARD_STENCIL``)."""

    curvature = "empirical Fisher matrix"

    def __init__(self, model, data, damping=0.0, batch_size=None, progress=False, rel_step=None,
                 stencil=None):
        if stencil is None:
            stencil = FORWARD_STENCIL.get(np.dtype(model.dtype), FORWARD_STENCIL[np.dtype(np.float64)])
        super(FisherOperator, self).__init__(model, data, damping, batch_size, progress, rel_step,
                                             stencil, ("central", "richardson"))

    def _scale(self):
        w = self.model.get_params().astype(np.float64)
        return 1.0 + float(np.sqrt(w @ w))

    def calibrate(self, v=None):
        """Choose ``rel_step`` by :func:`~influence.scoring.kernels.forward_steps` (the scoring rule) along
        ``v`` (default: a fixed pseudo-random direction). Returns it."""
        if v is None:
            v = np.random.RandomState(CALIBRATION_SEED).standard_normal(self.shape[0])
        v = np.asarray(v, dtype=np.float64)
        step = forward_steps(self.model, self.data, v[None], stencil=self.stencil, batch_size=self.batch_size)[0]
        self.calibration = step
        self.rel_step = step.r * float(np.sqrt(v @ v)) / self._scale()
        return self.rel_step

    def directional_derivatives(self, v):
        """g_iᵀ v for every training example (float64 (n,)), by the forward kernel."""
        if self.rel_step is None:
            self.calibrate()
        steps = forward_steps(self.model, self.data, v[None], rel_step=self.rel_step, stencil=self.stencil)
        self.n_forward += 2 if self.stencil == "central" else 4
        return forward_differences(self.model, self.data, v[None], steps, self.batch_size)[0]

    def _data_term(self, v):
        c = self.directional_derivatives(v)
        out = self.model.weighted_grad_sum(self._prepared(), c, self.batch_size)
        self.n_backward += 1
        out /= len(self.data)
        return out
