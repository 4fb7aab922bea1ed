"""What every solver shares: the result type, the errors, the argument checks, the counted product
``v ↦ (H + damping·I) v``, the progress bar, the random generator, the one builder of the "not positive
definite" message and the one mechanism for deprecated argument names."""
import collections
import functools
import inspect
import time
import warnings

import numpy as np
import scipy.sparse.linalg as spla

from ..common.errors import InfluenceError, param
from ..common.numeric import check_damping, check_nonneg, norm
from ..common.progress import Progress  # noqa: F401  (the solvers' bar: public here too)

#: Seed used when ``random_state=None``: every solver is repeatable bit for bit by default (resumable
#: jobs rely on it); pass another int or a ``numpy.random.RandomState`` for other draws.
DEFAULT_SEED = 0
#: The damping suggested when H + damping·I is not positive definite puts the smallest eigenvalue at
#: +NPD_MARGIN·|λ_min| (at least +NPD_MIN_MARGIN) instead of 0.
NPD_MARGIN = 1.0
NPD_MIN_MARGIN = 1e-3

#: The parameters every solver function takes after ``(H, b)``, keyword-only, with these defaults.
COMMON_PARAMETERS = collections.OrderedDict([
    ("damping", 0.0), ("x0", None), ("rtol", None), ("atol", 0.0), ("maxiter", None), ("callback", None),
    ("progress", False), ("random_state", None)])

Solution = collections.namedtuple("Solution", "x converged n_iter n_hvp residual seconds")
Solution.__doc__ = """Result of an inverse-HVP solve: ``x`` (float64, shape (d,)); ``converged`` (bool: the
residual met ``max(rtol·‖b‖, atol)``, see each method); ``n_iter`` (iterations: CG iterations, LiSSA
steps summed over repeats, eigsh products for lanczos, 1 for direct); ``n_hvp`` (Hessian-vector
products spent); ``residual`` = ‖(H+λI)x − b‖/‖b‖ (the true one); ``seconds`` (wall time)."""


class ConvergenceWarning(UserWarning):
    """A solver stopped before meeting its tolerance; the message names the residual reached."""


class NonPositiveCurvatureError(InfluenceError):
    """``H + damping·I`` is not positive definite; the message names the damping to pass."""


class DivergenceError(InfluenceError):
    """LiSSA's Neumann series diverged; the message names a scale that would work, also available as
    the attribute ``suggested_scale`` (None when the cure is not the scale)."""

    suggested_scale = None


# ---------------------------------------------------------------------------------------- checks
def check_operator(H):
    """``(H, d)`` for a square operator (a dense array is wrapped as a LinearOperator)."""
    if isinstance(H, np.ndarray):
        H = spla.aslinearoperator(H)
    if not hasattr(H, "matvec") or not hasattr(H, "shape"):
        raise ValueError("H is a %s; pass an influence.HessianOperator or a scipy LinearOperator"
                         % type(H).__name__)
    shape = tuple(H.shape)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError("H has shape %s; pass a square (d, d) symmetric operator" % (shape,))
    return H, int(shape[0])


