"""Many right-hand sides at once: solve ``(H + damping·I) x_j = b_j`` for the rows b_j of a matrix,
sharing the work between them.

- ``direct``: the dense ``A = H + damping·I`` from d products and its Cholesky factor, ONCE; one
  ``cho_solve`` on the (d, m) matrix of right-hand sides.
- ``lanczos``: :func:`lanczos_inverse` ONCE, applied to all of them (one product per row to measure
  its residual).
- ``cg``: one CG solve per row, each started (``recycle=True``, the default) from the Galerkin
  projection of b_j on the previous solutions x_1..x_{j−1}: with P their rows (unit norm) and A P
  their products (CG computes A x for its final residual anyway: no extra product), the start
  ``x0 = Pᵀ c``, ``(P A Pᵀ) c = P b``, minimises the A-norm error over span(P) and its residual
  ``b − (AP)ᵀ c`` is known without a product. A start whose residual is not below
  :data:`RECYCLE_MIN_GAIN`·‖b‖ is not used (CG starts from 0 and saves the product of x0's
  residual). Recycling CG's whole Krylov basis was tried and dropped: its products cannot be kept
  consistent with an orthonormal basis (see :class:`RecycledSpan`), and the raw vectors are too
  ill-conditioned for the small eigenvalues that matter.
- ``lissa`` (and any other method): one independent solve per row.

Product accounting of the shared methods (each row keeps its own :class:`Solution`): the shared
factorisation's products and seconds are charged to the FIRST nonzero row, 0 to the others; each
row's own residual product (lanczos) is charged to that row. ``residual`` is measured per row.
"""
import time

import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from ..common.errors import InfluenceError, param
from ..common.numeric import check_damping, norm
from ._common import (Products, Solution, check_common, check_operator, judge, operator_damping, refuse,
                      relative_residual)
from .cg import cg
from .dispatch import METHODS, method_extras, solve
from .dense import check_dense_memory, cholesky, dense_matrix
from .lanczos import lanczos_inverse

__all__ = ["solve_many", "RECYCLE_MAX_BYTES", "RECYCLE_MIN_GAIN"]

#: Memory of the recycled pairs of ``solve_many(method="cg")`` (P, A·P and Q, float64).
RECYCLE_MAX_BYTES = 256 * 1024 ** 2
#: A recycled start is used only when its residual is below this fraction of ‖b‖ (else CG starts
#: from 0 and saves the product of the initial residual).
RECYCLE_MIN_GAIN = 0.5
#: A product's direction is kept only when what is left of it after orthogonalisation against the
#: kept ones has at least this share of its norm (the rest is already in their span).
RECYCLE_NEW = 1e-3
#: Eigenvalues of the Galerkin matrix below this share of the largest are left out of the start.
RECYCLE_CUTOFF = 1e-12
#: At most this many recycled vectors (each start solves a k×k eigenproblem).
RECYCLE_MAX_VECTORS = 1000


