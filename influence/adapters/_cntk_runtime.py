"""Importing CNTK (the one place that does it) and calling it with the retry its intermittent
"... is a view" error needs; the adapter, its graph rewriting and per-example gradients use both.

Ctrl-C inside a CNTK call: CNTK's SWIG wrappers run Python code (array conversion) during a call;
when SIGINT arrives then, Python's handler raises KeyboardInterrupt in that code, the wrapper
ignores it and returns a result, and CPython reports ``SystemError: <built-in function ...>
returned a result with an error set`` (the KeyboardInterrupt as its ``__cause__``).
:func:`is_interrupt` recognises such an error and :func:`_cntk_call` turns it back into the
KeyboardInterrupt it is, so that no retry (the view-error retry here, the chunk retry of
:mod:`influence.chunks`) ever takes Ctrl-C for a failure.
"""
import signal
import sys
import threading
import warnings

__all__ = ["import_cntk", "VIEW_ERROR_RETRIES", "is_interrupt", "install_sigint_flag"]


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
    from ..threads import _apply
    _apply(fresh)                        # the threads chosen by influence.set_threads, if any
    return cntk


#: CNTK 2.7 now and then fails a call with "Resize: Cannot resize the matrix because it is a view"
#: (microsoft/CNTK#1354, open upstream). Seen here on Dask workers summing float32 gradients over
#: 500,000 memory-mapped rows; a second attempt of the same call succeeded. A call that fails that
#: way is repeated up to this many times (it changes no weights and returns nothing partial).
VIEW_ERROR_RETRIES = 2

#: CPython's wording for a C function that returned a value with an exception pending (what a
#: KeyboardInterrupt raised during a SWIG call becomes).
SWIG_ERROR_SET = "returned a result with an error set"

#: SIGINTs received by the handler of :func:`install_sigint_flag` and not yet accounted for by a
#: conversion (:func:`is_interrupt` consumes one when it relies on it).
_pending_sigint = [0]


def _on_sigint(signum, frame):
    _pending_sigint[0] += 1
    raise KeyboardInterrupt


def install_sigint_flag():
    """Make SIGINT also raise a flag while keeping its usual effect (KeyboardInterrupt): then a
    SystemError with CPython's "returned a result with an error set" wording that lost its
    KeyboardInterrupt cause is still recognised as Ctrl-C while the flag is up. Installed only over
    Python's default handler, in the main thread (the command line does it); returns a function that
    puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return lambda: None
    _pending_sigint[0] = 0
    signal.signal(signal.SIGINT, _on_sigint)

    def restore():
        if signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    return restore


def _chain(error):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_interrupt(error):
    """True when ``error`` is Ctrl-C: a KeyboardInterrupt, or a SystemError whose cause or context
    is one (CNTK's SWIG calls, see the module docstring), or a SystemError with CPython's "returned a
    result with an error set" wording while a SIGINT caught by :func:`install_sigint_flag`'s handler
    is pending (that SIGINT is then accounted for)."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if not isinstance(error, SystemError):
        return False
    if any(isinstance(e, KeyboardInterrupt) for e in _chain(error)):
        return True
    if _pending_sigint[0] > 0 and SWIG_ERROR_SET in str(error):
        _pending_sigint[0] -= 1
        return True
    return False


def _cntk_call(call):
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
