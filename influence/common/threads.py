"""CPU threads of CNTK's math (OpenMP/MKL): chosen deliberately, not left to the library.

CNTK's OpenMP threads spin while they wait. Two runs sharing a 2-core machine with the default (one
thread per core each) were 3-4x slower than one run alone, their CPU time rising by the same
factor; with one thread each they ran as fast as alone, and on an idle machine one thread was as
fast as two for these models (bench/bench_threads.py, docs/performance.md). Hence
:data:`DEFAULT_THREADS` = 1 for the command line (``--threads N``), and always 1 for work that runs
several processes at once (Dask workers, parallel retrainings): :func:`worker_threads`.

:func:`set_threads` sets the number for this process: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (read
when CNTK's libraries load, and inherited by child processes) and, once CNTK is loaded, the same
number through ``cntk.cntk_py.set_max_num_cputhreads``, right after the import. CNTK 2.7 crashes
(SIGFPE, seen in a CNN's gradient) when that call comes later, after it has computed, or with a number
other than the OpenMP thread count it loaded with, so the number of a process whose CNTK is already
loaded is never changed: :func:`set_threads` then keeps it and warns when it differs. Call it before the first CNTK use (the command line does, before anything else). Python code
that never calls it keeps CNTK's own default.
"""
import numbers
import os
import sys
import warnings

__all__ = ["set_threads", "get_threads", "worker_threads", "apply_threads", "DEFAULT_THREADS", "THREAD_VARIABLES"]

#: Threads per process of the command line (``--threads``), from bench/bench_threads.py.
DEFAULT_THREADS = 1
#: The environment variables OpenMP and MKL read when they load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_chosen = [None]
#: The OpenMP thread count CNTK loaded with in this process (None: not loaded yet).
_loaded_with = [None]


def _check(n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ValueError("threads=%r is not an integer; pass a number of threads >= 1 (e.g. threads=1)" % (n,))
    n = int(n)
    if n < 1:
        raise ValueError("threads=%d is not a positive integer; pass a number of threads >= 1 (e.g. threads=1)" % n)
    return n


def set_threads(n=DEFAULT_THREADS, warn=True):
    """Use ``n`` CPU threads for CNTK's math in this process (and in the processes it starts).
    Returns the number in effect: ``n``, or, when CNTK is already loaded with another number, that
    one (with a RuntimeWarning unless ``warn=False``: changing it in a running process crashes CNTK
    2.7)."""
    return _set(_check(n), warn=warn)


def get_threads():
    """The number in effect after :func:`set_threads`, or None (CNTK's own default) when it was never
    called."""
    return _chosen[0]


def worker_threads():
    """One thread: for a process that is one of several working at once (a Dask worker, a parallel
    retraining), whatever this process uses."""
    return _set(1, warn=True)


def _cntk_loaded():
    return "cntk" in sys.modules


def _default_threads():
    """The OpenMP thread count CNTK loads with now: OMP_NUM_THREADS, else one per core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _set(n, warn):
    if _cntk_loaded() and _loaded_with[0] is None:
        _loaded_with[0] = _default_threads()      # loaded before influence saw it: what it read then
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)                 # child processes, and a CNTK not loaded yet
    _chosen[0] = n if _loaded_with[0] is None else _loaded_with[0]
    if _loaded_with[0] is not None and _loaded_with[0] != n:
        if warn:
            warnings.warn("CNTK is already loaded with %d CPU thread(s) in this process and CNTK 2.7 crashes "
                          "when the number changes, so it stays %d; call influence.set_threads(%d) before the "
                          "first CNTK use (or set OMP_NUM_THREADS=%d)" % (_loaded_with[0], _loaded_with[0], n, n),
                          RuntimeWarning, stacklevel=3)
        return _loaded_with[0]
    return n


def apply_threads(fresh=False):
    """After an import of CNTK (influence.adapters imports it lazily and calls this; ``fresh``: this
    import loaded it): note the OpenMP thread count it loaded with and, right after loading, before any
    computation, hand CNTK the same number. Never later, never another number: CNTK 2.7 was seen to
    crash (SIGFPE in a CNN's gradient) when set_max_num_cputhreads ran after it had trained a network."""
    cntk = sys.modules.get("cntk")
    if cntk is None:
        return
    if _loaded_with[0] is None:
        _loaded_with[0] = _default_threads()
    if not fresh or _chosen[0] is None or _chosen[0] != _loaded_with[0]:
        return
    setter = getattr(getattr(cntk, "cntk_py", None), "set_max_num_cputhreads", None)
    if setter is not None:
        setter(int(_chosen[0]))
