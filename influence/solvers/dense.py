"""The dense matrix ``H + damping·I`` from d products with the unit vectors, and the memory limit of
every dense path (``direct``, ``lanczos`` with k >= d − 1, ``self_influence(method="exact")``).

A dense path holds ``1 + extra_matrices`` d×d float64 matrices at once (8·d² bytes each: the matrix and,
for a solve, its Cholesky factor or eigenvectors). It is refused, before any product, when they need
more than :data:`DENSE_MEMORY_FRACTION` of the memory available now (``MemAvailable`` of
/proc/meminfo; :data:`DENSE_FALLBACK_MEMORY` where that cannot be read). Override the fraction with
``influence.solvers.dense.DENSE_MEMORY_FRACTION = 0.8`` (at the risk of swapping).
"""
import numpy as np
import scipy.linalg

from ._common import Products, Progress, check_operator, not_positive_definite
from ..common.errors import InfluenceError, param
from ..common.numeric import check_damping

__all__ = ["dense_matrix", "cholesky", "check_dense_memory", "available_memory", "DENSE_MEMORY_FRACTION",
           "DENSE_FALLBACK_MEMORY"]

#: Share of the available memory the dense matrices of one dense path may take.
DENSE_MEMORY_FRACTION = 0.5
#: Bytes assumed available where /proc/meminfo cannot be read (2 GiB).
DENSE_FALLBACK_MEMORY = 2 * 1024 ** 3
#: Rows symmetrised at a time (temporary memory: SYMMETRISE_ROWS × d floats).
SYMMETRISE_ROWS = 256


def available_memory(meminfo="/proc/meminfo"):
    """Bytes of memory available now: ``MemAvailable`` of /proc/meminfo, or None where unreadable."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mb(n):
    return "%.4g MB" % (n / 1e6)


def check_dense_memory(d, matrices=1):
    """Refuse (ValueError) ``matrices`` d×d float64 matrices that exceed the memory limit."""
    needed = matrices * 8.0 * d * d
    available = available_memory()
    source = "MemAvailable"
    if available is None:
        available, source = DENSE_FALLBACK_MEMORY, "assumed (no /proc/meminfo)"
    allowed = DENSE_MEMORY_FRACTION * available
    if needed > allowed:
        reason = ("H has dimension d=%d: the dense path holds %d d×d float64 matrices = %s, more than the %s "
                  "allowed (DENSE_MEMORY_FRACTION=%g of %s available, %s)"
                  % (d, matrices, _mb(needed), _mb(allowed), DENSE_MEMORY_FRACTION, _mb(available), source))
        raise DenseMemoryError(
            "%s; use %s (memory: a few d-vectors) or a rank-k method (%s with %s < d - 1, self_influence(%s)), "
            "or raise influence.solvers.dense.DENSE_MEMORY_FRACTION"
            % (reason, param("method", "cg"), param("method", "lanczos"), param("k"), param("method", "lanczos")),
            reason=reason)


class DenseMemoryError(InfluenceError):
    """The dense matrices would not fit in memory. ``reason``: the sizes, without the advice (each front
    end advises in its own terms: the API a method, the CLI its command's flags)."""

    def __init__(self, message, reason):
        InfluenceError.__init__(self, message, parameter="method")
        self.reason = reason


def _symmetrise(A):
    """A ← (A + Aᵀ)/2 in place, a block of rows at a time (no second d×d matrix)."""
    d = A.shape[0]
    for a in range(0, d, SYMMETRISE_ROWS):
        b = min(a + SYMMETRISE_ROWS, d)
        avg = 0.5 * (A[a:b, a:] + A[a:, a:b].T)
        A[a:b, a:] = avg
        A[a:, a:b] = avg.T
    return A


def dense_matrix(H, damping=0.0, *, progress=False, extra_matrices=0):
    """The dense symmetrised ``H + damping·I`` (float64) from d products with the unit vectors.

    ``extra_matrices``: further d×d matrices the caller will hold next to it (a factor), counted in
    the memory check (see the module docstring). ``progress``: tqdm bar over the d products.
    Returns ``(A, n_hvp)``."""
    H, d = check_operator(H)
    damping = check_damping(damping)
    check_dense_memory(d, 1 + extra_matrices)
    bar = Progress(progress, d, "dense H")
    products = Products(H, damping, on_product=bar.update)
    A = np.empty((d, d))
    e = np.zeros(d)
    try:
        for i in range(d):
            e[i] = 1.0
            A[:, i] = products(e)
            e[i] = 0.0
    finally:
        bar.close()
    return _symmetrise(A), products.count


def cholesky(A, context, damping, own_damping=0.0):
    """``scipy.linalg.cho_factor(A, lower=True)`` of the dense ``A = H_op + damping·I`` (a copy: A is
    kept), or the NonPositiveCurvatureError naming the ``damping`` to pass, from λ_min(A)."""
    try:
        return scipy.linalg.cho_factor(A, lower=True, check_finite=True)
    except np.linalg.LinAlgError:
        raise not_positive_definite(context, float(scipy.linalg.eigvalsh(A)[0]), damping, own_damping)
