"""EK-FAC's fit as sums over rows: what :class:`influence.EKFAC` computes in one process, split so that
row ranges (chunks) can be computed apart — in any order, resumed from files, on cluster workers —
and added.

A :class:`FactorFit` is one fit's plan: the model, its validated training rows, the strategy, which
parameters are Kronecker-factored (:meth:`Model.kfac_plan`) and the labels (``"sampled"``: drawn once
for ALL rows before any chunk, so that they do not depend on the chunking). Its two passes return
flat float64 vectors of sums over rows ``start..stop``, so that the sum of the vectors of any
partition of ``range(n)`` is the vector of all the rows (up to the order of float64 additions):

- :meth:`FactorFit.first_sums`: ``[rows, Σ g² (d), per layer Σ ããᵀ, Σ ggᵀ/J]`` (pass 1);
- :meth:`FactorFit.eigen`: from the summed pass 1, the means A, S and their eigendecompositions;
- :meth:`FactorFit.second_sums`: given those eigenbases, ``[rows, per layer Σ_n ((Q_Sᵀ G_n Q_A)ᵢⱼ)²]``
  (pass 2, ``strategy="ekfac"`` only).

:meth:`influence.EKFAC.from_sums` builds the operator from the summed vectors; ``EKFAC(model, data)``
is the same code with one chunk of all rows.
"""
import numpy as np

from ..common.errors import InfluenceError, param
from ..data import Dataset, check_batch_size

__all__ = ["FactorFit", "LayerBlock", "Eigen", "draw_labels", "row_blocks", "check_choice", "STRATEGIES", "LABELS",
           "BLOCK_BYTES", "DEFAULT_SEED"]

STRATEGIES = ("ekfac", "kfac", "diagonal")
LABELS = ("sampled", "true")
#: Bytes of the per-example gradients of one block of rows (float64, rows × d): the rows of a batch
#: are processed in blocks of at most this size.
BLOCK_BYTES = 128 * 2 ** 20
#: Seed of the sampled labels when ``random_state=None`` (repeatable bit for bit).
DEFAULT_SEED = 0


def check_choice(name, value, choices):
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


def draw_labels(model, data, rng, batch_size=None):
    """A draw y ~ p(y | x) of ``model`` for every row of ``data`` (softmax cross-entropy: a class;
    binary cross-entropy: 0 or 1), in the format of the data's labels."""
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
            return np.eye(p.shape[1], dtype=data.y.dtype)[y]          # one-hot labels stay one-hot
        return y.astype(data.y.dtype if np.issubdtype(data.y.dtype, np.integer) else np.int64)
    s = 0.5 * (1.0 + np.tanh(0.5 * z[:, 0]))
    return (u < s).astype(data.y.dtype).reshape(data.y.shape)


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


class LayerBlock(object):
    """One layer's factors: eigenvectors Q_S (n_out²), Q_A ((n_in+1)²) and Λ (n_out × (n_in+1))."""

    def __init__(self, layer, qs=None, qa=None):
        self.layer = layer
        self.A = self.S = self.la = self.ls = self.eig = None
        self.qs, self.qa = qs, qa
        self.damping = 0.0

    @staticmethod
    def add(A, S, a, g):
        """A += Σ ããᵀ, S += Σ ggᵀ/J over a block of rows (a: (n, J, n_in), g: (n, J, n_out))."""
        n, j = a.shape[:2]
        at = np.empty((n * j, a.shape[2] + 1))
        at[:, :-1] = a.reshape(n * j, -1)
        at[:, -1] = 1.0
        A += at.T @ at
        gg = g.reshape(n * j, -1)
        S += (gg.T @ gg) / j

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


class Eigen(object):
    """What the summed first pass gives: ``blocks`` (one :class:`LayerBlock` per layer with the means
    A, S, their eigendecompositions and Λ = λ_S λ_Aᵀ, the K-FAC eigenvalues), ``diagonal`` (E[g²], d)
    and ``bases``, the ``(Q_S, Q_A)`` of every layer that :meth:`FactorFit.second_sums` needs."""

    def __init__(self, blocks, diagonal):
        self.blocks, self.diagonal = blocks, diagonal

    @property
    def bases(self):
        return [(b.qs, b.qa) for b in self.blocks]


