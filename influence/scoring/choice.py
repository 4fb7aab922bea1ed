"""Which curvature an influence computation uses (``curvature=``), and its damping.

``"hessian"``: H = ∇²R(w) by finite differences of gradients (:class:`influence.HessianOperator`),
the classical influence function — meaningful at an optimum, where H is positive definite.
``"gauss-newton"``: G = (1/n) Σ J_iᵀ H_ℓ J_i + l2·I (:class:`influence.GaussNewtonOperator`),
positive semi-definite at any weights; with damping, influence on G predicts the response to
down-weighting points from the trained weights (the proximal Bregman response function, Bae et al.
2022), not a retraining from scratch. ``"fisher"``: the empirical Fisher (1/n) Σ g_i g_iᵀ + l2·I
(:class:`influence.FisherOperator`), for any loss. ``"auto"`` (the default): the Hessian where the
model is at an optimum (:func:`influence.check_optimum`) and H + damping·I is positive definite (a
solver that meets negative curvature switches), otherwise the Gauss-Newton matrix (the Fisher for a
loss without a closed-form output Hessian). ``"ekfac"``: the eigenvalue-corrected Kronecker-factored
approximation of the Fisher/Gauss-Newton matrix (:class:`influence.EKFAC`), fitted once and inverted
block by block: s_test and self-influence without iterations, an approximation. A fitted
:class:`influence.EKFAC` (e.g. ``EKFAC.load(path, model, train)``: factors fitted once and saved) may
be passed as ``curvature=`` itself: it is used as it is, with its own damping.

``damping=None`` (the default) means 0 for the Hessian and ``"auto"`` for Gauss-Newton and Fisher:
0.1 × the mean eigenvalue of the curvature (:func:`influence.curvature.auto_damping`); a number
always wins.
"""
import collections

from ..common.errors import InfluenceError, param, warn
from ..common.numeric import check_damping
from ..curvature import EKFAC, FisherOperator, GaussNewtonOperator, HessianOperator
from ..fitting import OPTIMUM_RTOL, NotAtOptimumWarning, check_optimum as _optimum_check

__all__ = ["CURVATURES", "Curvature", "choose_curvature", "check_curvature", "fallback_curvature",
           "curvature_setting", "is_ekfac"]

#: The values of ``curvature=`` (and ``--curvature``).
CURVATURES = ("auto", "hessian", "gauss-newton", "fisher", "ekfac")

Curvature = collections.namedtuple("Curvature", "operator kind damping reason requested")
Curvature.__doc__ = """The curvature of one computation: ``operator`` (a symmetric LinearOperator that
already includes its damping when the damping was "auto"), ``kind`` ("hessian", "gauss-newton",
"fisher" or "given" for a caller's operator), ``damping`` (the damping the solver adds on top of the
operator: 0.0 when the operator holds it), ``reason`` (one line: why this curvature and damping),
``requested`` (the ``curvature=`` asked for)."""


def is_ekfac(curvature):
    """True for ``curvature="ekfac"`` and for a fitted :class:`influence.EKFAC` given as the curvature."""
    return isinstance(curvature, EKFAC) or (isinstance(curvature, str) and curvature == "ekfac")


def check_curvature(curvature):
    """``curvature`` when it is one of :data:`CURVATURES` or a fitted :class:`influence.EKFAC`."""
    if isinstance(curvature, EKFAC):
        return curvature
    if not isinstance(curvature, str) or curvature not in CURVATURES:
        raise InfluenceError("%s is not one of %s; pass e.g. %s" % (
            param("curvature", curvature), ", ".join(CURVATURES), param("curvature", "auto")), parameter="curvature")
    return curvature


def curvature_setting(curvature):
    """``curvature`` as a job's fingerprint records it: the name, or for a given EKFAC
    ``{"ekfac": EKFAC.fingerprint()}`` (its settings and a hash of its factors)."""
    curvature = check_curvature(curvature)
    return {"ekfac": curvature.fingerprint()} if isinstance(curvature, EKFAC) else curvature


def _given_ekfac(model, train, ekfac, damping):
    """The :class:`Curvature` of a fitted EKFAC passed as ``curvature=``."""
    if ekfac.model is not model or ekfac.shape[0] != model.n_params or len(ekfac.data) != len(train):
        raise InfluenceError("%s was fitted on another model or other training rows (%d rows, %d parameters; "
                             "here %d and %d); fit influence.EKFAC(model, train) on these, or pass %s"
                             % (param("curvature", "EKFAC"), len(ekfac.data), ekfac.shape[0], len(train),
                                model.n_params, param("curvature", "ekfac")), parameter="curvature")
    if damping is not None:
        raise InfluenceError("%s with a fitted EKFAC as %s: its damping is the one it was fitted (or loaded) with; "
                             "drop %s, or pass it to EKFAC(..., damping=) or EKFAC.load(..., damping=)"
                             % (param("damping", damping), param("curvature"), param("damping")), parameter="damping")
    source = getattr(ekfac, "source", None)
    why = "loaded from %s, not refitted" % source if source else "given, fitted once"
    return Curvature(ekfac, "ekfac", 0.0, _describe("ekfac", ekfac, 0.0, why), "ekfac")


def _check_damping(damping):
    if damping is None or (isinstance(damping, str) and damping == "auto"):
        return damping
    if isinstance(damping, str):
        raise InfluenceError("%s is not a number nor 'auto'; pass e.g. %s or %s" % (
            param("damping", damping), param("damping", 0.01), param("damping", "auto")), parameter="damping")
    return check_damping(damping)


