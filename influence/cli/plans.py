"""Plan lines and progress bars of the long commands: one ``influence: plan: ... (estimated ~S)``
line on stderr before work estimated over :data:`PLAN_SECONDS`, then a bar."""
from __future__ import print_function

import os
import sys
import time

import numpy as np

from ._common import log

__all__ = ["PLAN_SECONDS", "RETRAIN_PASSES_ESTIMATE", "FORWARD_PASS_PER_HVP", "LANCZOS_HVP_PER_RANK",
           "TRAINER_PASS_FACTOR", "score_products", "retrain_passes",
           "self_plan", "retrain_plan", "factors_plan", "FitProgress", "plan_line", "progress_bar",
           "FACTORS_PILOT_ROWS"]

#: Work estimated to take longer than this (seconds) gets one plan line with the estimate on stderr
#: before it starts (``influence: plan: ...``), next to its progress bar.
PLAN_SECONDS = 10.0
#: Objective-and-gradient passes over the training data of one warm-started L-BFGS retraining
#: (leave-one-out, LDS subsets), for the plan line's estimate only: a rough figure, not measured
#: (issue 22 reports ~16 s per verify retraining on the README's mlp:32, which at its pass time is of
#: this order); the progress bar's rate gives the real pace.
RETRAIN_PASSES_ESTIMATE = 200
#: A retraining from scratch with a Trainer recipe (``--recipe "adam ... epochs=E"``), for the plan
#: line: E epochs over the retrained rows, each costing this many batched gradient passes over as many
#: rows (minibatch steps in training mode, one CNTK call and one learner update per minibatch).
#: Measured on the digits CNN of bench/evaluate_cli.py (300 rows, alpha 0.5, 8 epochs of 32-row
#: minibatches): 61 ms per run against a 5.4 ms gradient pass over the 300 rows: 11 passes for
#: 8 × 0.5 = 4 passes' worth of rows, a factor of 2.8; rounded up.
TRAINER_PASS_FACTOR = 3.0
#: Cost line (``score`` with the default "all" test points in matrix mode): one forward-difference
#: pass over the training rows (weights shifted, per-example losses) is estimated at this fraction of
#: the Hessian-vector product timed by the plan; measured 0.69 on the digits softmax regression with
#: CNTK (1500 training rows, 297 test points: 13.1 s of scoring for 1188 passes, one HVP 0.016 s).
FORWARD_PASS_PER_HVP = 0.7
#: Products of a rank-k Lanczos run (scipy's eigsh with ncv = 2k + 1 and restarts), per unit of k.
LANCZOS_HVP_PER_RANK = 3
#: ``factors``: the fit is timed on this many training rows and scaled to all of them. It errs high:
#: a pilot batch is smaller, hence slower per row (measured on a 17,226-parameter MLP and 6,000 digits,
#: 2 shared cores: 4.1–4.8 s estimated, 2.2–2.3 s fitted with ekfac; 2.2 s and 1.2 s with kfac).
FACTORS_PILOT_ROWS = 512


def _duration(seconds):
    return "%.0f s" % seconds if seconds < 120 else "%.1f min" % (seconds / 60.0)


def plan_line(args, text, seconds):
    """``influence: plan: TEXT (estimated ~S)`` on stderr when ``seconds`` exceeds :data:`PLAN_SECONDS`
    (not with --quiet): before long work, so that a silent terminal is never a surprise."""
    if seconds is not None and seconds > PLAN_SECONDS:
        log(args, "influence: plan: %s (estimated ~%s; a progress bar follows)" % (text, _duration(seconds)))


def progress_bar(args, total, desc, unit="it"):
    """A tqdm bar on stderr (None with --quiet)."""
    if getattr(args, "quiet", False):
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def _pass_seconds(model, data, batch_size=None):
    """Seconds of one objective-and-gradient pass over ``data`` (timed once; weights untouched)."""
    t0 = time.perf_counter()
    model.grad(data, batch_size)
    return time.perf_counter() - t0


def _hvp_seconds(model, data, batch_size=None):
    """Seconds of one Hessian-vector product on ``data`` (the step calibrated first, then one timed
    product; weights restored)."""
    from ..curvature import HessianOperator
    op = HessianOperator(model, data, batch_size=batch_size)
    v = np.random.RandomState(0).standard_normal(model.n_params)
    with model.preserving_params():
        op @ v
        t0 = time.perf_counter()
        op @ v
        return time.perf_counter() - t0


def _plans_needed(args):
    """Estimate only when a plan line can be printed: not with --quiet, not when resuming work."""
    if getattr(args, "quiet", False):
        return False
    out = getattr(args, "out", None)
    return not (getattr(args, "resume", False) and out and os.path.isdir(out + ".partial"))


def _retrain_text(count, passes, pass_seconds, how=None):
    """``how``: (noun with %s for the plural, the mode in words), e.g. ("L-BFGS retraining%s", "warm ...")."""
    noun, mode = ("L-BFGS retraining%s", None) if how is None else how
    return "%d %s (%s~%.3g passes over the data each, ~%.3g s per pass)" \
           % (count, noun % ("" if count == 1 else "s"), "" if mode is None else mode + "; ",
              passes, pass_seconds)


