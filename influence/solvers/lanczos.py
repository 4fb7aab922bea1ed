"""Low-rank inverse from the top eigenpairs: the top-``k`` eigenpairs (θᵢ, vᵢ) of the undamped ``H`` by
:func:`scipy.sparse.linalg.eigsh` (implicitly restarted Lanczos; ``H.damping`` is subtracted from the
operator's eigenvalues) give ``x = V diag(1/(θ + λ)) Vᵀ b`` (:class:`LowRankInverse`, fit once with
:func:`lanczos_inverse`, apply to many vectors). With ``k < d`` it ignores the complement of the top
eigenspace; ``residual`` shows how much of ``b`` that leaves unexplained. ``k >= d − 1`` (eigsh needs
``k < d``) uses the dense eigendecomposition of :func:`dense_matrix`."""
import time
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse.linalg as spla

from ..common.errors import InfluenceError, param
from ..common.numeric import check_damping, check_nonneg, norm
from ._common import (ConvergenceWarning, Progress, Products, Solution, check_callback, check_common,
                      check_int, check_operator, deprecated_arguments, judge, make_rng, not_positive_definite,
                      operator_damping, refuse, relative_residual, zero_solution)
from .dense import dense_matrix

__all__ = ["lanczos", "lanczos_inverse", "LowRankInverse", "LANCZOS_K"]

#: Default number of eigenpairs.
LANCZOS_K = 20


class LowRankInverse(object):
    """``V diag(1/(θ + λ)) Vᵀ``: the inverse of ``H + λI`` restricted to the span of ``V``.

    ``eigenvalues`` θ (descending) are of the UNDAMPED H, ``eigenvectors`` V (d × k, orthonormal
    columns), ``damping`` λ the total damping (operator's + extra). ``apply(B)`` (or ``self @ B``)
    takes one vector (d,) or the columns of a matrix (d, m). ``n_hvp``, ``seconds`` and ``converged``
    describe the fit. :meth:`with_damping` reuses the eigenpairs with another total damping.
    """

    def __init__(self, eigenvalues, eigenvectors, damping=0.0, converged=True, n_hvp=0, seconds=0.0):
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
        self.eigenvectors = np.asarray(eigenvectors, dtype=np.float64)
        if self.eigenvectors.ndim != 2 or self.eigenvectors.shape[1] != self.eigenvalues.size:
            raise ValueError("eigenvectors have shape %s for %d eigenvalues; pass a (d, k) matrix"
                             % (self.eigenvectors.shape, self.eigenvalues.size))
        self.damping = check_damping(damping)
        shifted = self.eigenvalues + self.damping
        if self.eigenvalues.size and not np.all(shifted > 0):
            raise not_positive_definite("LowRankInverse (among the top-%d eigenpairs)" % self.eigenvalues.size,
                                        float(shifted.min()), self.damping)
        self._inv = 1.0 / shifted
        self.converged = bool(converged)
        self.n_hvp = int(n_hvp)
        self.seconds = float(seconds)

    @property
    def shape(self):
        d = self.eigenvectors.shape[0]
        return (d, d)

    @property
    def rank(self):
        return self.eigenvalues.size

    def with_damping(self, damping):
        """The same eigenpairs with total damping ``damping``."""
        return LowRankInverse(self.eigenvalues, self.eigenvectors, damping, self.converged, 0, 0.0)

    def apply(self, B):
        B = np.asarray(B, dtype=np.float64)
        d = self.eigenvectors.shape[0]
        if B.ndim not in (1, 2) or B.shape[0] != d:
            raise ValueError("B has shape %s; pass a vector (%d,) or a matrix (%d, m)" % (B.shape, d, d))
        coef = self.eigenvectors.T @ B
        coef = coef * (self._inv if B.ndim == 1 else self._inv[:, None])
        return self.eigenvectors @ coef

    def __matmul__(self, B):
        return self.apply(B)

    def __repr__(self):
        return "LowRankInverse(rank=%d, d=%d, damping=%g)" % (self.rank, self.shape[0], self.damping)


