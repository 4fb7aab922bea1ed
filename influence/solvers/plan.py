"""``solver="auto"``: choose between ``direct`` and ``cg`` for m right-hand sides by a cost model.

Costs are counted in Hessian-vector products and turned into seconds with ONE timed product (which
also pays the operator's one-time step calibration, so the timing is of a steady product)::

    direct:  d products + d³/3 flops (Cholesky) + m·d² flops (solve);  memory 2·8·d² bytes
    cg:      m · (min(d, CG_ITERATIONS_ESTIMATE) + 2) products        (memory: a few d-vectors)

``direct`` is chosen when its two d×d matrices fit the memory limit of
:mod:`influence.solvers.dense` and its estimated seconds are below cg's; else ``cg``. The iteration
count of cg is not known before it runs (it grows with the square root of the condition number):
:data:`CG_ITERATIONS_ESTIMATE` is what the digits MLP needed (~360 iterations to rtol 1e-6 without
damping); the plan states it as an estimate. Recycling (``solve_many``) lowers cg's real cost; the
plan does not count on it.
"""
import collections
import time

import numpy as np

from .dense import DENSE_FALLBACK_MEMORY, DENSE_MEMORY_FRACTION, available_memory
from ._common import Products, check_operator

__all__ = ["Plan", "plan_solver", "CG_ITERATIONS_ESTIMATE", "FLOPS_PER_SECOND"]

#: CG iterations assumed per right-hand side when the conditioning is unknown.
CG_ITERATIONS_ESTIMATE = 300
#: Dense linear algebra speed assumed for the Cholesky factorisation and solve (flop/s, 2 cores).
FLOPS_PER_SECOND = 5e9

Plan = collections.namedtuple("Plan", "method d n m n_hvp seconds hvp_seconds dense_bytes memory_allowed reason")
Plan.__doc__ = """The choice of ``solver="auto"``: ``method`` ('direct' or 'cg'); ``d`` parameters, ``n``
training rows (None when unknown), ``m`` right-hand sides; ``n_hvp`` and ``seconds``: the estimated
products and wall time of the chosen method; ``hvp_seconds``: the measured time of one product;
``dense_bytes``: memory of the direct path; ``memory_allowed``: the dense limit now; ``reason``: one
line explaining the choice. ``str(plan)`` is a line for a log."""


def _describe(self):
    n = "" if self.n is None else ", n=%d" % self.n
    return ("plan: solver %s for %d test point%s (d=%d%s): ~%d Hessian-vector products, ~%.3g s "
            "(one product %.3g s); %s" % (self.method, self.m, "" if self.m == 1 else "s", self.d, n,
                                          self.n_hvp, self.seconds, self.hvp_seconds, self.reason))


Plan.__str__ = _describe


def _memory_allowed():
    available = available_memory()
    return DENSE_MEMORY_FRACTION * (DENSE_FALLBACK_MEMORY if available is None else available)


def plan_solver(H, m, *, damping=0.0, allow_direct=True, cg_iterations=None, hvp_seconds=None):
    """The :class:`Plan` for ``m`` right-hand sides on ``H + damping·I``.

    ``allow_direct=False`` forces cg (e.g. an option only cg takes was given). ``cg_iterations``:
    iterations per solve (default :data:`CG_ITERATIONS_ESTIMATE`, capped at d). ``hvp_seconds``: the
    time of one product when known (else one product with a fixed random vector is timed).
    """
    H, d = check_operator(H)
    m = int(m)
    if m < 1:
        raise ValueError("m=%r right-hand sides; pass m >= 1" % (m,))
    if hvp_seconds is None:
        v = np.random.RandomState(0).standard_normal(d)
        products = Products(H, damping)
        products(v)                               # a HessianOperator calibrates its step on its first product
        t0 = time.perf_counter()
        products(v)
        hvp_seconds = time.perf_counter() - t0
    n = getattr(H, "n_examples", None)
    iters = min(d, CG_ITERATIONS_ESTIMATE if cg_iterations is None else int(cg_iterations)) + 2
    cg_hvp = m * iters
    cg_s = cg_hvp * hvp_seconds
    dense_bytes = 2 * 8.0 * d * d
    allowed = _memory_allowed()
    direct_s = d * hvp_seconds + (d ** 3 / 3.0 + 2.0 * m * d * d) / FLOPS_PER_SECOND
    if not allow_direct:
        method, reason = "cg", "direct was excluded by the options given"
    elif dense_bytes > allowed:
        method, reason = "cg", ("direct's two d×d matrices (%.4g MB) exceed the memory limit (%.4g MB)"
                                % (dense_bytes / 1e6, allowed / 1e6))
    elif direct_s <= cg_s:
        method, reason = "direct", ("d=%d products + factorisation (~%.3g s) cost less than %d cg solves "
                                    "(~%d products each, an estimate: ~%.3g s)" % (d, direct_s, m, iters, cg_s))
    else:
        method, reason = "cg", ("%d cg solve%s (~%d products each, an estimate: ~%.3g s) cost less than "
                                "direct's d=%d products + factorisation (~%.3g s)"
                                % (m, "" if m == 1 else "s", iters, cg_s, d, direct_s))
    if method == "direct":
        return Plan("direct", d, n, m, d, direct_s, hvp_seconds, dense_bytes, allowed, reason)
    return Plan("cg", d, n, m, cg_hvp, cg_s, hvp_seconds, dense_bytes, allowed, reason)
