"""Hessian-vector products by central finite differences of the gradient.

For a twice-differentiable objective with gradient g, and a direction v::

    D(r) = (g(w + r v) − g(w − r v)) / 2r  =  H v + (r²/6)·∂³g[v, v, v] + O(r⁴)

so the truncation error shrinks like r², while rounding in g grows like ε·|g|/r (ε the machine
epsilon of the model's dtype, 6e-8 for float32, 1.1e-16 for float64). The step is written
``r = t·(1 + ‖w‖)/‖v‖``: ``t`` is the relative size of the weight perturbation.

No fixed ``t`` suits every function: a bilinear function (the notebook's toy, y = w₂w₁x) has no
truncation error and wants ``t`` large; a curved one wants ``t`` small. :func:`adaptive_difference`
therefore evaluates D on a geometric grid t_k = 4⁻ᵏ, forms the Richardson extrapolants
R_k = (16·D_{k+1} − D_k)/15 (truncation O(r⁴)), estimates each one's error by ‖R_k − R_{k+1}‖ and
keeps the best. For a model whose gradient jumps (``model.smooth`` false: ReLU, max pooling), a
difference that straddles a kink picks up jump/r, so estimates at large steps are noise that can
look stable by chance: the whole grid is then searched (no early stop), where the small steps that
straddle no kink agree to rounding. The same evaluations give the best plain central step (error estimate
‖D_k − R_k‖), which :class:`HessianOperator` calibrates once and then reuses at 2 gradients a product.

Weights are always restored from an exact saved copy in ``finally`` (bit-identical, also on
KeyboardInterrupt); they are never restored by adding ±r·v back.
"""
import numpy as np
from scipy.sparse.linalg import LinearOperator

from ..common.numeric import check_damping
from ..adapters.cntk import FunctionGradient
from .steps import GRID_RATIO, Step, adaptive_difference, central_difference  # noqa: F401 (Step: public here too)

__all__ = ["hvp", "HessianOperator", "central_difference", "adaptive_difference", "Step"]

#: A HessianOperator converts its data once for all products (Model.prepare) up to this size (the
#: converted copy stays in memory); larger data is converted at every pass.
PREPARE_MAX_BYTES = 256 * 2 ** 20
#: Seed of the pseudo-random direction on which HessianOperator calibrates its step.
CALIBRATION_SEED = 0


