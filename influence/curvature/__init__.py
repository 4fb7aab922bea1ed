"""Curvature-vector products over a model's flat parameters, one operator per module, each a symmetric
scipy ``LinearOperator`` whose base (``_operator``) owns the batch loop: the Hessian by central finite
differences of gradients (``hessian``), the generalized Gauss-Newton matrix (``gauss_newton``) and the
empirical Fisher (``fisher``), both positive semi-definite at any weights; the EK-FAC approximation of the Fisher, inverted
block by block (``ekfac``); ``damping="auto"``
(``damping``); and the step rules every finite-difference product and forward scoring share
(``steps``). Imports adapters, data and the shared helpers only."""
from .hessian import HessianOperator, hvp, central_difference, adaptive_difference, Step
from .gauss_newton import GaussNewtonOperator
from .fisher import FisherOperator
from .damping import auto_damping, mean_eigenvalue
from .ekfac import EKFAC, ekfac_s_test, self_influence_ekfac
from .ekfac_io import FactorFileError

__all__ = ["HessianOperator", "hvp", "central_difference", "adaptive_difference", "Step",
           "GaussNewtonOperator", "FisherOperator", "auto_damping", "mean_eigenvalue",
           "EKFAC", "ekfac_s_test", "self_influence_ekfac", "FactorFileError"]