def _check_rows(B, d):
    try:
        B = np.array(B, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("B is not numeric; pass a float matrix (m, %d), one right-hand side per row" % d)
    if B.ndim == 1:
        B = B[None, :]
    if B.ndim != 2 or B.shape[1] != d:
        raise ValueError("B has shape %s but H is %d×%d; pass a matrix (m, %d), one right-hand side per row"
                         % (B.shape, d, d, d))
    if not np.all(np.isfinite(B)):
        raise ValueError("B contains NaN or Inf; pass finite values")
    return B


class _Recorder(spla.LinearOperator):
    """``H`` (the operator as given) that hands each product (v, H v) to ``on_product``."""

    def __init__(self, H, on_product):
        self.inner, self.on_product = H, on_product
        self.model = getattr(H, "model", None)        # cg reads the model's dtype for its defaults
        self.damping = operator_damping(H)
        super(_Recorder, self).__init__(dtype=np.dtype(np.float64), shape=H.shape)

    def _matvec(self, v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        hv = np.asarray(self.inner.matvec(v), dtype=np.float64).reshape(-1)
        self.on_product(v, hv)
        return hv

    def _rmatvec(self, v):
        return self._matvec(v)


class RecycledSpan(object):
    """Recycled pairs (p, A p) — the previous solutions and their products — scaled to ‖p‖ = 1 and
    kept as computed (A P stays exactly the products of P: updating A·Q by the Gram–Schmidt
    combinations of an orthonormal basis Q instead loses accuracy geometrically, measured: error O(1)
    after ~200 Krylov vectors), the Galerkin matrix G = P A Pᵀ, and an orthonormal basis Q of span(P)
    that only decides whether a new p is new enough to keep (its remainder after two Gram–Schmidt
    passes against Q keeps at least :data:`RECYCLE_NEW` of its norm)."""

    def __init__(self, d, max_bytes=None, max_vectors=None):
        self.d = d
        cap = int((RECYCLE_MAX_BYTES if max_bytes is None else max_bytes) // (24 * d))
        self.cap = max(0, min(d, cap, RECYCLE_MAX_VECTORS if max_vectors is None else max_vectors))
        self.P = np.empty((self.cap, d))
        self.AP = np.empty((self.cap, d))
        self.Q = np.empty((self.cap, d))
        self.G = np.empty((self.cap, self.cap))
        self.k = 0

    def add(self, p, ap):
        if self.k >= self.cap:
            return
        size = norm(p)
        if not size > 0:
            return
        k = self.k
        p, ap = p / size, ap / size
        q = p
        for _ in range(2):
            if k:
                q = q - (self.Q[:k] @ q) @ self.Q[:k]
        left = norm(q)
        if not left > RECYCLE_NEW:
            return
        self.Q[k], self.P[k], self.AP[k] = q / left, p, ap
        row = self.P[:k + 1] @ ap                              # G[:, k] = P (A p)
        col = self.AP[:k + 1] @ p                              # G[k, :] = (A P) p: equal in exact arithmetic
        self.G[:k + 1, k] = self.G[k, :k + 1] = 0.5 * (row + col)
        self.k = k + 1

    def start(self, b):
        """``(x0, r0)``: the Galerkin start x0 = Pᵀ c with (P A Pᵀ) c = P b (eigenvalues of G below
        RECYCLE_CUTOFF of its largest are left out) and its residual b − A x0, without a product."""
        k = self.k
        w, U = np.linalg.eigh(self.G[:k, :k])
        keep = w > RECYCLE_CUTOFF * max(w[-1], 0.0)
        if not keep.any():
            return np.zeros(self.d), b.copy()
        U = U[:, keep]
        c = U @ ((U.T @ (self.P[:k] @ b)) / w[keep])
        return c @ self.P[:k], b - c @ self.AP[:k]


def _shared(solutions_rows, n_hvp, seconds):
    """Charge the shared products and seconds to the first nonzero row."""
    for j, sol in enumerate(solutions_rows):
        if sol.n_hvp or sol.x.any():
            solutions_rows[j] = sol._replace(n_hvp=sol.n_hvp + n_hvp, seconds=sol.seconds + seconds)
            break
    return solutions_rows


def _direct_many(H, B, d, damping, rtol, atol, progress):
    t0 = time.time()
    check_dense_memory(d, 2)
    out = [Solution(np.zeros(d), True, 0, 0, 0.0, 0.0) for _ in B]      # zero rows: x = 0 at once
    nonzero = np.flatnonzero(np.any(B != 0, axis=1))
    if not nonzero.size:
        return out
    A, n_hvp = dense_matrix(H, damping, progress=progress, extra_matrices=1)
    factor = cholesky(A, "direct", damping, operator_damping(H))
    shared = time.time() - t0
    X = scipy.linalg.cho_solve(factor, B[nonzero].T).T                 # one solve, all the columns
    R = X @ A - B[nonzero]                                               # A symmetric: rows of AX − B
    per_row = (time.time() - t0 - shared) / nonzero.size
    for i, j in enumerate(nonzero):
        bnorm = norm(B[j])
        residual = norm(R[i]) / bnorm
        out[j] = Solution(X[i], judge("direct", residual, rtol, atol, bnorm), 1, 0, residual, per_row)
    return _shared(out, n_hvp, shared)


def _lanczos_many(H, B, d, damping, rtol, atol, maxiter, progress, random_state, options):
    t0 = time.time()
    if not B.any():
        return [Solution(np.zeros(d), True, 0, 0, 0.0, 0.0) for _ in B]
    inv = lanczos_inverse(H, options.pop("k", None), damping=damping, maxiter=maxiter, progress=progress,
                          random_state=random_state, **options)
    shared = time.time() - t0
    X = inv.apply(B.T).T
    out = []
    for j, b in enumerate(B):
        t1 = time.time()
        if not b.any():
            out.append(Solution(np.zeros(d), True, 0, 0, 0.0, 0.0))
            continue
        full = Products(H, damping)
        residual = relative_residual(full(X[j]), b)
        converged = judge("lanczos", residual, rtol, atol, norm(b)) and inv.converged
        out.append(Solution(X[j], converged, 0, full.count, residual, time.time() - t1))
    out = _shared(out, inv.n_hvp, shared)
    for j, sol in enumerate(out):           # eigsh's products are lanczos' iterations (as in lanczos())
        if sol.n_hvp > 1:
            out[j] = sol._replace(n_iter=inv.n_hvp)
    return out


def _cg_many(H, B, d, damping, common, options, recycle):
    span = RecycledSpan(d) if recycle else None
    last = {}

    def keep(v, hv):
        last["pair"] = (v.copy(), hv)
    op = _Recorder(H, keep) if recycle else H
    out = []
    for b in B:
        x0 = None
        if span is not None and span.k and b.any():
            guess, r0 = span.start(b)
            if norm(r0) < RECYCLE_MIN_GAIN * norm(b):
                x0 = guess
        last.clear()
        sol = cg(op, b, damping=damping, x0=x0, **dict(common, **options))
        pair = last.get("pair")
        if span is not None and pair is not None and np.array_equal(pair[0], sol.x):
            span.add(sol.x, pair[1] + damping * sol.x)      # cg's last product is A x for its residual
        out.append(sol)
    return out


def solve_many(H, B, method="cg", *, damping=0.0, rtol=None, atol=0.0, maxiter=None, progress=False,
               random_state=None, recycle=None, **method_options):
    """Solve ``(H + damping·I) x_j = b_j`` for every row b_j of ``B`` (m, d), sharing work between the
    rows (see the module docstring); returns a list of m :class:`Solution`, row by row.

    The common arguments mean what they mean for :func:`influence.solvers.solve` (``x0`` and
    ``callback`` are per-vector and refused here: use ``solve`` per vector). ``recycle`` (cg only;
    None = True): start each solve from the Galerkin projection on the previous solutions (False:
    every solve starts from 0).
    ``method_options``: the method's extras. A single row behaves as ``solve`` does.
    """
    if method not in METHODS:
        raise InfluenceError("%s is not one of %s; pass e.g. %s" % (param("method", method), ", ".join(METHODS),
                                                                    param("method", "cg")), parameter="method")
    H, d = check_operator(H)
    B = _check_rows(B, d)
    damping = check_damping(damping)
    # the common checks (rtol, atol, random_state) once, on the first row
    check_common(H, B[0], damping, None, rtol, atol, random_state)
    for name in ("x0", "callback"):
        if name in method_options:
            raise ValueError("%s is per right-hand side and solve_many (s_test) solves many; drop %s, or call "
                             "influence.solve(H, b, ...) per vector" % (name, name))
    if recycle is not None and method != "cg":
        raise InfluenceError("recycle=%r: %s does not recycle previous solutions; drop recycle (or use %s)"
                             % (recycle, param("method", method), param("method", "cg")), parameter="method")
    extras = method_extras(method)
    unknown = sorted(set(method_options) - set(extras) - set(getattr(METHODS[method], "deprecated_names", ())))
    if unknown:
        raise ValueError("option %s is not accepted by method=%r; its options: %s"
                         % (", ".join(repr(u) for u in unknown), method, ", ".join(extras) or "none beyond the common ones"))
    if method == "direct":
        if maxiter is not None:
            refuse("direct", param("maxiter", maxiter), "has no iterations", "maxiter", param("method", "cg"))
        return _direct_many(H, B, d, damping, rtol, atol, progress)
    if method == "lanczos":
        return _lanczos_many(H, B, d, damping, rtol, atol, maxiter, progress, random_state, dict(method_options))
    common = dict(rtol=rtol, atol=atol, maxiter=maxiter, progress=progress, random_state=random_state)
    if method == "cg":
        return _cg_many(H, B, d, damping, common, method_options, recycle is None or bool(recycle))
    return [solve(H, b, method, damping=damping, **dict(common, **method_options)) for b in B]
