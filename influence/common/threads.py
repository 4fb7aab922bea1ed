"""CPU threads of CNTK's math (OpenMP/MKL): chosen deliberately, not left to the library.

CNTK's OpenMP threads spin while they wait. Two runs sharing a 2-core machine with the default (one
thread per core each) were 3-4x slower than one run alone, their CPU time rising by the same
factor; with one thread each they ran as fast as alone, and on an idle machine one thread was as
fast as two for these models (bench/bench_threads.py, docs/performance.md). Hence
:data:`DEFAULT_THREADS` = 1 for the command line (``--threads N``), and always 1 for work that runs
several processes at once (Dask workers, parallel retrainings): :func:`worker_threads`.

:func:`set_threads` sets the number for this process: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (read
when CNTK's libraries load, and inherited by child processes) and, when CNTK is loaded,
``cntk.cntk_py.set_max_num_cputhreads``. Python code that never calls it keeps CNTK's own default.
"""
import numbers
import os
import sys

__all__ = ["set_threads", "get_threads", "worker_threads", "apply_threads", "DEFAULT_THREADS", "THREAD_VARIABLES"]

#: Threads per process of the command line (``--threads``), from bench/bench_threads.py.
DEFAULT_THREADS = 1
#: The environment variables OpenMP and MKL read when they load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_chosen = [None]


def _check(n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ValueError("threads=%r is not an integer; pass a number of threads >= 1 (e.g. threads=1)" % (n,))
    n = int(n)
    if n < 1:
        raise ValueError("threads=%d is not a positive integer; pass a number of threads >= 1 (e.g. threads=1)" % n)
    return n


def set_threads(n=DEFAULT_THREADS):
    """Use ``n`` CPU threads for CNTK's math in this process (and in the processes it starts).
    Returns ``n``. Call it before the work; it also takes effect on an already loaded CNTK."""
    n = _check(n)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    _chosen[0] = n
    apply_threads()
    return n


def get_threads():
    """The number set by :func:`set_threads`, or None (CNTK's own default) when it was never called."""
    return _chosen[0]


def worker_threads():
    """One thread: for a process that is one of several working at once (a Dask worker, a parallel
    retraining), whatever this process uses."""
    return set_threads(1)


def apply_threads():
    """Hand the chosen number to CNTK when it is loaded (influence.adapters imports it lazily and
    calls this after the import)."""
    cntk = sys.modules.get("cntk")
    if _chosen[0] is None or cntk is None:
        return
    setter = getattr(getattr(cntk, "cntk_py", None), "set_max_num_cputhreads", None)
    if setter is not None:
        setter(int(_chosen[0]))
