"""The scores every evaluation compares: influence (I_up,loss) and its baselines, computed by the
same scoring code (see :mod:`influence.evaluate`)."""
import time

import numpy as np
from scipy.sparse.linalg import aslinearoperator

from ..common.errors import InfluenceError, param
from ..curvature import FisherOperator, GaussNewtonOperator, HessianOperator, auto_damping, mean_eigenvalue
from ..jobs import damping_setting as plain_damping
from ..scoring import influence_scores, s_test
from ..solvers import dense_matrix

__all__ = ["METHODS", "baseline_scores", "SEED_RANDOM_SCORES", "CURVATURES", "curvature_operator", "tracin_scores",
           "parse_dampings", "method_names", "damping_setting", "eigenvalue_multiple"]

#: Curvatures the influence scores of an evaluation may use (``curvature=``).
CURVATURES = ("hessian", "gauss-newton", "fisher")

#: Score methods of lds/loo, in report order: the influence scores and the baselines.
METHODS = ("influence", "grad_dot", "random")
#: With a damping sweep: the largest number of parameters for which solver "auto" builds the dense
#: curvature once (d products) and factorises it for every damping (d² floats: 128 MB at 4,000).
DENSE_REUSE_MAX = 4000
#: Offset of the seed for the random baseline's stream.
SEED_RANDOM_SCORES = 1


def curvature_operator(model, train, curvature="hessian", damping=0.0, batch_size=None):
    """(operator, damping): the curvature C of R on ``train`` as a LinearOperator without damping
    (:class:`~influence.HessianOperator`, :class:`~influence.GaussNewtonOperator` or
    :class:`~influence.FisherOperator`), and ``damping`` as a number (``"auto"``: 0.1 × the mean
    eigenvalue of C, :func:`influence.curvature.auto_damping`; ``"<f>x"``: f × that mean eigenvalue).
    ``curvature="auto"`` and ``damping=None`` mean what they mean for :func:`influence.s_test` (without
    its switch on a non-positive-definite Hessian)."""
    kinds = {"hessian": HessianOperator, "gauss-newton": GaussNewtonOperator, "fisher": FisherOperator}
    if curvature == "auto":            # as influence.s_test: the Hessian at an optimum, else Gauss-Newton
        from ..fitting import check_optimum
        curvature = "hessian" if check_optimum(model, train, batch_size=batch_size).ok else "gauss-newton"
    if damping is None:                # as influence.s_test: 0 with the Hessian, auto with the others
        damping = 0.0 if curvature == "hessian" else "auto"
    if curvature not in kinds:
        raise InfluenceError("%s is not one of %s" % (param("curvature", curvature), ", ".join(CURVATURES)),
                             parameter="curvature", suggestion="gauss-newton")
    op = kinds[curvature](model, train, batch_size=batch_size)
    if isinstance(damping, str) and damping == "auto":
        damping = auto_damping(op)
    elif isinstance(damping, str):
        (_, factor, absolute), = parse_dampings([damping])
        damping = absolute if factor is None else factor * mean_eigenvalue(op)[0]
    return op, float(damping)


def eigenvalue_multiple(text):
    """f of a damping written as a multiple of the mean eigenvalue, ``"<f>x"`` (e.g. "0.1x" → 0.1);
    None when ``text`` does not end in "x"; ValueError when f is not a number (callers check f >= 0)."""
    if not text.endswith("x"):
        return None
    return float(text[:-1])


def damping_setting(damping):
    """The scores' damping as an evaluation records it: None (the curvature's default), "auto", a
    multiple of the mean eigenvalue such as "0.1x" (checked: a number >= 0 before the x), or a float."""
    if isinstance(damping, str) and damping.strip().endswith("x"):
        text = damping.strip()
        try:
            factor = eigenvalue_multiple(text)
        except ValueError:
            factor = -1.0
        if not (np.isfinite(factor) and factor >= 0):
            raise InfluenceError("%s: a damping is a number >= 0, 'auto' or a multiple of the mean eigenvalue of the "
                                 "curvature such as %s" % (param("damping", damping), param("damping", "0.1x")),
                                 parameter="damping", suggestion="1x")
        return text
    return plain_damping(damping)


def parse_dampings(values):
    """The damping sweep: each value a number (absolute) or ``"<f>x"`` (f × the mean eigenvalue of the
    curvature). Returns [(name, factor or None, absolute or None)]."""
    out = []
    for v in values or ():
        text = str(v).strip()
        try:
            f = eigenvalue_multiple(text)
            if f is not None:
                entry = ("influence λ=%gx" % f, f, None)
            else:
                f = float(text)
                entry = ("influence λ=%g" % f, None, f)
        except ValueError:
            f = -1.0
        if not np.isfinite(f) or f < 0:
            raise InfluenceError("%s: each damping of the sweep is a number >= 0 or a multiple of the mean "
                                 "eigenvalue such as 0.1x (e.g. %s)" % (param("dampings", list(values)),
                                                                         param("dampings", ["0.01x", "0.1x", "1x", "10x"])),
                                 parameter="dampings")
        out.append(entry)
    return out


def method_names(dampings=(), checkpoints=None):
    """The score methods of an evaluation, in report order."""
    names = ["influence", "grad_dot"] + [name for name, _, _ in parse_dampings(dampings)]
    if checkpoints:
        names.append("tracin")
    return names + ["random"]


