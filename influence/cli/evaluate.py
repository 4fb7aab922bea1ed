"""``influence evaluate {lds,loo,mislabel}``: the checks of :mod:`influence.evaluate`, printed."""
from __future__ import print_function

import numpy as np

from ._common import (
    EXIT_OK, TEST_INDEX_HELP, UsageError, Parser, Timer, Warnings, check_cluster, check_numbers, cluster_executor,
    ctf_flags, vocab_flag, job_inputs, load_model, load_split, log, model_flags, out_extension, partial_folder,
    parse_test_indices)
from .curvature import curvature_flags, factors_summary
from .factors import check_factor_flags, factor_flags, preconditioner_text, use_factors
from .preconditioning import preconditioner_options
from .plans import LANCZOS_HVP_PER_RANK, retrain_passes, retrain_plan
from .retraining import (
    damping_text, method_flags, method_options, retrain_flags, retrain_inputs, retrain_options, retrain_text,
    split_dampings)


# ---------------------------------------------------------------------------------------- evaluate
#: How each score method is named in the printed tables of ``influence evaluate``.
EVALUATE_NAMES = {"influence": "influence (H^-1)", "grad_dot": "grad-dot (H -> I)", "random": "random",
                  "self_influence": "self-influence", "training_loss": "training loss", "tracin": "TracIn-CP"}
#: The name of the influence scores when --curvature names another curvature than the Hessian.
CURVATURE_NAMES = {"gauss-newton": "influence (G^-1)", "fisher": "influence (F^-1)"}
#: A proximal retraining that ends with ‖∇P‖ above this multiple of --gtol gets a note in the report.
PROXIMAL_NOTE_GTOL = 1e3


def _evaluate_check(args):
    """Refuse bad flags of ``influence evaluate`` before any work (nothing written)."""
    from ..common.files import check_writable
    if args.metric != "mislabel":
        split_dampings(args)
    check_numbers(args)
    for flag, attr, low in (("--subsets", "subsets", 2), ("--retrainings", "retrainings", 2),
                            ("--lbfgs-maxiter", "lbfgs_maxiter", 1)):
        value = getattr(args, attr, None)
        if value is not None and value < low:
            raise UsageError("%s %d must be at least %d" % (flag, value, low))
    for flag, attr in (("--alpha", "alpha"), ("--fraction", "fraction")):
        value = getattr(args, attr, None)
        if value is not None and not (0 < value < 1):
            raise UsageError("%s %r must lie strictly between 0 and 1 (e.g. %s 0.5)" % (flag, value, flag))
    if not (args.gtol > 0):
        raise UsageError("--gtol %r must be positive (e.g. 1e-6)" % args.gtol)
    for p in getattr(args, "top_percent", None) or []:
        if not (0 < p <= 100):
            raise UsageError("--top-percent %r: pass percentages in (0, 100], e.g. --top-percent 5 10 20" % p)
    if args.plot:
        if not args.plot.lower().endswith(".png"):
            raise UsageError("--plot %s: the picture is a PNG; give a file name ending in .png" % args.plot)
        check_writable(args.plot, "--plot")
        from ..evaluate.report import pyplot
        pyplot()                                   # matplotlib missing: refused before any work
    out_extension(args, "evaluate")
    if args.metric != "mislabel" and args.curvature == "ekfac":
        raise UsageError("--curvature ekfac: 'influence evaluate %s' scores with the hessian, gauss-newton or fisher "
                         "curvature; pass one of them (with --preconditioner ekfac for EK-FAC-preconditioned cg)"
                         % args.metric)
    check_factor_flags(args, curvature=False)
    return partial_folder(args)


