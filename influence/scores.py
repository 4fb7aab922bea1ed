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
import time

import numpy as np
import scipy.linalg

from ._numeric import check_damping
from .data import check_batch_size
from .fitting import OPTIMUM_RTOL, warn_if_not_optimal
from .hvp import GRID_RATIO, HessianOperator, adaptive_difference
from .solvers import dense_matrix, lanczos_inverse, solve
from .solvers.dense import cholesky

__all__ = ["s_test", "STest", "influence_scores", "predicted_loss_change", "self_influence",
           "directional_derivatives", "forward_steps", "forward_differences", "ForwardStep",
           "FORWARD_STENCIL"]

#: Rows (evenly spaced through the data) on which the forward-difference step is chosen per direction.
PILOT_ROWS = 512
#: Default stencil per dtype: "richardson" = (16·D(r/4) − D(r))/15 (4 passes, O(r⁴) truncation),
#: "central" = D(r) (2 passes, O(r²)).
FORWARD_STENCIL = {np.dtype(np.float32): "richardson", np.dtype(np.float64): "richardson"}
#: Training rows per block of per-example gradients (memory: block × d floats).
GRADIENT_CHUNK = 256

STest = collections.namedtuple("STest", "vectors solutions damping")
STest.__doc__ = """Result of :func:`s_test`. ``vectors``: float64 array (n_test, d), row j = (H + damping·I)⁻¹
g_test_j (one row per test point, also for a single test point); ``solutions``: the solver's
``Solution`` for each row (x, converged, n_iter, n_hvp, residual, seconds); ``damping``: the damping used."""


def _validate(model, data, name):
    return model.validate(data, getattr(data, "name", name))


def _dtype_default(table, model):
    return table.get(np.dtype(model.dtype), table[np.dtype(np.float64)])


ForwardStep = collections.namedtuple("ForwardStep", "r stencil error")
ForwardStep.__doc__ = """Step of the forward differences along one direction: absolute step ``r``, the
``stencil`` ("central" or "richardson"), and the estimated relative error (NaN when ``r`` was given)."""


def _check_directions(model, directions):
    directions = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    if directions.ndim != 2 or directions.shape[1] != model.n_params:
        raise ValueError("directions have shape %s but the model has %d parameters; pass (m, %d)"
                         % (directions.shape, model.n_params, model.n_params))
    if not np.all(np.isfinite(directions)):
        raise ValueError("directions contain NaN or Inf; check the solver's output (try damping > 0)")
    return directions


def forward_steps(model, data, directions, rel_step=None, stencil=None, batch_size=None):
    """Choose the forward-difference step for each direction (one :class:`ForwardStep` each).

    By default the step is chosen per direction by :func:`influence.hvp.adaptive_difference` applied
    to the per-example losses of :data:`PILOT_ROWS` rows spread through ``data`` (a few dozen cheap
    forward passes): it returns the step whose Richardson (or central) estimate has the smallest
    estimated error. With ``rel_step`` given, r = rel_step·(1 + ‖w‖)/‖s‖. Weights are restored.
    """
    data = _validate(model, data, "data")
    directions = _check_directions(model, directions)
    stencil = _dtype_default(FORWARD_STENCIL, model) if stencil is None else stencil
    if stencil not in ("central", "richardson"):
        raise ValueError("stencil=%r is not one of 'central', 'richardson'" % (stencil,))
    if rel_step is not None and not (0 < rel_step < np.inf):
        raise ValueError("rel_step=%r must be a positive number (e.g. 1e-2), or None to choose it per "
                         "direction" % (rel_step,))
    n = len(data)
    pilot = data.subset(np.unique(np.linspace(0, n - 1, min(n, PILOT_ROWS)).astype(np.int64)))
    w0 = model.get_params().astype(np.float64)
    scale = 1.0 + np.sqrt(w0 @ w0)
    steps = []
    for s in directions:
        norm = np.sqrt(s @ s)
        if norm == 0:
            steps.append(ForwardStep(0.0, stencil, 0.0))
        elif rel_step is not None:
            steps.append(ForwardStep(rel_step * scale / norm, stencil, float("nan")))
        else:
            _, rich, (central, _) = adaptive_difference(
                lambda: model.per_example_losses(pilot, batch_size), model, s)
            best = rich if stencil == "richardson" else central
            steps.append(ForwardStep(best.r, stencil, best.error))
    return steps


