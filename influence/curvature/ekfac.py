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
from .damping import DAMPING_FACTOR, resolve_damping
from .ekfac_fit import BLOCK_BYTES, LABELS, STRATEGIES, FactorFit, LayerBlock, row_blocks
from .ekfac_io import FactorFileError, data_digest, read_factors, write_factors

__all__ = ["EKFAC", "STRATEGIES", "LABELS", "BLOCK_BYTES", "self_influence_ekfac", "ekfac_s_test"]


class EKFAC(LinearOperator):
    """The (E)K-FAC approximation of the Fisher of ``model`` on ``data``, plus ``(model.l2 + damping)·I``,
    as a symmetric float64 ``LinearOperator`` (module docstring for the mathematics).

    ``damping``: a number >= 0 for every block, or ``"auto"`` (0.1 × each block's mean approximate
    eigenvalue; ``block_damping`` lists them). ``strategy``: ``"ekfac"``, ``"kfac"`` or
    ``"diagonal"``. ``labels``: ``"sampled"`` (the true Fisher, = Gauss-Newton for softmax
    cross-entropy; seeded by ``random_state``) or ``"true"`` (the empirical Fisher). ``batch_size``:
    rows per forward/backward pass (the result does not depend on it up to rounding). ``progress``:
    a bar over the rows of each pass. Weights (and CNTK Constants) are unchanged, bit-identical,
    whatever happens.

    :meth:`from_sums` builds one from the sums of chunks of rows (a resumable or clustered fit,
    :class:`influence.jobs.FactorJob`). :meth:`solve` applies the inverse; :meth:`plan` names which
    parameters get which treatment;
    ``n_passes`` counts the passes over the data (1 for kfac and diagonal, 2 for ekfac);
    ``seconds`` the time spent fitting."""

    def __init__(self, model, data, damping="auto", strategy="ekfac", labels="sampled", random_state=None,
                 batch_size=None, progress=False):
        damping = resolve_damping(damping)
        t0 = time.time()
        fit = FactorFit(model, data, strategy, labels, random_state, batch_size)
        first = _local_pass(fit.first_sums, fit.n, progress, "EK-FAC factors")
        second = None
        if fit.passes == 2:
            bases = fit.eigen(first).bases
            second = _local_pass(lambda a, b, on_rows: fit.second_sums(bases, a, b, on_rows), fit.n, progress,
                                 "EK-FAC eigenvalues")
        self._build(fit, first, second, damping)
        self.progress = bool(progress)
        self.seconds = time.time() - t0

    @classmethod
    def from_sums(cls, fit, first, second=None, damping="auto"):
        """The EKFAC of a :class:`~influence.curvature.ekfac_fit.FactorFit` from its passes' sums over ALL
        rows: ``first`` the sum of ``fit.first_sums`` over chunks covering every row once, ``second``
        (``strategy="ekfac"`` only) the sum of ``fit.second_sums(fit.eigen(first).bases, ...)``
        likewise. ``EKFAC(model, data, ...)`` is this with one chunk of all rows; chunked (resumable,
        clustered) fits give the same operator up to the order of float64 additions."""
        self = cls.__new__(cls)
        self._build(fit, first, second, resolve_damping(damping))
        return self

    def _build(self, fit, first, second, damping):
        self.model, self.data, self.batch_size = fit.model, fit.data, fit.batch_size
        self.strategy, self.labels = fit.strategy, fit.labels
        #: The file the factors were loaded from (:meth:`load`), else None.
        self.source = None
        self.progress = False
        self.l2 = float(fit.model.l2)
        self.damping_auto = damping == "auto"
        LinearOperator.__init__(self, dtype=np.dtype(np.float64), shape=(fit.d, fit.d))
        self._others = fit.others
        self.blocks, self.diagonal = fit.corrected(first, second)
        self.diagonal_index = fit.diagonal_index
        self.n_hvp = 0
        self.n_passes = fit.passes
        self.seconds = 0.0
        self._set_damping(damping)

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
            b = LayerBlock(L)
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


def _local_pass(sums, n, progress, desc):
    """``sums(0, n, on_rows)`` of all rows in this process, with a bar over the rows (``progress``)."""
    bar = Progress(progress, n, desc, unit="row")
    try:
        return sums(0, n, lambda k: bar.update(n=k))
    finally:
        bar.close()


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