def _operator(kind, model, train, damping, batch_size, distributed=None, random_state=None):
    """(operator, solver damping, damping text) for ``kind`` with ``damping`` (None, "auto" or a number).
    ``distributed``: an operator that offers ``gauss_newton(damping)`` (a Dask Hessian operator): the
    Gauss-Newton matrix is then built on its workers too. ``random_state``: the seed of EK-FAC's
    sampled labels."""
    if kind == "ekfac":
        return EKFAC(model, train, damping="auto" if damping is None else damping, random_state=random_state,
                     batch_size=batch_size), 0.0, None
    if kind == "hessian":
        op = HessianOperator(model, train, batch_size=batch_size)
        if damping == "auto":
            from ..curvature import auto_damping
            with model.preserving_params():
                return op, auto_damping(op), "auto"
        return op, 0.0 if damping is None else damping, None
    cls = GaussNewtonOperator if kind == "gauss-newton" else FisherOperator
    make = lambda d: cls(model, train, damping=d, batch_size=batch_size)      # noqa: E731
    if kind == "gauss-newton" and hasattr(distributed, "gauss_newton"):
        make = distributed.gauss_newton
    if damping is None or damping == "auto":
        return make("auto"), 0.0, "auto"
    return make(0.0), damping, None


def _gauss_newton_kind(model):
    """"gauss-newton" when the model's loss has a closed-form output Hessian, else "fisher"."""
    check = getattr(model, "check_output_loss", None)
    if check is None:
        return "fisher"
    try:
        check()
    except ValueError:
        return "fisher"
    return "gauss-newton"


def _describe(kind, op, damping, why):
    if kind == "ekfac":
        return "EK-FAC (%s, labels %s, damping %s per block), no iterations%s" % (
            op.strategy, op.labels, "auto" if op.damping_auto else "%.3g" % op.damping, (": " + why) if why else "")
    total = damping + float(getattr(op, "damping", 0.0) or 0.0)
    name = {"hessian": "the Hessian", "gauss-newton": "the Gauss-Newton matrix", "fisher": "the empirical Fisher"}[kind]
    auto = getattr(op, "damping_auto", False)
    mean = getattr(op, "mean_eigenvalue", None)
    dtext = ("damping %.3g (auto: 0.1 × mean eigenvalue %.3g)" % (total, mean)) if auto and mean is not None \
        else "damping %.3g" % total
    return "%s, %s%s" % (name, dtext, (": " + why) if why else "")


def choose_curvature(model, train, curvature="auto", damping=None, batch_size=None, hessian=None,
                     check_optimum=True, random_state=None):
    """The :class:`Curvature` for ``curvature`` (module docstring) on validated ``train``.

    ``hessian``: a ready operator (e.g. a calibrated HessianOperator or a Dask one) used as the
    Hessian; a Dask one also builds the Gauss-Newton matrix on its workers. With ``curvature="auto"`` the optimum check runs (unless ``check_optimum`` is False) and
    decides between the Hessian and Gauss-Newton; with ``"hessian"`` a failed check warns
    (:class:`influence.NotAtOptimumWarning`) naming ``curvature="gauss-newton"``. ``random_state``:
    the seed of EK-FAC's sampled labels (``curvature="ekfac"``; None: its default seed). A fitted
    EKFAC as ``curvature`` is used as it is (``damping`` must then be None)."""
    check_curvature(curvature)
    damping = _check_damping(damping)
    if isinstance(curvature, EKFAC):
        return _given_ekfac(model, train, curvature, damping)
    kind, why = curvature, None
    if curvature in ("auto", "hessian") and check_optimum:
        chk = _optimum_check(model, train, OPTIMUM_RTOL, batch_size)
        if not chk.ok:
            text = ("the weights are not at a minimum of the training objective: ‖∇R(w)‖ = %.3g > %.0e·σ_g = %.3g"
                    % (chk.grad_norm, OPTIMUM_RTOL, chk.threshold))
            if curvature == "auto":
                kind = _gauss_newton_kind(model)
                why = text
            else:
                warn(NotAtOptimumWarning,
                     "%s; the Hessian's influence estimates assume ∇R(w) = 0 — use %s (the default %s "
                     "chooses it here), or fit first with influence.fit(model, train)"
                     % (text, param("curvature", "gauss-newton"), param("curvature", "auto")), stacklevel=4)
                why = "asked for; " + text
        elif curvature == "auto":
            kind, why = "hessian", "at an optimum (‖∇R(w)‖ = %.3g <= %.3g)" % (chk.grad_norm, chk.threshold)
    if kind == "auto":
        kind, why = "hessian", "the optimum check is off"
    if kind == "hessian" and hessian is not None:
        d = 0.0 if damping is None else damping
        if d == "auto":
            from ..curvature import auto_damping
            with model.preserving_params():
                d = auto_damping(hessian)
        op, solver_damping = hessian, d
    else:
        with model.preserving_params():
            op, solver_damping, _ = _operator(kind, model, train, damping, batch_size, hessian, random_state)
    return Curvature(op, kind, solver_damping, _describe(kind, op, solver_damping, why), curvature)


def fallback_curvature(model, train, chosen, error, damping=None, batch_size=None, hessian=None):
    """The Gauss-Newton :class:`Curvature` that replaces ``chosen`` (the Hessian under
    ``curvature="auto"``) after ``error`` (a NonPositiveCurvatureError) showed H + damping·I is not
    positive definite."""
    kind = _gauss_newton_kind(model)
    with model.preserving_params():
        op, solver_damping, _ = _operator(kind, model, train, damping, batch_size, hessian)
    first = str(error).split(":", 1)[-1].split(";")[0].strip()
    why = "the Hessian is not positive definite (%s)" % first
    return Curvature(op, kind, solver_damping, _describe(kind, op, solver_damping, why), chosen.requested)
