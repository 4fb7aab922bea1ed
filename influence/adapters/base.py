"""The framework-agnostic model adapter.

A model adapter exposes one flat parameter vector ``w`` (length ``n_params``, dtype ``dtype``) and the
training objective on a dataset of ``n`` examples ``z_i = (x_i, y_i)``::

    R(w) = (1/n) Σ_i ℓ(z_i, w) + (l2/2)·‖w‖²

``loss`` and ``grad`` are R and ∇R (the L2 term included); ``per_example_losses`` and
``per_example_grads`` are ℓ(z_i, w) and ∇ℓ(z_i, w) WITHOUT the L2 term, as influence functions need.
Subclasses implement five primitives on one validated batch (sums over the batch, no L2 term); the
base class owns the batch loop, weights batches by size and accumulates in float64.
"""
import contextlib
import hashlib

import numpy as np

from ..data import as_dataset, check_batch_size

__all__ = ["Model", "DEFAULT_BATCH_SIZE", "preserved_params", "weights_digest", "PreparedData",
           "OUTPUT_LOSSES", "output_loss_hvp", "KFACLayer"]

#: Rows per forward/backward pass when the caller gives no ``batch_size``.
DEFAULT_BATCH_SIZE = 2048


@contextlib.contextmanager
def preserved_params(params):
    """Save an exact copy of ``params.get_params()`` and restore it with ``params.set_params`` on exit,
    whatever happens inside (exceptions and KeyboardInterrupt included). Yields the saved copy.

    ``params`` is anything with an exact ``get_params``/``set_params`` pair: a :class:`Model` (see
    :meth:`Model.preserving_params`) or the raw CNTK parameters of a Function
    (:class:`influence.adapters.cntk.ParameterVector`, what :func:`influence.curvature.hessian.hvp` perturbs)."""
    saved = params.get_params()
    try:
        yield saved
    finally:
        try:
            params.set_params(saved)
        except KeyboardInterrupt:        # Ctrl-C during the restore itself: restore, then stop
            params.set_params(saved)
            raise


def weights_digest(params):
    """sha256 (32 hex digits) of the dtype and bytes of ``params.get_params()``: the identity of the
    current weights, for job fingerprints and the cluster workers' check."""
    w = np.ascontiguousarray(params.get_params())
    return hashlib.sha256(w.dtype.str.encode() + w.tobytes()).hexdigest()[:32]


