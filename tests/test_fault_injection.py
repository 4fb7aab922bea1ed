"""Fault injection: weights never change.

For every entry point that shifts parameters (HessianOperator products and calibration, the solvers
cg / lissa / lanczos / direct, s_test, forward and gradient scoring, self-influence, check_optimum,
fit and its caller verify_loo, and CNTK's influence.curvature.hessian) an exception — and separately a
KeyboardInterrupt — is raised on the k-th call of each model primitive (``set_params`` when it
shifts the weights, AFTER the shift has been applied; ``_grad_sum``, ``_loss_and_grad_sum``, ``_per_example_losses`` and
``_per_example_grads`` before they compute), for k spread over 1..(number of calls the entry point
makes). The exception must propagate and the weights must be bit-identical afterwards.

Plus: the CLI never writes the model file (bytes and mtime unchanged after hvp/score/self/verify).
"""
import os
import warnings

import numpy as np
import pytest

import influence
from influence import solvers
from influence.scoring.chunks import ChunkRetryWarning
from influence.curvature.hessian import HessianOperator
from influence.models import SoftmaxRegression
from conftest import make_classification

TARGETS = ("set_params", "_grad_sum", "_loss_and_grad_sum", "_per_example_losses", "_per_example_grads")


class Injected(Exception):
    pass


