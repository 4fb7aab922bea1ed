"""The scores every evaluation compares: influence (I_up,loss) and its baselines, computed by the
same scoring code (see :mod:`influence.evaluate`)."""
import numpy as np

from ..common.errors import InfluenceError, param
from ..curvature import FisherOperator, GaussNewtonOperator, HessianOperator, auto_damping
from ..scoring import influence_scores, s_test

__all__ = ["METHODS", "baseline_scores", "SEED_RANDOM_SCORES", "CURVATURES", "curvature_operator"]

#: Curvatures the influence scores of an evaluation may use (``curvature=``).
CURVATURES = ("hessian", "gauss-newton", "fisher")

#: Score methods of lds/loo, in report order: the influence scores and the baselines.
METHODS = ("influence", "grad_dot", "random")
#: Offset of the seed for the random baseline's stream.
SEED_RANDOM_SCORES = 1


def curvature_operator(model, train, curvature="hessian", damping=0.0, batch_size=None):
    """(operator, damping): the curvature C of R on ``train`` as a LinearOperator without damping
    (:class:`~influence.HessianOperator`, :class:`~influence.GaussNewtonOperator` or
    :class:`~influence.FisherOperator`), and ``damping`` as a number (``"auto"``: 0.1 × the mean
    eigenvalue of C, :func:`influence.curvature.auto_damping`)."""
    kinds = {"hessian": HessianOperator, "gauss-newton": GaussNewtonOperator, "fisher": FisherOperator}
    if curvature not in kinds:
        raise InfluenceError("%s is not one of %s" % (param("curvature", curvature), ", ".join(CURVATURES)),
                             parameter="curvature", suggestion="gauss-newton")
    op = kinds[curvature](model, train, batch_size=batch_size)
    if isinstance(damping, str) and damping == "auto":
        damping = auto_damping(op)
    return op, float(damping)


def baseline_scores(model, train, test, seed=0, solver="auto", damping=0.0, scoring="gradient",
                    batch_size=None, check_optimum=True, progress=False, curvature="hessian", **solver_options):
    """{method: (T, n) scores} for :data:`METHODS`: I_up,loss (s_test by ``solver``: "auto" picks
    direct for small models, which factorises the curvature once for every test point), grad-dot
    −g_tᵀ g_i (the same :func:`influence.influence_scores` call, g_t stacked under s_test: one pass of
    per-example gradients serves both) and random. ``curvature`` (:data:`CURVATURES`) replaces the
    Hessian in I_up,loss; ``damping`` a number or "auto" (see :func:`curvature_operator`)."""
    test = model.validate(test, getattr(test, "name", "test data"))
    train = model.validate(train, getattr(train, "name", "training data"))
    op, damping = curvature_operator(model, train, curvature, damping, batch_size)
    st = s_test(model, train, test, solver, damping, batch_size, hessian=op,
                check_optimum=check_optimum and curvature == "hessian", **dict(solver_options, progress=progress))
    with model.preserving_params():
        g_test = model.per_example_grads(test, batch_size)
    # one scoring pass for both: the rows of s are s_test (influence) and g_test (grad-dot)
    both = np.atleast_2d(influence_scores(model, train, test.subset(np.tile(np.arange(len(test)), 2)),
                                          scoring=scoring, s=np.vstack([st.vectors, g_test]),
                                          batch_size=batch_size, check_optimum=False, progress=progress))
    out = {"influence": both[:len(test)], "grad_dot": both[len(test):]}
    out["random"] = np.random.RandomState(seed + SEED_RANDOM_SCORES).standard_normal(out["influence"].shape)
    return out
