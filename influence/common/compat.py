"""Version shims for SciPy (1.5 … 1.17). This module is the only place that knows which SciPy
release spells what.

- ``scipy.sparse.linalg.cg``: SciPy < 1.12 takes the relative tolerance as ``tol`` (and ``atol``
  defaults to the deprecated ``'legacy'``); 1.12 added ``rtol`` and 1.14 removed ``tol``. Both stop
  when ``‖b − A x‖ <= max(rtol·‖b‖, atol)``. :func:`cg` takes ``rtol`` and always passes ``atol``.
"""
import inspect

import scipy.sparse.linalg as _sla

__all__ = ["cg", "CG_USES_RTOL"]


def _cg_uses_rtol():
    try:
        return "rtol" in inspect.signature(_sla.cg).parameters
    except (TypeError, ValueError):  # pragma: no cover - signature not introspectable
        import scipy
        major, minor = (int(p) for p in scipy.__version__.split(".")[:2])
        return (major, minor) >= (1, 12)


#: True when ``scipy.sparse.linalg.cg`` accepts ``rtol`` (SciPy >= 1.12).
CG_USES_RTOL = _cg_uses_rtol()


def cg(A, b, x0=None, rtol=1e-5, atol=0.0, maxiter=None, callback=None, M=None):
    """``scipy.sparse.linalg.cg(A, b, ...)`` with the relative tolerance named ``rtol`` on every
    SciPy version; returns ``(x, info)`` as SciPy does. ``M``: a preconditioner ≈ A⁻¹ (SciPy's)."""
    kwargs = {"x0": x0, "atol": float(atol), "maxiter": maxiter, "callback": callback, "M": M}
    kwargs["rtol" if CG_USES_RTOL else "tol"] = float(rtol)
    return _sla.cg(A, b, **kwargs)
