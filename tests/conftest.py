"""Shared fixtures. CNTK-dependent tests use the ``cntk`` fixture, which skips them where CNTK is not
importable (the modern-Python environment)."""
import numpy as np
import pytest

from influence.models import SoftmaxRegression, LogisticRegression


@pytest.fixture(scope="session")
def cntk():
    try:
        from influence.adapters.cntk import import_cntk
        return import_cntk()
    except ImportError as e:
        pytest.skip("CNTK not importable here: %s" % str(e).splitlines()[0])


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
