"""The scores every evaluation compares: influence (I_up,loss) and its baselines, computed by the
same scoring code (see :mod:`influence.evaluate`)."""
import numpy as np

from ..scoring import influence_scores, s_test

__all__ = ["METHODS", "baseline_scores", "SEED_RANDOM_SCORES"]

#: Score methods of lds/loo, in report order: the influence scores and the baselines.
METHODS = ("influence", "grad_dot", "random")
#: Offset of the seed for the random baseline's stream.
SEED_RANDOM_SCORES = 1


def baseline_scores(model, train, test, seed=0, solver="auto", damping=None, scoring="gradient",
                    batch_size=None, check_optimum=True, progress=False, curvature="auto", **solver_options):
    """{method: (T, n) scores} for :data:`METHODS`: I_up,loss (s_test by ``solver``: "auto" picks
    direct for small models, which factorises H once for every test point), grad-dot −g_tᵀ g_i
    (the same :func:`influence.influence_scores` call, g_t stacked under s_test: one pass of
    per-example gradients serves both) and random. ``curvature``/``damping`` as in
    :func:`influence.s_test`."""
    test = model.validate(test, getattr(test, "name", "test data"))
    st = s_test(model, train, test, solver, damping, batch_size, check_optimum=check_optimum, curvature=curvature,
                **dict(solver_options, progress=progress))
    with model.preserving_params():
        g_test = model.per_example_grads(test, batch_size)
    # one scoring pass for both: the rows of s are s_test (influence) and g_test (grad-dot)
    both = np.atleast_2d(influence_scores(model, train, test.subset(np.tile(np.arange(len(test)), 2)),
                                          scoring=scoring, s=np.vstack([st.vectors, g_test]),
                                          batch_size=batch_size, check_optimum=False, progress=progress))
    out = {"influence": both[:len(test)], "grad_dot": both[len(test):]}
    out["random"] = np.random.RandomState(seed + SEED_RANDOM_SCORES).standard_normal(out["influence"].shape)
    return out
