"""Proximal retraining: the proximal Bregman response function (PBRF) of Bae et al. (2022), what
influence on the damped Gauss-Newton matrix predicts at weights that are not an optimum.

From the trained weights w_s, on the inference-mode graph (Dropout off, BatchNormalization by its
running statistics: the graph the scores differentiate), minimise over w::

    P(w) = (1/n) Σ_{i=1..n} D(z_i(w), z_i(w_s))  −  (1/n) Σ_{i removed} ℓ_i(w)  +  ((λ + l2)/2)‖w − w_s‖²

- D is the Bregman divergence of the loss in the network outputs z, D(z, z_s) = ℓ(z) − ℓ(z_s) −
  ∇ℓ(z_s)ᵀ(z − z_s), which does not depend on the label:

  * softmax cross-entropy: KL(p(z_s) ‖ p(z)) = lse(z) − lse(z_s) − p_sᵀ(z − z_s), ∇_z D = p − p_s;
  * binary cross-entropy (one logit s): the binary KL, softplus(s) − softplus(s_s) − σ(s_s)(s − s_s),
    ∇_s D = σ(s) − σ(s_s);
  * squared error (CNTK's ℓ = Σ_j (z_j − y_j)², no ½): D = ‖z − z_s‖², ∇_z D = 2(z − z_s).

  Its gradient is (1/n) Σ_i J_iᵀ ∇_z D_i: one forward pass for z (``Model.outputs``) and one
  backward pass seeded with the root gradients ∇_z D (``Model.jt_sum``).
- The removed points' loss with weight −1/n: removing them is ε_i = −1/n, as in leave-one-out.
- λ is the damping of the scores; l2 the model's own L2 coefficient, whose Bregman divergence is
  (l2/2)‖w − w_s‖² (the L2 term is quadratic): so the proximal term matches G + λ·I, G including l2·I.

At an optimum of a model whose outputs are linear in w (softmax or logistic regression), the Bregman
terms sum to R(w) − R(w_s) − ∇R(w_s)ᵀ(w − w_s) with ∇R(w_s) = 0, so with λ = 0 P(w) is the
leave-one-out objective R_S(w) = (1/n) Σ_{kept} ℓ_i + (l2/2)‖w‖² up to a constant: proximal and warm
retraining reach the same weights (tests/test_evaluate_retrain.py checks it).

The solver: full-batch L-BFGS (scipy's L-BFGS-B, float64, memory 30) from w_s to max |∂P/∂w| <=
``gtol`` or ``maxiter`` iterations — deterministic, no learning rate to tune, and the same stopping
rule as the warm retrainings. In float32 it usually stops earlier, when the line search can make no
more progress; the final ‖∇P‖ is reported per retraining.
"""
import numpy as np

from ..common.errors import InfluenceError, param

__all__ = ["bregman", "proximal_objective", "proximal_retrain", "BREGMAN_LOSSES"]

#: Losses whose Bregman divergence in the outputs has a closed form here.
BREGMAN_LOSSES = ("cross_entropy", "binary_cross_entropy", "squared_error")


def _lse(z):
    m = z.max(axis=1, keepdims=True)
    return m[:, 0] + np.log(np.exp(z - m).sum(axis=1))


def _softplus(s):
    return np.logaddexp(0.0, s)


def _sigmoid(s):
    return 0.5 * (1.0 + np.tanh(0.5 * s))


def bregman(loss, z, z_s):
    """(D per output row (rows,), ∇_z D (rows, K)) of the Bregman divergence of ``loss`` between the
    outputs ``z`` and the reference outputs ``z_s`` (both float64 (rows, K); module docstring)."""
    z = np.asarray(z, dtype=np.float64)
    z_s = np.asarray(z_s, dtype=np.float64)
    if z.shape != z_s.shape:
        raise ValueError("outputs have shape %s but the reference outputs %s" % (z.shape, z_s.shape))
    d = z - z_s
    if loss == "cross_entropy":
        p_s = np.exp(z_s - _lse(z_s)[:, None])
        p = np.exp(z - _lse(z)[:, None])
        return _lse(z) - _lse(z_s) - (p_s * d).sum(axis=1), p - p_s
    if loss == "binary_cross_entropy":
        sig_s = _sigmoid(z_s)
        return (_softplus(z) - _softplus(z_s) - sig_s * d).sum(axis=1), _sigmoid(z) - sig_s
    if loss == "squared_error":
        return (d * d).sum(axis=1), 2.0 * d
    raise InfluenceError("proximal retraining needs the Bregman divergence of the loss in the network outputs "
                         "(%s), but this model's loss is %r; use %s or %s"
                         % (", ".join(BREGMAN_LOSSES), loss, param("retrain", "warm"), param("retrain", "scratch")),
                         parameter="retrain", suggestion="scratch")


def _removed_rows(removed, n):
    removed = np.unique(np.asarray(removed, dtype=np.int64).reshape(-1))
    if removed.size and (removed.min() < 0 or removed.max() >= n):
        raise ValueError("removed rows must lie in 0..%d" % (n - 1))
    return removed


def proximal_objective(model, train, removed, w_s, z_s, damping, batch_size=None):
    """(P(w), ∇P(w)) at the model's current weights (module docstring): ``removed`` the training
    rows taken out, ``w_s`` the trained weights, ``z_s`` = ``model.outputs(train)`` at w_s, ``damping``
    λ. float, float64 (n_params,)."""
    n = len(train)
    loss = model.output_loss
    w = model.get_params().astype(np.float64)
    z = model.outputs(train, batch_size)
    values, r = bregman(loss, z, z_s)
    grad = model.jt_sum(train, r, batch_size) / n
    value = float(values.sum()) / n
    if len(removed):
        l_rem, g_rem = model.loss_and_grad_sum(train.subset(np.asarray(removed)), batch_size)
        value -= l_rem / n
        grad -= g_rem / n
    mu = float(damping) + float(model.l2)
    diff = w - np.asarray(w_s, dtype=np.float64)
    value += 0.5 * mu * float(diff @ diff)
    grad += mu * diff
    return value, grad


def proximal_retrain(model, train, removed, w_s, damping, gtol, maxiter, batch_size=None, z_s=None):
    """Minimise the PBRF objective P from ``w_s`` by L-BFGS (module docstring) and leave the model at
    the result; returns scipy's OptimizeResult (``jac`` the gradient of P at the end). ``z_s``: the
    outputs at w_s if already computed. The caller owns restoring the weights."""
    from scipy.optimize import minimize
    train = model.validate(train, getattr(train, "name", "training data"))
    removed = _removed_rows(removed, len(train))
    dtype = model.dtype
    if not np.isfinite(damping) or damping < 0:
        raise InfluenceError("%s must be a finite number >= 0 (the damping of the scores)" % param("damping", damping),
                             parameter="damping")
    model.set_params(np.asarray(w_s).astype(dtype))
    if z_s is None:
        z_s = model.outputs(train, batch_size)

    def fun(w):
        model.set_params(np.asarray(w).astype(dtype))
        return proximal_objective(model, train, removed, w_s, z_s, damping, batch_size)

    res = minimize(fun, np.asarray(w_s, dtype=np.float64), jac=True, method="L-BFGS-B",
                   options={"gtol": float(gtol), "ftol": 0.0, "maxiter": int(maxiter), "maxcor": 30,
                            "maxfun": 2 * int(maxiter) + 20})
    model.set_params(np.asarray(res.x).astype(dtype))
    return res