def forward_differences(model, rows, directions, steps, batch_size=None):
    """D[j, i] = ∇ℓ(z_i, w)·directions[j] on ``rows`` with the given :class:`ForwardStep` per direction.

    Central: (ℓ_i(w + r s) − ℓ_i(w − r s)) / 2r, two batched passes over ``rows``; Richardson:
    (16·D(r/4) − D(r))/15, four passes. The result for a row depends only on the row, the step and
    the batching within ``rows``, so scoring a dataset chunk by chunk with the same steps is
    reproducible to the bit. Weights are restored bit-identically (also on exceptions).
    """
    rows = _validate(model, rows, "data")
    directions = _check_directions(model, directions)
    dtype = model.dtype
    out = np.zeros((directions.shape[0], len(rows)))
    with model.preserving_params() as saved:
        w0 = saved.astype(np.float64)

        def diff(s, r):
            model.set_params((w0 + r * s).astype(dtype))
            plus = model.per_example_losses(rows, batch_size)
            model.set_params((w0 - r * s).astype(dtype))
            minus = model.per_example_losses(rows, batch_size)
            return (plus - minus) / (2.0 * r)

        for j, (s, step) in enumerate(zip(directions, steps)):
            if step.r == 0:
                continue
            d1 = diff(s, step.r)
            if step.stencil == "central":
                out[j] = d1
            else:
                q2 = GRID_RATIO ** 2
                out[j] = (diff(s, step.r * GRID_RATIO) - q2 * d1) / (1.0 - q2)
    return out


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


def _solve(H, b, solver, damping, options):
    return solve(H, b, method=solver, damping=damping, **options)


def _training_hessian(model, train, batch_size, hessian, check_optimum):
    """The HessianOperator of R on ``train`` (``hessian`` when given), after the optimum check."""
    if check_optimum:
        warn_if_not_optimal(model, train, OPTIMUM_RTOL, batch_size, stacklevel=4)
    return HessianOperator(model, train, batch_size=batch_size) if hessian is None else hessian


def s_test(model, train, test, solver="cg", damping=0.0, batch_size=None, hessian=None,
           check_optimum=True, **solver_options):
    """s_test = (H + damping·I)⁻¹ g_test for each test point, H = ∇²R(w) on ``train``.

    ``test``: (x, y) with one row per test point (one row for a single point) or a Dataset.
    g_test = ∇ℓ(z_test, w) is the gradient of that point's loss WITHOUT the L2 term; several test
    points give several vectors (not the inverse-HVP of their mean). ``solver`` is a method of
    :func:`influence.solvers.solve` ("cg", "lissa", "direct", "lanczos"), with ``solver_options``
    passed on. ``hessian``: a ready :class:`~influence.hvp.HessianOperator` on ``train`` (reuses its
    calibrated step across calls); by default one is built with ``batch_size``.
    Returns :class:`STest` (``vectors`` of shape (n_test, d) and the solver's ``Solution`` per row).
    Warns with :class:`~influence.fitting.NotAtOptimumWarning` when ``w`` is not a minimum of R.
    Weights are unchanged (bit-identical) afterwards.
    """
    train = _validate(model, train, "training data")
    test = _validate(model, test, "test data")
    damping = check_damping(damping)
    with model.preserving_params():
        H = _training_hessian(model, train, batch_size, hessian, check_optimum)
        g_test = model.per_example_grads(test, batch_size)
        solutions = [_solve(H, g, solver, float(damping), solver_options) for g in g_test]
    vectors = np.array([np.asarray(sol.x, dtype=np.float64).reshape(-1) for sol in solutions])
    return STest(vectors, solutions, float(damping))


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


