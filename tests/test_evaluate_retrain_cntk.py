"""Proximal and scratch retraining on a CNTK network trained as users train it (Trainer + Adam; a
CNN with BatchNormalization and Dropout). Needs CNTK; skipped elsewhere. Few subsets: the numbers
are checked for what they must be (finite, seeded, restored), not for their size."""
import numpy as np
import pytest

import influence
from influence import evaluate as ev
from influence.adapters.cntk import build_cnn
from cntk_nets import same_state, state, train_with_trainer

N = 40


@pytest.fixture(scope="module")
def cnn(cntk):
    x, y = influence.load_digits()
    x = x[:N + 4].reshape(-1, 1, 8, 8)
    y = y[:N + 4]
    z = build_cnn((1, 8, 8), 10, channels=(2,), dropout=0.3, dtype=np.float64, seed=1)
    train_with_trainer(z, {z.arguments[0]: x[:N]}, y[:N], epochs=3)
    return influence.CNTKModel(z, l2=0.01), (x[:N], y[:N]), (x[N:], y[N:]), z


def test_proximal_gradient_is_the_directional_derivative(cnn):
    model, train, _, z = cnn
    before = state(z)
    data = model.validate(train)
    w_s = model.get_params()
    with model.preserving_params():
        z_s = model.outputs(data)
        rng = np.random.RandomState(0)
        w = w_s + 0.05 * rng.standard_normal(w_s.size)
        v = rng.standard_normal(w_s.size)
        model.set_params(w)
        _, g = ev.proximal_objective(model, data, [2, 7], w_s, z_s, 0.1)
        h = 1e-5
        model.set_params(w + h * v)
        fp = ev.proximal_objective(model, data, [2, 7], w_s, z_s, 0.1)[0]
        model.set_params(w - h * v)
        fm = ev.proximal_objective(model, data, [2, 7], w_s, z_s, 0.1)[0]
    # ReLU/max-pool kinks: a central difference straddling one errs by the slope's jump, hence 1e-4
    assert abs((fp - fm) / (2 * h) - g @ v) <= 1e-4 * abs(g @ v)
    assert same_state(before, state(z))


def test_proximal_lds_on_gauss_newton_with_auto_damping(cnn):
    model, train, test, z = cnn
    before = state(z)
    res = ev.lds(model, train, test, subsets=3, alpha=0.95, seed=0, damping="auto", curvature="gauss-newton",
                 solver="cg", gtol=1e-6, maxiter=25)
    assert res.retrain == "proximal"                    # a Trainer-trained network is off its optimum
    assert res.damping > 0 and np.all(np.isfinite(res.actual))
    assert np.all(res.actual != res.base[:, None])      # every removal moved the test losses
    assert same_state(before, state(z))


def test_scratch_retraining_with_a_recipe_restores_weights_and_statistics(cnn):
    model, train, test, z = cnn
    before = state(z)
    res = ev.loo(model, train, test, indices=[0, 5], retrain="scratch", seeds=2,
                 recipe="adam lr=0.01 epochs=2 minibatch=16", damping=1.0, curvature="gauss-newton", solver="cg")
    assert res.retrain == "scratch" and res.seeds == 2
    assert np.all(np.isfinite(res.actual)) and np.all(res.spread > 0)     # seeds differ
    assert same_state(before, state(z))


def test_reinitialise_as_cntk_layers_do(cnn):
    model, _, _, z = cnn
    before = state(z)
    saved = ev.scratch.saved_state(model)
    try:
        ev.reinitialise(model, seed=3)
        for p in z.parameters:
            v = np.asarray(p.value)
            if p.name == "scale":
                assert np.all(v == 1)
            elif p.name in ("b", "bias"):
                assert np.all(v == 0)
            else:
                assert v.std() > 0
        for c in z.constants:
            if c.name.startswith("aggregate_"):
                assert np.all(np.asarray(c.value) == 0)
    finally:
        ev.scratch.restore_state(model, saved)
    assert same_state(before, state(z))


@pytest.mark.filterwarnings("ignore::influence.NotAtOptimumWarning")     # verify_loo's Hessian scores
def test_a_failing_train_fn_leaves_the_network_as_it_was(cnn):
    model, train, test, z = cnn
    before = state(z)

    def train_fn(function, data, seed):
        for p in function.parameters:
            p.value = np.asarray(p.value) * 0 + 7.0       # half-done training ...
        raise RuntimeError("out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        ev.verify_loo(model, train, test, indices=[1, 2], retrain="scratch", train_fn=train_fn, damping=20.0)
    assert same_state(before, state(z))                   # ... undone


def test_a_recipe_trains_from_the_fresh_initialisation(cnn):
    model, train, _, z = cnn
    before = state(z)
    data = model.validate(train)
    saved = ev.scratch.saved_state(model)
    try:
        ev.reinitialise(model, seed=4)
        fresh = model.loss(data)
        ev.scratch_train(model, data, seed=4, recipe="adam lr=0.01 epochs=4 minibatch=16")
        trained = model.loss(data)
    finally:
        ev.scratch.restore_state(model, saved)
    assert trained < 0.8 * fresh
    assert same_state(before, state(z))
