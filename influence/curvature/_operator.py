"""What the Gauss-Newton and Fisher operators share with :class:`influence.HessianOperator`: a
symmetric float64 ``LinearOperator`` of shape d × d on a model and its (validated, prepared) data,
``damping`` (a number or ``"auto"``), product counters and the vector checks."""
import numpy as np
from scipy.sparse.linalg import LinearOperator

from ..common.progress import Progress
from .hessian import PREPARE_MAX_BYTES
from .damping import HUTCHINSON_PROBES, damping_from_mean, mean_eigenvalue, resolve_damping

__all__ = ["CurvatureOperator"]


class CurvatureOperator(LinearOperator):
    """Base of :class:`~influence.curvature.GaussNewtonOperator` and
    :class:`~influence.curvature.FisherOperator`: subclasses implement ``_data_term(v)`` (the mean
    data curvature times v, float64) and ``calibrate(v=None)``."""

    #: What the operator multiplies by, for messages.
    curvature = None

    def __init__(self, model, data, damping, batch_size, progress, rel_step, stencil, stencils):
        damping = resolve_damping(damping)
        if stencil not in stencils:
            raise ValueError("stencil=%r is not one of %s" % (stencil, ", ".join("'%s'" % s for s in stencils)))
        if rel_step is not None and not (0 < rel_step < np.inf):
            raise ValueError("rel_step=%r must be a positive number (e.g. 1e-3), or None to calibrate"
                             % (rel_step,))
        self.model = model
        self.data = model.validate(data, getattr(data, "name", "training data"))
        self.batch_size = batch_size
        self.progress = bool(progress)
        self.rel_step = rel_step
        self.stencil = stencil
        self.calibration = None
        self.n_hvp = 0
        self.n_forward = 0          # full-data forward passes (each over every batch)
        self.n_backward = 0         # full-data backward passes
        self._prepared_data = None
        self.damping = 0.0
        #: True when the damping was chosen by ``damping="auto"`` (then ``mean_eigenvalue`` is set).
        self.damping_auto = damping == "auto"
        self.mean_eigenvalue = None
        n = model.n_params
        super(CurvatureOperator, self).__init__(dtype=np.dtype(np.float64), shape=(n, n))
        if self.damping_auto:
            self.mean_eigenvalue = mean_eigenvalue(self, HUTCHINSON_PROBES, 0)[0]
            self.damping = damping_from_mean(self.mean_eigenvalue)
        else:
            self.damping = damping

    @property
    def n_examples(self):
        return len(self.data)

    def _prepared(self):
        """The data converted once for all products (``Model.prepare``) up to PREPARE_MAX_BYTES."""
        if self._prepared_data is None:
            self._prepared_data = (self.model.prepare(self.data, self.batch_size)
                                   if self.data.nbytes <= PREPARE_MAX_BYTES else self.data)
        return self._prepared_data

    def _batches(self):
        return list(self.model._batches(self._prepared(), self.batch_size))

    def _bar(self, total, desc):
        return Progress(self.progress, total, desc)

    def data_term(self, v):
        """The mean data curvature times ``v`` (float64; no l2 term, no damping): what a distributed
        operator sums over shards."""
        return self._data_term(np.asarray(v, dtype=np.float64).reshape(-1))

    def _matvec(self, v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(v)):
            raise ValueError("the vector multiplied by the %s contains NaN or Inf; check the right-hand side "
                             "and the solver's damping" % self.curvature)
        self.n_hvp += 1
        if not v.any():
            return np.zeros_like(v)
        out = self._data_term(v)
        out += (self.model.l2 + self.damping) * v
        return out

    #: The class of :meth:`minibatch`'s operators (a distributed operator's is the single-process one).
    single_process_class = None

    def minibatch(self, index, damping=None):
        """The operator on the training rows ``index`` (LiSSA's small stochastic products), in this
        process, sharing the calibrated step (calibrated first if need be)."""
        if self.rel_step is None:
            self.calibrate()
        rows = self.data.subset(index)
        rows._valid_for = self.model
        cls = self.single_process_class or type(self)
        return cls(self.model, rows, self.damping if damping is None else damping, self.batch_size, self.progress,
                   self.rel_step, self.stencil)

    def _rmatvec(self, v):
        return self._matvec(v)

    def _adjoint(self):
        return self
