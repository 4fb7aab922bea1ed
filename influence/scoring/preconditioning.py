"""``preconditioner="auto"``: whether an iterative solve gets an EK-FAC preconditioner, by a cost model.

A preconditioner changes only the number of Hessian-vector products of cg (and refined LiSSA), never
the answer: the solve still stops on the residual of the unpreconditioned system. So the choice is a
question of cost, decided in this order (the first rule that applies)::

    --curvature ekfac, solver direct or lanczos   none: no iterations to save
    LiSSA's classic variant                        none: it takes no preconditioner
    a fitted EKFAC given (factors=)                ekfac: already paid for
    no Dense/Convolution layer (kfac_plan)         none: EK-FAC would be the Fisher's diagonal only
    otherwise                                      ekfac when saving >= FIT_MARGIN · fit
                                                   and saving >= MIN_SAVING_SECONDS, else none

    saving = m · iters · (1 − PRECONDITIONED_PRODUCT_RATIO) · t_hvp
    fit    = (FIT_FORWARD_HVP + passes · FIT_PASS_HVP) · t_hvp + Σ_layers 9 (a³ + s³) / FLOPS_PER_SECOND
    t_hvp  = PRODUCT_FLOPS_PER_PARAMETER_ROW · d · n / FLOPS_PER_SECOND

``iters`` is the planner's cg estimate per right-hand side (min(d, CG_ITERATIONS_ESTIMATE) + 2, see
:mod:`influence.solvers.plan`; for LiSSA, which needs more products than cg, it is a lower bound),
``t_hvp`` a product's cost from the sizes (d parameters, n training rows), ``passes`` 2 for EK-FAC's
eigenvalue correction, a and s the sizes of each layer's two Kronecker factors (their
eigendecompositions, ~9k³ flops each).

The rule uses sizes only, never a timed product: the same command on the same model and data makes
the same choice whatever the machine's load (a timed product varies several-fold with the load, and
the choice would then change the scores in the last digits of cg's tolerance between two runs, or
between a run and its ``--resume``). The estimate is low for small networks, where CNTK's overhead
per call dominates (a 650-parameter softmax on 1,200 rows: 1.9 ms estimated, 25 ms measured), and for
convolutions, whose weights act at every position (the 137k-parameter CNN of issue 20 on 10,000
rows: 3.3 s estimated, 8.7 s measured): both err against fitting.
"""
import collections
import math

from ..common.errors import InfluenceError
from ..curvature import EKFAC
from ..solvers.plan import CG_ITERATIONS_ESTIMATE, FLOPS_PER_SECOND

__all__ = ["AutoPreconditioner", "PreconditionerChoice", "choose_preconditioner", "fit_seconds_estimate",
           "saving_seconds_estimate", "fit_pays", "cg_iterations_estimate", "PRECONDITIONED_PRODUCT_RATIO",
           "product_seconds_estimate", "PRODUCT_FLOPS_PER_PARAMETER_ROW",
           "FIT_FORWARD_HVP", "FIT_PASS_HVP", "FIT_MARGIN", "MIN_SAVING_SECONDS", "is_auto", "check_auto",
           "planned_iterations"]

#: Products of EK-FAC-preconditioned cg per product of plain cg, assumed. Measured 0.44–0.54 on the
#: digits MLP 64-32-10 (bench/bench_ekfac.py, docs/choosing-a-solver.md), 0.50–0.51 on the 64-8-10 MLP
#: of tests/test_cli_factors.py (111 of 218, 101 of 202), 0.42 on a softmax regression (23 of 55);
#: rounded up, to err against fitting.
PRECONDITIONED_PRODUCT_RATIO = 0.55
#: The sampled labels' forward pass over the training rows, in Hessian-vector products (a product is
#: two gradient passes; a forward pass is cheaper than one).
FIT_FORWARD_HVP = 0.5
#: One pass of batched per-example gradients with the layers' Kronecker statistics, in Hessian-vector
#: products. Measured (CNTK, float64, 2 shared cores): the whole EK-FAC fit (labels + 2 passes) took
#: 6.6 products' time on the 64-8-10 MLP (300 rows) and 7.5 on the 64-32-10 MLP (1,200 rows), K-FAC
#: (1 pass) 6.4 and 4.4: ~3 products a pass; rounded up.
FIT_PASS_HVP = 3.5
#: Fit only when the expected saving is at least this multiple of the fit's estimated cost: the
#: iteration count is an estimate (a well-conditioned or damped system converges in far fewer), the
#: ratio measured on a few networks only.
FIT_MARGIN = 2.0
#: ... and at least this many seconds: a shorter solve keeps the plain path (and its outputs as they
#: were), without the fit's memory (blocks of per-example gradients, up to 128 MB) for a saving the
#: user would not notice next to loading the model. The CLI's threshold of long work (its plan line).
MIN_SAVING_SECONDS = 10.0
#: Flops of one curvature-vector product per parameter and training row: two gradient passes, each a
#: forward (~2 flops per weight and row in a dense layer) and a backward (~4).
PRODUCT_FLOPS_PER_PARAMETER_ROW = 12.0
#: Flops of a symmetric eigendecomposition with eigenvectors, per k³.
EIGH_FLOPS_PER_CUBE = 9.0