def _print_retraining(args, res):
    """How the retrainings ran: the mode, λ, the seeds and their spread, the final gradient norms."""
    norms = np.asarray(res.grad_norms, dtype=np.float64)
    finite = np.isfinite(norms)
    what = "‖∇P‖ (the proximal objective)" if res.retrain == "proximal" else "‖∇R_S‖"
    last = ("largest final %s %.2e (--gtol %g)" % (what, np.max(norms[finite]), args.gtol)) if finite.any() \
        else "no final gradient norm (trained by a recipe or --train-fn)"
    print("  retrainings: %s (%s), %d seed%s each; %s" % (res.retrain, damping_text(res.retrain, res.damping),
                                                         res.seeds, "" if res.seeds == 1 else "s", last))
    if res.retrain == "proximal" and finite.any() and np.max(norms[finite]) > PROXIMAL_NOTE_GTOL * args.gtol:
        print("  note: %d of %d proximal retrainings ended with ‖∇P‖ above %g × --gtol: the objective may be "
              "unbounded below at this λ (a removed point's loss can outgrow the proximal term); raise --damping "
              "(e.g. 1x)" % (int(np.sum(norms[finite] > PROXIMAL_NOTE_GTOL * args.gtol)), norms.size,
                             PROXIMAL_NOTE_GTOL))
    if res.seeds > 1:
        spread = np.asarray(res.spread, dtype=np.float64)
        change = np.abs(res.actual - np.mean(res.actual, axis=1, keepdims=True))
        print("  seeds: %d per retraining; seed-to-seed spread of their mean %.3g (typical change between "
              "retrainings %.3g)" % (res.seeds, float(np.mean(spread)) / np.sqrt(res.seeds), float(np.mean(change))))


def _evaluate_print(args, res, timer):
    names = dict(EVALUATE_NAMES)
    names["influence"] = CURVATURE_NAMES.get(args.curvature, names["influence"])
    if args.metric == "lds":
        print("linear datamodeling score (%s): %d subsets of %d of %d training points, %d test points"
              % (res.target, res.subsets.shape[0], res.subsets.shape[1], res.n_train, res.actual.shape[0]))
        print("  %-20s %10s %10s %12s %14s" % ("scores", "mean LDS", "std err", "test points", "s/test point"))
        for m in res.mean:
            print("  %-20s %10.4f %10.4f %12d %14.3g" % (names.get(m, m), res.mean[m], res.stderr[m],
                                                        np.isfinite(res.lds[m]).sum(), res.method_seconds.get(m, 0.0)))
        _print_retraining(args, res)
    elif args.metric == "loo":
        print("leave-one-out: %d training points removed one at a time, %d test points"
              % (len(res.indices), res.actual.shape[0]))
        print("  %-20s %10s %10s %16s %16s %14s" % ("scores", "Pearson", "Spearman", "pooled Pearson",
                                                    "pooled Spearman", "s/test point"))
        for m in res.pearson:
            print("  %-20s %10.4f %10.4f %16.4f %16.4f %14.3g" % (
                names.get(m, m), res.pearson[m], res.spearman[m], res.pooled_pearson[m], res.pooled_spearman[m],
                res.method_seconds.get(m, 0.0)))
        print("  (Pearson/Spearman of the test-loss change averaged over the test points; pooled: over "
              "every test point and removed point)")
        _print_retraining(args, res)
    else:
        print("mislabel detection: %d of %d training labels flipped (--seed %d)"
              % (res.flipped.size, res.curves["random"].size, args.seed))
        print("  %-20s" % "ranking" + "".join("%9s" % ("top %g%%" % (100 * t)) for t in res.top) + "%9s" % "AUC")
        for m in ("self_influence", "grad_dot", "training_loss", "random"):
            print("  %-20s" % EVALUATE_NAMES[m] + "".join("%9.3f" % v for v in res.found[m]) + "%9.3f" % res.auc[m])
        print("  (fraction of the flipped labels among the top x% of each ranking; AUC: area under that "
              "curve, random ~ 0.5)")
    print("timing:")
    print("\n".join(timer.lines()))
    print("  (of which %s)" % ", ".join("%s %.3f s" % (k.replace("_", " "), v)
                                         for k, v in sorted(res.seconds.items()) if k != "total"))
    for path in (args.out, args.plot):
        if path:
            print("saved %s" % path)


