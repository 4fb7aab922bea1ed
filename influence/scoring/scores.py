"""Influence scores (Koh & Liang 2017) and self-influence, with signs and 1/n factors spelled out.

Definitions (see docs/concepts-influence.md)::

    R(w)   = (1/n) Σ_i ℓ(z_i, w) + (λ/2)‖w‖²,      w* = argmin R,      H = ∇²R(w*)
    g_i    = ∇ℓ(z_i, w*),   g_test = ∇ℓ(z_test, w*)          (losses WITHOUT the L2 term)
    s_test = H⁻¹ g_test
    I_up,loss(z_i, z_test) = −g_testᵀ H⁻¹ g_i = −s_testᵀ g_i         (what influence_scores returns)
    Δ_i ≈ ℓ(z_test, w*_{−i}) − ℓ(z_test, w*) ≈ −I_up,loss / n          (predicted_loss_change)
    s_i  = g_iᵀ H⁻¹ g_i                                                (self_influence)

Δ_i > 0: removing z_i would RAISE the test loss, so z_i helped the test prediction (helpful);
Δ_i < 0: removing z_i would lower the test loss, so z_i hurt it (harmful).

``scoring="forward"`` computes every g_iᵀ s by central differences of per-example losses along s,
(ℓ_i(w* + r s) − ℓ_i(w* − r s)) / 2r, with batched forward passes: 2 passes over the training data
per test point (4 with the Richardson stencil) instead of n per-example backward passes.
"""
import collections
import contextlib
import time
import warnings

import numpy as np
import scipy.linalg

from ..common.errors import InfluenceError, param
from ..common.numeric import check_damping
from .chunks import DEFAULT_CHUNK_SIZE, run_chunks
from ..data import check_batch_size
from ..fitting import OPTIMUM_RTOL, NotAtOptimumWarning, warn_if_not_optimal
from .choice import choose_curvature, fallback_curvature, is_ekfac
from .preconditioning import check_auto, choose_preconditioner, is_auto, planned_iterations
from .kernels import (FORWARD_STENCIL, GRADIENT_CHUNK, ForwardStep, chunk_scores, forward_differences,
                      forward_steps, gradient_blocks, validated as _validate)
from ..curvature import EKFAC, ekfac_s_test, self_influence_ekfac
from ..solvers import (METHODS, NonPositiveCurvatureError, Solution, dense_matrix, lanczos_inverse, plan_solver,
                       solve_many)
from ..solvers.dense import cholesky

__all__ = ["s_test", "STest", "influence_scores", "predicted_loss_change", "self_influence",
           "directional_derivatives", "forward_steps", "forward_differences", "ForwardStep",
           "FORWARD_STENCIL", "GRADIENT_CHUNK"]

STest = collections.namedtuple("STest", "vectors solutions damping plan curvature curvature_reason preconditioner")
STest.__new__.__defaults__ = (None, "hessian", None, None)
STest.__doc__ = """Result of :func:`s_test`. ``vectors``: float64 array (n_test, d), row j = (H + damping·I)⁻¹
g_test_j (one row per test point, also for a single test point); ``solutions``: the solver's
``Solution`` for each row (x, converged, n_iter, n_hvp, residual, seconds; with direct and lanczos the
shared factorisation's products and seconds are in the first row, see
:func:`influence.solvers.solve_many`); ``damping``: the damping used; ``plan``: the
:class:`influence.solvers.Plan` of ``solver="auto"`` (None otherwise); ``curvature``: the curvature
used ("hessian", "gauss-newton", "fisher", "ekfac", or "given" for a caller's operator) and
``curvature_reason``, one line saying why and with which damping; ``preconditioner``: one line naming
the preconditioner of the solve (None without one)."""


def total_damping(cur):
    """The damping of a :class:`~influence.scoring.choice.Curvature`: the solver's plus the operator's own
    (EK-FAC with per-block automatic dampings: NaN, the blocks' values are in the operator)."""
    if cur.kind == "hessian":
        return float(cur.damping)
    own = getattr(cur.operator, "damping", 0.0)
    return float("nan") if own is None else float(cur.damping) + float(own or 0.0)

