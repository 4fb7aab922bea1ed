"""Model adapters: the abstract :class:`Model` and the CNTK implementation (imported lazily)."""
from .base import Model, DEFAULT_BATCH_SIZE

__all__ = ["Model", "DEFAULT_BATCH_SIZE"]
