"""CNTK 2.7's intermittent "Resize: Cannot resize the matrix because it is a view" (microsoft/CNTK#1354)
is retried by the adapter: a call that fails that way once gives the same numbers; one that keeps
failing, or fails otherwise, raises."""
import numpy as np
import pytest

VIEW_ERROR = "Resize: Cannot resize the matrix because it is a view.\n\n[CALL STACK]"


class Flaky(object):
    """A CNTK Function stand-in that fails its first ``failures`` grad/eval calls with ``message``."""

    def __init__(self, f, failures, message=VIEW_ERROR):
        self._f, self.failures, self.message, self.calls = f, failures, message, 0

    def __getattr__(self, name):
        return getattr(self._f, name)

    def _maybe_fail(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(self.message)

    def grad(self, *a, **k):
        self._maybe_fail()
        return self._f.grad(*a, **k)

    def eval(self, *a, **k):
        self._maybe_fail()
        return self._f.eval(*a, **k)


@pytest.fixture
def model(cntk):
    import influence
    from influence.adapters.cntk import build_network
    rng = np.random.RandomState(0)
    x, y = rng.standard_normal((40, 5)), rng.randint(0, 3, 40)
    m = influence.CNTKModel(build_network(5, 3, hidden=(4,), dtype=np.float64), l2=1e-2)
    return m, m.validate((x, y))


def test_a_view_error_is_retried_and_changes_nothing(model):
    from influence.adapters.cntk.runtime import VIEW_ERROR_RETRIES
    m, data = model
    w0 = m.get_params()
    g, losses = m.grad_sum(data), m.per_example_losses(data)
    real = m.loss_function
    try:
        m.loss_function = flaky = Flaky(real, failures=VIEW_ERROR_RETRIES)
        assert np.array_equal(m.grad_sum(data), g)
        assert flaky.calls == VIEW_ERROR_RETRIES + 1
        m.loss_function = Flaky(real, failures=1)
        assert np.array_equal(m.per_example_losses(data), losses)
    finally:
        m.loss_function = real
    assert np.array_equal(m.get_params(), w0)


def test_a_persistent_view_error_and_other_errors_are_raised(model):
    from influence.adapters.cntk.runtime import VIEW_ERROR_RETRIES
    m, data = model
    real = m.loss_function
    try:
        m.loss_function = Flaky(real, failures=VIEW_ERROR_RETRIES + 1)
        with pytest.raises(RuntimeError, match="is a view"):
            m.grad_sum(data)
        m.loss_function = flaky = Flaky(real, failures=1, message="some other CNTK error")
        with pytest.raises(RuntimeError, match="some other"):
            m.grad_sum(data)
        assert flaky.calls == 1
    finally:
        m.loss_function = real