class Model(object):
    """Abstract adapter. Subclasses set ``self.l2`` and implement:

    - ``n_params`` and ``dtype`` (properties), ``get_params()`` (a flat copy) and ``set_params(w)``
      (exact: ``set_params(get_params())`` leaves every weight bit-identical);
    - ``_validate(dataset)``: model-specific checks (feature shape, label type and range), raising
      ``ValueError`` with a one-line message;
    - ``_loss_sum(batch)``, ``_grad_sum(batch)``, ``_per_example_losses(batch)`` on a validated batch
      (``_grad_sum`` returns a NEW array, which the base class accumulates into in place).
    ``_per_example_grads(batch)`` defaults to one gradient per example.
    """

    l2 = 0.0
    batch_size = DEFAULT_BATCH_SIZE

    # ------------------------------------------------------------------ abstract primitives
    @property
    def n_params(self):
        raise NotImplementedError

    @property
    def dtype(self):
        raise NotImplementedError

    def get_params(self):
        raise NotImplementedError

    def set_params(self, w):
        raise NotImplementedError

    def _validate(self, dataset):
        raise NotImplementedError

    def _loss_sum(self, batch):
        raise NotImplementedError

    def _grad_sum(self, batch):
        raise NotImplementedError

    def _per_example_losses(self, batch):
        raise NotImplementedError

    def _loss_and_grad_sum(self, batch):
        """(Σ ℓ, Σ ∇ℓ) over the batch; adapters that get both from one pass override it."""
        return float(self._loss_sum(batch)), self._grad_sum(batch)

    def _per_example_grads(self, batch):
        return np.stack([self._grad_sum(batch.subset(slice(i, i + 1))) for i in range(len(batch))])

    def _per_example_grads_into(self, batch, out):
        """Write the batch's per-example gradients into ``out`` (float64, (len(batch), n_params));
        adapters that compute them in place override it (no per-batch copy)."""
        out[...] = self._per_example_grads(batch)

    # ------------------------------------------------------------------ shared machinery
    def validate(self, data, name="data"):
        """Return ``data`` as a Dataset checked for this model (cheap when already checked)."""
        if getattr(data, "_valid_for", None) is self:
            return data
        if isinstance(data, PreparedData) and data.model is self:
            return data.data
        dataset = as_dataset(data, name)
        lazy = getattr(dataset, "validate_chunks", None)   # rows kept in a file: checked chunk by chunk
        if lazy is not None:
            lazy(self._validate)
        else:
            self._validate(dataset)
        checked = dataset.subset(slice(None))
        checked._valid_for = self
        return checked

    def _batches(self, data, batch_size):
        if isinstance(data, PreparedData) and data.model is self:
            return data.batches
        size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        return self.validate(data).batches(size)

    def _prepare_batch(self, batch):
        """Hook: convert one validated batch for repeated passes (an adapter's framework-side feed);
        the result is stored as ``batch.prepared``. None (default) = nothing to cache."""
        return None

    def prepare(self, data, batch_size=None):
        """``data`` split into batches once, each converted by the adapter once (:class:`PreparedData`):
        pass it instead of the data to ``grad_sum`` & co. when the same rows are passed many times
        (the Hessian-vector products of :class:`influence.HessianOperator`)."""
        if isinstance(data, PreparedData) and data.model is self:
            return data
        return PreparedData(self, data, batch_size)

    def _check_vector(self, w, name="w"):
        w = np.asarray(w)
        if w.shape != (self.n_params,):
            raise ValueError("%s has shape %s but the model has %d parameters; pass a flat vector of "
                             "length %d (see get_params())" % (name, w.shape, self.n_params, self.n_params))
        if not np.issubdtype(w.dtype, np.number):
            raise ValueError("%s has dtype %s; pass a numeric vector" % (name, w.dtype))
        if not np.all(np.isfinite(w)):
            raise ValueError("%s contains NaN or Inf; pass finite values" % name)
        return w

    def preserving_params(self):
        """Context manager: save an exact copy of the weights and restore it on exit, whatever happens
        inside (exceptions and KeyboardInterrupt included). Yields the saved copy
        (:func:`preserved_params` of this model)."""
        return preserved_params(self)

    def loss(self, data, batch_size=None):
        """R(w): mean per-example loss plus (l2/2)·‖w‖², as a Python float."""
        total, n = 0.0, 0
        for batch in self._batches(data, batch_size):
            total += float(self._loss_sum(batch))
            n += len(batch)
        w = self.get_params().astype(np.float64)
        return total / n + 0.5 * self.l2 * float(w @ w)

    def grad(self, data, batch_size=None):
        """∇R(w) in float64: the size-weighted mean of batch gradients plus l2·w."""
        total = self.grad_sum(data, batch_size)
        total /= len(self.validate(data))
        total += self.l2 * self.get_params().astype(np.float64)
        return total

    def grad_sum(self, data, batch_size=None):
        """Σ_i ∇ℓ(z_i, w) in float64, without the L2 term (the sum CNTK's ``grad`` returns)."""
        total = None
        for batch in self._batches(data, batch_size):
            g = np.asarray(self._grad_sum(batch), dtype=np.float64)
            if total is None:
                total = g                  # _grad_sum returns a new array: ours to accumulate into
            else:
                total += g
        return total

    def loss_and_grad_sum(self, data, batch_size=None):
        """(Σ_i ℓ(z_i, w), Σ_i ∇ℓ(z_i, w)) without the L2 term, float and float64 array, in one pass
        over the data where the adapter allows it (what full-batch L-BFGS needs at every step)."""
        loss, total = 0.0, None
        for batch in self._batches(data, batch_size):
            l, g = self._loss_and_grad_sum(batch)
            loss += float(l)
            g = np.asarray(g, dtype=np.float64)
            if total is None:
                total = g                  # _grad_sum returns a new array: ours to accumulate into
            else:
                total += g
        return loss, total

    def per_example_losses(self, data, batch_size=None):
        """ℓ(z_i, w) for every example (no L2 term), float64 array of shape (n,)."""
        return np.concatenate([np.asarray(self._per_example_losses(b), dtype=np.float64)
                               for b in self._batches(data, batch_size)])

    def per_example_grads(self, data, batch_size=None):
        """∇ℓ(z_i, w) for every example (no L2 term), float64 array of shape (n, n_params)."""
        batches = self._batches(data, batch_size)
        n = len(data) if isinstance(data, PreparedData) and data.model is self else len(self.validate(data))
        out = np.empty((n, self.n_params))
        a = 0
        for b in batches:
            self._per_example_grads_into(b, out[a:a + len(b)])
            a += len(b)
        return out


    # ------------------------------------------------------------------ output-space primitives
    # What the Gauss-Newton and Fisher curvatures (influence.curvature) need besides the loss: the
    # network outputs z (inference mode), the closed-form Hessian of the loss with respect to z, the
    # transposed Jacobian product Σ J_rowᵀ r_row (one backward pass from root gradients r) and the
    # per-example-weighted gradient sum Σ c_i ∇ℓ_i. An "output row" is one example's output, or for a
    # sequence tagger (a loss summed over steps) one step's output, flattened to K numbers.
    #: Name of the per-output-row loss (one of OUTPUT_LOSSES) whose Hessian with respect to the
    #: outputs has a closed form, or None (then only the Fisher curvature is available).
    output_loss = None

    def _outputs(self, batch):
        """The network outputs of a validated batch, float64 (rows, K), inference mode."""
        raise NotImplementedError

    def _n_output_rows(self, batch):
        """Output rows of a batch: its examples (a sequence tagger's: its steps)."""
        return len(batch)

    def _jt_sum(self, batch, r):
        """Σ_rows J_rowᵀ r_row (float64, n_params), J_row = ∂z_row/∂w, with ``r`` (rows, K) or a callable
        ``r(z)`` given the outputs z of the SAME forward pass that the backward pass then uses."""
        raise NotImplementedError

    def _output_loss_hvp(self, batch, z, u):
        """H_ℓ(z_row)·u_row for every output row (float64 (rows, K)), closed form (:func:`output_loss_hvp`)."""
        return output_loss_hvp(self.check_output_loss(), z, u)

    def _weighted_grad_sum(self, batch, c):
        """Σ_i c_i ∇ℓ(z_i, w) over the batch (float64, n_params); default from per-example gradients."""
        return np.asarray(c, dtype=np.float64) @ np.asarray(self._per_example_grads(batch), dtype=np.float64)

    def check_output_loss(self):
        """The name of the loss whose output Hessian has a closed form, or a one-line ValueError
        pointing to the Fisher curvature (which works for any loss)."""
        if self.output_loss not in OUTPUT_LOSSES:
            raise ValueError("the Gauss-Newton curvature needs a loss with a closed-form Hessian in the network "
                             "outputs (%s), but this model's loss is %s; use curvature=\"fisher\" "
                             "(influence.FisherOperator), which works for any loss"
                             % (", ".join(OUTPUT_LOSSES), "a user-built loss Function" if self.output_loss is None
                                else repr(self.output_loss)))
        return self.output_loss

    def outputs(self, data, batch_size=None):
        """Network outputs of every output row (float64 (rows, K); sequence taggers: one row per step,
        sequences in order), inference mode."""
        return np.concatenate([np.asarray(self._outputs(b), dtype=np.float64)
                               for b in self._batches(data, batch_size)])

    def jt_sum(self, data, r, batch_size=None):
        """Σ_rows J_rowᵀ r_row over ``data`` (float64, n_params) for ``r`` (rows, K) as :meth:`outputs`
        orders the rows: one forward and one backward pass per batch."""
        r = np.asarray(r, dtype=np.float64)
        total, a = np.zeros(self.n_params), 0
        for b in self._batches(data, batch_size):
            rows = self._n_output_rows(b)
            total += self._jt_sum(b, r[a:a + rows])
            a += rows
        if a != len(r):
            raise ValueError("r has %d rows but the data have %d output rows; pass one row per output row "
                             "(see Model.outputs)" % (len(r), a))
        return total

    def weighted_grad_sum(self, data, c, batch_size=None):
        """Σ_i c_i ∇ℓ(z_i, w) (no L2 term), float64 (n_params,), for per-example weights ``c`` (n,): one
        forward and one backward pass per batch where the adapter allows it."""
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        total, a = np.zeros(self.n_params), 0
        for b in self._batches(data, batch_size):
            total += self._weighted_grad_sum(b, c[a:a + len(b)])
            a += len(b)
        if a != len(c):
            raise ValueError("c has %d weights but the data have %d examples; pass one weight per example"
                             % (len(c), a))
        return total


    # ------------------------------------------------------------------ Kronecker-factored layers
    # What influence.EKFAC needs: the Dense/Convolution layers of the flat vector (KFACLayer) and, in
    # one forward/backward pass over a block of rows, every layer's inputs a and the gradients g of the
    # per-example loss with respect to its pre-activation outputs, with the per-example gradients.
    def kfac_plan(self):
        """``(layers, others)``: the :class:`KFACLayer` s of the flat vector, and for every other
        parameter a dict ``{"name", "start", "stop", "reason"}`` (its slice of the flat vector and why
        it is not a layer's). The default: no layer."""
        return [], [{"name": "all %d parameters" % self.n_params, "start": 0, "stop": self.n_params,
                     "reason": "%s declares no Dense/Convolution layer" % type(self).__name__}]

    def _kfac_statistics(self, batch, out):
        """Write the batch's per-example gradients (no L2 term) into ``out`` (float64 (rows, n_params))
        and return, for every layer of :meth:`kfac_plan` in order, ``(a, g)`` from the same pass:
        float64 arrays (rows, J, n_in) and (rows, J, n_out), J the positions the layer is applied at
        (1 for a Dense layer on a vector; the output pixels of a convolution, ``a`` then holding the
        unfolded input patches)."""
        self._per_example_grads_into(batch, out)
        return []


