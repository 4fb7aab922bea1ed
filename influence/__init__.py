"""influence: influence functions (Koh & Liang 2017) for CNTK models.

Core: :func:`hvp` and :class:`HessianOperator` (Hessian-vector products by central finite
differences), model adapters (:class:`CNTKModel`, the NumPy reference models in
:mod:`influence.models`), inverse-HVP solvers (:func:`solve`), influence scores
(:func:`s_test`, :func:`influence_scores`, :func:`self_influence`), fitting and leave-one-out
checks (:func:`fit`, :func:`verify_loo`). CNTK is imported only when a CNTK object is used, so the
NumPy path works without it.
"""
from ._version import __version__
from .adapters.base import Model
from .adapters.cntk import CNTKModel
from .data import Dataset, load_npz, load_digits, load_ctf, load_data
from .curvature import HessianOperator, hvp, GaussNewtonOperator, FisherOperator, EKFAC
from .adapters import reference as models
from .solvers import (solve, Solution, ConvergenceWarning, NonPositiveCurvatureError, DivergenceError,
                      cg, lissa, direct, lanczos, lanczos_inverse, LowRankInverse)
from .fitting import fit, FitResult, check_optimum, NotAtOptimumWarning
from .scoring import (s_test, STest, influence_scores, predicted_loss_change, self_influence,
                     directional_derivatives)
from .evaluate.leave_one_out import verify_loo, LOOResult
from . import evaluate
from .common.threads import set_threads
from .common import moved as _moved

_moved.install()
# the NumPy reference models keep their public path
import sys as _sys
_sys.modules.setdefault(__name__ + ".models", models)

__all__ = ["__version__", "Model", "CNTKModel", "Dataset", "load_npz", "load_data", "load_ctf", "load_digits", "models",
           "HessianOperator", "hvp", "GaussNewtonOperator", "FisherOperator", "EKFAC",
           "solve", "Solution", "ConvergenceWarning", "NonPositiveCurvatureError", "DivergenceError",
           "cg", "lissa", "direct", "lanczos", "lanczos_inverse", "LowRankInverse",
           "fit", "FitResult", "check_optimum", "NotAtOptimumWarning",
           "s_test", "STest", "influence_scores", "predicted_loss_change", "self_influence",
           "directional_derivatives", "verify_loo", "LOOResult", "set_threads"]
