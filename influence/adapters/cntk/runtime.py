"""Importing CNTK (the one place that does it) and calling it with the retry its intermittent
"... is a view" error needs; the adapter, its graph rewriting and per-example gradients use both.

Ctrl-C inside a CNTK call: CNTK's SWIG wrappers run Python code (array conversion) during a call;
when SIGINT arrives then, Python's handler raises KeyboardInterrupt in that code, the wrapper
ignores it and returns a result, and CPython reports ``SystemError: <built-in function ...>
returned a result with an error set`` (the KeyboardInterrupt as its ``__cause__``).
:func:`influence.common.interrupt.is_interrupt` recognises such an error and :func:`cntk_call` turns
it back into the KeyboardInterrupt it is, so that no retry (the view-error retry here, the chunk
retry of :mod:`influence.scoring.chunks`) ever takes Ctrl-C for a failure.
"""
import os
import sys
import warnings

from ...common.interrupt import is_interrupt

__all__ = ["import_cntk", "cntk_call", "Quiet", "first_line", "VIEW_ERROR_RETRIES"]


def import_cntk():
    """Import CNTK with its start-up warnings silenced; a clear error when it is unavailable."""
    fresh = "cntk" not in sys.modules
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cntk
    except ImportError as e:
        raise ImportError(
            "CNTK is not importable (%s); it needs Python 3.5/3.6 with cntk==2.7.post2 and OpenMPI: "
            "run 'make venv' and use .venv/bin/python (see docs/installing.md)" % e)
    from ...common.threads import apply_threads
    apply_threads(fresh)                 # the threads chosen by influence.set_threads, if any
    return cntk


#: CNTK 2.7 now and then fails a call with "Resize: Cannot resize the matrix because it is a view"
#: (microsoft/CNTK#1354, open upstream). Seen here on Dask workers summing float32 gradients over
#: 500,000 memory-mapped rows; a second attempt of the same call succeeded. A call that fails that
#: way is repeated up to this many times (it changes no weights and returns nothing partial).
VIEW_ERROR_RETRIES = 2


def cntk_call(call):
    """``call()``, repeated on CNTK's intermittent "... because it is a view" error (see
    :data:`VIEW_ERROR_RETRIES`); any other error, or that one too often, is raised. Ctrl-C during
    the call is raised as KeyboardInterrupt (never retried), whatever form CNTK gave it."""
    for attempt in range(VIEW_ERROR_RETRIES + 1):
        try:
            return call()
        except SystemError as e:
            if is_interrupt(e):
                raise KeyboardInterrupt() from e
            raise
        except RuntimeError as e:
            if "because it is a view" not in str(e) or attempt == VIEW_ERROR_RETRIES:
                raise


class Quiet(object):
    """Silence CNTK's C++ stderr noise (file descriptor 2) for the duration of a block."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)


def first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
