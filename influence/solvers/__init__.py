"""Inverse-Hessian-vector products: solve ``(H + damping·I) x = b``.

One signature, scipy-style, meaning the same for every method::

    solve(H, b, method="cg", *, damping=0.0, x0=None, rtol=None, atol=0.0, maxiter=None,
          callback=None, progress=False, random_state=None, **method_options) -> Solution

and each method is a function with the same common parameters (``cg``, ``lissa``, ``direct``,
``lanczos``; one module each) plus keyword-only extras of its own.

``H`` is a symmetric :class:`scipy.sparse.linalg.LinearOperator` — normally an
:class:`influence.HessianOperator`, which already includes the model's L2 term and its own
``H.damping`` — or a dense array. ``damping`` is added *on top of* the operator, so every method solves
``A x = b`` with ``A = H_op + damping·I``.

- ``rtol``/``atol``: the solution meets ``‖A x − b‖ <= max(rtol·‖b‖, atol)``; cg and lissa stop on it,
  direct and lanczos (no iterations toward it) check it when given. ``rtol=None``: the method's default.
- ``maxiter``: iterations (cg iterations, lissa minibatch steps — over all rounds for the default
  refined variant, per repeat for ``variant="classic"`` — eigsh restarts for lanczos; direct refuses it). ``x0``: starting point of cg and lissa, never modified (direct and lanczos refuse it).
- ``callback(x)``: a copy of the iterate after each iteration (once, with the result, for direct and
  lanczos). ``progress``: tqdm bar on stderr (off by default). ``random_state``: int, RandomState or
  None (= seed 0: repeatable bit for bit); deterministic methods check it and do not use it.

``Solution(x, converged, n_iter, n_hvp, residual, seconds)``: ``residual`` is the true
‖A x − b‖/‖b‖ (one extra product at the end for cg, lissa, lanczos; direct uses its dense matrix); a
solver that misses its tolerance sets ``converged=False`` and emits a :class:`ConvergenceWarning`.
``b = 0`` returns ``x = 0`` at once. Bad arguments raise ValueError with one line naming the fix;
:class:`NonPositiveCurvatureError` (H + damping·I is not positive definite: the message names the
``damping=`` to pass) and :class:`DivergenceError` (lissa's ``scale``) are ValueError subclasses.
Old argument spellings (positional options, lissa's ``depth``, lanczos' ``tol``, lissa's two-argument
callback) still work for one release with a DeprecationWarning. Details: docs/solvers.md.

Many right-hand sides: :func:`solve_many` shares the work between them (one factorisation for direct
and lanczos, recycled Krylov vectors for cg); :func:`plan_solver` is the cost model of ``"auto"``.
"""
from ._common import (COMMON_PARAMETERS, ConvergenceWarning, DivergenceError, NonPositiveCurvatureError,
                      Solution)
from .cg import cg, CG_RTOL, CG_RTOL_FLOAT32, CG_STAGNATION_FLOAT32, CURVATURE_STEPS
from .lissa import (lissa, REFINED_RTOL, REFINED_MAXITER, LISSA_MAXITER, LISSA_BATCH_SIZE, LISSA_RTOL, LISSA_CHECK_EVERY, POWER_STEPS,
                    AUTO_SCALE_FACTOR, DIVERGENCE_SLACK)
from .dense import dense_matrix
from .direct import direct
from .lanczos import lanczos, lanczos_inverse, LowRankInverse, LANCZOS_K
from .dispatch import METHODS, solve
from .many import solve_many
from .plan import Plan, plan_solver

__all__ = ["solve", "METHODS", "Solution", "ConvergenceWarning", "NonPositiveCurvatureError",
           "DivergenceError", "cg", "lissa", "direct", "lanczos", "lanczos_inverse", "LowRankInverse",
           "dense_matrix", "solve_many", "plan_solver", "Plan"]