#: Options that only cg (of the methods "auto" chooses from) takes: given one, "auto" plans cg.
_CG_ONLY = ("maxiter", "stagnation", "curvature_steps", "recycle", "preconditioner")


def _preconditioned(options, model, train, cur, batch_size):
    """``(options, description)``: the solver options with ``preconditioner="ekfac"`` replaced by an
    :class:`influence.EKFAC` fitted on ``train`` with the damping of the curvature ``cur`` (so that it
    approximates C + damping·I; "auto" when both the damping and the model's l2 are 0) and the seed
    ``random_state``; a given preconditioner is kept. ``description``: one line, or None without one."""
    pre = options.get("preconditioner")
    if pre is None:
        return options, None
    def described(ekfac, source):
        return "%s (%s, labels %s, damping %s)" % (source, ekfac.strategy, ekfac.labels,
                                                  "auto" if ekfac.damping_auto else "%.3g" % ekfac.damping)
    if isinstance(pre, str) and pre == "ekfac":
        total = total_damping(cur)
        damping = total if np.isfinite(total) and (total > 0 or float(getattr(model, "l2", 0.0)) > 0) else "auto"
        pre = EKFAC(model, train, damping=damping, random_state=options.get("random_state"), batch_size=batch_size)
        return dict(options, preconditioner=pre), described(pre, "EK-FAC fitted on the training data")
    if isinstance(pre, EKFAC):
        return options, described(pre, "a given EK-FAC")
    return options, "a given %s" % type(pre).__name__


def directional_derivatives(model, data, directions, rel_step=None, stencil=None, batch_size=None):
    """D[j, i] = ∇ℓ(z_i, w)·directions[j] for every example of ``data`` (loss WITHOUT the L2 term),
    by central differences of batched forward passes; float64 array (m, n).

    :func:`forward_steps` chooses the step per direction (on a pilot subset), then
    :func:`forward_differences` evaluates every row: 2 passes over the data per direction with
    ``stencil="central"``, 4 with ``"richardson"`` (the default, :data:`FORWARD_STENCIL`). A zero
    direction gives a zero row without any pass. Weights are restored bit-identically afterwards,
    also on exceptions and KeyboardInterrupt.
    """
    data = _validate(model, data, "data")
    if batch_size is not None:
        batch_size = check_batch_size(batch_size)
    steps = forward_steps(model, data, directions, rel_step, stencil, batch_size)
    return forward_differences(model, data, directions, steps, batch_size)


def plan_auto(H, m, damping=0.0, solver_options=None):
    """The :class:`~influence.solvers.Plan` of ``solver="auto"`` for ``m`` test points on ``H`` (an
    option only cg takes, such as ``maxiter``, excludes direct; ``preconditioner="auto"`` does not, and
    with given factors cg is planned with fewer products: see :mod:`influence.scoring.preconditioning`)."""
    options = dict(solver_options or {})
    pre = options.get("preconditioner")
    iterations = None
    if is_auto(pre):
        del options["preconditioner"]
        iterations = planned_iterations(H.shape[0], pre)
    return plan_solver(H, m, damping=float(damping), allow_direct=not any(k in options for k in _CG_ONLY),
                       cg_iterations=iterations)


def _auto_preconditioner(options, model, cur, method, m, n):
    """The solver options with ``preconditioner="auto"`` resolved (:func:`choose_preconditioner`): the
    given factors, ``"ekfac"`` (fitted next) or no preconditioner; the choice is kept on the
    :class:`AutoPreconditioner` and heard by its ``on_choice``. Other options pass unchanged."""
    auto = options.get("preconditioner")
    if not is_auto(auto):
        return options
    auto = check_auto(auto)
    choice = choose_preconditioner(model, cur, method, m, n, auto.factors, options.get("variant", "refined"))
    auto.choice = choice
    if auto.on_choice is not None:
        auto.on_choice(choice)
    options = dict(options)
    del options["preconditioner"]
    if choice.name == "ekfac":
        options["preconditioner"] = auto.factors if choice.source == "given" else "ekfac"
    return options


