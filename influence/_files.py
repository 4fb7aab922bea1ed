"""Writing result files atomically: a temporary file in the same folder, then ``os.replace``.

A crash or Ctrl-C never leaves a truncated result under the final name.
"""
import contextlib
import csv
import json
import os

import numpy as np

__all__ = ["atomic_path", "write_npy", "write_json", "write_table", "check_writable"]


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success rename it to ``path``, else delete it."""
    path = os.path.abspath(path)
    base, ext = os.path.splitext(path)
    tmp = "%s.tmp-%d%s" % (base, os.getpid(), ext)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable(path, what="--out"):
    """Refuse early (before any work) an output path whose folder does not exist or is not writable."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise ValueError("%s %s: folder %s does not exist; create it or choose another path" % (what, path, folder))
    if not os.access(folder, os.W_OK):
        raise ValueError("%s %s: folder %s is not writable; choose another path" % (what, path, folder))
    if os.path.isdir(path):
        raise ValueError("%s %s is a folder; give a file name" % (what, path))


def write_npy(path, array):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def to_json(value):
    """JSON text of ``value`` with NumPy types converted and non-finite floats as null."""
    return json.dumps(_plain(value), indent=2, sort_keys=True)


def write_json(path, value):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(to_json(value) + "\n")


def write_table(path, columns, rows):
    """Write ``rows`` under the header ``columns`` as CSV, or as JSON (a list of objects) when the
    path ends in ``.json``."""
    if path.lower().endswith(".json"):
        write_json(path, [dict(zip(columns, r)) for r in rows])
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in r])
