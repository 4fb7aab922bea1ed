"""Chunked, resumable runs over a training set.

Scoring every training point is embarrassingly parallel over rows: :func:`run_chunks` splits
``range(n)`` into consecutive chunks, computes each with a function ``compute(start, stop)`` and
assembles the results in row order. With a :class:`Checkpoint`, every finished chunk is saved
atomically to a folder as it completes; a later run with the same fingerprint (``--resume``) loads
the finished chunks instead of recomputing them, so an interrupted job (Ctrl-C, kill, a crash)
continues where it stopped and produces exactly the numbers of an uninterrupted run with the same
chunking. ``executor`` lets another engine (a Dask cluster, :mod:`influence.cluster`) compute the
missing chunks.
"""
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np

from ._files import write_json, write_npy
from .data import check_batch_size

__all__ = ["Checkpoint", "run_chunks", "chunk_bounds", "file_fingerprint", "DEFAULT_CHUNK_SIZE"]

#: Training rows per chunk: the unit of progress, checkpointing and distribution.
DEFAULT_CHUNK_SIZE = 10000

#: TEST-ONLY hook: seconds to sleep after each chunk computed here (not with an ``executor``), read
#: from this environment variable, so that tests can interrupt a run between chunks. Never set it in
#: production; unset (the default) means no delay.
TEST_DELAY_VARIABLE = "INFLUENCE_TEST_CHUNK_DELAY"


def _test_delay():
    try:
        return max(0.0, float(os.environ.get(TEST_DELAY_VARIABLE, "") or 0.0))
    except ValueError:
        return 0.0


def chunk_bounds(n, chunk_size):
    """[(start, stop), ...] covering range(n) in consecutive chunks of ``chunk_size`` rows."""
    size = check_batch_size(chunk_size, "chunk_size")
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def file_fingerprint(path):
    """A cheap identity of a file: absolute path, size and modification time (not its content)."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": getattr(st, "st_mtime_ns", int(st.st_mtime * 1e9))}


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


class Checkpoint(object):
    """A folder of finished chunks for one job, identified by ``fingerprint`` (a JSON-able dict of
    everything the results depend on: model and data files, test points, solver, damping, seed,
    chunk size, ...).

    ``resume=False`` starts afresh (an existing folder is emptied). ``resume=True`` keeps the chunks of
    a folder whose fingerprint matches, and refuses (ValueError naming the difference) one that does
    not. Besides chunks, a job can store named arrays (``save_array``/``load_array``), e.g. the
    s_test vectors, so that a resumed run reuses them instead of solving again.
    """

    MANIFEST = "manifest.json"

    def __init__(self, folder, fingerprint, resume=False):
        self.folder = os.path.abspath(folder)
        self.fingerprint = fingerprint
        #: {"chunks", "computed", "resumed"} summed over the run_chunks calls using this checkpoint.
        self.stats = {"chunks": 0, "computed": 0, "resumed": 0}
        self.key = _digest(fingerprint)
        manifest = os.path.join(self.folder, self.MANIFEST)
        if resume and os.path.isfile(manifest):
            with open(manifest) as f:
                old = json.load(f)
            if old.get("key") != self.key:
                diff = sorted(k for k in set(old.get("fingerprint", {})) | set(fingerprint)
                              if old.get("fingerprint", {}).get(k) != fingerprint.get(k))
                raise ValueError("cannot resume from %s: the job differs in %s; rerun without --resume "
                                 "to start afresh" % (self.folder, ", ".join(diff) or "its inputs"))
        else:
            if os.path.isdir(self.folder):
                shutil.rmtree(self.folder)
            os.makedirs(self.folder)
            write_json(manifest, {"key": self.key, "fingerprint": fingerprint})

    def _chunk_path(self, start, stop):
        return os.path.join(self.folder, "chunk-%012d-%012d.npy" % (start, stop))

    def load_chunk(self, start, stop):
        path = self._chunk_path(start, stop)
        if not os.path.isfile(path):
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError):   # a damaged file: recompute that chunk
            return None

    def save_chunk(self, start, stop, values):
        write_npy(self._chunk_path(start, stop), values)

    def save_array(self, name, values):
        write_npy(os.path.join(self.folder, name + ".npy"), values)

    def load_array(self, name):
        path = os.path.join(self.folder, name + ".npy")
        return np.load(path, allow_pickle=False) if os.path.isfile(path) else None

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def _bar(progress, total, desc):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="chunk", file=sys.stderr, leave=False, dynamic_ncols=True)


def run_chunks(compute, n, chunk_size=DEFAULT_CHUNK_SIZE, checkpoint=None, progress=False,
               desc="scoring", executor=None):
    """Compute ``compute(start, stop)`` for every chunk of ``range(n)`` and concatenate the results
    along their last axis (rows). Returns ``(values, info)`` with ``info`` = {"chunks", "computed",
    "resumed"}.

    ``checkpoint``: a :class:`Checkpoint`; finished chunks are saved as they complete and reused.
    ``executor``: a callable ``executor(missing_bounds, on_done)`` that computes the missing chunks
    elsewhere and calls ``on_done(start, stop, values)`` for each as it finishes (any order); the
    default computes them here, in order.
    """
    bounds = chunk_bounds(n, chunk_size)
    done = set()
    out = [None]        # the (..., n) result, allocated at the first chunk and filled in place

    def store(a, b, values):
        if out[0] is None:
            out[0] = np.empty(values.shape[:-1] + (n,), dtype=values.dtype)
        out[0][..., a:b] = values
        done.add((a, b))

    if checkpoint is not None:
        for a, b in bounds:
            got = checkpoint.load_chunk(a, b)
            if got is not None and got.shape[-1] == b - a and (out[0] is None or got.shape[:-1] == out[0].shape[:-1]):
                store(a, b, got)
    resumed = len(done)
    missing = [ab for ab in bounds if ab not in done]
    bar = _bar(progress, len(bounds), desc)
    if bar is not None:
        bar.update(resumed)

    def on_done(a, b, values):
        values = np.asarray(values)
        if values.shape[-1] != b - a:
            raise RuntimeError("chunk %d:%d returned %d rows" % (a, b, values.shape[-1]))
        if checkpoint is not None:
            checkpoint.save_chunk(a, b, values)
        store(a, b, values)
        if bar is not None:
            bar.update(1)

    delay = _test_delay()
    try:
        if executor is None:
            for a, b in missing:
                on_done(a, b, compute(a, b))
                if delay:
                    time.sleep(delay)
        else:
            executor(missing, on_done)
    finally:
        if bar is not None:
            bar.close()
    values = out[0] if out[0] is not None else np.zeros((0,))
    info = {"chunks": len(bounds), "computed": len(missing), "resumed": resumed}
    if checkpoint is not None and isinstance(getattr(checkpoint, "stats", None), dict):
        for key, value in info.items():
            checkpoint.stats[key] = checkpoint.stats.get(key, 0) + value
    return values, info