def _check_solver(solver):
    if solver != "auto" and solver not in METHODS:
        raise InfluenceError("%s is not one of auto, %s; pass e.g. %s"
                             % (param("solver", solver), ", ".join(METHODS), param("solver", "auto")), parameter="solver")


def _with_curvature(model, train, curvature, damping, batch_size, hessian, check_optimum, work, on_curvature=None,
                    random_state=None):
    """``work(cur)`` on the :class:`~influence.scoring.choice.Curvature` chosen for ``curvature``;
    under ``"auto"``, a Hessian built here that turns out not positive definite is replaced by the
    Gauss-Newton matrix and the work done again. ``on_curvature(cur)`` hears each choice. Returns (result, curvature)."""
    cur = choose_curvature(model, train, curvature, damping, batch_size, hessian, check_optimum, random_state)
    if on_curvature is not None:
        on_curvature(cur)
    if cur.requested == "auto" and cur.kind != "hessian":
        warnings.warn("%s: using %s (curvature='auto'); influence then predicts the response to "
                      "down-weighting points from these weights, not a retraining from scratch"
                      % (cur.reason.split(": ", 1)[-1], cur.reason.split(": ", 1)[0]), NotAtOptimumWarning,
                      stacklevel=4)
    try:
        return work(cur), cur
    except NonPositiveCurvatureError as e:
        if cur.requested != "auto" or cur.kind != "hessian" or (hessian is not None and
                                                                 not hasattr(hessian, "gauss_newton")):
            raise          # a caller's operator (hessian=) is what was asked for: no switch
        cur = fallback_curvature(model, train, cur, e, damping, batch_size, hessian)
        if on_curvature is not None:
            on_curvature(cur)
        return work(cur), cur


@contextlib.contextmanager
def executor_hessian(executor, model, train, batch_size=None):
    """Context manager: the Hessian operator an executor object provides for s_test
    (``executor.hessian_operator``, e.g. :class:`influence.dask.executor.DaskExecutor`: the products on its
    workers), or None; closed on exit (a cluster operator releases its job on the workers)."""
    make = getattr(executor, "hessian_operator", None)
    hessian = None if make is None else make(model, train, batch_size)
    try:
        yield hessian
    finally:
        if hessian is not None and hasattr(hessian, "close"):
            hessian.close()