#: Losses with a closed-form Hessian in the outputs (the names CNTKModel accepts).
OUTPUT_LOSSES = ("cross_entropy", "binary_cross_entropy", "squared_error")


def output_loss_hvp(loss, z, u):
    """H_ℓ(z)·u per output row (float64 (rows, K)), H_ℓ = ∂²ℓ/∂z² in closed form:

    - ``cross_entropy`` (softmax of the K logits): p⊙u − p·(pᵀu), p = softmax(z);
    - ``binary_cross_entropy`` (one logit s): σ(s)(1 − σ(s))·u;
    - ``squared_error`` (ℓ = Σ_j (z_j − y_j)², CNTK's, no ½): 2u.
    None of them depends on the labels."""
    z = np.asarray(z, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    if loss == "cross_entropy":
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        pu = p * u
        return pu - p * pu.sum(axis=1, keepdims=True)
    if loss == "binary_cross_entropy":
        s = 0.5 * (1.0 + np.tanh(0.5 * z))
        return (s * (1.0 - s)) * u
    if loss == "squared_error":
        return 2.0 * u
    raise ValueError("loss=%r has no closed-form output Hessian (known: %s); use curvature=\"fisher\""
                     % (loss, ", ".join(OUTPUT_LOSSES)))

class PreparedData(object):
    """A dataset validated for ``model``, split into batches once and each batch converted once by the
    adapter (``batch.prepared``, see ``Model._prepare_batch``): repeated gradient passes over the same
    rows then skip the per-call conversion (for CNTK: the NumPy → ``Value`` copy of every input).
    Holds the converted copy in memory; ``len()`` is the number of rows."""

    def __init__(self, model, data, batch_size=None):
        self.model = model
        self.data = model.validate(data)
        size = model.batch_size if batch_size is None else check_batch_size(batch_size)
        self.batches = list(self.data.batches(size))
        for batch in self.batches:
            batch.prepared = model._prepare_batch(batch)

    def __len__(self):
        return len(self.data)


class KFACLayer(object):
    """A Dense or Convolution layer as Kronecker-factored curvature sees it: a weight matrix W
    (n_out × n_in) and a bias (n_out) in the flat parameter vector, one matrix
    [W, b] (n_out × (n_in + 1)) per example gradient, G_n = Σ_j g_j ãⱼᵀ (ã = [a, 1]).

    ``kernel`` and ``bias``: ``(start, stop)`` of each in the flat vector; ``layout``: ``"out_in"``
    (the kernel's flat entries are W row by row: a NumPy reference model, CNTK's convolution kernel
    (O, C, K..)) or ``"in_out"`` (Wᵀ row by row: CNTK's ``times`` kernel (n_in, n_out)). ``name``:
    what :meth:`influence.EKFAC.plan` calls it; ``kind``: ``"Dense"`` or ``"Convolution"``."""

    def __init__(self, name, kind, kernel, bias, n_in, n_out, layout="out_in"):
        if layout not in ("out_in", "in_out"):
            raise ValueError("layout=%r is not 'out_in' or 'in_out'" % (layout,))
        self.name, self.kind, self.layout = name, kind, layout
        self.kernel = (int(kernel[0]), int(kernel[1]))
        self.bias = (int(bias[0]), int(bias[1]))
        self.n_in, self.n_out = int(n_in), int(n_out)
        if (self.kernel[1] - self.kernel[0] != self.n_in * self.n_out
                or self.bias[1] - self.bias[0] != self.n_out):
            raise ValueError("layer %s: kernel %s and bias %s do not hold %d × %d weights and %d biases"
                             % (name, self.kernel, self.bias, self.n_out, self.n_in, self.n_out))

    @property
    def size(self):
        return self.n_out * (self.n_in + 1)

    @property
    def indices(self):
        """The layer's positions in the flat vector (kernel, then bias)."""
        return np.r_[np.arange(*self.kernel), np.arange(*self.bias)]

    def to_matrix(self, v):
        """Rows of ``v`` (m, n_params) as matrices [W, b] (m, n_out, n_in + 1), float64."""
        v = np.asarray(v)
        m = v.shape[0]
        out = np.empty((m, self.n_out, self.n_in + 1))
        k = v[:, self.kernel[0]:self.kernel[1]]
        if self.layout == "out_in":
            out[:, :, :-1] = k.reshape(m, self.n_out, self.n_in)
        else:
            out[:, :, :-1] = k.reshape(m, self.n_in, self.n_out).transpose(0, 2, 1)
        out[:, :, -1] = v[:, self.bias[0]:self.bias[1]]
        return out

    def from_matrix(self, mat, out):
        """Write matrices [W, b] (m, n_out, n_in + 1) into the layer's entries of ``out`` (m, n_params)."""
        m = mat.shape[0]
        w = mat[:, :, :-1]
        if self.layout == "in_out":
            w = w.transpose(0, 2, 1)
        out[:, self.kernel[0]:self.kernel[1]] = w.reshape(m, -1)
        out[:, self.bias[0]:self.bias[1]] = mat[:, :, -1]
        return out