@deprecated_arguments(positional=("damping", "tol", "maxiter", "ncv", "random_state"), renamed={"tol": "eigsh_tol"})
def lanczos_inverse(H, k=None, *, damping=0.0, maxiter=None, progress=False, random_state=None, ncv=None,
                    eigsh_tol=0.0):
    """Fit the rank-k inverse of ``H + damping·I`` from the top-k eigenpairs (see :class:`LowRankInverse`).

    ``k`` defaults to min(d, LANCZOS_K); ``k >= d − 1`` uses the dense eigendecomposition (d products,
    two d×d matrices: see :mod:`influence.solvers.dense`). ``maxiter`` (Arnoldi restarts), ``ncv`` and
    ``eigsh_tol`` (formerly ``tol``; 0 = machine precision) go to eigsh; ``random_state`` (None = seed 0)
    seeds its start vector; ``progress``: bar over the products. Eigenpairs eigsh could not converge
    are dropped with a :class:`ConvergenceWarning`.
    """
    t0 = time.time()
    H, d = check_operator(H)
    damping = check_damping(damping)
    k = min(d, LANCZOS_K) if k is None else check_int(k, "k", min(d, LANCZOS_K))
    if k > d:
        raise InfluenceError("%s exceeds the dimension d=%d; pass %s <= %d" % (param("k", k), d, param("k"), d),
                             parameter="k", suggestion=d)
    eigsh_tol = check_nonneg(eigsh_tol, "eigsh_tol", "0")
    maxiter = check_int(maxiter, "maxiter", 1000, allow_none=True)
    rng = make_rng(random_state)
    own = operator_damping(H)
    converged = True
    if k >= d - 1:
        A, n_hvp = dense_matrix(H, progress=progress, extra_matrices=1)   # H_op, including its own damping
        w, V = scipy.linalg.eigh(A, overwrite_a=True)
        w, V = w[::-1][:k] - own, V[:, ::-1][:, :k]
    else:
        bar = Progress(progress, None, "lanczos")
        products = Products(H, on_product=bar.update)
        op = spla.LinearOperator((d, d), matvec=products, rmatvec=products, dtype=np.float64)
        try:
            w, V = spla.eigsh(op, k=k, which="LA", v0=rng.standard_normal(d), tol=eigsh_tol, maxiter=maxiter,
                              ncv=ncv)
        except spla.ArpackNoConvergence as e:
            w, V = e.eigenvalues, e.eigenvectors
            converged = False
            warnings.warn("lanczos: eigsh converged only %d of k=%d eigenpairs; keeping those. Raise "
                          "maxiter or eigsh_tol" % (len(w), k), ConvergenceWarning, stacklevel=3)
        finally:
            bar.close()
        order = np.argsort(w)[::-1]
        w, V = np.asarray(w)[order] - own, np.asarray(V)[:, order]
        n_hvp = products.count
    shifted = w + own + damping
    if w.size and not np.all(shifted > 0):
        raise not_positive_definite("lanczos (among the top-%d eigenpairs)" % w.size, float(shifted.min()),
                                    damping, own)
    return LowRankInverse(w, V, own + damping, converged, n_hvp, time.time() - t0)


@deprecated_arguments(positional=("k", "damping", "tol", "maxiter", "ncv", "random_state"),
                      renamed={"tol": "eigsh_tol"})
def lanczos(H, b, *, damping=0.0, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None, progress=False,
            random_state=None, k=None, ncv=None, eigsh_tol=0.0):
    """Solve ``(H + damping·I) x ≈ b`` with the rank-k inverse of :func:`lanczos_inverse`.

    ``maxiter``: eigsh's Arnoldi restarts; ``random_state`` (None = seed 0): its start vector;
    ``progress``: bar over the products. ``x0`` is refused (ValueError): the rank-k inverse is applied
    to b and cannot start from a guess. ``callback(x)`` is called once with the result (eigsh's
    iterations have no iterate x). ``converged``: the k eigenpairs converged and, when ``rtol`` or
    ``atol`` is given, the residual (one extra product) is <= max(rtol·‖b‖, atol) — with ``k < d`` a
    projection usually leaves a large residual. Extras: ``k``, ``ncv``, ``eigsh_tol`` (formerly ``tol``).
    """
    t0 = time.time()
    H, d, b, damping, x0, rtol, atol, _ = check_common(H, b, damping, x0, rtol, atol, random_state)
    if x0 is not None:
        refuse("lanczos", "x0 was given", "applies a rank-k inverse to b and takes no starting point", "x0",
               param("method", "cg"))
    callback = check_callback(callback)
    if not b.any():
        return zero_solution(d, t0)
    inv = lanczos_inverse(H, k, damping=damping, maxiter=maxiter, progress=progress, random_state=random_state,
                          ncv=ncv, eigsh_tol=eigsh_tol)
    x = inv.apply(b)
    full = Products(H, damping)
    residual = relative_residual(full(x), b)
    converged = judge("lanczos", residual, rtol, atol, norm(b)) and inv.converged
    if callback is not None:
        callback(x.copy())
    return Solution(x, converged, inv.n_hvp, inv.n_hvp + full.count, residual, time.time() - t0)