def s_test(model, train, test, solver="cg", damping=None, batch_size=None, hessian=None,
           check_optimum=True, curvature="auto", on_curvature=None, on_plan=None, **solver_options):
    """s_test = (C + damping·I)⁻¹ g_test for each test point, C the curvature of R on ``train``:
    ``curvature="hessian"`` (H = ∇²R(w)), ``"gauss-newton"``, ``"fisher"`` or ``"auto"`` (the
    Hessian at an optimum where H + damping·I is positive definite, else Gauss-Newton; see
    :mod:`influence.scoring.choice`). ``damping=None``: 0 for the Hessian, ``"auto"`` (0.1 × the
    mean eigenvalue) for Gauss-Newton and Fisher; a number or ``"auto"`` wins.

    ``test``: (x, y) with one row per test point (one row for a single point) or a Dataset.
    g_test = ∇ℓ(z_test, w) is the gradient of that point's loss WITHOUT the L2 term; several test
    points give several vectors (not the inverse-HVP of their mean). ``solver`` is a method of
    :func:`influence.solvers.solve` ("cg", "lissa", "direct", "lanczos"), with ``solver_options``
    passed on, or "auto": direct or cg by the cost model of :func:`influence.solvers.plan_solver`
    (d, n, the number of test points, the memory, one timed product), recorded in ``STest.plan``.
    The test points share work (:func:`influence.solvers.solve_many`): direct factorises H + damping·I
    once, lanczos decomposes once, cg starts each solve from the Galerkin projection of its right-hand
    side on the previous solutions when that lowers the residual (``recycle=False`` turns that off); lissa solves each point on its own. ``hessian``: a ready :class:`~influence.curvature.hessian.HessianOperator` on ``train`` (reuses its
    calibrated step across calls), or an :class:`influence.dask.hessian.DaskHessianOperator` to run the
    products on a Dask cluster; by default one is built with ``batch_size``.
    Returns :class:`STest` (``vectors`` of shape (n_test, d), the solver's ``Solution`` per row, the
    damping and the curvature used). Warns with :class:`~influence.fitting.NotAtOptimumWarning` when
    ``w`` is not a minimum of R (saying which curvature was used instead). ``on_curvature``: called
    with the :class:`~influence.scoring.choice.Curvature` once chosen (before the solve);
    ``on_plan``: called with the plan of ``solver="auto"`` before the solve.
    ``curvature`` may also be a fitted :class:`influence.EKFAC` (e.g. loaded with ``EKFAC.load``), used
    as it is; with ``curvature="ekfac"`` its sampled labels are seeded by ``random_state``.
    ``preconditioner`` (a solver option of cg and lissa; "auto" then plans cg): an EKFAC, any
    LinearOperator M ≈ (C + damping·I)⁻¹, or ``"ekfac"``: an EKFAC fitted here on ``train`` with the
    damping of the chosen curvature. The answer is the unpreconditioned system's; only the number of
    products changes (``STest.preconditioner`` names it). ``"auto"`` (or an
    :class:`~influence.scoring.preconditioning.AutoPreconditioner`, which may carry fitted factors and
    hears the choice) leaves ``solver="auto"`` free to plan direct and fits EK-FAC for cg or lissa only
    when the products it is expected to save clearly outweigh the fit, by sizes only (see
    :mod:`influence.scoring.preconditioning`).
    Weights are unchanged (bit-identical) afterwards.
    """
    _check_solver(solver)
    if is_ekfac(curvature) and solver_options.get("preconditioner") is not None \
            and not is_auto(solver_options["preconditioner"]):
        raise InfluenceError("%s preconditions an iterative solve, but %s has none (its inverse is applied block "
                             "by block): drop one of them" % (param("preconditioner", "ekfac"),
                                                              param("curvature", "ekfac")), parameter="preconditioner")
    train = _validate(model, train, "training data")
    test = _validate(model, test, "test data")
    with model.preserving_params():
        g_test = model.per_example_grads(test, batch_size)

        def solve(cur):
            if cur.kind == "ekfac":          # the approximation's inverse, block by block: no iterations
                _auto_preconditioner(solver_options, model, cur, "ekfac", len(g_test), len(train))
                t0 = time.time()
                X = np.atleast_2d(ekfac_s_test(cur.operator, g_test))
                seconds = (time.time() - t0) / len(X)
                return [Solution(x, True, 0, 0, 0.0, seconds) for x in X], None, None
            method, plan = solver, None
            if method == "auto":
                plan = plan_auto(cur.operator, len(g_test), cur.damping, solver_options)
                method = plan.method
            options = _auto_preconditioner(solver_options, model, cur, method, len(g_test), len(train))
            if plan is not None and on_plan is not None:
                on_plan(plan)
            options, pre = _preconditioned(options, model, train, cur, batch_size)
            return solve_many(cur.operator, g_test, method, damping=float(cur.damping), **options), plan, pre
        (solutions, plan, pre), cur = _with_curvature(model, train, curvature, damping, batch_size, hessian,
                                                      check_optimum, solve, on_curvature,
                                                      solver_options.get("random_state"))
    vectors = np.array([np.asarray(sol.x, dtype=np.float64).reshape(-1) for sol in solutions])
    return STest(vectors, solutions, total_damping(cur), plan, cur.kind, cur.reason, pre)


