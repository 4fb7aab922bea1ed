"""Direct solve: the dense matrix ``H + damping·I`` from d products (:func:`dense_matrix`), then Cholesky."""
import time

import scipy.linalg

from ..common.errors import param
from ..common.numeric import norm
from ._common import (Solution, check_callback, check_common, deprecated_arguments, judge, operator_damping,
                      refuse, relative_residual, zero_solution)
from .dense import check_dense_memory, cholesky, dense_matrix

__all__ = ["direct"]


@deprecated_arguments(positional=("damping",))
def direct(H, b, *, damping=0.0, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None, progress=False,
           random_state=None):
    """Solve ``(H + damping·I) x = b`` exactly: the dense matrix from d products with the unit vectors
    (symmetrised), then a Cholesky solve. Holds two d×d float64 matrices (the matrix and its factor):
    refused beyond the memory limit of :mod:`influence.solvers.dense`.

    There is no iteration: ``x0`` and ``maxiter`` are refused (ValueError: they would be ignored);
    ``callback(x)`` is called once with the solution; ``progress`` shows a bar over the d products;
    ``random_state`` is checked and not used (deterministic). ``rtol``/``atol``, when given, are
    checked on the residual (``converged=False`` and a ConvergenceWarning above them, e.g. for a
    nearly singular matrix); by default a successful factorisation is ``converged``.
    """
    t0 = time.time()
    H, d, b, damping, x0, rtol, atol, _ = check_common(H, b, damping, x0, rtol, atol, random_state)
    if x0 is not None:
        refuse("direct", "x0 was given", "solves exactly and takes no starting point", "x0", param("method", "cg"))
    if maxiter is not None:
        refuse("direct", param("maxiter", maxiter), "has no iterations", "maxiter", param("method", "cg"))
    callback = check_callback(callback)
    check_dense_memory(d, 2)
    if not b.any():
        return zero_solution(d, t0)
    A, n_hvp = dense_matrix(H, damping, progress=progress, extra_matrices=1)
    factor = cholesky(A, "direct", damping, operator_damping(H))
    x = scipy.linalg.cho_solve(factor, b)
    residual = relative_residual(A @ x, b)
    converged = judge("direct", residual, rtol, atol, norm(b))
    if callback is not None:
        callback(x.copy())
    return Solution(x, converged, 1, n_hvp, residual, time.time() - t0)
