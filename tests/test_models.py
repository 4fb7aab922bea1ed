"""The NumPy reference models: closed-form gradients and exact Hessians."""
import numpy as np
import pytest

from influence.models import SoftmaxRegression, LogisticRegression
from conftest import make_classification

#: Central differences of the loss in float64 with step 1e-5 agree with the gradient to about 1e-9.
GRAD_FD_TOL = 1e-7
#: Closed-form products and matrices agree to rounding.
EXACT_TOL = 1e-12


def _models():
    x, y = make_classification(60, 4, 3, seed=1)
    yield SoftmaxRegression(4, 3, l2=0.1, scale=0.5), (x, y)
    yield LogisticRegression(4, l2=0.1, scale=0.5), (x, (y > 0).astype(np.int64))


@pytest.mark.parametrize("model,data", list(_models()))
def test_gradient_matches_finite_differences(model, data):
    w = model.get_params()
    g = model.grad(data)
    h = 1e-5
    for i in range(model.n_params):
        e = np.zeros_like(w)
        e[i] = h
        model.set_params(w + e)
        up = model.loss(data)
        model.set_params(w - e)
        down = model.loss(data)
        assert abs((up - down) / (2 * h) - g[i]) <= GRAD_FD_TOL
    model.set_params(w)


@pytest.mark.parametrize("model,data", list(_models()))
def test_hessian_is_exact_and_consistent(model, data):
    H = model.hessian(data)
    np.testing.assert_allclose(H, H.T, atol=EXACT_TOL)
    v = np.random.RandomState(0).standard_normal(model.n_params)
    np.testing.assert_allclose(model.exact_hvp(data, v), H @ v, atol=EXACT_TOL)
    # Hessian of the data term = Jacobian of the mean gradient, by finite differences
    w = model.get_params()
    h, cols = 1e-6, []
    for i in range(model.n_params):
        e = np.zeros_like(w)
        e[i] = h
        model.set_params(w + e)
        up = model.grad(data)
        model.set_params(w - e)
        cols.append((up - model.grad(data)) / (2 * h))
    model.set_params(w)
    np.testing.assert_allclose(np.array(cols).T, H, atol=1e-6)
    # batch size does not matter
    np.testing.assert_allclose(model.hessian(data, batch_size=7), H, atol=EXACT_TOL)


@pytest.mark.parametrize("model,data", list(_models()))
def test_per_example_quantities_sum_to_the_objective(model, data):
    w = model.get_params()
    G = model.per_example_grads(data, batch_size=13)
    np.testing.assert_allclose(G.mean(axis=0) + model.l2 * w, model.grad(data), atol=EXACT_TOL)
    losses = model.per_example_losses(data, batch_size=13)
    assert model.loss(data) == pytest.approx(losses.mean() + 0.5 * model.l2 * w @ w, abs=EXACT_TOL)


def test_validation_messages():
    m = SoftmaxRegression(4, 3)
    x = np.ones((5, 4))
    with pytest.raises(ValueError, match=r"expects \(n, 4\)"):
        m.loss((np.ones((5, 3)), np.zeros(5, int)))
    with pytest.raises(ValueError, match="label 3 outside 0..2"):
        m.loss((x, np.array([0, 1, 2, 3, 0])))
    with pytest.raises(ValueError, match="integer class labels"):
        m.loss((x, np.zeros(5)))
    with pytest.raises(ValueError, match="length 15"):
        m.set_params(np.zeros(3))
    with pytest.raises(ValueError, match="labels 0 or 1"):
        LogisticRegression(4).loss((x, np.array([0, 1, 2, 0, 1])))