class _Injector(object):
    """Wraps the primitives of one model instance; counts calls, raises on call ``k`` of ``target``."""

    def __init__(self, model, target=None, k=None, exc=None):
        self.model, self.target, self.k, self.exc = model, target, k, exc
        self.counts = dict.fromkeys(TARGETS, 0)
        self.reference = model.get_params()
        self.originals = {}
        for name in TARGETS:
            original = getattr(model, name)
            self.originals[name] = original
            setattr(model, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def wrapped(*args):
            if name == "set_params":
                shifting = np.asarray(args[0]).astype(self.reference.dtype).tobytes() != self.reference.tobytes()
                if not shifting:                  # a restore: never sabotaged, not counted
                    return original(*args)
                self.counts[name] += 1
                result = original(*args)          # the shift is applied, THEN the failure hits
                if name == self.target and self.counts[name] == self.k:
                    raise self.exc("injected")
                return result
            self.counts[name] += 1
            if name == self.target and self.counts[name] == self.k:
                raise self.exc("injected")
            return original(*args)
        return wrapped

    def remove(self):
        for name in TARGETS:
            try:
                delattr(self.model, name)
            except AttributeError:
                setattr(self.model, name, self.originals[name])


def _ks(count, at_most):
    if count <= at_most:
        return list(range(1, count + 1))
    return sorted(set(np.linspace(1, count, at_most).round().astype(int).tolist()))


def _inject_everywhere(make_model, entry, at_most, excs=(Injected, KeyboardInterrupt), changes_weights=False):
    """Dry-run ``entry(model)`` counting calls, then inject at each (target, k, exc); returns the number
    of injections made. ``make_model()`` returns a fresh model (or the same one; weights are checked)."""
    model = make_model()
    probe = _Injector(model)
    try:
        entry(model)
    finally:
        probe.remove()
    if changes_weights:                  # fit: moves the weights on success (only), by design
        model.set_params(probe.reference)
    assert model.get_params().tobytes() == probe.reference.tobytes()
    injections = 0
    for target in TARGETS:
        for k in _ks(probe.counts[target], at_most):
            for exc in excs:
                model = make_model()
                before = model.get_params()
                inj = _Injector(model, target, k, exc)
                raised = False
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        entry(model)
                except exc:
                    raised = True
                finally:
                    inj.remove()
                # a failure inside a chunk of a scoring run is computed again once (run_chunks):
                # then the entry point succeeds, and says so with a ChunkRetryWarning
                assert raised or any(issubclass(w.category, ChunkRetryWarning) for w in caught), (target, k, exc)
                after = model.get_params()
                assert after.dtype == before.dtype and after.tobytes() == before.tobytes(), (target, k, exc)
                injections += 1
    return injections, probe.counts


# ---------------------------------------------------------------------------------------- NumPy models
def _numpy_problem(dtype):
    x, y = make_classification(48, 3, 3, seed=5)
    train, test = (x[:40], y[:40]), (x[40:42], y[40:42])
    model = SoftmaxRegression(3, 3, l2=0.1, dtype=dtype, random_state=1, scale=0.5)
    influence.fit(model, train, gtol=1e-9)
    return model, train, test


def _entries(train, test):
    b = np.linspace(-1.0, 1.0, 12)
    S = np.vstack([b, b[::-1]])
    return {
        "HessianOperator @ v": lambda m: HessianOperator(m, train) @ b,
        "HessianOperator.calibrate": lambda m: HessianOperator(m, train, stencil="richardson").calibrate(),
        "cg": lambda m: solvers.cg(HessianOperator(m, train, rel_step=1e-3), b, damping=0.01),
        "lissa": lambda m: solvers.lissa(HessianOperator(m, train, rel_step=1e-3), b, damping=0.01, maxiter=20,
                                         batch_size=8, power_steps=3, rtol=0),
        "lanczos": lambda m: solvers.lanczos(HessianOperator(m, train, rel_step=1e-3), b, k=4),
        "direct": lambda m: solvers.direct(HessianOperator(m, train, rel_step=1e-3), b, damping=0.01),
        "s_test": lambda m: influence.s_test(m, train, test, solver="cg", damping=0.01),
        "forward scoring": lambda m: influence.influence_scores(m, train, test, solver="direct", chunk_size=16),
        "gradient scoring": lambda m: influence.influence_scores(m, train, test, solver="direct",
                                                                 scoring="gradient", check_optimum=False),
        "directional_derivatives": lambda m: influence.directional_derivatives(m, train, S),
        "self_influence exact": lambda m: influence.self_influence(m, train, chunk_size=16),
        "self_influence lanczos": lambda m: influence.self_influence(m, train, method="lanczos", k=3,
                                                                     check_optimum=False),
        "check_optimum": lambda m: influence.check_optimum(m, train),
        "fit": lambda m: influence.fit(m, train, gtol=1e-12, maxiter=5),
        "verify_loo": lambda m: influence.verify_loo(m, train, test, indices=[0, 7], scores=np.zeros((2, 40)),
                                                     maxiter=5),
    }


_NUMPY_ENTRIES = sorted(_entries(None, None))


@pytest.fixture(scope="module", params=[np.float64, np.float32], ids=["float64", "float32"])
def numpy_problem(request):
    return _numpy_problem(request.param)


@pytest.mark.parametrize("entry", _NUMPY_ENTRIES)
def test_numpy_weights_bit_identical_after_injected_failures(numpy_problem, entry):
    model, train, test = numpy_problem
    call = _entries(train, test)[entry]
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n, counts = _inject_everywhere(lambda: model, call, at_most=5, changes_weights=entry == "fit")
    assert n >= 2 * 3, counts          # every entry point was actually sabotaged several times


# ---------------------------------------------------------------------------------------- CNTK
@pytest.fixture(scope="module")
def cntk_problem(cntk):
    from influence.adapters.cntk import CNTKModel, build_network
    x, y = make_classification(48, 3, 3, seed=5)
    train, test = (x[:40], y[:40]), (x[40:42], y[40:42])
    model = CNTKModel(build_network(3, 3, hidden=(2,), seed=2), l2=0.1)
    influence.fit(model, train, gtol=1e-7, maxiter=300)
    return model, train, test


@pytest.mark.parametrize("entry", ["HessianOperator @ v", "cg", "lissa", "lanczos", "s_test", "forward scoring",
                                   "gradient scoring", "self_influence lanczos", "verify_loo"])
def test_cntk_weights_bit_identical_after_injected_failures(cntk_problem, entry):
    model, train, test = cntk_problem
    b_len = model.n_params
    entries = _entries(train, test)
    b = np.linspace(-1.0, 1.0, b_len)
    if entry in ("HessianOperator @ v", "cg", "lissa", "lanczos"):
        solve = {"cg": lambda H: solvers.cg(H, b, damping=0.01),
                 "lissa": lambda H: solvers.lissa(H, b, damping=0.01, maxiter=10, batch_size=8, power_steps=3,
                                                  rtol=0),
                 "lanczos": lambda H: solvers.lanczos(H, b, k=3),
                 "HessianOperator @ v": lambda H: H @ b}[entry]
        rel = None if entry == "HessianOperator @ v" else 1e-2
        call = lambda m: solve(HessianOperator(m, train, rel_step=rel))   # noqa: E731
    else:
        call = entries[entry]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n, counts = _inject_everywhere(lambda: model, call, at_most=3)
    assert n >= 2 * 2, counts


@pytest.mark.parametrize("exc", [Injected, KeyboardInterrupt])
def test_cntk_hvp_function_restores_parameters(cntk, exc):
    """influence.hvp(y, x, v) on a bare CNTK Function: fail on the k-th gradient or shifting set_params."""
    from influence.adapters.cntk import FunctionGradient, ParameterVector, build_network
    z = build_network(3, 3, hidden=(2,), seed=3)
    C = cntk
    lab = C.input_variable(3, dtype=np.float32, name="labels")
    y = C.cross_entropy_with_softmax(z, lab)
    x, labels = make_classification(10, 3, 3, seed=1)
    feed = {z.arguments[0]: x.astype(np.float32), lab: np.eye(3, dtype=np.float32)[labels]}
    v = {p: np.ones(p.shape) for p in y.parameters}
    before = [p.value.copy() for p in y.parameters]
    calls = {"grad": 0, "set": 0}
    orig_call, orig_set = FunctionGradient.__call__, ParameterVector.set_params
    influence.hvp(y, feed, v)
    total = {}

    def counting_call(self):
        calls["grad"] += 1
        if calls["grad"] == total.get("k_grad"):
            raise exc("injected")
        return orig_call(self)

    def counting_set(self, w):
        orig_set(self, w)
        calls["set"] += 1
        if calls["set"] == total.get("k_set"):
            raise exc("injected")

    FunctionGradient.__call__, ParameterVector.set_params = counting_call, counting_set
    try:
        influence.hvp(y, feed, v)
        n_grad, n_set = calls["grad"], calls["set"]
        for key, count in (("k_grad", n_grad), ("k_set", n_set)):
            for k in _ks(count, 4):
                total.clear()
                total[key] = k
                calls["grad"] = calls["set"] = 0
                with pytest.raises(exc):
                    influence.hvp(y, feed, v)
                for p, b0 in zip(y.parameters, before):
                    assert p.value.tobytes() == b0.tobytes(), (key, k)
    finally:
        FunctionGradient.__call__, ParameterVector.set_params = orig_call, orig_set
    assert n_grad >= 4 and n_set >= 4


# ---------------------------------------------------------------------------------------- the CLI
def test_cli_never_writes_the_model_file(cntk, tmp_path):
    import contextlib
    import io
    from influence.cli import main
    x, y = influence.load_digits()
    train, test, model = str(tmp_path / "t.npz"), str(tmp_path / "q.npz"), str(tmp_path / "m.cntk")
    np.savez(train, x=x[:150], y=y[:150])
    np.savez(test, x=x[1500:1503], y=y[1500:1503])
    np.save(str(tmp_path / "v.npy"), np.ones(650))
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        assert main(["train", "--data", train, "--l2", "1e-2", "--out", model, "--quiet"]) == 0
    os.utime(model, ns=(1000000000 * 10 ** 9, 1000000000 * 10 ** 9))
    os.utime(model + ".json", ns=(1000000000 * 10 ** 9, 1000000000 * 10 ** 9))

    def state():
        return [(open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in (model, model + ".json")]

    before = state()
    commands = [
        ["hvp", "--model", model, "--data", train, "--vector", str(tmp_path / "v.npy"), "--out", str(tmp_path / "hv.npy")],
        ["score", "--model", model, "--train", train, "--test", test, "--test-index", "0", "--out", str(tmp_path / "s.csv")],
        ["self", "--model", model, "--train", train, "--out", str(tmp_path / "r.csv")],
        ["verify", "--model", model, "--train", train, "--test", test, "--test-index", "0", "--retrainings", "2"],
    ]
    for argv in commands:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            assert main(argv + ["--quiet"]) == 0, sink.getvalue()
        assert state() == before, argv[0]
