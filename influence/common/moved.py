"""Module paths that moved in 0.2 (the package layout of docs/architecture.md) keep working for one
release: importing an old path warns once with a :class:`DeprecationWarning` naming the new one and
gives a module whose attributes are the new module's. Installed by ``influence/__init__.py``.

Only attribute access is forwarded (``from influence.curvature.hessian import adaptive_difference``,
``influence.dask.executor.DaskExecutor``); the new module is imported on first access, so an old path
costs nothing until it is used."""
import importlib
import sys
import types
import warnings

__all__ = ["MOVED", "REMOVED_IN", "MovedModule", "install"]

#: The release that drops the old paths.
REMOVED_IN = "0.3"

#: Old module path -> new module path.
MOVED = {
    "influence.hvp": "influence.curvature.hessian",
    "influence.kernels": "influence.scoring.kernels",
    "influence.chunks": "influence.scoring.chunks",
    "influence.matrix": "influence.scoring.matrix",
    "influence.scores": "influence.scoring.scores",
    "influence.cluster": "influence.dask.executor",
    "influence.cluster_hvp": "influence.dask.hessian",
    "influence.ctf": "influence.data.ctf_reader",
    "influence.ctf_data": "influence.data.ctf_dataset",
    "influence.loo": "influence.evaluate.leave_one_out",
    "influence.adapters.cntk_graph": "influence.adapters.cntk.graph",
    "influence.adapters.cntk_per_example": "influence.adapters.cntk.per_example",
}


class MovedModule(types.ModuleType):
    """An old module path: every attribute is looked up on the new module (imported then), with a
    DeprecationWarning the first time."""

    def __init__(self, name, target):
        super(MovedModule, self).__init__(name)
        self.__dict__["_moved_to"] = target
        self.__dict__["_warned"] = False

    def _target(self):
        if not self.__dict__["_warned"]:
            self.__dict__["_warned"] = True
            warnings.warn("%s moved to %s; the old path will be removed in %s: import %s instead"
                          % (self.__name__, self._moved_to, REMOVED_IN, self._moved_to), DeprecationWarning,
                          stacklevel=3)
        return importlib.import_module(self.__dict__["_moved_to"])

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return getattr(self._target(), attr)

    def __dir__(self):
        return dir(self._target())


def install():
    """Register the old paths in ``sys.modules`` (once), so that ``import influence.cluster`` finds them
    without loading anything, and set them on their parent package unless it has an attribute of that
    name (``influence.hvp`` stays the function; ``from influence.hvp import x`` still works)."""
    for old, new in MOVED.items():
        if old in sys.modules:
            continue
        module = sys.modules[old] = MovedModule(old, new)
        parent, _, leaf = old.rpartition(".")
        if not hasattr(sys.modules[parent], leaf):
            setattr(sys.modules[parent], leaf, module)
