"""Shared fixtures. CNTK-dependent tests use the ``cntk`` fixture, which skips them where CNTK is not
importable (the modern-Python environment).

In the CNTK environment the Makefile sets ``INFLUENCE_REQUIRE_CNTK=1``: then a CNTK that does not
import ends the session at its start with exit code :data:`CNTK_MISSING_EXIT` and a message saying
what is broken, instead of skipping every CNTK test.
"""
import os
import sys

# The toolkit's default of one CPU thread per process (influence.set_threads, the CLI's --threads 1).
# CNTK reads OMP_NUM_THREADS when it loads, which in this process is before any CLI call can choose;
# with two threads MKL sums in another order, and the tests that compare this process's output with
# a fresh CLI process's (resume after Ctrl-C, the Dask workers) to the byte then differ: a cg solve of
# 176 iterations turned last-bit differences into 1e-7. Measured: one thread in this process gives the
# same bytes as a fresh process, also after other networks have run. A caller's explicit setting wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from influence.models import SoftmaxRegression, LogisticRegression  # noqa: E402

#: Environment variable that makes an unimportable CNTK a failure of the whole session.
REQUIRE_CNTK_ENV = "INFLUENCE_REQUIRE_CNTK"
#: Exit code of a session stopped because CNTK is required but does not import (pytest's own code
#: for an internal error: neither "tests failed" (1) nor "interrupted" (2)).
CNTK_MISSING_EXIT = 3


def cntk_required():
    return os.environ.get(REQUIRE_CNTK_ENV, "") not in ("", "0")


def _import_cntk():
    from influence.adapters.cntk import import_cntk
    return import_cntk()


def cntk_diagnosis(error):
    """One paragraph naming what is broken when CNTK does not import: the error, and the state of the
    OpenMPI shim that .venv preloads (scripts/_cntk_mpi_shim.py)."""
    shim_dir = os.path.join(sys.prefix, "lib", "mpi-shim")
    libs = [os.path.join(shim_dir, n) for n in ("libmpi.so.12", "libmpi_cxx.so.1")]
    missing = [p for p in libs if not os.path.exists(p)]
    try:
        with open("/proc/self/maps") as f:
            loaded = "libmpi.so.12" in f.read()
    except OSError:
        loaded = None
    if missing:
        shim = "the OpenMPI shim is missing %s (rerun 'make venv')" % ", ".join(missing)
    elif loaded is False:
        shim = ("the OpenMPI shim libraries exist in %s but were not preloaded (check "
                "_cntk_mpi_shim.pth in site-packages)" % shim_dir)
    else:
        shim = "the OpenMPI shim in %s is present and loaded" % shim_dir
    return ("%s=1 but CNTK does not import in %s: %s; %s. The CNTK tests would all be skipped, so the "
            "run stops here." % (REQUIRE_CNTK_ENV, sys.executable, str(error).splitlines()[0], shim))


def pytest_sessionstart(session):
    if not cntk_required():
        return
    try:
        _import_cntk()
    except ImportError as e:
        pytest.exit(cntk_diagnosis(e), returncode=CNTK_MISSING_EXIT)


#: Above this many characters (or bytes), a failed ``==`` between two strings or byte strings is
#: explained by its first differing line instead of pytest's difflib diff, which is quadratic: on two
#: 60 KB score CSVs it ran for over ten minutes and a CI run hit its time limit inside it.
LONG_COMPARISON = 2000


def first_difference(left, right):
    """One short explanation of where ``left`` and ``right`` (str or bytes) first differ."""
    nl = b"\n" if isinstance(left, bytes) else "\n"
    a, b = left.split(nl), right.split(nl)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return ["outputs differ (%d vs %d lines); first at line %d:" % (len(a), len(b), i + 1),
                    "  left:  %r" % (x[:200],), "  right: %r" % (y[:200],),
                    "%d of the first %d lines differ" % (sum(p != q for p, q in zip(a, b)), min(len(a), len(b)))]
    return ["outputs differ in length: %d vs %d lines, the common lines are equal" % (len(a), len(b))]


def _long_outputs(op, left, right):
    return (op == "==" and type(left) is type(right) and isinstance(left, (str, bytes))
            and max(len(left), len(right)) > LONG_COMPARISON)


def pytest_assertrepr_compare(op, left, right):
    if _long_outputs(op, left, right):
        return ["long %s outputs are not equal" % type(left).__name__] + first_difference(left, right)