def check_rhs(b, d, name="b"):
    """A float64 COPY of the vector ``b`` of length d (the caller's array is never touched)."""
    try:
        b = np.array(b, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("%s is not numeric; pass a float vector of length %d" % (name, d))
    if b.shape != (d,):
        raise ValueError("%s has shape %s but H is %d×%d; pass a flat vector of shape (%d,)"
                         % (name, b.shape, d, d, d))
    if not np.all(np.isfinite(b)):
        raise ValueError("%s contains NaN or Inf; pass finite values" % name)
    return b


def check_int(value, name, example, allow_none=False, minimum=1):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InfluenceError("%s must be an integer >= %d; pass e.g. %s"
                             % (param(name, value), minimum, param(name, example)), parameter=name, suggestion=example)
    return int(value)


def check_preconditioner(M, d):
    """``None``, or a (d, d) LinearOperator applying M ≈ A⁻¹: an object with ``solve(b)`` (an
    :class:`influence.EKFAC`: its inverse is applied), or a LinearOperator / array M (applied as is)."""
    if M is None:
        return None
    if isinstance(M, str):
        raise InfluenceError("preconditioner=%r: a solver sees only the operator, not the model; pass "
                             "influence.EKFAC(model, data) (or any LinearOperator M ≈ A⁻¹)" % (M,))
    shape = tuple(getattr(M, "shape", ()))
    if shape != (d, d):
        raise InfluenceError("the preconditioner has shape %s but H is %d×%d; pass an operator of shape (%d, %d) "
                             "built on the same model" % (shape or None, d, d, d, d))
    solve = getattr(M, "solve", None)
    if callable(solve):
        def apply(v):
            return np.asarray(solve(np.asarray(v, dtype=np.float64).reshape(-1)), dtype=np.float64).reshape(-1)
        return spla.LinearOperator((d, d), matvec=apply, rmatvec=apply, dtype=np.float64)
    if isinstance(M, np.ndarray) or hasattr(M, "matvec"):
        return spla.aslinearoperator(M)
    raise InfluenceError("the preconditioner is a %s; pass influence.EKFAC(model, data) or a scipy LinearOperator"
                         % type(M).__name__)


def check_callback(callback):
    if callback is not None and not callable(callback):
        raise ValueError("callback=%r is not callable; pass a function f(x) or None" % (callback,))
    return callback


def check_common(H, b, damping, x0, rtol, atol, random_state):
    """The checks of the common arguments: ``(H, d, b, damping, x0, rtol, atol, rng)`` with ``b`` and
    ``x0`` float64 copies, ``rtol`` None or a float, ``rng`` a RandomState."""
    H, d = check_operator(H)
    b = check_rhs(b, d)
    damping = check_damping(damping)
    x0 = None if x0 is None else check_rhs(x0, d, "x0")
    rtol = None if rtol is None else check_nonneg(rtol, "rtol", "1e-6")
    atol = check_nonneg(atol, "atol", "0.0")
    return H, d, b, damping, x0, rtol, atol, make_rng(random_state)


def refuse(method, given, why, name, instead):
    """The one-line error for a common argument a method cannot honour (it would be ignored)."""
    raise InfluenceError("%s: %s %s; drop %s (or use %s)" % (given, param("method", method), why, param(name), instead),
                         parameter=name)


def judge(method, residual, rtol, atol, bnorm):
    """``converged`` of a method without iterations (direct, lanczos): True unless ``rtol`` or ``atol``
    was given and the relative residual exceeds max(rtol, atol/‖b‖) (then a ConvergenceWarning)."""
    if rtol is None and not atol > 0:
        return True
    target = residual_target(rtol or 0.0, atol, bnorm) / bnorm
    if residual <= target:
        return True
    warn_convergence("%s: relative residual %.3g > max(rtol, atol/‖b‖) = %.3g; increase damping%s"
                     % (method, residual, target, ", or k" if method == "lanczos" else ""))
    return False


def operator_damping(H):
    """The damping an operator already includes (``H.damping`` of a HessianOperator, else 0)."""
    d = getattr(H, "damping", 0.0)
    try:
        return float(d)
    except (TypeError, ValueError):
        return 0.0


def make_rng(random_state):
    """A RandomState from None (seed :data:`DEFAULT_SEED`), an int or a RandomState (used as is)."""
    if isinstance(random_state, np.random.RandomState):
        return random_state
    try:
        return np.random.RandomState(DEFAULT_SEED if random_state is None else random_state)
    except (TypeError, ValueError):
        raise InfluenceError("%s is not an int, None or numpy RandomState; pass e.g. %s"
                             % (param("random_state", random_state), param("random_state", 0)), parameter="random_state")


# ---------------------------------------------------------------------------------------- products
class Products(object):
    """``v ↦ H v + shift·v`` in float64, counting the products evaluated (zero vectors are free);
    ``on_product`` (optional) is called after each one (a progress bar)."""

    def __init__(self, H, shift=0.0, on_product=None):
        self.H = H
        self.shift = float(shift)
        self.count = 0
        self.on_product = on_product

    def __call__(self, v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if not v.any():
            return np.zeros_like(v)
        self.count += 1
        out = np.asarray(self.H.matvec(v), dtype=np.float64).reshape(-1)
        if self.shift:
            out = out + self.shift * v
        if self.on_product is not None:
            self.on_product()
        return out


def zero_solution(d, t0):
    """``b = 0``: ``x = 0`` at once, converged, no product."""
    return Solution(np.zeros(d), True, 0, 0, 0.0, time.time() - t0)


def relative_residual(ax, b):
    return norm(ax - b) / norm(b)


def residual_target(rtol, atol, bnorm):
    """The absolute bound of the stopping test ‖(H+λI)x − b‖ <= max(rtol·‖b‖, atol)."""
    return max(rtol * bnorm, atol)


def warn_convergence(message):
    warnings.warn(message, ConvergenceWarning, stacklevel=4)   # caller > wrapper > solver > here



# ---------------------------------------------------------------------------------------- curvature
def not_positive_definite(context, smallest, damping, own_damping=0.0, upper_bound=False):
    """THE error for ``A = H_op + damping·I`` not positive definite, in the terms of the ``damping=``
    argument the caller passed (``own_damping``: what the operator H_op already includes).

    ``smallest`` is λ_min(A) (or, with ``upper_bound``, an estimate known to be >= λ_min(A)). A damping
    d' gives λ_min(H_op + d'·I) = λ_min(A) − damping + d', positive iff d' > damping − λ_min(A). The
    suggested value adds the margin max(NPD_MARGIN·|λ_min(A)|, NPD_MIN_MARGIN) on top."""
    need = damping - smallest
    margin = max(NPD_MARGIN * abs(smallest), NPD_MIN_MARGIN)
    own = (" on top of the operator's own damping %.4g" % own_damping) if own_damping else ""
    if upper_bound:
        return NonPositiveCurvatureError(
            "%s: H + damping·I is not positive definite (%s%s): its smallest eigenvalue is at "
            "most %.4g (an estimate), so pass %s > %.4g at least, e.g. %s (margin %.3g "
            "above that bound)" % (context, param("damping", damping, "%.4g"), own, smallest, param("damping"), need,
                                   param("damping", need + margin, "%.3g"), margin),
            parameter="damping", suggestion=float("%.3g" % (need + margin)))
    return NonPositiveCurvatureError(
        "%s: H + damping·I is not positive definite (%s%s): its smallest eigenvalue is %.4g, so "
        "pass %s > %.4g, e.g. %s (margin %.3g: the smallest eigenvalue becomes +%.3g)"
        % (context, param("damping", damping, "%.4g"), own, smallest, param("damping"), need,
           param("damping", need + margin, "%.3g"), margin, margin),
        parameter="damping", suggestion=float("%.3g" % (need + margin)))


def lanczos_extremes(matvec, v, steps):
    """Extreme Ritz values ``(θ_min, θ_max, u_max)`` of ``steps`` Lanczos steps with full
    reorthogonalisation started from ``v`` (``u_max``: the top Ritz vector). θ_min >= λ_min and
    θ_max <= λ_max; the top end converges within a few steps, the bottom one more slowly."""
    q = v / norm(v)
    basis, alphas, betas = [], [], []
    for _ in range(steps):
        w = matvec(q)
        alpha = float(q @ w)
        basis.append(q)
        alphas.append(alpha)
        for u in basis:                      # full reorthogonalisation (twice is enough)
            w = w - (u @ w) * u
        for u in basis:
            w = w - (u @ w) * u
        beta = norm(w)
        if not np.isfinite(beta) or beta <= 1e-12 * max(abs(alpha), 1e-300) or len(basis) == v.size:
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    T = np.diag(alphas) + np.diag(betas[:k - 1], 1) + np.diag(betas[:k - 1], -1)
    theta, Y = np.linalg.eigh(T)
    u = np.array(basis).T @ Y[:, -1]
    return float(theta[0]), float(theta[-1]), u / norm(u)


def lanczos_ritz_min(matvec, v, steps):
    """Smallest Ritz value of ``steps`` Lanczos steps (full reorthogonalisation) started from ``v``:
    an upper bound on the smallest eigenvalue that is usually close to it."""
    return lanczos_extremes(matvec, v, steps)[0]


# ---------------------------------------------------------------------------------------- deprecations
def warn_deprecated(message):
    warnings.warn(message + " (deprecated: the old spelling goes in the next release)", DeprecationWarning,
                  stacklevel=3)


def deprecated_arguments(positional=(), renamed=None):
    """Keep a solver's old calling conventions for one release, each with a DeprecationWarning: extra
    positional arguments (mapped in the old order ``positional``) and old keyword names
    (``renamed`` = {old: new}). ``inspect.signature`` of the result shows the new signature; the old
    names are listed in its ``deprecated_names``."""
    renamed = dict(renamed or {})

    def wrap(f):
        params = inspect.signature(f).parameters
        n_pos = sum(p.kind == p.POSITIONAL_OR_KEYWORD for p in params.values())

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            if len(args) > n_pos:
                extra = args[n_pos:]
                if len(extra) > len(positional):
                    raise TypeError("%s() takes at most %d positional arguments (%d given); pass the "
                                    "options by keyword" % (f.__name__, n_pos, len(args)))
                names = [renamed.get(p, p) for p in positional[:len(extra)]]
                warn_deprecated("%s(): passing %s by position; pass %s"
                            % (f.__name__, ", ".join(names), ", ".join(n + "=..." for n in names)))
                for name, value in zip(names, extra):
                    if name in kwargs:
                        raise TypeError("%s() got multiple values for %r" % (f.__name__, name))
                    kwargs[name] = value
                args = args[:n_pos]
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs and kwargs[new] is not params[new].default:
                        raise ValueError("%s=%r and its deprecated alias %s=%r both given; pass only %s"
                                         % (new, kwargs[new], old, kwargs[old], new))
                    warn_deprecated("%s(%s=...): use %s=..." % (f.__name__, old, new))
                    kwargs[new] = kwargs.pop(old)
            return f(*args, **kwargs)

        wrapper.deprecated_names = tuple(renamed)
        return wrapper
    return wrap