Choice = collections.namedtuple("PreconditionerChoice", "name source reason fit_seconds saving_seconds considered")


class PreconditionerChoice(Choice):
    """What ``preconditioner="auto"`` chose: ``name`` ("ekfac" or "none"), ``source`` ("fitted" on the
    training data, "given": the caller's EKFAC, or None), ``reason`` (a few words: why),
    ``fit_seconds``/``saving_seconds`` (the estimates compared, or None when no estimate was needed),
    ``considered`` (False when there was nothing to choose: no iterative solve). ``str()``: one line."""
    __slots__ = ()

    def __str__(self):
        return "preconditioner %s (%s)" % (self.name, self.reason)


def is_auto(preconditioner):
    """True for ``preconditioner="auto"`` and an :class:`AutoPreconditioner`."""
    return isinstance(preconditioner, AutoPreconditioner) or \
        (isinstance(preconditioner, str) and preconditioner == "auto")


class AutoPreconditioner(object):
    """``preconditioner=AutoPreconditioner(...)`` (or ``"auto"``) of :func:`influence.s_test` and the
    functions that call it: EK-FAC for cg and refined LiSSA when it pays (the module docstring).
    ``factors``: a fitted :class:`influence.EKFAC` to use when the solve is iterative (free: no fit);
    ``on_choice``: called with the :class:`PreconditionerChoice` before the solve (and before the fit).
    ``choice``: the last choice made (None before any)."""

    def __init__(self, factors=None, on_choice=None):
        if factors is not None and not isinstance(factors, EKFAC):
            raise InfluenceError("AutoPreconditioner(factors=%s): pass a fitted influence.EKFAC, or None to fit one "
                                 "when it pays" % type(factors).__name__, parameter="preconditioner")
        self.factors, self.on_choice, self.choice = factors, on_choice, None

    def fingerprint(self):
        """What a job's fingerprint records: "auto" and the given factors' fingerprint (the choice follows
        from the sizes, which the fingerprint covers)."""
        return {"auto": None if self.factors is None else self.factors.fingerprint()}

    def __repr__(self):
        return "AutoPreconditioner(factors=%s)" % ("None" if self.factors is None else "EKFAC")


def cg_iterations_estimate(d):
    """cg's products per right-hand side as :func:`influence.solvers.plan_solver` estimates them."""
    return min(int(d), CG_ITERATIONS_ESTIMATE) + 2


def product_seconds_estimate(d, n):
    """Seconds of one curvature-vector product over ``n`` rows for ``d`` parameters, from the sizes
    (:data:`PRODUCT_FLOPS_PER_PARAMETER_ROW`, :data:`~influence.solvers.plan.FLOPS_PER_SECOND`)."""
    return PRODUCT_FLOPS_PER_PARAMETER_ROW * float(d) * float(n) / FLOPS_PER_SECOND


def saving_seconds_estimate(m, iterations, hvp_seconds, ratio=PRECONDITIONED_PRODUCT_RATIO):
    """Seconds of the products a preconditioner is expected to save over ``m`` solves of ``iterations``
    products each."""
    return m * iterations * (1.0 - ratio) * hvp_seconds


