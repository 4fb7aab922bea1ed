"""NumPy reference models with closed-form gradients and exact Hessians.

They are the ground truth for the tests and the CNTK-free path of the toolkit. Both are linear
models on features ``x`` (n × p) with weights ``W`` and intercept ``b``; the flat parameter vector is
``concat(W.ravel(), b)``.

SoftmaxRegression (k classes, integer labels y ∈ {0..k-1}), with s = W x + b and p = softmax(s)::

    ℓ(x, y) = logsumexp(s) − s_y,   ∇_W ℓ = (p − e_y) xᵀ,   ∇²ℓ = (diag p − p pᵀ) ⊗ x̃ x̃ᵀ   (x̃ = [x, 1])

LogisticRegression (labels y ∈ {0, 1}), with s = wᵀx + b and σ the logistic function::

    ℓ(x, y) = log(1 + e^s) − y s,   ∇ℓ = (σ(s) − y) x̃,   ∇²ℓ = σ(s)(1 − σ(s)) x̃ x̃ᵀ

Both add (l2/2)·‖w‖² (intercept included) to the mean loss, hence l2·I to the Hessian.

Arithmetic runs in the model's ``dtype``, like a CNTK network of that dtype: a float32 model casts
the features to float32 and computes its losses, gradients and per-example gradients in float32
(the base class then accumulates them in float64). ``hessian`` and ``exact_hvp`` always compute in
float64 from the (float32-rounded) weights: they are the ground truth the float32 paths are tested
against.
"""
import numpy as np

from ..common.errors import InfluenceError, param
from .base import KFACLayer, Model
from ..data import check_binary_labels, check_class_labels

__all__ = ["SoftmaxRegression", "LogisticRegression"]


def _logsumexp(s):
    m = s.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(s - m).sum(axis=1, keepdims=True)))[:, 0]


