"""influence: influence functions (Koh & Liang 2017) for CNTK models.

Core: :func:`hvp` and :class:`HessianOperator` (Hessian-vector products by central finite
differences), model adapters (:class:`CNTKModel`, the NumPy reference models in
:mod:`influence.models`). CNTK is imported only when a CNTK object is used, so the
NumPy path works without it.
"""
from ._version import __version__
from .adapters.base import Model
from .adapters.cntk import CNTKModel
from .data import Dataset, load_npz, load_digits
from .hvp import HessianOperator, hvp
from . import models

__all__ = ["__version__", "Model", "CNTKModel", "Dataset", "load_npz", "load_digits",
           "HessianOperator", "hvp", "models"]
