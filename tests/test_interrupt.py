"""Ctrl-C in the forms CNTK gives it (issue 22 item 1): a SystemError whose cause is the
KeyboardInterrupt, or CPython's "returned a result with an error set" wording while a SIGINT is
pending, is an interrupt; the chunk retry never retries one; a real CNTK call interrupted mid-way
raises KeyboardInterrupt from _cntk_call and the weights are restored. The CLI side (exit 130,
--resume) is tests/test_cli_interrupt.py."""
import os
import signal
import threading
import warnings

import numpy as np
import pytest

from influence.adapters.cntk import runtime
from influence.common import interrupt
from influence.scoring.chunks import ChunkRetryWarning, run_chunks

SWIG_TEXT = "<built-in function Function_gradients> returned a result with an error set"


def _swig_error(cause):
    """A SystemError as CPython makes it when a C function returns with ``cause`` pending."""
    try:
        try:
            raise cause
        except BaseException as e:
            raise SystemError(SWIG_TEXT) from e
    except SystemError as e:
        return e


def test_is_interrupt_follows_the_cause_chain():
    assert interrupt.is_interrupt(KeyboardInterrupt())
    assert interrupt.is_interrupt(_swig_error(KeyboardInterrupt()))
    nested = _swig_error(_swig_error(KeyboardInterrupt()))          # Parameter.__hash__ inside gradients
    assert interrupt.is_interrupt(nested)
    assert not interrupt.is_interrupt(_swig_error(ValueError("x")))
    assert not interrupt.is_interrupt(SystemError(SWIG_TEXT))          # no pending SIGINT: a real error
    assert not interrupt.is_interrupt(RuntimeError("because it is a view"))


def test_the_sigint_flag_recognises_a_swig_error_that_lost_its_cause():
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("needs Python's default SIGINT handler in the main thread")
    restore = interrupt.install_sigint_flag()
    try:
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):                # the handler runs at the next bytecode boundary
                pass
        assert interrupt.is_interrupt(SystemError(SWIG_TEXT))
        assert not interrupt.is_interrupt(SystemError(SWIG_TEXT))     # one SIGINT, one conversion
        assert not interrupt.is_interrupt(SystemError("some other C error"))
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_cntk_call_raises_keyboard_interrupt_and_never_retries_it():
    calls = []

    def call():
        calls.append(1)
        raise _swig_error(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as info:
        runtime.cntk_call(call)
    assert len(calls) == 1 and isinstance(info.value.__cause__, SystemError)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), _swig_error(KeyboardInterrupt())],
                         ids=["KeyboardInterrupt", "SystemError"])
def test_the_chunk_retry_never_catches_ctrl_c(error):
    calls = []

    def compute(a, b):
        calls.append((a, b))
        if a == 2:
            raise error
        return np.zeros(b - a)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyboardInterrupt):
            run_chunks(compute, 6, chunk_size=2, retries=3)
    assert calls == [(0, 2), (2, 4)]
    assert not [w for w in caught if issubclass(w.category, ChunkRetryWarning)]


def test_sigint_inside_a_real_cntk_call(cntk):
    """SIGINT sent by another thread while the main thread is inside one long CNTK gradient call:
    KeyboardInterrupt (CNTK's SystemError converted), and the weights moved by preserving_params are
    restored bit-identically."""
    import influence
    from influence.adapters.cntk import build_network
    rng = np.random.RandomState(0)
    x = rng.standard_normal((20000, 200))
    y = rng.randint(0, 10, 20000)
    model = influence.CNTKModel(build_network(200, 10, hidden=(300, 300), dtype=np.float64), l2=1e-3,
                                batch_size=20000)
    w0 = model.get_params()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        with model.preserving_params():
            model.set_params(w0 + 1.0)
            timer.start()
            for _ in range(200):                 # each pass well over 0.3 s: the signal lands inside one
                model.grad((x, y))
    timer.join()
    assert np.array_equal(model.get_params(), w0)