class _LinearModel(Model):
    """Shared parameter handling for the linear reference models."""

    def __init__(self, n_features, n_outputs, l2=0.0, dtype=np.float64, random_state=0, scale=0.01):
        if int(n_features) < 1:
            raise ValueError("n_features=%r must be a positive integer" % (n_features,))
        if l2 < 0:
            raise InfluenceError("%s is negative; pass %s >= 0" % (param("l2", l2), param("l2")), parameter="l2")
        self.n_features = int(n_features)
        self.n_outputs = int(n_outputs)
        self.l2 = float(l2)
        self._dtype = np.dtype(dtype)
        if self._dtype not in (np.float32, np.float64):
            raise ValueError("dtype=%s is not supported; pass np.float32 or np.float64" % self._dtype)
        rng = np.random.RandomState(random_state)
        self._w = (scale * rng.standard_normal(self.n_outputs * (self.n_features + 1))).astype(self._dtype)

    @property
    def n_params(self):
        return self._w.size

    @property
    def dtype(self):
        return self._dtype

    def get_params(self):
        return self._w.copy()

    def set_params(self, w):
        w = self._check_vector(w)
        self._w = w.astype(self._dtype, copy=True)

    @property
    def W(self):
        """Weight matrix, shape (n_outputs, n_features) (a float64 copy)."""
        return self._w[:self.n_outputs * self.n_features].reshape(self.n_outputs, self.n_features) \
            .astype(np.float64)

    @property
    def b(self):
        return self._w[self.n_outputs * self.n_features:].astype(np.float64)

    def _features(self, batch, dtype=None):
        return np.asarray(batch.x, dtype=self._dtype if dtype is None else dtype).reshape(len(batch), -1)

    def _labels(self, batch, dtype=None):
        return np.asarray(batch.y, dtype=self._dtype if dtype is None else dtype)

    def _check_features(self, dataset):
        if not isinstance(dataset.x, np.ndarray) or not isinstance(dataset.y, (np.ndarray, type(None))):
            raise ValueError("%s holds %s; the NumPy reference models take dense arrays x (n, features) and "
                             "y (n,): sequences, sparse and several inputs need a CNTKModel"
                             % (dataset.name, type(dataset.x).__name__))
        feat = int(np.prod(dataset.x.shape[1:])) if dataset.x.ndim > 1 else 1
        if dataset.x.ndim != 2 or feat != self.n_features:
            raise ValueError("%s features have shape %s but the model expects (n, %d); reshape or "
                             "select the right columns" % (dataset.name, dataset.x.shape, self.n_features))
        if dataset.y is None:
            raise ValueError("%s has no labels; pass (x, y)" % dataset.name)
        if dataset.y.ndim != 1:
            raise ValueError("%s labels have shape %s; pass one integer label per example, shape (n,)"
                             % (dataset.name, dataset.y.shape))

    def _scores(self, batch, dtype=None):
        """Scores W x + b, computed in ``dtype`` (default: the model's)."""
        dtype = self._dtype if dtype is None else dtype
        w = self._w.astype(dtype, copy=False)
        k, p = self.n_outputs, self.n_features
        return self._features(batch, dtype) @ w[:k * p].reshape(k, p).T + w[k * p:]

    def hessian(self, data, batch_size=None):
        """The exact Hessian ∇²R(w) (float64, n_params × n_params), L2 term included."""
        d = self.n_params
        total, n = np.zeros((d, d)), 0
        for batch in self._batches(data, batch_size):
            total += self._hessian_sum(batch)
            n += len(batch)
        return total / n + self.l2 * np.eye(d)

    def exact_hvp(self, data, v, batch_size=None):
        """∇²R(w)·v in closed form (float64)."""
        v = self._check_vector(v, "v").astype(np.float64)
        total, n = np.zeros(self.n_params), 0
        for batch in self._batches(data, batch_size):
            total += self._hvp_sum(batch, v)
            n += len(batch)
        return total / n + self.l2 * v

    def _augmented(self, batch, dtype=None):
        x = self._features(batch, dtype)
        return np.hstack([x, np.ones((x.shape[0], 1), dtype=x.dtype)])

    def _to_flat(self, dW, db):
        return np.concatenate([dW.ravel(), db])

    # ------------------------------------------------------------------ output-space primitives
    # (the Gauss-Newton and Fisher curvatures, influence.curvature): outputs z = W x + b, computed in
    # the model's dtype like the losses; J_iᵀ r_i = (r_i x̃_iᵀ) in the flat order [W.ravel(), b].
    def _outputs(self, batch):
        return np.asarray(self._scores(batch), dtype=np.float64)

    def _jt_sum(self, batch, r):
        if callable(r):
            r = r(self._outputs(batch))
        r = np.asarray(r, dtype=np.float64).reshape(len(batch), self.n_outputs)
        x = self._features(batch).astype(np.float64)
        return self._to_flat(r.T @ x, r.sum(axis=0))

    # ------------------------------------------------------------------ Kronecker-factored layer
    # (influence.EKFAC): the model is one Dense layer, W (n_outputs × n_features) row by row, then b.
    def kfac_plan(self):
        k, p = self.n_outputs, self.n_features
        return [KFACLayer("%s (W, b)" % type(self).__name__, "Dense", (0, k * p), (k * p, k * p + k), p, k)], []

    def _kfac_statistics(self, batch, out):
        g = np.asarray(self._output_residual(batch), dtype=np.float64).reshape(len(batch), 1, self.n_outputs)
        x = self._features(batch).astype(np.float64)
        out[...] = self._per_example_grads(batch)
        return [(x[:, None, :], g)]


