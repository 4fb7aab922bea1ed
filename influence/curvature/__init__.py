"""Curvature-vector products over a model's flat parameters, each a symmetric scipy
``LinearOperator``: the Hessian by central finite differences of gradients (``hessian``) and the
step rules every finite-difference product and forward scoring share (``steps``). Imports
adapters, data and the shared helpers only."""
from .hessian import HessianOperator, hvp, central_difference, adaptive_difference, Step

__all__ = ["HessianOperator", "hvp", "central_difference", "adaptive_difference", "Step"]
