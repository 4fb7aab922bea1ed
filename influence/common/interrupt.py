"""Ctrl-C, whatever form it arrives in: a KeyboardInterrupt, or the SystemError CNTK's SWIG calls
turn it into (see :mod:`influence.adapters.cntk.runtime`). Every retry (a chunk's, a CNTK call's)
asks :func:`is_interrupt` first and never retries Ctrl-C; the command line installs the SIGINT flag."""
import signal
import threading

__all__ = ["is_interrupt", "install_sigint_flag", "SWIG_ERROR_SET"]

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
