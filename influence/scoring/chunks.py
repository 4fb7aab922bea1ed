"""Chunked runs over the rows of a training set.

Scoring every training point is embarrassingly parallel over rows: :func:`run_chunks` splits
``range(n)`` into consecutive chunks, computes each with ``compute(start, stop)`` and assembles the
results in row order. A checkpoint (e.g. :class:`influence.jobs.Checkpoint`) saves every finished
chunk as it completes and hands back saved ones; an ``executor`` (e.g.
:class:`influence.dask.executor.DaskExecutor`) computes the missing chunks elsewhere.
"""
import sys
import warnings

import numpy as np

from ..common.interrupt import is_interrupt
from ..data import check_batch_size

__all__ = ["run_chunks", "chunk_bounds", "ChunkRetryWarning", "DEFAULT_CHUNK_SIZE", "CHUNK_RETRIES"]

#: Training rows per chunk: the unit of progress, checkpointing and distribution.
DEFAULT_CHUNK_SIZE = 10000
#: Extra attempts of a chunk computed here that raised an error other than ValueError/TypeError (a
#: refusal): CNTK has been seen to fail sporadically inside a forward pass (``Resize: Cannot resize the
#: matrix because it is a view``) and succeed on the same rows the next time.
CHUNK_RETRIES = 1


class ChunkRetryWarning(RuntimeWarning):
    """A chunk failed and is computed again (the message names the chunk and the error)."""


def chunk_bounds(n, chunk_size):
    """[(start, stop), ...] covering range(n) in consecutive chunks of ``chunk_size`` rows."""
    size = check_batch_size(chunk_size, "chunk_size")
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _bar(progress, total, desc):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="chunk", file=sys.stderr, leave=False, dynamic_ncols=True)


def _with_retries(compute, a, b, retries):
    """compute(a, b), run again up to ``retries`` times after an unexpected error, with a warning.
    KeyboardInterrupt is never caught, nor Ctrl-C in the form CNTK gives it (see
    :func:`influence.common.interrupt.is_interrupt`): it is raised as KeyboardInterrupt."""
    for attempt in range(retries + 1):
        try:
            return compute(a, b)
        except (ValueError, TypeError):
            raise
        except Exception as e:
            if is_interrupt(e):          # Ctrl-C inside a CNTK call (a SystemError): never retried
                raise KeyboardInterrupt() from e
            if attempt == retries:
                raise
            text = str(e).strip().splitlines()
            warnings.warn("chunk %d:%d failed (%s: %s); computing it again (attempt %d of %d)"
                          % (a, b, type(e).__name__, text[0] if text else "", attempt + 2, retries + 1),
                          ChunkRetryWarning, stacklevel=3)


def run_chunks(compute, n, chunk_size=DEFAULT_CHUNK_SIZE, checkpoint=None, progress=False,
               desc="scoring", executor=None, retries=CHUNK_RETRIES, sink=None, width=None):
    """Compute ``compute(start, stop)`` for every chunk of ``range(n)`` and concatenate the results
    along their last axis (rows). Returns ``(values, info)`` with ``info`` = {"chunks", "computed",
    "resumed"}.

    ``sink``: a callable ``sink(start, stop, values)`` that receives every chunk (resumed ones as
    they are loaded, computed ones as they finish, in no set order) instead of the assembly: then
    nothing is concatenated, ``values`` is None and memory holds one chunk at a time.

    ``width``: every chunk's values are a vector of this length instead of one column per row (sums
    over the chunk's rows, e.g. EK-FAC's factors: :class:`influence.jobs.FactorJob`); needs ``sink``.

    ``checkpoint``: an object with ``load_chunk(start, stop)`` (None when absent) and
    ``save_chunk(start, stop, values)``, e.g. :class:`influence.jobs.Checkpoint`; finished chunks are
    saved as they complete and reused. ``executor``: a callable ``executor(missing_bounds, on_done)``
    that computes the missing chunks elsewhere and calls ``on_done(start, stop, values)`` for each as
    it finishes (any order); the default computes them here, in order, each retried up to
    ``retries`` times after an unexpected error (a :class:`ChunkRetryWarning` names the chunk).
    """
    bounds = chunk_bounds(n, chunk_size)
    if width is not None and sink is None:
        raise ValueError("run_chunks(width=%r) gives chunks that are not rows: pass a sink" % (width,))

    def columns(a, b):
        return b - a if width is None else width
    done = set()
    out = [None]        # the (..., n) result, allocated at the first chunk and filled in place

    def store(a, b, values):
        if sink is not None:
            sink(a, b, values)
            done.add((a, b))
            return
        if out[0] is None:
            out[0] = np.empty(values.shape[:-1] + (n,), dtype=values.dtype)
        out[0][..., a:b] = values
        done.add((a, b))

    if checkpoint is not None:
        for a, b in bounds:
            got = checkpoint.load_chunk(a, b)
            if got is not None and got.shape[-1:] == (columns(a, b),) and (out[0] is None or got.shape[:-1] == out[0].shape[:-1]):
                store(a, b, got)
            got = None
    resumed = len(done)
    missing = [ab for ab in bounds if ab not in done]
    bar = _bar(progress, len(bounds), desc)
    if bar is not None:
        bar.update(resumed)

    def on_done(a, b, values):
        values = np.asarray(values)
        if values.shape[-1:] != (columns(a, b),):
            raise RuntimeError("chunk %d:%d returned values of shape %s, not %d columns"
                               % (a, b, values.shape, columns(a, b)))
        if checkpoint is not None:
            checkpoint.save_chunk(a, b, values)
        store(a, b, values)
        if bar is not None:
            bar.update(1)

    try:
        if executor is None:
            for a, b in missing:
                on_done(a, b, _with_retries(compute, a, b, retries))
        else:
            executor(missing, on_done)
    finally:
        if bar is not None:
            bar.close()
    values = None if sink is not None else out[0] if out[0] is not None else np.zeros((0,))
    info = {"chunks": len(bounds), "computed": len(missing), "resumed": resumed}
    if checkpoint is not None and isinstance(getattr(checkpoint, "stats", None), dict):
        for key, value in info.items():
            checkpoint.stats[key] = checkpoint.stats.get(key, 0) + value
    return values, info