def cmd_evaluate(args):
    from .. import evaluate
    from ..common.files import atomic_path, to_json, write_json
    folder = _evaluate_check(args)
    check_cluster(args)
    timer = Timer()
    with timer("load model and data"):
        model, meta = load_model(args)
        options = {}
        if args.metric != "mislabel":
            options = dict(retrain_options(args, meta, model), **method_options(args, model))
        train = load_split(args.train, "--train", model, args.ctf_options)
        test = idx = None
        if args.metric != "mislabel":
            test = load_split(args.test, "--test", model, args.ctf_options)
            items = args.test_index or ["0-%d" % (len(test) - 1)]
            idx = parse_test_indices(items, test, model, args.batch_size)
            test = test.subset(idx)
    curvature, damping, preconditioner = use_factors(args, model, train)
    if args.metric == "mislabel":
        d = model.n_params
        retrain_plan(args, model, train, 1, "evaluate mislabel (a refit on flipped labels, then self-influence "
                      "from %s)" % ("d = %d products" % d if args.method == "exact" else "rank %d" % args.rank),
                      m=0, extra_hvp=d if args.method == "exact" else LANCZOS_HVP_PER_RANK * args.rank)
    else:
        count = args.subsets if args.metric == "lds" else min(args.retrainings, len(train))
        pre_line = preconditioner_text(args)
        # + 1: the warm reference, re-tightened (proximal and scratch measure from the trained weights)
        retrain_plan(args, model, train, count * args.seeds + (args.retrain not in ("proximal", "scratch")),
                     "evaluate %s%s" % (args.metric, " (cg preconditioned by EK-FAC)" if pre_line else ""),
                     m=len(test) * (1 + len(args.dampings)), how=retrain_text(args),
                     passes=retrain_passes(args.retrain, options.get("recipe"),
                                           args.alpha if args.metric == "lds" else 1.0, options.get("train_fn")))
        if pre_line:
            log(args, pre_line)
    extra = {} if idx is None else dict(retrain_inputs(args), test_index=idx.tolist())
    common = dict(seed=args.seed, gtol=args.gtol, maxiter=args.lbfgs_maxiter, damping=damping,
                  curvature=curvature,
                  batch_size=args.batch_size, folder=folder, resume=args.resume, progress=not args.quiet,
                  inputs=job_inputs(args, extra))
    with Warnings():
        if args.metric == "mislabel":
            with timer("refit on flipped labels + rankings"):
                res = evaluate.mislabel(model, train, fraction=args.fraction,
                                        top=tuple(p / 100.0 for p in args.top_percent), method=args.method,
                                        k=args.rank if args.method == "lanczos" else None, **common)
        else:
            with cluster_executor(args, timer) as executor:
                scoring = dict(solver=args.solver, scoring="gradient", check_optimum=not args.no_optimum_check,
                               chunk_size=args.chunk_size, executor=executor, **dict(common, **options))
                scoring.update(preconditioner_options(args, preconditioner))
                if args.metric == "lds":
                    with timer("scores + %d retrainings" % args.subsets):
                        res = evaluate.lds(model, train, test, subsets=args.subsets, alpha=args.alpha,
                                           target=args.target, **scoring)
                else:
                    with timer("scores + %d leave-one-out retrainings" % min(args.retrainings, len(train))):
                        res = evaluate.loo(model, train, test, k=args.retrainings, **scoring)
    if args.out:
        with timer("write"):
            body = evaluate.summary(res, details=True)
            body.update(command="evaluate " + args.metric, seed=args.seed, curvature=args.curvature,
                        test_index=None if idx is None else idx.tolist(), **factors_summary(args))
            body.setdefault("damping", args.damping)        # the number the scores used, where the result has it
            write_json(args.out, body)
    if args.plot:
        with timer("plot"):
            with atomic_path(args.plot) as tmp:
                evaluate.plot(res, tmp)
    if args.json:
        out = evaluate.summary(res)
        out.update(seed=args.seed, out=args.out, plot=args.plot, timing=timer.as_dict(), curvature=args.curvature,
                   test_index=None if idx is None else idx.tolist(), **factors_summary(args))
        out.setdefault("damping", args.damping)
        print(to_json(out))                   # NaN (e.g. an LDS without finite values) as null
        return EXIT_OK
    _evaluate_print(args, res, timer)
    return EXIT_OK


def _evaluate_no_metric(args):
    raise UsageError("influence evaluate: choose a metric: lds, loo or mislabel (e.g. 'influence evaluate lds "
                     "--model M --train T.npz --test Q.npz'; see 'influence evaluate --help')")


