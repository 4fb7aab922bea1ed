"""EK-FAC: an eigenvalue-corrected Kronecker-factored approximation of the Fisher (= Gauss-Newton for
softmax cross-entropy with sampled labels), inverted block by block without iterations
(George et al. 2018; Grosse et al. 2023).

For every Dense or Convolution layer of the model (``Model.kfac_plan``), with a the layer's input
(for a convolution: the unfolded input patch at each of the J output positions), ã = [a, 1] and g the
gradient of the example's loss with respect to the layer's pre-activation output::

    A = E_n[Σ_j ã_j ã_jᵀ],     S = E_n[(1/J) Σ_j g_j g_jᵀ]           (one pass over the data)
    A = Q_A diag(λ_A) Q_Aᵀ,    S = Q_S diag(λ_S) Q_Sᵀ                 (float64 eigendecompositions)

(for a Dense layer, J = 1: A = E[ããᵀ], S = E[ggᵀ]; for a convolution A ⊗ S is the KFC approximation
J·Ω ⊗ Γ of Grosse & Martens 2016). The layer's block of the Fisher, in the basis Q_S ⊗ Q_A of the
matrices [W, b] (n_out × (n_in + 1)), is approximated by a diagonal Λ:

- ``strategy="kfac"``: Λ_ij = λ_S,i · λ_A,j (K-FAC: exactly A ⊗ S);
- ``strategy="ekfac"``: Λ_ij = E_n[((Q_Sᵀ G_n Q_A)_ij)²], G_n example n's gradient matrix (a second
  pass over the data, in blocks of rows: the (n, d) per-example gradient matrix is never formed).
  Λ is the diagonal of the layer's Fisher block in that basis, the best diagonal there (Frobenius);
- ``strategy="diagonal"``: every parameter gets E_n[g_n²] (the Fisher's diagonal), no layer block.

Every parameter outside such a layer (recurrent weights, BatchNormalization's scale and bias, tied
weights) gets the diagonal E_n[g_n²]. The operator is ``approximation + (l2 + damping)·I``;
:meth:`EKFAC.solve` applies its inverse exactly, block by block. ``damping="auto"``: per block,
0.1 × the mean of its approximate eigenvalues (Λ, or the diagonal).

``labels="sampled"`` (default): each example's label is drawn from the model's own predictive
distribution y ~ p(y | x) (seeded by ``random_state``), so the factors estimate the true Fisher,
which for softmax (or logistic) cross-entropy equals the Gauss-Newton matrix. ``labels="true"``:
the data's labels, i.e. the empirical Fisher (the per-example gradients of influence scores).
"""
import time

import numpy as np
from scipy.sparse.linalg import LinearOperator

from ..common.errors import InfluenceError, param
from ..common.progress import Progress
from ..data import Dataset, check_batch_size
from .damping import DAMPING_FACTOR, resolve_damping
from .ekfac_io import FactorFileError, data_digest, read_factors, write_factors

__all__ = ["EKFAC", "STRATEGIES", "LABELS", "BLOCK_BYTES", "self_influence_ekfac", "ekfac_s_test"]

STRATEGIES = ("ekfac", "kfac", "diagonal")
LABELS = ("sampled", "true")
#: Bytes of the per-example gradients of one block of rows (float64, rows × d): the rows of a batch
#: are processed in blocks of at most this size.
BLOCK_BYTES = 128 * 2 ** 20
#: Seed of the sampled labels when ``random_state=None`` (repeatable bit for bit).
DEFAULT_SEED = 0


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise InfluenceError("%s is not one of %s; pass e.g. %s"
                             % (param(name, value), ", ".join(repr(c) for c in choices), param(name, choices[0])),
                             parameter=name, suggestion=choices[0])
    return value


def _rng(random_state):
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if random_state is None:
        return np.random.RandomState(DEFAULT_SEED)
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise InfluenceError("%s is not a seed; pass an integer >= 0, a numpy RandomState or None"
                             % param("random_state", random_state), parameter="random_state")
    return np.random.RandomState(int(random_state))


