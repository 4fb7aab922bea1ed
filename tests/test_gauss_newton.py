"""GaussNewtonOperator, FisherOperator and damping="auto" on the NumPy reference models (both venvs).

For softmax and logistic regression (canonical links) the Gauss-Newton matrix IS the Hessian, so the
operator is checked against the closed-form Hessian; the Fisher against per-example gradients."""
import numpy as np
import pytest

import influence
from influence.curvature import FisherOperator, GaussNewtonOperator, auto_damping, mean_eigenvalue
from influence.curvature.damping import DAMPING_FACTOR, HUTCHINSON_PROBES
from influence.models import LogisticRegression, SoftmaxRegression
from conftest import make_classification

#: max |G − H| / max |H| for the linear models (no truncation error: outputs are linear in w).
GN_EXACT_TOL = {np.float64: 1e-12, np.float32: 1e-5}
#: ‖F v − (1/n) Pᵀ(P v) − l2 v‖ / ‖F v‖ (Richardson forward differences of the losses).
FISHER_TOL = {np.float64: 1e-9, np.float32: 1e-3}
#: Products at different batch sizes (float64 rounding of differently blocked sums).
BATCH_TOL = 1e-12
#: Smallest eigenvalue of dense G may undershoot l2 by this (float64 rounding).
PSD_TOL = 1e-10
#: |Hutchinson mean eigenvalue − trace/d| / (trace/d) with 10 probes on these small models.
HUTCHINSON_TOL = 0.3
#: cg's true residual on the Gauss-Newton operator.
CG_RTOL = 1e-8

P, K, N = 5, 3, 120


def _dense(op):
    return np.column_stack([op @ e for e in np.eye(op.shape[0])])


def _softmax(dtype=np.float64, l2=0.01):
    x, y = make_classification(N, P, K, seed=1)
    return SoftmaxRegression(P, K, l2=l2, dtype=dtype, scale=0.5), (x, y)


def _logistic(dtype=np.float64):
    x, y = make_classification(N, P, 2, seed=2)
    return LogisticRegression(P, l2=0.02, dtype=dtype, scale=0.5), (x, y)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("make", [_softmax, _logistic], ids=["softmax", "logistic"])
def test_gauss_newton_is_the_hessian_of_a_glm(make, dtype):
    model, data = make(dtype)
    before = model.get_params()
    G = GaussNewtonOperator(model, data)
    A = _dense(G)
    H = model.hessian(data)
    assert np.abs(A - H).max() <= GN_EXACT_TOL[dtype] * np.abs(H).max()
    assert np.array_equal(model.get_params(), before)
    assert G.n_hvp == model.n_params and G.n_forward == 2 * model.n_params and G.n_backward == model.n_params
    assert G.dtype == np.float64 and (G.T @ np.ones(model.n_params)).shape == (model.n_params,)


def test_gauss_newton_is_symmetric_psd_and_repeatable():
    model, data = _softmax(l2=0.003)
    G = GaussNewtonOperator(model, data)
    A = _dense(G)
    assert np.abs(A - A.T).max() <= GN_EXACT_TOL[np.float64] * np.abs(A).max()
    assert np.linalg.eigvalsh(0.5 * (A + A.T))[0] >= model.l2 - PSD_TOL
    v = np.random.RandomState(0).standard_normal(model.n_params)
    assert np.array_equal(G @ v, G @ v)
    assert not (G @ np.zeros(model.n_params)).any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("make", [_softmax, _logistic], ids=["softmax", "logistic"])
def test_fisher_product_equals_per_example_gradients(make, dtype):
    model, data = make(dtype)
    before = model.get_params()
    F = FisherOperator(model, data)
    Pg = model.per_example_grads(data)
    rng = np.random.RandomState(3)
    for v in rng.standard_normal((3, model.n_params)):
        fv = F @ v
        exact = Pg.T @ (Pg @ v) / len(Pg) + model.l2 * v
        assert np.linalg.norm(fv - exact) <= FISHER_TOL[dtype] * np.linalg.norm(exact)
    assert np.array_equal(model.get_params(), before)
    assert F.n_hvp == 3 and F.n_backward == 3


