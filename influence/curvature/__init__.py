"""Curvature operators other than the Hessian: the generalized Gauss-Newton matrix and the empirical
Fisher (positive semi-definite at any weights), and ``damping="auto"``."""
from .gauss_newton import GaussNewtonOperator
from .fisher import FisherOperator
from .damping import auto_damping, mean_eigenvalue

__all__ = ["GaussNewtonOperator", "FisherOperator", "auto_damping", "mean_eigenvalue"]