def sampled_labels(model, data, rng, batch_size=None):
    """``data`` with every label replaced by a draw y ~ p(y | x) of ``model`` (softmax cross-entropy:
    a class; binary cross-entropy: 0 or 1), same format as the data's labels."""
    loss = getattr(model, "output_loss", None)
    if loss not in ("cross_entropy", "binary_cross_entropy") or data.y is None or not isinstance(data.y, np.ndarray):
        labels = "no labels" if data.y is None else "sequence labels" if not isinstance(data.y, np.ndarray) \
            else "labels of dtype %s" % data.y.dtype
        raise InfluenceError("%s draws labels from the model's softmax or logistic output, but this model's "
                             "loss is %r with %s; pass %s (the empirical Fisher)"
                             % (param("labels", "sampled"), loss, labels, param("labels", "true")),
                             parameter="labels", suggestion="true")
    z = model.outputs(data, batch_size)
    if len(z) != len(data):
        raise InfluenceError("%s needs one output row per example but the data have %d rows and %d outputs; "
                             "pass %s" % (param("labels", "sampled"), len(data), len(z), param("labels", "true")),
                             parameter="labels", suggestion="true")
    u = rng.random_sample(len(z))
    if loss == "cross_entropy":
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        y = np.minimum((np.cumsum(p, axis=1) < u[:, None]).sum(axis=1), p.shape[1] - 1)
        if data.y.ndim == 2 and data.y.shape[1] == p.shape[1] and p.shape[1] > 1:
            y = np.eye(p.shape[1], dtype=data.y.dtype)[y]          # one-hot labels stay one-hot
        else:
            y = y.astype(data.y.dtype if np.issubdtype(data.y.dtype, np.integer) else np.int64)
    else:
        s = 0.5 * (1.0 + np.tanh(0.5 * z[:, 0]))
        y = (u < s).astype(data.y.dtype).reshape(data.y.shape)
    return Dataset(data.x, y, getattr(data, "name", "data"))