@pytest.mark.parametrize("op_class", [GaussNewtonOperator, FisherOperator])
def test_products_do_not_depend_on_the_batch_size(op_class):
    model, data = _softmax()
    v = np.random.RandomState(4).standard_normal(model.n_params)
    whole = op_class(model, data)
    ref = whole @ v
    for bs in (7, 50):
        got = op_class(model, data, batch_size=bs, rel_step=whole.rel_step) @ v
        assert np.linalg.norm(got - ref) <= BATCH_TOL * np.linalg.norm(ref), bs
    # and the batches of the same operator's minibatch view agree with an operator on those rows
    idx = np.arange(0, N, 3)
    sub = op_class(model, (data[0][idx], data[1][idx]), rel_step=whole.rel_step)
    assert np.linalg.norm(whole.minibatch(idx) @ v - sub @ v) <= BATCH_TOL * np.linalg.norm(sub @ v)


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("op_class, primitive, fail_at",
                         [(GaussNewtonOperator, "_outputs", 2),      # between z(w + rv) and z(w − rv)
                          (GaussNewtonOperator, "_jt_sum", 1),       # in the backward pass
                          (FisherOperator, "_per_example_losses", 2),
                          (FisherOperator, "_weighted_grad_sum", 1)])
def test_injected_failure_leaves_weights_bit_identical(op_class, primitive, fail_at, exc):
    model, data = _softmax()
    op = op_class(model, data, rel_step=1e-3)
    before = model.get_params()
    original, calls = getattr(model, primitive), [0]

    def failing(*args):
        calls[0] += 1
        if calls[0] == fail_at:
            raise exc("injected")
        return original(*args)
    model.__dict__[primitive] = failing
    with pytest.raises(exc):
        op @ np.ones(model.n_params)
    assert calls[0] == fail_at
    assert np.array_equal(model.get_params(), before)
    del model.__dict__[primitive]
    assert np.array_equal(op @ np.ones(model.n_params), op_class(model, data, rel_step=1e-3) @ np.ones(model.n_params))


def test_auto_damping_is_a_tenth_of_the_hutchinson_mean_eigenvalue():
    model, data = _softmax()
    G = GaussNewtonOperator(model, data)
    mean, stderr = mean_eigenvalue(G)
    trace_mean = np.trace(model.hessian(data)) / model.n_params
    assert abs(mean - trace_mean) <= HUTCHINSON_TOL * trace_mean and stderr > 0
    auto = GaussNewtonOperator(model, data, damping="auto")
    assert auto.damping_auto and not G.damping_auto
    assert auto.damping == DAMPING_FACTOR * mean == auto_damping(G)
    assert auto.mean_eigenvalue == mean and auto.n_hvp == HUTCHINSON_PROBES
    v = np.ones(model.n_params)
    assert np.allclose(auto @ v - G @ v, auto.damping * v, rtol=0, atol=1e-14)
    # the operator's own damping is excluded from the estimate; a number still wins
    damped = GaussNewtonOperator(model, data, damping=5.0)
    assert mean_eigenvalue(damped)[0] == pytest.approx(mean, rel=1e-12)
    assert FisherOperator(model, data, damping="auto").damping > 0


def test_cg_on_the_gauss_newton_operator_solves_the_damped_system():
    model, data = _softmax()
    G = GaussNewtonOperator(model, data, damping=0.01)
    b = np.random.RandomState(5).standard_normal(model.n_params)
    sol = influence.solve(G, b, method="cg", rtol=CG_RTOL)
    assert sol.converged and sol.residual <= CG_RTOL
    exact = np.linalg.solve(model.hessian(data) + 0.01 * np.eye(model.n_params), b)
    assert np.linalg.norm(sol.x - exact) <= 1e-6 * np.linalg.norm(exact)


class _UserLoss(SoftmaxRegression):
    output_loss = None          # a loss with no closed-form output Hessian


def test_bad_input_is_refused_in_one_line():
    model, data = _softmax()
    cases = [(lambda: GaussNewtonOperator(model, data, damping="big"), "damping='big'.*damping=\"auto\""),
             (lambda: GaussNewtonOperator(model, data, damping=-1), "damping=-1"),
             (lambda: FisherOperator(model, data, stencil="forward"), "stencil='forward'"),
             (lambda: GaussNewtonOperator(model, data, rel_step=0), "rel_step=0"),
             (lambda: GaussNewtonOperator(model, data) @ np.full(model.n_params, np.nan), "NaN or Inf"),
             (lambda: mean_eigenvalue(GaussNewtonOperator(model, data), probes=0), "probes=0"),
             (lambda: GaussNewtonOperator(_UserLoss(P, K), data), "curvature=\"fisher\"")]
    for make, needle in cases:
        with pytest.raises(ValueError, match=needle) as err:
            make()
        assert "\n" not in str(err.value)
    # the Fisher works for that loss
    user = _UserLoss(P, K, l2=0.01, scale=0.5)
    assert np.all(np.isfinite(FisherOperator(user, data) @ np.ones(user.n_params)))