class HessianOperator(LinearOperator):
    """(H + damping·I)·v for the mean training loss R(w) of ``model`` on ``data``.

    ``H = ∇²R(w) = (1/n) Σ_i ∇²ℓ(z_i, w) + l2·I``. The data term is a central difference of the
    batched mean gradient (2 passes over the data per product, batches weighted by their size); the
    L2 and damping terms are added exactly. The relative step ``rel_step`` is calibrated before the
    first product by :func:`adaptive_difference` on a fixed pseudo-random direction (a one-time cost
    of ~10–26 gradients) unless given.
    ``stencil="richardson"`` spends 4 gradients a product for an O(r⁴) truncation error.

    The operator is symmetric; its dtype is float64 whatever the model's dtype (products of a float32
    model carry float32 finite-difference error, ~1e-4 relative). ``n_hvp`` counts products,
    ``n_grad`` full-data gradient passes. ``v = 0`` returns 0 without evaluating anything.
    """

    def __init__(self, model, data, damping=0.0, batch_size=None, rel_step=None, stencil="central"):
        damping = check_damping(damping)
        if stencil not in ("central", "richardson"):
            raise ValueError("stencil=%r is not one of 'central', 'richardson'" % (stencil,))
        if rel_step is not None and not (0 < rel_step < np.inf):
            raise ValueError("rel_step=%r must be a positive number (e.g. 1e-3), or None to calibrate"
                             % (rel_step,))
        self.model = model
        self.data = model.validate(data, getattr(data, "name", "training data"))
        self.damping = damping
        self.batch_size = batch_size
        self.rel_step = rel_step
        self.stencil = stencil
        self.n_hvp = 0
        self.n_grad = 0
        self.calibration = None
        self._prepared_data = None
        n = model.n_params
        super(HessianOperator, self).__init__(dtype=np.dtype(np.float64), shape=(n, n))

    @property
    def n_examples(self):
        return len(self.data)

    def _mean_data_grad(self):
        self.n_grad += 1
        g = self.model.grad_sum(self._prepared(), self.batch_size)
        g /= len(self.data)
        return g

    def _prepared(self):
        """The data, converted once for all products (:meth:`Model.prepare`) when it holds at most
        :data:`PREPARE_MAX_BYTES`; larger data is converted batch by batch at every pass."""
        if self._prepared_data is None:
            nbytes = self.data.nbytes
            self._prepared_data = (self.model.prepare(self.data, self.batch_size)
                                   if nbytes <= PREPARE_MAX_BYTES else self.data)
        return self._prepared_data

    def calibrate(self, v=None):
        """Choose ``rel_step`` by :func:`adaptive_difference` along ``v``, by default a fixed
        pseudo-random direction (seed :data:`CALIBRATION_SEED`): the first vector a solver multiplies
        can be special (a unit vector of an input that is always 0 has a zero data term, on which no
        step can be judged). Returns the chosen relative step."""
        if v is None:
            v = np.random.RandomState(CALIBRATION_SEED).standard_normal(self.shape[0])
        v = np.asarray(v, dtype=np.float64)
        _, step, (central, _) = adaptive_difference(self._mean_data_grad, self.model, v)
        self.calibration = {"richardson": step, "central": central}
        self.rel_step = step.t if self.stencil == "richardson" else central.t
        return self.rel_step

    def _data_term(self, v):
        if self.rel_step is None:
            self.calibrate()
        rel_steps = [self.rel_step] if self.stencil == "central" else [self.rel_step, self.rel_step * GRID_RATIO]
        diffs = self._central_differences(v, rel_steps)
        if self.stencil == "central":
            return diffs[0]
        d1, d2 = diffs
        return (d2 - GRID_RATIO ** 2 * d1) / (1.0 - GRID_RATIO ** 2)

    def _central_differences(self, v, rel_steps):
        """The central difference of the mean data gradient along ``v`` at each relative step (the
        hook a distributed operator overrides to evaluate all the shifted weights in one round)."""
        return [central_difference(self._mean_data_grad, self.model, v, rel_step=t) for t in rel_steps]

    def _matvec(self, v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(v)):
            raise ValueError("the vector multiplied by the Hessian contains NaN or Inf; "
                             "check the right-hand side and the solver's damping")
        self.n_hvp += 1
        if not v.any():
            return np.zeros_like(v)
        out = self._data_term(v)
        out += (self.model.l2 + self.damping) * v
        return out

    def _rmatvec(self, v):
        return self._matvec(v)

    def _adjoint(self):
        return self

    def minibatch(self, index, damping=None):
        """The operator on the training rows ``index`` (shares the calibrated step)."""
        rows = self.data.subset(index)
        rows._valid_for = self.model            # rows of validated data: no second check
        return HessianOperator(self.model, rows, self.damping if damping is None else damping,
                               self.batch_size, self.rel_step, self.stencil)


def hvp(y, x, v, r=None):
    """Hessian-vector product of a CNTK Function ``y`` (scalar per sample, summed over the batch).

    ``x``: an array fed to ``y``'s single input, or a dict {input Variable: array}.
    ``v``: a dict {Parameter: array} covering ``y.parameters``, or a flat vector in ``y.parameters``
    order. Returns the same structure: H·v where H = ∇²_w Σ_batch y.
    ``r``: absolute step of a plain central difference; None (default) chooses the step adaptively
    with Richardson extrapolation (:func:`adaptive_difference`). Weights are restored bit-identically.
    """
    fg = FunctionGradient(y, x)
    flat = fg.flatten_vector(v)
    if not flat.any():
        return fg.unflatten_like(np.zeros_like(flat), v)
    if r is None:
        value, _, _ = adaptive_difference(fg, fg, flat)
    else:
        if not (np.isfinite(r) and r > 0):
            raise ValueError("r=%r must be a positive finite step (e.g. 1e-3), or None for automatic" % (r,))
        value = central_difference(fg, fg, flat, r)
    return fg.unflatten_like(value, v)