def _steps_checkpointed(model, train, directions, rel_step, stencil, batch_size, checkpoint):
    """forward_steps, saved to / reused from ``checkpoint`` so a resumed run uses the same steps."""
    codes = ("central", "richardson")
    saved = checkpoint.load_array("forward_steps") if checkpoint is not None else None
    if saved is not None and saved.shape == (len(directions), 3):
        return [ForwardStep(float(r), codes[int(c)], float(e)) for r, c, e in saved]
    steps = forward_steps(model, train, directions, rel_step, stencil, batch_size)
    if checkpoint is not None:
        checkpoint.save_array("forward_steps", [[st.r, codes.index(st.stencil), st.error] for st in steps])
    return steps


def _chunk_runner(executor, model, train, vectors, steps, scoring, batch_size):
    """The ``executor(missing, on_done)`` callable for :func:`run_chunks`: ``executor`` itself when it
    is a plain callable, else ``executor.bind(...)`` (an executor object such as
    :class:`influence.dask.executor.DaskExecutor`, which needs the vectors and steps to ship them)."""
    if executor is None or not hasattr(executor, "bind"):
        return executor
    return executor.bind(model, train, vectors, steps, scoring, batch_size)


def _score_rows(model, train, vectors, scoring, rel_step, stencil, batch_size, chunk_size, checkpoint,
                progress, executor, sink=None):
    """(m, n) array of g_iᵀ vectors[j] over all training rows, chunk by chunk (by ``executor`` when
    given, see :func:`influence_scores`); with ``sink``, each chunk goes to ``sink(start, stop, dots)``
    instead and None is returned."""
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    steps = None
    if scoring == "forward":
        steps = _steps_checkpointed(model, train, vectors, rel_step, stencil, batch_size, checkpoint)

    def compute(a, b):
        return chunk_scores(model, train, vectors, scoring, steps, a, b, batch_size)
    runner = _chunk_runner(executor, model, train, vectors, steps, scoring, batch_size)
    dots, _ = run_chunks(compute, len(train), chunk_size, checkpoint, progress, "scoring", runner, sink=sink)
    return dots