def evaluate_parsers(sub, common):
    """``influence evaluate {lds,loo,mislabel}``: a parser with one sub-command per metric."""
    p = sub.add_parser("evaluate", help="how good are the scores? LOO, LDS, mislabel "
                       "detection, against baselines",
                       description="Judge the influence scores by retraining, next to baselines (grad-dot: "
                       "H replaced by the identity; random; training loss for mislabel): 'loo' (leave-one-out "
                       "for many test points), 'lds' (linear datamodeling score over random subsets), "
                       "'mislabel' (finding flipped labels). See docs/evaluation.md.")
    metrics = p.add_subparsers(dest="metric", metavar="METRIC", parser_class=Parser)
    p.set_defaults(func=_evaluate_no_metric)

    def flags(q, test=True, chunks=True):
        model_flags(q)
        q.add_argument("--train", required=True, metavar="T.npz", help="training data (.npz with x, y, or .ctf)")
        if test:
            q.add_argument("--test", required=True, metavar="Q.npz", help="test data (.npz with x, y, or .ctf)")
            q.add_argument("--test-index", nargs="+", metavar="I", help=TEST_INDEX_HELP)
        ctf_flags(q)
        curvature_flags(q, sweep=chunks)
        if chunks:
            factor_flags(q, curvature=False)
        q.add_argument("--gtol", type=float, default=1e-6, help="retrain (and re-tighten the reference optimum) "
                       "until max |∂R/∂w| <= GTOL (default 1e-6)")
        vocab_flag(q, "--lbfgs-maxiter", "L-BFGS iterations per retraining at most", old=("--maxiter",),
                    type=int, metavar="N")
        q.add_argument("--out", metavar="RESULTS.json", help="write every number here (JSON); the finished "
                       "work of an interrupted run is kept in RESULTS.json.partial/")
        q.add_argument("--plot", metavar="FIGURE.png", help="draw the result as a PNG (needs matplotlib)")
        q.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.partial/")
        if chunks:
            q.add_argument("--solver", choices=["auto", "cg", "direct", "lanczos"], default="auto",
                           help="inverse-HVP solver of the influence scores (default auto)")
            q.add_argument("--chunk-size", type=int, default=1, metavar="C",
                           help="retrainings per chunk: the unit of --resume and of --cluster tasks (default 1)")
            q.add_argument("--cluster", metavar="SPEC", help="retrain on a Dask cluster: local:N or "
                           "tcp://HOST:PORT (see docs/cluster.md)")
            q.add_argument("--no-optimum-check", action="store_true",
                           help="skip the check that the model is at an optimum of the training objective")
            method_flags(q)
            retrain_flags(q)
        q.set_defaults(func=cmd_evaluate)

    q = metrics.add_parser("lds", parents=[common], help="linear datamodeling score over random subsets",
                           description="Linear datamodeling score (Park et al. 2023): retrain on SUBSETS "
                           "random subsets of floor(ALPHA*n) training points (--retrain: by default warm from the "
                           "optimum on the mean loss over the subset + the same L2), and correlate (Spearman, per test point) the measured test "
                           "loss with the sum of the subset's scores; mean and standard error over the test "
                           "points, for the influence scores and the baselines.")
    flags(q)
    q.add_argument("--subsets", type=int, default=50, help="random subsets to retrain on (default 50)")
    q.add_argument("--alpha", type=float, default=0.5, help="fraction of the training points in each "
                   "subset (default 0.5)")
    q.add_argument("--target", choices=["loss", "margin"], default="loss",
                   help="measured value: the test loss, or the logit margin log p - log(1 - p) (cross-entropy "
                   "models; the same LDS, in other units) (default loss)")
    q = metrics.add_parser("loo", parents=[common], help="leave-one-out check for many test points",
                           description="Retrain without each of K training points (half the most influential, "
                           "half at random; --retrain says how) and compare the actual test-loss change of every test point with "
                           "the prediction -I/n of the influence scores and of the baselines.")
    flags(q)
    vocab_flag(q, "--retrainings", "training points to retrain without, one at a time", old=("--k",), type=int,
                metavar="N")
    q = metrics.add_parser("mislabel", parents=[common], help="find flipped labels by self-influence",
                           description="Flip a fraction of the training labels (--seed), refit, and rank the "
                           "training points by self-influence g_iᵀ H⁻¹ g_i, by ‖g_i‖² (grad-dot), by training "
                           "loss and at random: the share of flipped labels in the top x% and the area under "
                           "the detection curve.")
    flags(q, test=False, chunks=False)
    q.add_argument("--fraction", type=float, default=0.1, help="fraction of labels to flip (default 0.1)")
    vocab_flag(q, "--top-percent", "report the share found in the top PCT%% of each ranking", old=("--top",),
                type=float, nargs="+", metavar="PCT")
    q.add_argument("--method", choices=["exact", "lanczos"], default="exact",
                   help="self-influence: exact (dense Hessian) or lanczos (rank --rank) (default exact)")
    vocab_flag(q, "--rank", "rank of --method lanczos", type=int, metavar="K")
    return p
