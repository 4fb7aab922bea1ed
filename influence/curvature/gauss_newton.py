"""The generalized Gauss-Newton matrix as a ``LinearOperator``, without double backprop.

For the training objective R(w) = (1/n) Σ_i ℓ(z_i(w), y_i) + (l2/2)‖w‖², with z_i the network outputs
of example i (per step for a sequence tagger, the loss summed over the steps)::

    G = (1/n) Σ_i J_iᵀ H_ℓ(z_i) J_i + l2·I,        J_i = ∂z_i/∂w,  H_ℓ = ∂²ℓ/∂z²

G drops from the Hessian the term Σ_j ∂ℓ/∂z_j · ∇²z_j (the network's own curvature weighted by the
residuals); for a convex loss H_ℓ is positive semi-definite, so G is, at any weights — a network
trained a few epochs, away from an optimum, where the Hessian is indefinite (Martens 2014; Bae et
al. 2022: influence on damped G estimates the proximal Bregman response function).

A product G·v costs three forward passes and one backward pass over the data:

1. J v = (z(w + r v) − z(w − r v)) / 2r for every output row: two inference-mode forward passes.
   The relative step is calibrated once, as forward scoring chooses it
   (:func:`influence.curvature.steps.adaptive_difference` on the outputs of the pilot rows of
   :func:`influence.curvature.forward.pilot_subset`, along a fixed pseudo-random direction), then reused.
   The outputs are continuous even where their derivative jumps (ReLU, max pooling), so a difference
   that straddles a kink errs by at most the slope's jump times the straddled fraction — not jump/r
   as a difference of gradients does.
2. u = H_ℓ(z) (J v) in closed form per output row (:func:`influence.adapters.base.output_loss_hvp`).
3. Jᵀ u by ONE backward pass seeded with root gradients u (``Model._jt_sum``), on the forward pass
   at w that also gave z (CNTK: ``Function.forward(keep_for_backward)`` then ``Function.backward``).

Weights are restored from an exact copy in ``finally`` (:func:`influence.curvature.hessian.central_difference`);
the passes run on the inference graph, which never writes a Constant (BatchNormalization's running
statistics).
"""
import numpy as np

from .forward import pilot_subset
from .hessian import CALIBRATION_SEED
from .steps import GRID_RATIO, adaptive_difference, central_difference
from ._operator import CurvatureOperator

__all__ = ["GaussNewtonOperator", "KINK_REL_STEP"]

#: Largest relative step of J v for a model with kinks, per dtype. A difference of the outputs that
#: straddles a kink errs by the jump of the slope (times the straddled fraction) for that row and unit;
#: how many rows straddle one grows with the step, and the calibration along one direction does not
#: see the directions that move a single shared weight (a convolution kernel's) by the whole step.
#: In float64, rounding at 1e-6 costs ~ε/t = 1e-10 relative; measured on a ReLU/max-pool CNN, dense G
#: was asymmetric by 2.5e-4 relative at the calibrated step (1.5e-5) and by 2e-12 at 1e-6. float32
#: keeps the calibrated step (rounding at small steps would cost more than the kinks).
KINK_REL_STEP = {np.dtype(np.float64): 1e-6}


class GaussNewtonOperator(CurvatureOperator):
    """(G + damping·I)·v for the mean training loss of ``model`` on ``data`` (module docstring).

    The interface of :class:`influence.HessianOperator`: a symmetric float64 ``LinearOperator``;
    ``damping`` a number, or ``"auto"`` (0.1 × the mean eigenvalue of G, by 10 seeded Hutchinson
    probes at construction: :mod:`influence.curvature.damping`; then ``damping_auto`` is True and
    ``mean_eigenvalue`` holds the estimate); ``rel_step`` of the output differences (None:
    calibrated before the first product); ``stencil="richardson"`` spends 4 forward passes for
    J v with an O(r⁴) truncation error. Counters: ``n_hvp`` (products), ``n_forward``/``n_backward``
    (full-data forward/backward passes). ``progress``: a bar over the batches of each product.

    Needs a loss with a closed-form output Hessian (``model.output_loss``: cross_entropy,
    binary_cross_entropy, squared_error); any other is refused with a ValueError naming
    ``curvature="fisher"`` (:class:`influence.FisherOperator`).
    """

    curvature = "Gauss-Newton matrix"

    def __init__(self, model, data, damping=0.0, batch_size=None, progress=False, rel_step=None,
                 stencil="central"):
        model.check_output_loss()
        self._row_counts = None
        super(GaussNewtonOperator, self).__init__(model, data, damping, batch_size, progress, rel_step,
                                                  stencil, ("central", "richardson"))

    def calibrate(self, v=None):
        """Choose ``rel_step`` for J v by :func:`~influence.curvature.steps.adaptive_difference` on the outputs of
        the pilot rows along ``v`` (default: a fixed pseudo-random direction). Returns it.

        For a model with kinks (``model.smooth`` false: ReLU, max pooling) the step is at most
        :data:`KINK_REL_STEP` for the model's dtype (see there)."""
        if v is None:
            v = np.random.RandomState(CALIBRATION_SEED).standard_normal(self.shape[0])
        v = np.asarray(v, dtype=np.float64)
        pilot = self.model.prepare(pilot_subset(self.data), self.batch_size)
        _, step, (central, _) = adaptive_difference(lambda: self.model.outputs(pilot), self.model, v)
        self.calibration = {"richardson": step, "central": central}
        t = step.t if self.stencil == "richardson" else central.t
        if not getattr(self.model, "smooth", True):
            t = min(t, KINK_REL_STEP.get(np.dtype(self.model.dtype), t))
        self.rel_step = t
        return self.rel_step

    def _all_outputs(self, batches):
        """One forward pass over the data: the outputs of every batch, stacked (rows, K)."""
        self.n_forward += 1
        outs = [self.model._outputs(b) for b in batches]
        self._row_counts = [len(o) for o in outs]
        return np.concatenate(outs)

    def jacobian_product(self, v):
        """J v for every output row, float64 (rows, K) (as ``model.outputs`` orders them): a central
        difference of the outputs (2 forward passes; 4 with ``stencil="richardson"``)."""
        if self.rel_step is None:
            self.calibrate()
        batches = self._batches()
        f = lambda: self._all_outputs(batches)          # noqa: E731
        d1 = central_difference(f, self.model, v, rel_step=self.rel_step)
        if self.stencil == "central":
            return d1
        d2 = central_difference(f, self.model, v, rel_step=self.rel_step * GRID_RATIO)
        return (d2 - GRID_RATIO ** 2 * d1) / (1.0 - GRID_RATIO ** 2)

    def _data_term(self, v):
        jv = self.jacobian_product(v)
        batches = self._batches()
        model = self.model
        out = np.zeros(self.shape[0])
        bar = self._bar(len(batches), "G·v")
        try:
            a = 0
            for b, rows in zip(batches, self._row_counts):
                u = jv[a:a + rows]
                # r = H_ℓ(z)·(J v), z from the very forward pass the backward pass then uses
                out += model._jt_sum(b, lambda z, b=b, u=u: model._output_loss_hvp(b, z, u))
                a += rows
                bar.update()
        finally:
            bar.close()
        self.n_backward += 1
        out /= len(self.data)
        return out