def influence_scores(model, train, test, solver="cg", scoring="forward", damping=None, batch_size=None,
                     s=None, hessian=None, rel_step=None, stencil=None,
                     check_optimum=True, chunk_size=None, checkpoint=None, progress=False, executor=None,
                     client=None, sink=None, curvature="auto", **solver_options):
    """I_up,loss(z_i, z_test) = −g_testᵀ (C + damping·I)⁻¹ g_i for every training point z_i, C the
    curvature chosen by ``curvature`` (and ``damping``) as in :func:`s_test` (the Hessian H at an
    optimum).

    This is the derivative of the test loss when z_i is up-weighted by ε in R (Koh & Liang 2017).
    Removing z_i is ε = −1/n, so the predicted change of the test loss is
    ``predicted_loss_change(scores, n_train) = −scores / n_train`` (positive: z_i helped the test
    prediction). Shape (n_train,) for ONE test point (a test set of one row), (n_test, n_train) for
    several.

    ``scoring="forward"`` (default): g_iᵀ s_test for all i by central differences of batched forward
    passes along s_test (see :func:`directional_derivatives`: 4 passes over ``train`` per test point
    with the default Richardson stencil). ``scoring="gradient"``: per-example gradients (chunks of
    :data:`GRADIENT_CHUNK` rows) dotted with s_test — the reference path, one backward pass per
    example on CNTK. ``s``: a precomputed :class:`STest` for these test points (skips the solve).
    The training rows are processed in chunks of ``chunk_size`` (default
    :data:`influence.jobs.DEFAULT_CHUNK_SIZE`); ``checkpoint`` (an :class:`influence.jobs.Checkpoint`)
    saves each finished chunk and reuses saved ones, ``progress`` shows a tqdm bar on stderr,
    ``executor`` computes the chunks elsewhere: either a callable ``executor(missing, on_done)`` (see
    :func:`influence.scoring.chunks.run_chunks`) or an executor object with ``check(model, train)`` (called
    before the solve, to refuse early) and ``bind(model, train, vectors, steps, scoring, batch_size)``
    returning such a callable — e.g. ``influence.dask.executor.DaskExecutor(client)`` scores the chunks on
    Dask workers (``train`` must come from :func:`influence.load_npz`, a path every worker can read;
    the same numbers to the bit as without it for a given s_test) and, when the executor has a
    ``hessian_operator(model, train, batch_size)`` and no ``hessian`` is given, s_test is solved on
    that operator (DaskExecutor: Hessian-vector products summed over the workers' shards, equal to the
    single-process ones to ≤ 1e-10 relative in float64; the steps are chosen here).
    ``client=`` (before 0.2) is replaced by ``executor=DaskExecutor(client)``.
    ``sink``: a callable ``sink(start, stop, scores)`` receiving each chunk of the scores, float64
    (n_test, stop − start) also for one test point, instead of the whole matrix (then the function
    returns None and memory holds one chunk at a time: :class:`influence.scoring.matrix.ScoreAggregates`
    sums them, :class:`influence.jobs.ScoreJob` with ``matrix=`` writes them to a ``.npy`` file).
    Other arguments as in :func:`s_test`. Weights are unchanged (bit-identical) afterwards.
    """
    if scoring not in ("forward", "gradient"):
        raise InfluenceError("%s is not one of 'forward', 'gradient'" % param("scoring", scoring), parameter="scoring")
    train = _validate(model, train, "training data")
    test = _validate(model, test, "test data")
    if client is not None:
        raise TypeError("influence_scores(client=...) was replaced by "
                        "executor=influence.dask.executor.DaskExecutor(client); pass that instead")
    if hasattr(executor, "check"):
        executor.check(model, train)
    if s is None:
        on_workers = executor if hessian is None and not is_ekfac(curvature) and curvature != "fisher" else None
        with executor_hessian(on_workers, model, train, batch_size) as own:
            s = s_test(model, train, test, solver, damping, batch_size, hessian if own is None else own,
                       check_optimum, curvature, **solver_options)
    elif check_optimum:
        warn_if_not_optimal(model, train, OPTIMUM_RTOL, batch_size)
    vectors = np.atleast_2d(s.vectors if isinstance(s, STest) else np.asarray(s, dtype=np.float64))
    if vectors.shape != (len(test), model.n_params):
        raise ValueError("s has shape %s but %d test points and %d parameters need (%d, %d)"
                         % (vectors.shape, len(test), model.n_params, len(test), model.n_params))
    if sink is not None:
        def to_sink(a, b, dots):        # this chunk's own array, already checkpointed: negated in place
            sink(a, b, np.negative(dots, out=dots if dots.flags.writeable else None))
        _score_rows(model, train, vectors, scoring, rel_step, stencil, batch_size, chunk_size,
                    checkpoint, progress, executor, to_sink)
        return None
    dots = _score_rows(model, train, vectors, scoring, rel_step, stencil, batch_size, chunk_size,
                       checkpoint, progress, executor)
    scores = np.negative(dots, out=dots)       # in place: no second (n_test, n) array
    return scores[0] if len(test) == 1 else scores


def predicted_loss_change(scores, n_train):
    """Δ_i ≈ ℓ(z_test, w*_{−i}) − ℓ(z_test, w*) = −I_up,loss / n_train: the predicted change of the
    test loss when training point i is removed and the model retrained (positive: z_i helped the
    test prediction, removing it raises the loss; negative: z_i hurt it)."""
    return -np.asarray(scores, dtype=np.float64) / float(n_train)


