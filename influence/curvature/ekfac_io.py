"""EK-FAC factors in an ``.npz`` file, fingerprinted against the weights and the training rows they
were fitted on, and refused (one line naming the fix) when either has changed.

The file holds, per layer block i: ``qa_i``, ``qs_i`` (eigenvectors), ``la_i``, ``ls_i``
(eigenvalues), ``eig_i`` (Λ), ``A_i``, ``S_i``; the diagonal; and ``meta``, a JSON string with the
format version, the settings (strategy, labels, damping), the layers (flat slices and shapes), the
model's :func:`influence.adapters.base.weights_digest` and :func:`data_digest` of the rows.
"""
import hashlib
import json
import os

import numpy as np
import scipy.sparse

from ..adapters.base import weights_digest
from ..common.errors import InfluenceError
from ..common.files import atomic_path
from ..data import Sequences

__all__ = ["data_digest", "write_factors", "read_factors", "FORMAT", "FactorFileError"]

#: Format tag written into ``meta``; a file of another format is refused.
FORMAT = "influence-ekfac-1"


class FactorFileError(InfluenceError):
    """A factor file refused by :func:`read_factors` or :meth:`influence.EKFAC.load`: ``path``; ``reason``,
    what is wrong with it in a few words after the file's name (e.g. "were fitted on other weights
    (digest ..., the model's is ...)"); ``stale``: True when the file is a valid one fitted on other
    weights or other training rows (fit again), False when it is no factor file for this model."""

    def __init__(self, path, reason, stale, fix):
        self.path, self.reason, self.stale = str(path), reason, bool(stale)
        InfluenceError.__init__(self, "the EK-FAC factors in %r %s; %s" % (self.path, reason, fix))


def _update(h, a):
    if isinstance(a, dict):
        for k in sorted(a):
            h.update(str(k).encode())
            _update(h, a[k])
        return
    if isinstance(a, Sequences):
        _update(h, a.values)
        _update(h, np.asarray(a.lengths))
        return
    if scipy.sparse.issparse(a):
        a = a.tocsr()
        h.update(repr(a.shape).encode())
        for part in (a.data, a.indices, a.indptr):
            _update(h, part)
        return
    a = np.ascontiguousarray(a)
    h.update(a.dtype.str.encode() + repr(a.shape).encode())
    h.update(a.tobytes())


def data_digest(data):
    """sha256 (32 hex digits) of the rows of a Dataset: its inputs and labels, dtypes and shapes (the
    content, whatever file they came from)."""
    h = hashlib.sha256()
    h.update(str(len(data)).encode())
    _update(h, data.x)
    h.update(b"labels")
    if data.y is not None:
        _update(h, data.y)
    return h.hexdigest()[:32]


def write_factors(path, meta, arrays):
    """Write ``arrays`` and ``meta`` (JSON) to ``path`` (.npz) atomically."""
    path = str(path)
    if not path.endswith(".npz"):
        raise InfluenceError("path=%r: EK-FAC factors are saved as .npz; pass a path ending in .npz" % path)
    meta = dict(meta, format=FORMAT)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def read_factors(path, model, data):
    """``(meta, arrays)`` of a factor file, after checking that it was fitted on the current weights of
    ``model`` and on the rows of ``data`` (a one-line :class:`FactorFileError` otherwise)."""
    path = str(path)
    again = "fit them again with influence.EKFAC(model, data).save(path)"
    if not os.path.exists(path):
        raise FactorFileError(path, "do not exist", False, "fit them with influence.EKFAC(model, data) and .save(path)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (ValueError, KeyError, OSError) as e:
        raise FactorFileError(path, "are not readable: not an EK-FAC factor file (%s)"
                              % (str(e).splitlines()[0] if str(e) else type(e).__name__), False, again)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FactorFileError(path, "have format %r, not %r" % (meta.get("format") if isinstance(meta, dict) else None,
                                                                 FORMAT), False, again)
    weights = weights_digest(model)
    if meta.get("weights") != weights or meta.get("n_params") != int(model.n_params):
        raise FactorFileError(path, "were fitted on other weights (digest %s, the model's is %s): they are stale"
                              % (meta.get("weights"), weights), True, again)
    rows = data_digest(data)
    if meta.get("data") != rows:
        raise FactorFileError(path, "were fitted on other training rows (digest %s, these rows' is %s): they are "
                              "stale" % (meta.get("data"), rows), True, "fit them again on these data")
    return meta, arrays