def row_blocks(model, data, batch_size, d):
    """The rows of ``data`` in blocks: the model's batches, split so that a block's per-example
    gradients (rows × d float64) stay under :data:`BLOCK_BYTES`."""
    cap = max(1, BLOCK_BYTES // (8 * max(d, 1)))
    for batch in model._batches(data, batch_size):
        n = len(batch)
        if n <= cap:
            yield batch
        else:
            for a in range(0, n, cap):
                yield batch.subset(slice(a, min(n, a + cap)))


class _Block(object):
    """One layer's factors: eigenvectors Q_S (n_out²), Q_A ((n_in+1)²) and Λ (n_out × (n_in+1))."""

    def __init__(self, layer):
        self.layer = layer
        self.A = np.zeros((layer.n_in + 1, layer.n_in + 1))
        self.S = np.zeros((layer.n_out, layer.n_out))
        self.qa = self.qs = self.la = self.ls = self.eig = None
        self.damping = 0.0

    def add(self, a, g):
        n, j = a.shape[:2]
        at = np.empty((n * j, a.shape[2] + 1))
        at[:, :-1] = a.reshape(n * j, -1)
        at[:, -1] = 1.0
        self.A += at.T @ at
        gg = g.reshape(n * j, -1)
        self.S += (gg.T @ gg) / j

    def _rank_one(self, a, g):
        """(Q_Sᵀ g, Q_Aᵀ ã) per row for a layer applied at one position (J = 1: G_n = g ãᵀ, rank one)."""
        return g[:, 0, :] @ self.qs, a[:, 0, :] @ self.qa[:-1] + self.qa[-1]

    def squares_sum(self, a, g, grads):
        """Σ_n ((Q_Sᵀ G_n Q_A)ᵢⱼ)² over a block of rows. J = 1: (Q_Sᵀg)ᵢ² (Q_Aᵀã)ⱼ², O(n_out² + n_in²)
        per row instead of rotating G_n (O(n_out·n_in·(n_out + n_in))); otherwise G_n from ``grads``."""
        if a.shape[1] == 1:
            rg, ra = self._rank_one(a, g)
            return (rg * rg).T @ (ra * ra)
        r = self.rotate(self.layer.to_matrix(grads))
        return np.einsum("nij,nij->ij", r, r)

    def weighted_squares(self, a, g, grads, weights):
        """Σ_ij ((Q_Sᵀ G_n Q_A)ᵢⱼ)² · weightsᵢⱼ for every row n (the same two routes)."""
        if a.shape[1] == 1:
            rg, ra = self._rank_one(a, g)
            return np.einsum("ni,ni->n", rg * rg, (ra * ra) @ weights.T)
        r = self.rotate(self.layer.to_matrix(grads))
        return np.einsum("nij,nij,ij->n", r, r, weights)

    def rotate(self, mats):
        """Q_Sᵀ M Q_A for matrices M (m, n_out, n_in + 1) (the right product as one 2-D matrix product)."""
        return _sandwich(self.qs.T, mats, self.qa)

    def unrotate(self, mats):
        return _sandwich(self.qs, mats, self.qa.T)


def _sandwich(left, mats, right):
    m, o, p = mats.shape
    inner = (mats.reshape(m * o, p) @ right).reshape(m, o, right.shape[1])
    return np.matmul(left, inner)


class EKFAC(LinearOperator):
    """The (E)K-FAC approximation of the Fisher of ``model`` on ``data``, plus ``(model.l2 + damping)·I``,
    as a symmetric float64 ``LinearOperator`` (module docstring for the mathematics).

    ``damping``: a number >= 0 for every block, or ``"auto"`` (0.1 × each block's mean approximate
    eigenvalue; ``block_damping`` lists them). ``strategy``: ``"ekfac"``, ``"kfac"`` or
    ``"diagonal"``. ``labels``: ``"sampled"`` (the true Fisher, = Gauss-Newton for softmax
    cross-entropy; seeded by ``random_state``) or ``"true"`` (the empirical Fisher). ``batch_size``:
    rows per forward/backward pass (the result does not depend on it up to rounding). ``progress``:
    a bar over the blocks of each pass. Weights (and CNTK Constants) are unchanged, bit-identical,
    whatever happens.

    :meth:`solve` applies the inverse; :meth:`plan` names which parameters get which treatment;
    ``n_passes`` counts the passes over the data (1 for kfac and diagonal, 2 for ekfac);
    ``seconds`` the time spent fitting."""

    def __init__(self, model, data, damping="auto", strategy="ekfac", labels="sampled", random_state=None,
                 batch_size=None, progress=False):
        damping = resolve_damping(damping)
        self.strategy = _check_choice("strategy", strategy, STRATEGIES)
        self.labels = _check_choice("labels", labels, LABELS)
        if batch_size is not None:
            check_batch_size(batch_size)
        rng = _rng(random_state)
        t0 = time.time()
        self.model = model
        #: The file the factors were loaded from (:meth:`load`), else None.
        self.source = None
        self.data = model.validate(data, getattr(data, "name", "training data"))
        self.batch_size = batch_size
        self.progress = bool(progress)
        self.l2 = float(model.l2)
        self.damping_auto = damping == "auto"
        d = int(model.n_params)
        super(EKFAC, self).__init__(dtype=np.dtype(np.float64), shape=(d, d))
        layers, others = model.kfac_plan()
        if self.strategy == "diagonal":
            others = [{"name": L.name, "start": a, "stop": b, "reason": "strategy='diagonal'"}
                      for L in layers for a, b in (L.kernel, L.bias)] + others
            layers = []
        self._others = others
        self.blocks = [_Block(L) for L in layers]
        covered = np.zeros(d, dtype=bool)
        for L in layers:
            covered[L.indices] = True
        self.diagonal_index = np.flatnonzero(~covered)
        self.n_hvp = 0
        self.n_passes = 0
        with model.preserving_params():
            fit_data = sampled_labels(model, self.data, rng, batch_size) if self.labels == "sampled" else self.data
            fit_data = model.validate(fit_data, getattr(self.data, "name", "training data"))
            self._fit(fit_data)
        self._set_damping(damping)
        self.seconds = time.time() - t0

    # ------------------------------------------------------------------ fitting
    def _pass(self, data, desc, each):
        blocks = list(row_blocks(self.model, data, self.batch_size, self.shape[0]))
        bar = Progress(self.progress, len(blocks), desc)
        try:
            for rows in blocks:
                grads = np.empty((len(rows), self.shape[0]))
                each(rows, grads)
                bar.update()
        finally:
            bar.close()
        self.n_passes += 1

    def _fit(self, data):
        n = len(data)
        diag = np.zeros(self.shape[0])
        model = self.model
        need_factors = bool(self.blocks)

        def factors(rows, grads):
            if need_factors:
                stats = model._kfac_statistics(rows, grads)
                for block, (a, g) in zip(self.blocks, stats):
                    block.add(np.asarray(a, dtype=np.float64), np.asarray(g, dtype=np.float64))
            else:
                model._per_example_grads_into(rows, grads)
            diag[:] += np.einsum("ij,ij->j", grads, grads)
        self._pass(data, "EK-FAC factors", factors)
        self.diagonal = diag / n
        for block in self.blocks:
            block.A /= n
            block.S /= n
            block.la, block.qa = np.linalg.eigh(block.A)
            block.ls, block.qs = np.linalg.eigh(block.S)
            block.la = np.maximum(block.la, 0.0)       # PSD up to rounding
            block.ls = np.maximum(block.ls, 0.0)
            block.eig = np.outer(block.ls, block.la)
        if self.strategy == "ekfac" and self.blocks:
            for block in self.blocks:
                block.eig = np.zeros_like(block.eig)

            def correction(rows, grads):
                stats = model._kfac_statistics(rows, grads)
                for block, (a, g) in zip(self.blocks, stats):
                    block.eig += block.squares_sum(np.asarray(a, dtype=np.float64),
                                                   np.asarray(g, dtype=np.float64), grads)
            self._pass(data, "EK-FAC eigenvalues", correction)
            for block in self.blocks:
                block.eig /= n

    def _set_damping(self, damping):
        diag = self.diagonal[self.diagonal_index]
        means = [float(b.eig.mean()) for b in self.blocks] + ([float(diag.mean())] if diag.size else [])
        if self.damping_auto:
            sizes = [b.eig.size for b in self.blocks] + ([diag.size] if diag.size else [])
            overall = float(np.dot(means, sizes) / max(sum(sizes), 1))
            if not np.isfinite(overall) or overall <= 0:
                raise InfluenceError("damping='auto' needs a positive mean eigenvalue but the Fisher of these data "
                                     "is zero (every gradient vanishes); pass a number, e.g. %s"
                                     % param("damping", 0.01), parameter="damping", suggestion=0.01)
            # a block whose gradients all vanish (a dead layer) takes the damping of the whole model
            dampings = [DAMPING_FACTOR * (m if m > 0 else overall) for m in means]
        else:
            dampings = [float(damping)] * len(means)
        self.block_damping = dampings
        for block, lam in zip(self.blocks, dampings):
            block.damping = lam
        self.diagonal_damping = dampings[-1] if diag.size else 0.0
        #: A single number when every block has the same damping, else None (see ``block_damping``).
        self.damping = dampings[0] if dampings and all(x == dampings[0] for x in dampings) else None
        if not self.damping_auto:
            self.damping = float(damping)
        self._singular = (any((b.eig + (self.l2 + b.damping) <= 0).any() for b in self.blocks)
                          or bool(diag.size and (diag + (self.l2 + self.diagonal_damping) <= 0).any()))

    # ------------------------------------------------------------------ products
    def _apply(self, v, inverse, power=1.0):
        v = np.asarray(v, dtype=np.float64)
        one = v.ndim == 1
        V = v.reshape(1, -1) if one else v
        if V.ndim != 2 or V.shape[1] != self.shape[0]:
            raise InfluenceError("b has shape %s but the model has %d parameters; pass (d,) or (m, d) with d = %d"
                                 % (np.shape(v), self.shape[0], self.shape[0]))
        if not np.all(np.isfinite(V)):
            raise InfluenceError("the vector multiplied by EK-FAC contains NaN or Inf; pass finite values")
        if inverse and self._singular:
            raise InfluenceError("the EK-FAC approximation has zero eigenvalues and l2 + damping = 0, so it has no "
                                 "inverse; pass e.g. %s or damping='auto'" % param("damping", 1e-3),
                                 parameter="damping", suggestion=1e-3)
        out = np.empty_like(V)
        for block in self.blocks:
            ev = block.eig + (self.l2 + block.damping)
            r = block.rotate(block.layer.to_matrix(V))
            r = r / ev ** power if inverse else r * ev
            block.layer.from_matrix(block.unrotate(r), out)
        idx = self.diagonal_index
        if idx.size:
            dv = self.diagonal[idx] + (self.l2 + self.diagonal_damping)
            out[:, idx] = V[:, idx] / dv ** power if inverse else V[:, idx] * dv
        return out[0] if one else out

    def _matvec(self, v):
        self.n_hvp += 1
        return self._apply(np.asarray(v).reshape(-1), False)

    def _matmat(self, V):
        self.n_hvp += V.shape[1]
        return self._apply(np.asarray(V).T, False).T

    def _rmatvec(self, v):
        return self._matvec(v)

    def _adjoint(self):
        return self

    def solve(self, b):
        """(approximation + (l2 + damping)·I)⁻¹ b for ``b`` of shape (d,) or (m, d) (rows are right-hand
        sides), float64 of the same shape: exact, block by block, no iterations."""
        return self._apply(b, True)

    def solve_sqrt(self, b):
        """(approximation + (l2 + damping)·I)^(-1/2) b, the symmetric square root of :meth:`solve` (what
        preconditioned LiSSA needs), for ``b`` (d,) or (m, d)."""
        return self._apply(b, True, 0.5)

    def inverse(self):
        """The inverse as a ``LinearOperator`` (a preconditioner M ≈ A⁻¹ for :func:`influence.solvers.cg`)."""
        d = self.shape[0]
        return LinearOperator((d, d), matvec=lambda v: self.solve(np.asarray(v).reshape(-1)),
                              rmatvec=lambda v: self.solve(np.asarray(v).reshape(-1)),
                              matmat=lambda V: self.solve(np.asarray(V).T).T, dtype=np.float64)

    # ------------------------------------------------------------------ files
    def save(self, path):
        """Write the factors to ``path`` (.npz), fingerprinted against the current weights and the
        training rows (:mod:`influence.curvature.ekfac_io`). Returns the path."""
        from ..adapters.base import weights_digest
        layers = [{"name": b.layer.name, "kind": b.layer.kind, "kernel": list(b.layer.kernel),
                   "bias": list(b.layer.bias), "n_in": b.layer.n_in, "n_out": b.layer.n_out,
                   "layout": b.layer.layout} for b in self.blocks]
        meta = {"strategy": self.strategy, "labels": self.labels, "damping_auto": self.damping_auto,
                "damping": self.damping, "block_damping": self.block_damping, "l2": self.l2, "layers": layers,
                "others": self._others, "n_params": int(self.shape[0]), "n_examples": len(self.data),
                "weights": weights_digest(self.model), "data": data_digest(self.data)}
        arrays = {"diagonal": self.diagonal, "diagonal_index": self.diagonal_index}
        for i, b in enumerate(self.blocks):
            arrays.update({"qa_%d" % i: b.qa, "qs_%d" % i: b.qs, "la_%d" % i: b.la, "ls_%d" % i: b.ls,
                           "eig_%d" % i: b.eig, "A_%d" % i: b.A, "S_%d" % i: b.S})
        write_factors(path, meta, arrays)
        return str(path)

    @classmethod
    def load(cls, path, model, data, damping=None):
        """The EKFAC saved by :meth:`save`, for ``model`` at its current weights and the training rows
        ``data``; refused with a one-line :class:`~influence.curvature.ekfac_io.FactorFileError` naming
        the fix when the weights or the rows differ (stale factors), or the model's layers are not the
        ones the file describes. ``damping``: None keeps the saved setting; a number >= 0 or ``"auto"``
        replaces it (the factors do not depend on the damping: only the inverse does)."""
        damping = None if damping is None else resolve_damping(damping)
        data = model.validate(data, getattr(data, "name", "training data"))
        meta, arrays = read_factors(path, model, data)
        layers, others = model.kfac_plan()
        if meta["strategy"] == "diagonal":
            layers = []
        described = [(L.name, list(L.kernel), list(L.bias), L.n_in, L.n_out, L.layout) for L in layers]
        saved = [(L["name"], L["kernel"], L["bias"], L["n_in"], L["n_out"], L["layout"]) for L in meta["layers"]]
        if described != saved:
            raise FactorFileError(path, "describe other layers than this model's %s" % [d[0] for d in described],
                                  False, "fit them again with influence.EKFAC(model, data)")
        self = cls.__new__(cls)
        LinearOperator.__init__(self, dtype=np.dtype(np.float64), shape=(model.n_params, model.n_params))
        self.model, self.data, self.batch_size, self.progress = model, data, None, False
        self.source = str(path)
        self.strategy, self.labels, self.l2 = meta["strategy"], meta["labels"], float(model.l2)
        self.damping_auto = bool(meta["damping_auto"])
        self._others = meta["others"]
        self.blocks = []
        for i, L in enumerate(layers):
            b = _Block(L)
            b.qa, b.qs, b.la, b.ls = arrays["qa_%d" % i], arrays["qs_%d" % i], arrays["la_%d" % i], arrays["ls_%d" % i]
            b.eig, b.A, b.S = arrays["eig_%d" % i], arrays["A_%d" % i], arrays["S_%d" % i]
            self.blocks.append(b)
        self.diagonal, self.diagonal_index = arrays["diagonal"], arrays["diagonal_index"]
        self.n_hvp, self.n_passes, self.seconds = 0, 0, 0.0
        if damping is None:
            damping = "auto" if self.damping_auto else meta["damping"]
        self.damping_auto = damping == "auto"
        self._set_damping(damping)
        return self

    def fingerprint(self):
        """A JSON-able identity of the fitted approximation (settings, dampings and a hash of the factors):
        what a resumable job records when it is given this EKFAC."""
        import hashlib
        h = hashlib.sha256()
        for a in [self.diagonal, self.diagonal_index] + [x for b in self.blocks for x in (b.qa, b.qs, b.eig)]:
            a = np.ascontiguousarray(a)
            h.update(("%s %s" % (a.dtype.str, a.shape)).encode() + a.tobytes())
        return {"strategy": self.strategy, "labels": self.labels, "damping": list(self.block_damping),
                "l2": self.l2, "n_params": int(self.shape[0]), "sha256": h.hexdigest()[:32]}

    # ------------------------------------------------------------------ description
    def plan(self):
        """One dict per block: ``{"name", "treatment", "parameters", "reason"}``, treatment ``"ekfac"``,
        ``"kfac"`` (a Kronecker-factored layer) or ``"diagonal"``; ``parameters`` the number of flat
        entries; ``reason`` why a parameter has the diagonal (None for a layer)."""
        out = [{"name": _layer_name(b.layer), "treatment": self.strategy,
                "parameters": b.layer.size, "reason": None} for b in self.blocks]
        for o in self._others:
            out.append({"name": o["name"], "treatment": "diagonal", "parameters": int(o["stop"] - o["start"]),
                        "reason": o["reason"]})
        return out

    def __str__(self):
        blocks = self.plan()
        lay = [b for b in blocks if b["treatment"] != "diagonal"]
        dia = sum(b["parameters"] for b in blocks if b["treatment"] == "diagonal")
        return ("EK-FAC (%s, labels=%s): %d layers Kronecker-factored (%s), %d parameters diagonal"
                % (self.strategy, self.labels, len(lay), ", ".join(b["name"] for b in lay) or "none", dia))

    def eigenvalues(self, i):
        """Λ (n_out × (n_in + 1)) of layer block ``i`` (data term only, no l2 nor damping)."""
        return self.blocks[i].eig.copy()

    def factors(self, i):
        """``(A, S)`` of layer block ``i`` (float64 copies)."""
        return self.blocks[i].A.copy(), self.blocks[i].S.copy()


def _layer_name(layer):
    return layer.name if layer.name.startswith(layer.kind) else "%s %s" % (layer.kind, layer.name)


def ekfac_s_test(ekfac, test_grads):
    """s_test = (EK-FAC + (l2 + damping)·I)⁻¹ g for every row g of ``test_grads`` (m, d) (or one (d,)):
    the answer of ``curvature="ekfac"`` for many test points at once, no iterations."""
    if not isinstance(ekfac, EKFAC):
        raise InfluenceError("ekfac is a %s; pass an influence.EKFAC fitted on the training data"
                             % type(ekfac).__name__)
    return ekfac.solve(test_grads)


def self_influence_ekfac(model, train, ekfac, batch_size=None, progress=False):
    """s_i = g_iᵀ (EK-FAC + (l2 + damping)·I)⁻¹ g_i for every training example (float64 (n,)), from the
    per-example gradients rotated into each block's eigenbasis in blocks of rows: Σ_block
    Σ_kl (Q_Sᵀ G_i Q_A)_kl² / (Λ_kl + l2 + damping), plus g²/(diagonal + l2 + damping) for the
    diagonal parameters. No per-point solve; weights unchanged."""
    if not isinstance(ekfac, EKFAC):
        raise InfluenceError("ekfac is a %s; pass an influence.EKFAC fitted on the training data"
                             % type(ekfac).__name__)
    if ekfac.model is not model:
        raise InfluenceError("ekfac was fitted on another model; fit influence.EKFAC(model, train) on this one")
    train = model.validate(train, getattr(train, "name", "training data"))
    out = np.empty(len(train))
    idx = ekfac.diagonal_index
    dv = ekfac.diagonal[idx] + (ekfac.l2 + ekfac.diagonal_damping) if idx.size else None
    blocks = list(row_blocks(model, train, batch_size, ekfac.shape[0]))
    bar = Progress(progress, len(blocks), "EK-FAC self-influence")
    a = 0
    with model.preserving_params():
        try:
            for rows in blocks:
                grads = np.empty((len(rows), ekfac.shape[0]))
                stats = model._kfac_statistics(rows, grads) if ekfac.blocks else model._per_example_grads_into(rows, grads)
                s = np.zeros(len(rows))
                for block, (a_, g_) in zip(ekfac.blocks, stats or []):
                    s += block.weighted_squares(np.asarray(a_, dtype=np.float64), np.asarray(g_, dtype=np.float64),
                                                grads, 1.0 / (block.eig + ekfac.l2 + block.damping))
                if dv is not None:
                    gd = grads[:, idx]
                    s += (gd * gd) @ (1.0 / dv)
                out[a:a + len(rows)] = s
                a += len(rows)
                bar.update()
        finally:
            bar.close()
    return out