def self_influence(model, train, method="exact", k=None, damping=None, batch_size=None, hessian=None,
                   rel_step=None, stencil=None, check_optimum=True, chunk_size=None, checkpoint=None,
                   progress=False, curvature="auto", on_curvature=None, **lanczos_options):
    """Self-influence s_i = g_iᵀ (C + damping·I)⁻¹ g_i of every training point (shape (n,)), C the
    curvature chosen by ``curvature`` and ``damping`` as in :func:`s_test`.

    High s_i: the point is fitted against the rest of the data (a likely mislabeled example).

    ``method="exact"`` (small d): a dense C from d curvature-vector products and the per-example
    gradients g_i; s_i from one dense solve. ``method="lanczos"`` (large d): the rank-``k``
    approximation C ≈ U diag(θ) Uᵀ from :func:`influence.solvers.lanczos_inverse`, so
    s_i ≈ Σ_k (u_kᵀ g_i)² / (θ_k + damping), every u_kᵀ g_i by forward differences along u_k
    (:func:`directional_derivatives`: no per-example gradient, 2 or 4 batched passes per u_k;
    Schioppa et al. 2022 with finite differences instead of forward-mode autodiff).
    ``chunk_size``, ``checkpoint``, ``progress`` as in :func:`influence_scores` (the dense matrix or
    the Lanczos eigenpairs are checkpointed too). Weights are unchanged (bit-identical) afterwards.
    ``on_curvature``: called with the :class:`~influence.scoring.choice.Curvature` once it is chosen
    (e.g. to print which one and why before the long work).
    """
    if method not in ("exact", "lanczos"):
        raise InfluenceError("%s is not one of 'exact', 'lanczos'" % param("method", method), parameter="method")
    if chunk_size is not None:
        check_batch_size(chunk_size, "chunk_size")
    train = _validate(model, train, "training data")
    if method == "lanczos" and k is None:
        raise InfluenceError("%s needs the rank %s (e.g. %s)" % (param("method", "lanczos"), param("k"), param("k", 50)),
                             parameter="k", suggestion=50)
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    with model.preserving_params():
        if is_ekfac(curvature):
            cur = choose_curvature(model, train, curvature, damping, batch_size, hessian, check_optimum,
                                   lanczos_options.get("random_state"))
            if on_curvature is not None:
                on_curvature(cur)
            return self_influence_ekfac(model, train, cur.operator, batch_size, progress)
        if method == "exact":
            def factorise(cur):
                A = checkpoint.load_array("damped_hessian") if checkpoint is not None else None
                if A is None:
                    A, _ = dense_matrix(cur.operator, cur.damping, extra_matrices=1, progress=progress)   # A and its Cholesky factor
                    if checkpoint is not None:
                        checkpoint.save_array("damped_hessian", A)
                return cholesky(A, "self_influence", cur.damping, getattr(cur.operator, "damping", 0.0))
            factor, _ = _with_curvature(model, train, curvature, damping, batch_size, hessian, check_optimum,
                                        factorise, on_curvature)

            def compute(a, b):
                return np.concatenate([np.sum(G * scipy.linalg.cho_solve(factor, G.T).T, axis=1)
                                       for G in gradient_blocks(model, train, a, b, batch_size)])
            out, _ = run_chunks(compute, len(train), chunk_size, checkpoint, progress, "self-influence")
            return out

        def decompose(cur):
            saved = checkpoint.load_array("lanczos") if checkpoint is not None else None
            if saved is None:
                low = lanczos_inverse(cur.operator, int(k), damping=cur.damping,
                                      **dict({"progress": progress}, **lanczos_options))
                theta = np.asarray(low.eigenvalues, dtype=np.float64) + float(getattr(low, "damping", cur.damping))
                saved = np.vstack([theta[None, :], np.asarray(low.eigenvectors, dtype=np.float64)])
                if checkpoint is not None:
                    checkpoint.save_array("lanczos", saved)
            return saved
        saved, _ = _with_curvature(model, train, curvature, damping, batch_size, hessian, check_optimum,
                                   decompose, on_curvature)
        theta, U = saved[0], saved[1:]
    steps = _steps_checkpointed(model, train, U.T, rel_step, stencil, batch_size, checkpoint)

    def compute_lanczos(a, b):
        P = forward_differences(model, train.subset(slice(a, b)), U.T, steps, batch_size)
        return np.sum(P ** 2 / theta[:, None], axis=0)
    out, _ = run_chunks(compute_lanczos, len(train), chunk_size, checkpoint, progress, "self-influence")
    return out

