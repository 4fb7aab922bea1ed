"""``solve``: one entry point and one signature for every method (``METHODS``)."""
import collections
import inspect

from ..common.errors import InfluenceError, param
from ._common import COMMON_PARAMETERS
from .cg import cg
from .direct import direct
from .lanczos import lanczos
from .lissa import lissa

__all__ = ["solve", "METHODS"]

METHODS = collections.OrderedDict([("cg", cg), ("lissa", lissa), ("direct", direct), ("lanczos", lanczos)])


def method_extras(method):
    """The extras of ``method`` (keyword-only parameters beyond the common ones)."""
    params = inspect.signature(METHODS[method]).parameters
    return [p for p in params if p not in ("H", "b") and p not in COMMON_PARAMETERS]


def solve(H, b, method="cg", *, damping=0.0, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None,
          progress=False, random_state=None, **method_options):
    """Solve ``(H + damping·I) x = b`` with ``method`` in ``METHODS`` ('cg', 'lissa', 'direct',
    'lanczos'); the common arguments mean the same for every method (see the module docstring),
    ``method_options`` are that method's extras. Returns a :class:`Solution`."""
    if method not in METHODS:
        raise InfluenceError("%s is not one of %s; pass e.g. %s" % (param("method", method), ", ".join(METHODS),
                                                                    param("method", "cg")), parameter="method")
    f = METHODS[method]
    extras = method_extras(method)
    unknown = sorted(set(method_options) - set(extras) - set(getattr(f, "deprecated_names", ())))
    if unknown:
        raise ValueError("option %s is not accepted by method=%r; its options: %s"
                         % (", ".join(repr(u) for u in unknown), method, ", ".join(extras) or "none beyond the common ones"))
    return f(H, b, damping=damping, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback,
             progress=progress, random_state=random_state, **method_options)
