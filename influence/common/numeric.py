"""Numeric helpers shared by every layer (hvp, solvers, scores): the Euclidean norm and the check of a
non-negative number such as the damping. Depends on numpy only, so any module can import it."""
import numpy as np

from .errors import InfluenceError, param

__all__ = ["norm", "check_nonneg", "check_damping"]


def norm(a):
    """‖a‖₂ of a flat float array as a Python float (``sqrt(a·a)``: no copy, unlike ``np.linalg.norm``
    on some inputs)."""
    return float(np.sqrt(np.dot(a, a)))


def check_nonneg(value, name, example):
    """``float(value)`` when it is a finite number >= 0, else a one-line ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InfluenceError("%s is not a number; pass e.g. %s" % (param(name, value), param(name, example)),
                             parameter=name, suggestion=example)
    if not np.isfinite(v) or v < 0:
        raise InfluenceError("%s must be a finite number >= 0; pass e.g. %s" % (param(name, value), param(name, example)),
                             parameter=name, suggestion=example)
    return v


def check_damping(damping):
    """The damping λ of ``H + λI``: a finite number >= 0 (returned as float)."""
    return check_nonneg(damping, "damping", "0.01")