def fit_seconds_estimate(hvp_seconds, passes=2, factor_sizes=()):
    """Seconds to fit EK-FAC: the labels' forward pass and ``passes`` passes of per-example gradients,
    in units of one product of ``hvp_seconds``, plus the eigendecompositions of the Kronecker factors
    of sizes ``factor_sizes`` (e.g. (n_in + 1, n_out) per layer)."""
    flops = sum(EIGH_FLOPS_PER_CUBE * float(k) ** 3 for k in factor_sizes)
    return (FIT_FORWARD_HVP + passes * FIT_PASS_HVP) * hvp_seconds + flops / FLOPS_PER_SECOND


def fit_pays(saving, fit, margin=None, floor=None):
    """``(pays, reason)``: whether fitting (``fit`` seconds) for an expected ``saving`` (seconds) pays,
    and why in a few words (``margin``, ``floor``: default :data:`FIT_MARGIN`, :data:`MIN_SAVING_SECONDS`)."""
    margin = FIT_MARGIN if margin is None else margin
    floor = MIN_SAVING_SECONDS if floor is None else floor
    if saving < floor:
        return False, "saving ~%s < %s: a short solve" % (_seconds(saving), _seconds(floor))
    if saving < margin * fit:
        return False, "fitting ~%s > saving ~%s / %g" % (_seconds(fit), _seconds(saving), margin)
    return True, "fitted: saving ~%s >= %g × fitting ~%s" % (_seconds(saving), margin, _seconds(fit))


def _seconds(s):
    return "%.2g s" % s if s < 10 else "%.0f s" % s


def _factor_sizes(layers):
    """The sizes of the Kronecker factors A ((n_in + 1)², the bias's ones entry) and S (n_out²)."""
    sizes = []
    for layer in layers:
        sizes += [layer.n_in + 1, layer.n_out]
    return sizes


def _none(reason, considered=True):
    return PreconditionerChoice("none", None, reason, None, None, considered)


def choose_preconditioner(model, cur, method, m, n, factors=None, variant="refined"):
    """The :class:`PreconditionerChoice` of ``preconditioner="auto"`` for ``m`` solves by ``method``
    (the solver actually used) on the curvature ``cur`` (a :class:`~influence.scoring.choice.Curvature`)
    over ``n`` training rows; ``factors``: a given EKFAC. From the sizes only (the module docstring)."""
    if cur.kind == "ekfac":
        return _none("EK-FAC curvature: no iterations", considered=False)
    if method not in ("cg", "lissa"):
        return _none("solver %s: no iterations to save" % method, considered=False)
    if method == "lissa" and variant != "refined":
        return _none("lissa's %s variant takes none" % variant)
    if factors is not None:
        source = getattr(factors, "source", None)
        return PreconditionerChoice("ekfac", "given", "%s, fitted already" % (source or "a given EK-FAC"),
                                    0.0, None, True)
    layers, _ = model.kfac_plan()
    if not layers:
        return _none("no Dense/Convolution layer to factor")
    d = int(model.n_params)
    iterations = cg_iterations_estimate(d)
    hvp_seconds = product_seconds_estimate(d, n)
    saving = saving_seconds_estimate(m, iterations, hvp_seconds)
    fit = fit_seconds_estimate(hvp_seconds, 2, _factor_sizes(layers))
    pays, reason = fit_pays(saving, fit)
    return PreconditionerChoice("ekfac" if pays else "none", "fitted" if pays else None, reason, fit, saving, True)


def planned_iterations(d, preconditioner):
    """cg iterations per solve for the planner of ``solver="auto"`` under ``preconditioner="auto"``: with
    given factors, the plain estimate × :data:`PRECONDITIONED_PRODUCT_RATIO` (the preconditioner is
    free); else None (the plain estimate)."""
    if isinstance(preconditioner, AutoPreconditioner) and preconditioner.factors is not None:
        return max(1, int(math.ceil(min(int(d), CG_ITERATIONS_ESTIMATE) * PRECONDITIONED_PRODUCT_RATIO)))
    return None


def check_auto(preconditioner):
    """An :class:`AutoPreconditioner` for ``"auto"``; the object itself otherwise."""
    if isinstance(preconditioner, str):
        return AutoPreconditioner()
    return preconditioner