def _gradient_blocks(model, train, a, b, batch_size):
    """Per-example gradients of rows a..b in blocks of GRADIENT_CHUNK rows (memory: block × d)."""
    with model.preserving_params():
        for start in range(a, b, GRADIENT_CHUNK):
            yield model.per_example_grads(train.subset(slice(start, min(start + GRADIENT_CHUNK, b))),
                                          batch_size)


def chunk_scores(model, train, vectors, scoring, steps, start, stop, batch_size=None):
    """g_iᵀ vectors[j] for the training rows start..stop, float64 (m, stop − start): one chunk of a
    scoring run, here or on a cluster worker. ``scoring="forward"``: forward differences with the
    given ``steps``; ``"gradient"``: per-example gradients in blocks of GRADIENT_CHUNK rows."""
    if scoring == "forward":
        return forward_differences(model, train.subset(slice(start, stop)), vectors, steps, batch_size)
    return np.hstack([vectors @ G.T for G in _gradient_blocks(model, train, start, stop, batch_size)])


def _score_rows(model, train, vectors, scoring, rel_step, stencil, batch_size, chunk_size, checkpoint,
                progress, executor, client=None):
    """(m, n) array of g_iᵀ vectors[j] over all training rows, chunk by chunk (on ``client``'s Dask
    workers when given, see :mod:`influence.cluster`)."""
    from .jobs import DEFAULT_CHUNK_SIZE, run_chunks
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    steps = None
    if scoring == "forward":
        steps = _steps_checkpointed(model, train, vectors, rel_step, stencil, batch_size, checkpoint)

    def compute(a, b):
        return chunk_scores(model, train, vectors, scoring, steps, a, b, batch_size)
    if client is not None:
        from .cluster import scoring_executor
        executor = scoring_executor(client, model, train, vectors, steps, scoring, batch_size)
    dots, _ = run_chunks(compute, len(train), chunk_size, checkpoint, progress, "scoring", executor)
    return dots


def influence_scores(model, train, test, solver="cg", scoring="forward", damping=0.0, batch_size=None,
                     s=None, hessian=None, rel_step=None, stencil=None,
                     check_optimum=True, chunk_size=None, checkpoint=None, progress=False, executor=None,
                     client=None, **solver_options):
    """I_up,loss(z_i, z_test) = −g_testᵀ (H + damping·I)⁻¹ g_i for every training point z_i.

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
    ``executor`` computes chunks elsewhere (see :func:`influence.jobs.run_chunks`); ``client``, a
    ``distributed.Client`` (e.g. ``influence.cluster.connect("local:2")``), scores the chunks on its
    Dask workers (s_test and the steps are computed here; ``train`` must come from
    :func:`influence.load_npz`, a path every worker can read; same numbers to the bit as without it).
    Other arguments as in :func:`s_test`. Weights are unchanged (bit-identical) afterwards.
    """
    if scoring not in ("forward", "gradient"):
        raise ValueError("scoring=%r is not one of 'forward', 'gradient'" % (scoring,))
    train = _validate(model, train, "training data")
    test = _validate(model, test, "test data")
    if client is not None:
        if executor is not None:
            raise ValueError("pass either client= or executor=, not both")
        from .cluster import check_inputs
        check_inputs(client, model, train)
    if s is None:
        s = s_test(model, train, test, solver, damping, batch_size, hessian, check_optimum,
                   **solver_options)
    elif check_optimum:
        warn_if_not_optimal(model, train, OPTIMUM_RTOL, batch_size)
    vectors = np.atleast_2d(s.vectors if isinstance(s, STest) else np.asarray(s, dtype=np.float64))
    if vectors.shape != (len(test), model.n_params):
        raise ValueError("s has shape %s but %d test points and %d parameters need (%d, %d)"
                         % (vectors.shape, len(test), model.n_params, len(test), model.n_params))
    dots = _score_rows(model, train, vectors, scoring, rel_step, stencil, batch_size, chunk_size,
                       checkpoint, progress, executor, client)
    scores = np.negative(dots, out=dots)       # in place: no second (n_test, n) array
    return scores[0] if len(test) == 1 else scores