class SoftmaxRegression(_LinearModel):
    """Multinomial logistic regression: k classes, softmax cross-entropy, L2 penalty ``l2``."""

    output_loss = "cross_entropy"

    def __init__(self, n_features, n_classes, l2=0.0, dtype=np.float64, random_state=0, scale=0.01):
        if int(n_classes) < 2:
            raise ValueError("n_classes=%r; softmax regression needs at least 2 classes" % (n_classes,))
        super(SoftmaxRegression, self).__init__(n_features, n_classes, l2, dtype, random_state, scale)
        self.n_classes = int(n_classes)

    def _validate(self, dataset):
        self._check_features(dataset)
        check_class_labels(dataset, self.n_classes, "softmax regression")

    def _probs(self, batch, dtype=None):
        s = self._scores(batch, dtype)
        return np.exp(s - _logsumexp(s)[:, None])

    def _per_example_losses(self, batch):
        s = self._scores(batch)
        return _logsumexp(s) - s[np.arange(len(batch)), batch.y]

    def _loss_sum(self, batch):
        return self._per_example_losses(batch).sum()

    def _residual(self, batch):
        r = self._probs(batch)
        r[np.arange(len(batch)), batch.y] -= 1.0
        return r

    def _output_residual(self, batch):
        return self._residual(batch)

    def _grad_sum(self, batch):
        r = self._residual(batch)
        return self._to_flat(r.T @ self._features(batch), r.sum(axis=0))

    def _per_example_grads(self, batch):
        r, x = self._residual(batch), self._features(batch)
        gw = (r[:, :, None] * x[:, None, :]).reshape(len(batch), -1)
        return np.hstack([gw, r])

    def _weighted_grad_sum(self, batch, c):
        r = self._residual(batch).astype(np.float64) * np.asarray(c, dtype=np.float64)[:, None]
        return self._to_flat(r.T @ self._features(batch).astype(np.float64), r.sum(axis=0))

    def _hessian_sum(self, batch):
        p, xt = self._probs(batch, np.float64), self._augmented(batch, np.float64)
        k, q = self.n_classes, xt.shape[1]
        # (diag p − p pᵀ) ⊗ x̃ x̃ᵀ, summed over the batch, in (class, feature) order ...
        a = np.einsum("nk,nl->nkl", p, p) * -1.0
        a[:, np.arange(k), np.arange(k)] += p
        h = np.einsum("nkl,ni,nj->kilj", a, xt, xt).reshape(k * q, k * q)
        # ... then permuted to the flat order [W.ravel() (class-major), b].
        order = self._flat_order(k, q)
        return h[np.ix_(order, order)]

    def _hvp_sum(self, batch, v):
        p, x = self._probs(batch, np.float64), self._features(batch, np.float64)
        k = self.n_classes
        vw = v[:k * self.n_features].reshape(k, self.n_features)
        u = x @ vw.T + v[k * self.n_features:]          # directional change of the scores
        a = p * u - p * (p * u).sum(axis=1, keepdims=True)  # (diag p − p pᵀ) u per example
        return self._to_flat(a.T @ x, a.sum(axis=0))

    def _flat_order(self, k, q):
        # Position in the (class, augmented-feature) layout of each flat parameter.
        p = q - 1
        w_part = [c * q + j for c in range(k) for j in range(p)]
        b_part = [c * q + p for c in range(k)]
        return np.array(w_part + b_part)


class LogisticRegression(_LinearModel):
    """Binary logistic regression on labels {0, 1}, L2 penalty ``l2``."""

    output_loss = "binary_cross_entropy"

    def __init__(self, n_features, l2=0.0, dtype=np.float64, random_state=0, scale=0.01):
        super(LogisticRegression, self).__init__(n_features, 1, l2, dtype, random_state, scale)

    def _validate(self, dataset):
        self._check_features(dataset)
        check_binary_labels(dataset, "logistic regression")

    def _margin(self, batch, dtype=None):
        return self._scores(batch, dtype)[:, 0]

    def _per_example_losses(self, batch):
        s = self._margin(batch)
        return np.logaddexp(s.dtype.type(0), s) - self._labels(batch) * s

    def _loss_sum(self, batch):
        return self._per_example_losses(batch).sum()

    def _output_residual(self, batch):
        return _sigmoid(self._margin(batch)) - self._labels(batch)

    def _grad_sum(self, batch):
        r = _sigmoid(self._margin(batch)) - self._labels(batch)
        return self._to_flat(r @ self._features(batch), np.array([r.sum()], dtype=r.dtype))

    def _per_example_grads(self, batch):
        r = _sigmoid(self._margin(batch)) - self._labels(batch)
        return r[:, None] * self._augmented(batch)

    def _weighted_grad_sum(self, batch, c):
        r = (_sigmoid(self._margin(batch)) - self._labels(batch)).astype(np.float64) * np.asarray(c, dtype=np.float64)
        return self._to_flat(r @ self._features(batch).astype(np.float64), np.array([r.sum()]))

    def _hessian_sum(self, batch):
        p = _sigmoid(self._margin(batch, np.float64))
        xt = self._augmented(batch, np.float64)
        return (xt * (p * (1 - p))[:, None]).T @ xt

    def _hvp_sum(self, batch, v):
        p = _sigmoid(self._margin(batch, np.float64))
        xt = self._augmented(batch, np.float64)
        return xt.T @ ((p * (1 - p)) * (xt @ v))


def _sigmoid(s):
    half = s.dtype.type(0.5)          # keeps float32 in float32 under any NumPy casting rules
    return half * (1 + np.tanh(half * s))