def _skip_builtin_diff_of_long_outputs():
    """pytest calls every pytest_assertrepr_compare hook and then uses the first answer, so the hook above
    alone does not stop its built-in diff from running: wrap the built-in one to return nothing for long
    outputs (the hook above explains them). Where pytest's internals differ, nothing is changed."""
    try:
        from _pytest.assertion import util
    except ImportError:
        return
    builtin = getattr(util, "assertrepr_compare", None)
    if builtin is None or getattr(builtin, "_skips_long_outputs", False):
        return

    import inspect
    signature = inspect.signature(builtin)     # (config, op, left, right, ...) or (op, left, right, *, ...)

    def assertrepr_compare(*args, **kwargs):
        given = signature.bind(*args, **kwargs).arguments
        if _long_outputs(given.get("op"), given.get("left"), given.get("right")):
            return []                           # no lines: "no explanation" to every pytest version
        return builtin(*args, **kwargs)
    assertrepr_compare._skips_long_outputs = True
    util.assertrepr_compare = assertrepr_compare


_skip_builtin_diff_of_long_outputs()


@pytest.fixture(scope="session")
def cntk():
    try:
        return _import_cntk()
    except ImportError as e:
        if cntk_required():        # unreachable after pytest_sessionstart, kept as a second guard
            pytest.fail(cntk_diagnosis(e), pytrace=False)
        pytest.skip("CNTK not importable here: %s" % str(e).splitlines()[0])


def ctf_number(v):
    return repr(float(v))   # round-trips float64 exactly


def write_ctf(path, x, y=None, n_classes=None, feature="features", label="labels", extra=None):
    """One line per example: |feature values |label one-hot [|weight 1]."""
    with open(path, "w") as f:
        for i in range(len(x)):
            line = "|%s %s" % (feature, " ".join(ctf_number(v) for v in np.ravel(x[i])))
            if y is not None:
                onehot = np.zeros(n_classes)
                onehot[y[i]] = 1
                line += " |%s %s" % (label, " ".join("%g" % v for v in onehot))
            if extra:
                line += " |%s 1" % extra
            f.write(line + "\n")


def die_if_claimed(marker, client_pid):
    """Fault injection for the Dask tests: in a process other than the client (``client_pid``), exit
    at once (os._exit) when this process is the first to claim the file ``marker`` (atomic rename to
    MARKER.PID); so exactly one worker dies, once."""
    if marker and os.getpid() != client_pid and os.path.exists(marker):
        try:
            os.rename(marker, "%s.%d" % (marker, os.getpid()))
        except OSError:
            return
        os._exit(1)


def fail_chunks_from(monkeypatch, n_ok, message="injected failure"):
    """Make the local chunk computation (influence.scoring.scores.chunk_scores) raise RuntimeError(message)
    from call number n_ok + 1 on (so a chunk fails twice: with its retry)."""
    import influence.scoring.scores
    real = influence.scoring.scores.chunk_scores
    calls = {"n": 0}

    def chunk_scores(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise RuntimeError(message)
        return real(*args, **kwargs)
    monkeypatch.setattr(influence.scoring.scores, "chunk_scores", chunk_scores)


def make_classification(n, p, k, seed=0, cond=None):
    """Gaussian features (optionally with singular values spread to condition number ``cond``) and
    labels from a random linear teacher with noise; returns (x, y)."""
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, p))
    if cond is not None:
        u, _, vt = np.linalg.svd(x, full_matrices=False)
        s = np.geomspace(1.0, 1.0 / cond, p) * np.sqrt(n)
        x = (u * s) @ vt
    teacher = rng.standard_normal((p, k))
    y = np.argmax(x @ teacher + rng.gumbel(size=(n, k)), axis=1)
    return x, y.astype(np.int64)


def softmax_reference(model, n_features, n_classes):
    """For a CNTK softmax regression (one Dense layer, params W (p×k) and b (k,)), the NumPy
    SoftmaxRegression with the same weights and the permutation ``perm`` with
    ``reference_flat = cntk_flat[perm]`` (and ``cntk_flat[perm] = reference_flat``)."""
    p, k = n_features, n_classes
    idx = np.arange(model.n_params)
    parts = {q.name: a for q, a in zip(model.parameters, model._params.split(idx))}
    perm = np.concatenate([parts["W"].T.ravel(), parts["b"]])
    ref = SoftmaxRegression(p, k, l2=model.l2, dtype=np.float64)
    ref.set_params(model.get_params().astype(np.float64)[perm])
    return ref, perm


def badly_scaled_softmax():
    """A softmax regression whose features span a factor of 30 in scale (κ(H) large): the problem on
    which preconditioners are judged. Returns (model, (x, y), rng): rng is the generator after the draws."""
    rng = np.random.RandomState(7)
    n, p, k = 300, 12, 4
    x = rng.randn(n, p) * np.linspace(0.1, 3.0, p)
    y = rng.randint(0, k, n)
    return SoftmaxRegression(p, k, l2=1e-3, random_state=2, scale=0.5), (x, y), rng