def predicted_loss_change(scores, n_train):
    """Δ_i ≈ ℓ(z_test, w*_{−i}) − ℓ(z_test, w*) = −I_up,loss / n_train: the predicted change of the
    test loss when training point i is removed and the model retrained (positive: z_i helped the
    test prediction, removing it raises the loss; negative: z_i hurt it)."""
    return -np.asarray(scores, dtype=np.float64) / float(n_train)


def self_influence(model, train, method="exact", k=None, damping=0.0, batch_size=None, hessian=None,
                   rel_step=None, stencil=None, check_optimum=True, chunk_size=None, checkpoint=None,
                   progress=False, **lanczos_options):
    """Self-influence s_i = g_iᵀ (H + damping·I)⁻¹ g_i of every training point (shape (n,)).

    High s_i: the point is fitted against the rest of the data (a likely mislabeled example).

    ``method="exact"`` (small d): a dense H from d Hessian-vector products and the per-example
    gradients g_i; s_i from one dense solve. ``method="lanczos"`` (large d): the rank-``k``
    approximation H ≈ U diag(θ) Uᵀ from :func:`influence.solvers.lanczos_inverse`, so
    s_i ≈ Σ_k (u_kᵀ g_i)² / (θ_k + damping), every u_kᵀ g_i by forward differences along u_k
    (:func:`directional_derivatives`: no per-example gradient, 2 or 4 batched passes per u_k;
    Schioppa et al. 2022 with finite differences instead of forward-mode autodiff).
    ``chunk_size``, ``checkpoint``, ``progress`` as in :func:`influence_scores` (the dense Hessian or
    the Lanczos eigenpairs are checkpointed too). Weights are unchanged (bit-identical) afterwards.
    """
    if method not in ("exact", "lanczos"):
        raise ValueError("method=%r is not one of 'exact', 'lanczos'" % (method,))
    if chunk_size is not None:
        check_batch_size(chunk_size, "chunk_size")
    train = _validate(model, train, "training data")
    damping = check_damping(damping)
    with model.preserving_params():
        H = _training_hessian(model, train, batch_size, hessian, check_optimum)
        from .jobs import DEFAULT_CHUNK_SIZE, run_chunks
        chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
        if method == "exact":
            A = checkpoint.load_array("damped_hessian") if checkpoint is not None else None
            if A is None:
                A, _ = dense_matrix(H, damping, extra_matrices=1)      # A and its Cholesky factor
                if checkpoint is not None:
                    checkpoint.save_array("damped_hessian", A)
            factor = cholesky(A, "self_influence", damping, getattr(H, "damping", 0.0))

            def compute(a, b):
                return np.concatenate([np.sum(G * scipy.linalg.cho_solve(factor, G.T).T, axis=1)
                                       for G in _gradient_blocks(model, train, a, b, batch_size)])
            out, _ = run_chunks(compute, len(train), chunk_size, checkpoint, progress, "self-influence")
            return out
        if k is None:
            raise ValueError("method='lanczos' needs the rank k (e.g. k=50)")
        saved = checkpoint.load_array("lanczos") if checkpoint is not None else None
        if saved is None:
            low = lanczos_inverse(H, int(k), damping=damping, **lanczos_options)
            theta = np.asarray(low.eigenvalues, dtype=np.float64) + float(getattr(low, "damping", damping))
            saved = np.vstack([theta[None, :], np.asarray(low.eigenvectors, dtype=np.float64)])
            if checkpoint is not None:
                checkpoint.save_array("lanczos", saved)
        theta, U = saved[0], saved[1:]
    steps = _steps_checkpointed(model, train, U.T, rel_step, stencil, batch_size, checkpoint)

    def compute_lanczos(a, b):
        P = forward_differences(model, train.subset(slice(a, b)), U.T, steps, batch_size)
        return np.sum(P ** 2 / theta[:, None], axis=0)
    out, _ = run_chunks(compute_lanczos, len(train), chunk_size, checkpoint, progress, "self-influence")
    return out
