"""Writing result files atomically: a temporary file in the same folder, then ``os.replace``.

A crash or Ctrl-C never leaves a truncated result under the final name.
"""
import contextlib
import csv
import hashlib
import json
import os

import numpy as np

__all__ = ["atomic_path", "write_npy", "write_json", "write_table", "check_writable", "file_fingerprint",
           "check_unchanged", "InputChangedError", "FULL_HASH_BYTES", "SAMPLE_BLOCKS", "SAMPLE_BLOCK_BYTES"]

#: Files up to this size are hashed entirely by :func:`file_fingerprint`; larger ones by sampled blocks.
FULL_HASH_BYTES = 16 * 2 ** 20
#: Blocks hashed in a larger file: evenly spaced, the first at offset 0 and the last at the end.
SAMPLE_BLOCKS = 64
#: Bytes per sampled block.
SAMPLE_BLOCK_BYTES = 64 * 2 ** 10


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
    """Refuse early (before any work) an output path whose folder does not exist or cannot take a new
    file (tried for real: permissions, read-only or virtual file systems such as /proc)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise ValueError("%s %s: folder %s does not exist; create it or choose another path" % (what, path, folder))
    if os.path.isdir(path):
        raise ValueError("%s %s is a folder; give a file name" % (what, path))
    probe = os.path.join(folder, ".influence-write-test-%d" % os.getpid())
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except (OSError, IOError) as e:
        raise ValueError("%s %s: cannot create a file in %s (%s); choose another path"
                         % (what, path, folder, getattr(e, "strerror", None) or e))


class InputChangedError(ValueError):
    """An input file changed (size, modification time or content) while a job used it."""


def file_fingerprint(path):
    """A content identity of a file: {"path", "size", "mtime_ns", "sha256"}.

    ``sha256`` hashes every byte of a file up to :data:`FULL_HASH_BYTES`, and for a larger file
    :data:`SAMPLE_BLOCKS` blocks of :data:`SAMPLE_BLOCK_BYTES` evenly spaced from the first to the
    last byte (4 MiB read, whatever the size: 0.04–0.07 s on a 424 MB .npz here, against 6.3 s
    for hashing every byte; see docs/cluster.md). A rewrite is caught by the size, the modification time or the sampled bytes.
    """
    path = os.path.abspath(path)
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(2 ** 20), b""):
                h.update(block)
        else:
            last = st.st_size - SAMPLE_BLOCK_BYTES
            for i in range(SAMPLE_BLOCKS):
                f.seek(last * i // (SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BLOCK_BYTES))
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()[:32]}


def check_unchanged(fingerprint, what="the file"):
    """Raise :class:`InputChangedError` naming the file unless it still has ``fingerprint``."""
    path = fingerprint["path"]
    if not os.path.isfile(path):
        raise InputChangedError("%s %s was removed while the job used it; restore it or rerun without "
                                "--resume" % (what, path))
    now = file_fingerprint(path)
    changed = [k for k in ("size", "mtime_ns", "sha256") if now[k] != fingerprint[k]]
    if changed:
        raise InputChangedError("%s %s changed while the job used it (%s differ); rerun on the new "
                                "file without --resume" % (what, path, ", ".join(changed)))


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
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(to_json(value) + "\n")


def write_table(path, columns, rows):
    """Write ``rows`` under the header ``columns`` as CSV, or as JSON (a list of objects) when the
    path ends in ``.json``."""
    if path.lower().endswith(".json"):
        write_json(path, [dict(zip(columns, r)) for r in rows])
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in r])