class FactorFit(object):
    """One EK-FAC fit of ``model`` on ``data`` as sums over row ranges (module docstring). Arguments as
    :class:`influence.EKFAC`; ``drawn``: the sampled labels of all rows when they were drawn already
    (a cluster worker gets the client's), else they are drawn here for ``labels="sampled"``, seeded by
    ``random_state``, in one pass over all rows (weights unchanged).

    ``n``: rows; ``passes``: 2 for ``strategy="ekfac"`` with at least one layer, else 1;
    ``first_size``/``second_size``: the lengths of the two passes' vectors."""

    def __init__(self, model, data, strategy="ekfac", labels="sampled", random_state=None, batch_size=None,
                 drawn=None):
        self.strategy = check_choice("strategy", strategy, STRATEGIES)
        self.labels = check_choice("labels", labels, LABELS)
        if batch_size is not None:
            check_batch_size(batch_size)
        rng = _rng(random_state)
        self.model, self.batch_size = model, batch_size
        self.name = getattr(data, "name", "training data")
        self.data = model.validate(data, self.name)
        self.n, self.d = len(self.data), int(model.n_params)
        layers, others = model.kfac_plan()
        if self.strategy == "diagonal":
            others = [{"name": L.name, "start": a, "stop": b, "reason": "strategy='diagonal'"}
                      for L in layers for a, b in (L.kernel, L.bias)] + others
            layers = []
        self.layers, self.others = layers, others
        covered = np.zeros(self.d, dtype=bool)
        for L in layers:
            covered[L.indices] = True
        self.diagonal_index = np.flatnonzero(~covered)
        self.passes = 2 if self.strategy == "ekfac" and layers else 1
        self._first = [1 + self.d]            # offsets of the layers' A, S in the first vector
        for L in layers:
            self._first.append(self._first[-1] + (L.n_in + 1) ** 2)
            self._first.append(self._first[-1] + L.n_out ** 2)
        self._second = [1]
        for L in layers:
            self._second.append(self._second[-1] + L.size)
        self.first_size, self.second_size = self._first[-1], self._second[-1]
        self._eigen = None
        self.drawn = None
        if self.labels == "sampled":
            if drawn is None:
                with model.preserving_params():
                    drawn = draw_labels(model, self.data, rng, batch_size)
            elif len(drawn) != self.n:
                raise InfluenceError("the sampled labels have %d rows but the data %d; draw them for these data"
                                     % (len(drawn), self.n))
            self.drawn = drawn

    # ------------------------------------------------------------------ rows and views
    def rows(self, start, stop):
        """Rows ``start..stop`` with the fit's labels, validated for the model."""
        part = self.data if (start, stop) == (0, self.n) else self.data.subset(slice(start, stop))
        if self.drawn is None:
            return part
        return self.model.validate(Dataset(part.x, self.drawn[start:stop], self.name), self.name)

    def _views(self, vector, offsets, shapes):
        return [vector[a:b].reshape(shape) for a, b, shape in zip(offsets[:-1], offsets[1:], shapes)]

    def _factor_views(self, first):
        shapes = [s for L in self.layers for s in ((L.n_in + 1,) * 2, (L.n_out,) * 2)]
        views = self._views(first, self._first, shapes)
        return list(zip(views[0::2], views[1::2]))

    def _eig_views(self, second):
        return self._views(second, self._second, [(L.n_out, L.n_in + 1) for L in self.layers])

    def _check_range(self, start, stop):
        if not (0 <= start < stop <= self.n):
            raise InfluenceError("rows %d..%d are not a range of the %d training rows; pass 0 <= start < stop <= %d"
                                 % (start, stop, self.n, self.n))

    def _check_sums(self, vector, size, which):
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (size,):
            raise InfluenceError("the %s pass's sums have shape %s but this fit's are (%d,); pass the sums of "
                                 "FactorFit.%s_sums for this model" % (which, vector.shape, size, which))
        if int(round(vector[0])) != self.n:
            raise InfluenceError("the %s pass's sums cover %d rows but the data have %d; add the sums of every "
                                 "chunk, each once" % (which, int(round(vector[0])), self.n))
        return vector

    # ------------------------------------------------------------------ the two passes
    def first_sums(self, start=0, stop=None, on_rows=None):
        """Pass 1 over rows ``start..stop`` (default all): ``[rows, Σ g², Σ ããᵀ and Σ ggᵀ/J per layer]``
        (float64 (first_size,)); ``on_rows(k)`` after every block of k rows. Weights unchanged."""
        stop = self.n if stop is None else stop
        self._check_range(start, stop)
        sums = np.zeros(self.first_size)
        diag = sums[1:1 + self.d]
        factors = self._factor_views(sums)
        model = self.model
        with model.preserving_params():
            for rows in row_blocks(model, self.rows(start, stop), self.batch_size, self.d):
                grads = np.empty((len(rows), self.d))
                if factors:
                    stats = model._kfac_statistics(rows, grads)
                    for (A, S), (a, g) in zip(factors, stats):
                        LayerBlock.add(A, S, np.asarray(a, dtype=np.float64), np.asarray(g, dtype=np.float64))
                else:
                    model._per_example_grads_into(rows, grads)
                diag += np.einsum("ij,ij->j", grads, grads)
                sums[0] += len(rows)
                if on_rows is not None:
                    on_rows(len(rows))
        return sums

    def eigen(self, first):
        """The :class:`Eigen` of the summed first pass (float64 eigendecompositions of the means A, S);
        the last one is kept, so asking again for the same sums costs nothing."""
        first = self._check_sums(first, self.first_size, "first")
        if self._eigen is not None and np.array_equal(self._eigen[0], first):
            return self._eigen[1]
        blocks = []
        for L, (A, S) in zip(self.layers, self._factor_views(first)):
            b = LayerBlock(L)
            b.A, b.S = A / self.n, S / self.n
            b.la, b.qa = np.linalg.eigh(b.A)
            b.ls, b.qs = np.linalg.eigh(b.S)
            b.la = np.maximum(b.la, 0.0)       # PSD up to rounding
            b.ls = np.maximum(b.ls, 0.0)
            b.eig = np.outer(b.ls, b.la)
            blocks.append(b)
        out = Eigen(blocks, first[1:1 + self.d] / self.n)
        self._eigen = (first.copy(), out)
        return out

    def second_sums(self, bases, start=0, stop=None, on_rows=None):
        """Pass 2 over rows ``start..stop`` given every layer's ``(Q_S, Q_A)`` (``eigen(first).bases``):
        ``[rows, Σ_n ((Q_Sᵀ G_n Q_A)ᵢⱼ)² per layer]`` (float64 (second_size,)). Weights unchanged."""
        stop = self.n if stop is None else stop
        self._check_range(start, stop)
        if len(bases) != len(self.layers):
            raise InfluenceError("%d eigenbases for the %d layers of this fit; pass FactorFit.eigen(first).bases"
                                 % (len(bases), len(self.layers)))
        blocks = [LayerBlock(L, np.asarray(qs, dtype=np.float64), np.asarray(qa, dtype=np.float64))
                  for L, (qs, qa) in zip(self.layers, bases)]
        sums = np.zeros(self.second_size)
        eig = self._eig_views(sums)
        model = self.model
        with model.preserving_params():
            for rows in row_blocks(model, self.rows(start, stop), self.batch_size, self.d):
                grads = np.empty((len(rows), self.d))
                stats = model._kfac_statistics(rows, grads)
                for block, total, (a, g) in zip(blocks, eig, stats):
                    total += block.squares_sum(np.asarray(a, dtype=np.float64), np.asarray(g, dtype=np.float64), grads)
                sums[0] += len(rows)
                if on_rows is not None:
                    on_rows(len(rows))
        return sums

    def corrected(self, first, second):
        """:meth:`eigen`'s blocks as new :class:`LayerBlock` s, with Λ the mean of the summed second pass
        (``strategy="ekfac"``) or λ_S λ_Aᵀ (``second`` None: kfac, diagonal); and the diagonal."""
        e = self.eigen(first)
        if self.passes == 2:
            if second is None:
                raise InfluenceError("strategy='ekfac' needs the sums of the second pass; pass second= the sum "
                                     "of FactorFit.second_sums over all rows")
            second = self._check_sums(second, self.second_size, "second")
        elif second is not None:
            raise InfluenceError("strategy=%r has no second pass; pass second=None" % self.strategy)
        blocks = []
        for i, b in enumerate(e.blocks):
            c = LayerBlock(b.layer, b.qs, b.qa)
            c.A, c.S, c.la, c.ls = b.A, b.S, b.la, b.ls
            c.eig = b.eig if second is None else self._eig_views(second)[i] / self.n
            blocks.append(c)
        return blocks, e.diagonal