def score_products(d, m, solver="auto"):
    """Curvature-vector products of the influence scores of ``m`` test points for ``d`` parameters,
    as the solver would spend them: cg's estimate per test point (min(d, 300) + 2), d for direct
    (the dense matrix, factorised once for every test point), the smaller of the two for auto."""
    from ..solvers.plan import CG_ITERATIONS_ESTIMATE
    cg = m * (min(d, CG_ITERATIONS_ESTIMATE) + 2)
    if not m:
        return 0
    if solver == "direct":
        return d
    if solver == "auto":
        return min(cg, d)
    return cg


def retrain_passes(retrain, recipe=None, fraction=1.0, train_fn=False):
    """Gradient passes over the training data that one retraining is estimated to cost: a Trainer
    recipe's epochs × the retrained ``fraction`` × :data:`TRAINER_PASS_FACTOR` when retraining from
    scratch with one (``recipe``: the text or None for the library's default), else (L-BFGS, your
    ``--train-fn``) :data:`RETRAIN_PASSES_ESTIMATE`."""
    if retrain == "scratch" and not train_fn:
        from ..evaluate.scratch import DEFAULT_RECIPE, parse_recipe
        r = parse_recipe(recipe or DEFAULT_RECIPE)
        if r.learner != "lbfgs":
            return r.epochs * fraction * TRAINER_PASS_FACTOR
    return RETRAIN_PASSES_ESTIMATE


def self_plan(args, model, train):
    """``self``: the plan line before the dense Hessian or the Lanczos run (when long)."""
    if not _plans_needed(args):
        return
    forward = FORWARD_PASS_PER_HVP
    hvp = _hvp_seconds(model, train, args.batch_size)
    d, n = model.n_params, len(train)
    if args.method == "exact":
        plan_line(args, "self --method exact: the dense Hessian from d = %d Hessian-vector products (~%.3g s each), "
              "then the self-influence of %d training points" % (d, hvp, n), d * hvp)
    else:
        products = LANCZOS_HVP_PER_RANK * args.rank
        plan_line(args, "self --method lanczos: rank %d from ~%d Hessian-vector products (~%.3g s each), then 4 "
              "forward passes over %d training points per eigenvector" % (args.rank, products, hvp, n),
              (products + 4 * forward * args.rank) * hvp)


def retrain_plan(args, model, train, retrainings, what, m=1, extra_hvp=0, how=None, passes=RETRAIN_PASSES_ESTIMATE):
    """``verify``/``evaluate``: the plan line before the influence scores and the retrainings (``how``:
    what :func:`influence.cli.retraining.retrain_text` says of the mode, λ and seeds; ``passes``: one
    retraining's gradient passes, :func:`retrain_passes`)."""
    if not _plans_needed(args):
        return
    hvp = _hvp_seconds(model, train, args.batch_size)
    solve = score_products(model.n_params, m, getattr(args, "solver", "auto")) + extra_hvp
    plan_line(args, "%s: influence scores (~%d Hessian-vector products, ~%.3g s each) and %s"
          % (what, solve, hvp, _retrain_text(retrainings, passes, hvp / 2.0, how)),
          solve * hvp + retrainings * passes * hvp / 2.0)


def factors_plan(args, model, train):
    """``factors``: the plan line before fitting EK-FAC (when long). The fit itself is timed on the
    first :data:`FACTORS_PILOT_ROWS` training rows (twice: the first run builds CNTK's batched graphs
    and is slower) and scaled to all of them (the eigendecompositions, a fixed cost, are scaled too: an
    overestimate, small next to the passes unless the layers are thousands of units wide). Not
    estimated (None, no line) with at most twice as many rows: the pilots would cost what the fit does."""
    from ..curvature import EKFAC
    n = len(train)
    if not _plans_needed(args) or n <= 2 * FACTORS_PILOT_ROWS:
        return None
    pilot = train.subset(slice(0, FACTORS_PILOT_ROWS))

    def fit():
        t0 = time.perf_counter()
        EKFAC(model, pilot, damping=1.0, strategy=args.strategy, labels=args.labels, random_state=args.seed,
              batch_size=args.batch_size)
        return time.perf_counter() - t0
    fit()
    seconds = fit() * n / float(FACTORS_PILOT_ROWS)
    layers, _ = model.kfac_plan()
    layers = [] if args.strategy == "diagonal" else layers
    passes = 2 if args.strategy == "ekfac" and layers else 1
    plan_line(args, "EK-FAC factors (%s, labels %s) of %d parameters: %d pass%s of per-example gradients over %d "
              "training rows, then the eigendecompositions of %d layer%s' Kronecker factors (timed on %d rows)"
              % (args.strategy, args.labels, model.n_params, passes, "" if passes == 1 else "es", n, len(layers),
                 "" if len(layers) == 1 else "s", FACTORS_PILOT_ROWS), seconds)
    return seconds


class FitProgress(object):
    """``train``: a plan line (when long) and a bar over the L-BFGS iterations; the object is the
    ``callback`` of :func:`influence.fit`."""

    def __init__(self, args, model, data):
        self.args, self.bar = args, None
        maxiter = args.lbfgs_maxiter
        seconds = _pass_seconds(model, data, args.batch_size)
        plan_line(args, "L-BFGS on %d parameters and %d examples, ~%.3g s per pass over the data, at most %d "
              "iterations (usually far fewer; the time is the bound)" % (model.n_params, len(data), seconds, maxiter),
              1.1 * maxiter * seconds)
        self.bar = progress_bar(args, maxiter, "L-BFGS", "it")

    def __call__(self, xk):
        if self.bar is not None:
            self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