def _checkpoint_weights(model, checkpoints):
    """Flat weight vectors of the checkpoints: vectors as given, CNTK files loaded with the model's loss."""
    out = []
    for c in checkpoints:
        if isinstance(c, str):
            from ..adapters.cntk import CNTKModel
            c = CNTKModel.load(c, loss=getattr(model, "loss_name", "cross_entropy")).get_params()
        c = np.asarray(c)
        if c.shape != (model.n_params,):
            raise InfluenceError("%s: a checkpoint has %d parameters but the model %d; save checkpoints of the "
                                 "same network" % (param("checkpoints", "..."), c.size, model.n_params),
                                 parameter="checkpoints")
        out.append(c)
    return out


def tracin_scores(model, train, test, checkpoints, learning_rates=None, scoring="gradient", batch_size=None,
                  progress=False):
    """TracIn-CP (Pruthi et al. 2020) in the sign convention of I_up,loss: −Σ_k lr_k · g_test(w_k)ᵀ g_i(w_k)
    over the ``checkpoints`` (flat weight vectors or CNTK files), ``learning_rates`` lr_k (default 1
    each). (T, n). Weights restored afterwards."""
    weights = _checkpoint_weights(model, checkpoints)
    rates = np.ones(len(weights)) if learning_rates is None else np.asarray(learning_rates, dtype=np.float64).reshape(-1)
    if rates.size == 1:
        rates = np.repeat(rates, len(weights))
    if rates.size != len(weights):
        raise InfluenceError("%s: give one learning rate per checkpoint (%d) or one for all"
                             % (param("learning_rates", rates.tolist()), len(weights)), parameter="learning_rates")
    total = None
    with model.preserving_params():
        for w, lr in zip(weights, rates):
            model.set_params(w)
            g_test = model.per_example_grads(test, batch_size)
            sc = lr * np.atleast_2d(influence_scores(model, train, test, scoring=scoring, s=g_test, batch_size=batch_size,
                                                     check_optimum=False, progress=progress))
            total = sc if total is None else total + sc
    return total


def baseline_scores(model, train, test, seed=0, solver="auto", damping=0.0, scoring="gradient",
                    batch_size=None, check_optimum=True, progress=False, curvature="hessian", dampings=(),
                    checkpoints=None, learning_rates=None, seconds=None, **solver_options):
    """{method: (T, n) scores} for :func:`method_names`: I_up,loss (s_test by ``solver``: "auto" picks
    direct for small models, which factorises the curvature once for every test point), grad-dot
    −g_tᵀ g_i (the same :func:`influence.influence_scores` call with g_t in place of s_test), the damping
    sweep ``dampings`` (:func:`parse_dampings`: I_up,loss at each damping, "x" = the mean eigenvalue of
    the curvature by :func:`influence.curvature.mean_eigenvalue`), TracIn-CP over ``checkpoints``
    (:func:`tracin_scores`) and random. ``curvature`` (:data:`CURVATURES`) replaces the Hessian in
    I_up,loss; ``damping`` a number or "auto" (see :func:`curvature_operator`). ``seconds``: a dict that
    receives each method's wall time per test point."""
    test = model.validate(test, getattr(test, "name", "test data"))
    train = model.validate(train, getattr(train, "name", "training data"))
    T = float(len(test))
    times = {}
    clock = time.perf_counter()
    op, damping = curvature_operator(model, train, curvature, damping, batch_size)
    sweep = parse_dampings(dampings)
    if sweep and (solver == "direct" or (solver == "auto" and op.shape[0] <= DENSE_REUSE_MAX)):
        # one dense matrix from d products serves the main damping and every setting of the sweep
        A, _ = dense_matrix(op, progress=progress)
        op, solver = aslinearoperator(A), "direct"

    def influence_at(lam, check):
        st = s_test(model, train, test, solver, lam, batch_size, hessian=op,
                    check_optimum=check and curvature == "hessian", **dict(solver_options, progress=progress))
        return np.atleast_2d(influence_scores(model, train, test, scoring=scoring, s=st.vectors,
                                              batch_size=batch_size, check_optimum=False, progress=progress))
    out = {"influence": influence_at(damping, check_optimum)}
    times["influence"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with model.preserving_params():
        g_test = model.per_example_grads(test, batch_size)
    out["grad_dot"] = np.atleast_2d(influence_scores(model, train, test, scoring=scoring, s=g_test,
                                                     batch_size=batch_size, check_optimum=False, progress=progress))
    times["grad_dot"] = time.perf_counter() - clock
    mean = None
    for name, factor, absolute in sweep:
        clock = time.perf_counter()
        if factor is not None and mean is None:
            mean = mean_eigenvalue(op)[0]          # its cost is counted in the first "x" setting
        out[name] = influence_at(absolute if factor is None else factor * mean, False)
        times[name] = time.perf_counter() - clock
    if checkpoints:
        clock = time.perf_counter()
        out["tracin"] = tracin_scores(model, train, test, checkpoints, learning_rates, scoring, batch_size, progress)
        times["tracin"] = time.perf_counter() - clock
    out["random"] = np.random.RandomState(seed + SEED_RANDOM_SCORES).standard_normal(out["influence"].shape)
    times["random"] = 0.0
    if seconds is not None:
        seconds.update({m: v / T for m, v in times.items()})
    return out
