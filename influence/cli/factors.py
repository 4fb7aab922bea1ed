"""``influence factors``: fit the EK-FAC factors of a model on its training data once and save them
(.npz, fingerprinted against the weights and the rows); and what the commands that use curvature
need to reuse them: ``--factors F.npz`` (loaded instead of refitted by ``--curvature ekfac``, or the
preconditioner) and ``--preconditioner {auto,none,ekfac}`` (cg and lissa)."""
from __future__ import print_function

import json

from ._common import (EXIT_OK, UsageError, Timer, Warnings, check_cluster, cluster_executor, ctf_flags,
                      job_inputs, load_model, load_split, model_flags, out_extension, partial_folder)
from .curvature import damping_value
from .plans import factors_plan

__all__ = ["factors_parser", "factor_flags", "check_factor_flags", "use_factors", "preconditioner_text",
           "cmd_factors", "PRECONDITIONERS", "PRECONDITIONED_SOLVERS"]

#: The values of ``--preconditioner`` (auto: EK-FAC when it pays, see influence.scoring.preconditioning).
PRECONDITIONERS = ("auto", "none", "ekfac")
#: The solvers a preconditioner speeds up (``auto`` then plans cg: direct would ignore it).
PRECONDITIONED_SOLVERS = ("cg", "lissa", "auto")


def factors_parser(sub, common):
    """``influence factors``: its parser."""
    from ..curvature.ekfac import LABELS, STRATEGIES
    from ..scoring.chunks import DEFAULT_CHUNK_SIZE
    p = sub.add_parser("factors", parents=[common], help="fit EK-FAC's factors once and save them (.npz)",
                       description="Fit the EK-FAC approximation of the Fisher (= Gauss-Newton for softmax "
                       "cross-entropy with sampled labels) of a model on its training data: per layer the "
                       "Kronecker factors, their eigendecompositions and (--strategy ekfac) the eigenvalues "
                       "refitted from the per-example gradients. Saves them atomically as .npz, fingerprinted "
                       "against the model's weights and the training rows, for --factors of score, self, verify "
                       "and evaluate (with --curvature ekfac, or --preconditioner ekfac): fitted once, reused "
                       "by every later command on the same model and data. See docs/choosing-a-solver.md.")
    model_flags(p)
    p.add_argument("--train", required=True, metavar="T.npz", help="training data (.npz with x, y, or .ctf)")
    ctf_flags(p)
    p.add_argument("--strategy", choices=STRATEGIES, default="ekfac",
                   help="ekfac: Kronecker factors with the eigenvalues refitted in their eigenbasis (two passes "
                   "over the data); kfac: the Kronecker factors only (one pass); diagonal: the Fisher's diagonal "
                   "only (one pass) (default ekfac)")
    p.add_argument("--labels", choices=LABELS, default="sampled",
                   help="sampled: labels drawn from the model's own prediction (seeded by --seed): the true "
                   "Fisher, = Gauss-Newton for softmax or logistic cross-entropy; true: the data's labels (the "
                   "empirical Fisher) (default sampled)")
    p.add_argument("--damping", type=damping_value, default="auto", metavar="λ|auto",
                   help="λ added to every block: a number >= 0, or auto (0.1 × each block's mean eigenvalue) "
                   "(default auto; a later --curvature ekfac --damping replaces it without refitting)")
    p.add_argument("--out", required=True, metavar="F.npz", help="where to save the factors (.npz); the "
                   "finished chunks of an interrupted fit are kept in F.npz.partial/ for --resume")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="ROWS",
                   help="training rows per chunk: the unit of progress, of --resume and of the tasks on --cluster; "
                   "the factors are the sums of the chunks' sums (default %d)" % DEFAULT_CHUNK_SIZE)
    p.add_argument("--resume", action="store_true", help="continue an interrupted fit from OUT.partial/ without "
                   "recomputing finished chunks (refused, naming what differs, when the settings are not the same)")
    p.add_argument("--cluster", metavar="SPEC", help="fit the chunks on a Dask cluster and add their sums here: "
                   "local:N (N worker processes on this machine) or tcp://HOST:PORT (a running dask-scheduler; "
                   "--train must be readable at the same path by every worker); see docs/cluster.md")
    p.set_defaults(func=cmd_factors)
    return p


def factor_flags(p, preconditioner=True, curvature=True):
    """--factors, and --preconditioner where a cg or lissa solve can use one (``curvature``: whether
    --curvature ekfac can use the factors too)."""
    uses = (["--curvature ekfac loads them instead of refitting"] if curvature else []) + \
        (["--preconditioner ekfac or auto uses them"] if preconditioner else [])
    p.add_argument("--factors", metavar="F.npz", help="EK-FAC factors saved by 'influence factors' for this --model "
                   "and --train (stale ones, fitted on other weights or other rows, are refused): %s"
                   % ", ".join(uses))
    if preconditioner:
        p.add_argument("--preconditioner", choices=PRECONDITIONERS, default="auto",
                       help="precondition the iterative solve (--solver cg or lissa) with EK-FAC, from --factors "
                       "or else fitted on --train with the curvature's damping: the same answer, the "
                       "unpreconditioned residual, in fewer Hessian-vector products. ekfac: always (--solver auto "
                       "then plans cg); auto (default): --factors whenever the solve is cg or lissa (--solver auto "
                       "may still plan direct), without them fitted only when the products it is expected to save "
                       "clearly outweigh the fit (never for direct, lanczos, --curvature ekfac or a model without "
                       "Dense/Convolution layers), the choice and why printed before the solve; none: never")


def check_factor_flags(args, curvature=True):
    """Refuse --factors and --preconditioner that cannot apply, before any work (nothing written);
    ``curvature``: whether --curvature ekfac can use --factors in this command."""
    pre = getattr(args, "preconditioner", None) or "none"
    factors = getattr(args, "factors", None)
    if pre == "ekfac":
        if args.curvature == "ekfac":
            raise UsageError("--preconditioner ekfac preconditions an iterative solve, but --curvature ekfac has "
                             "none (EK-FAC's inverse is applied block by block): drop --preconditioner, or choose "
                             "another --curvature (e.g. hessian) for an exact solve")
        solver = getattr(args, "solver", None)
        if solver not in PRECONDITIONED_SOLVERS:
            raise UsageError("--preconditioner ekfac speeds up the iterative solvers cg and lissa, not --solver %s "
                             "(%s): pass --solver cg, or drop --preconditioner"
                             % (solver, "it factorises H exactly" if solver == "direct" else "a rank-k approximation"))
    if factors:
        uses = (["--curvature ekfac (instead of refitting)"] if curvature else []) + \
            (["--preconditioner ekfac"] if hasattr(args, "preconditioner") else [])
        solver = getattr(args, "solver", None)
        if pre == "auto" and solver not in PRECONDITIONED_SOLVERS and not (curvature and args.curvature == "ekfac"):
            raise UsageError("--factors %s is used by %sthe preconditioner of an iterative solve, not by --solver "
                             "%s; drop --factors, or pass --solver cg"
                             % (factors, (uses[0] + " or by ") if curvature else "", solver))
        if not ((curvature and args.curvature == "ekfac") or pre in ("ekfac", "auto")):
            raise UsageError("--factors %s is used by %s; add %s, or drop --factors"
                             % (factors, " or ".join(uses), "one of them" if len(uses) > 1 else uses[0].split(" (")[0]))
        from ._common import existing_file
        existing_file(factors, "--factors")


def _fix(args, out):
    """The command that writes factors for this --model and --train to ``out``."""
    extra = ""
    for flag, attr in (("--output-node", "output"), ("--loss", "loss"), ("--l2", "l2")):
        value = getattr(args, attr, None)
        if value is not None:
            extra += " %s %s" % (flag, value)
    return "influence factors --model %s --train %s%s --out %s" % (args.model, args.train, extra, out)


def use_factors(args, model, train):
    """``(curvature, damping, preconditioner)`` for the library: --curvature (or the EKFAC loaded from
    --factors), --damping (None when the loaded EKFAC carries it), and the preconditioner solver option
    (None, "ekfac": fitted before the solve, or the loaded EKFAC). Stale or foreign factors are refused
    in one line naming the file and the command that fits them again (exit 2)."""
    from ..curvature import EKFAC, FactorFileError
    pre = getattr(args, "preconditioner", None) or "none"
    curvature, damping = args.curvature, args.damping
    preconditioner = None if pre == "none" else pre
    if not getattr(args, "factors", None):
        return curvature, damping, preconditioner
    use_damping = damping if curvature == "ekfac" else None
    try:
        ekfac = EKFAC.load(args.factors, model, train, damping=use_damping)
    except FactorFileError as e:
        if e.stale:
            raise UsageError("--factors %s %s; rerun '%s' to fit them again for this --model and --train"
                             % (args.factors, e.reason, _fix(args, args.factors)))
        raise UsageError("--factors %s %s; pass a file written by '%s'" % (args.factors, e.reason,
                                                                           _fix(args, "FACTORS.npz")))
    if curvature == "ekfac":
        return ekfac, None, None
    return curvature, damping, ekfac


def preconditioner_text(args):
    """The line that says a preconditioner is used (printed before the work), or None."""
    if (getattr(args, "preconditioner", None) or "none") in ("none", "auto"):
        return None
    source = ("the EK-FAC factors in %s" % args.factors) if getattr(args, "factors", None) else \
        "EK-FAC, fitted on --train before the solve with the curvature's damping"
    solver = "cg solves (--solver auto plans cg when a preconditioner is given)" if args.solver == "auto" \
        else "%s solves" % args.solver
    return ("influence: preconditioner: %s, for the %s: the same answer in fewer Hessian-vector products"
            % (source, solver))


def cmd_factors(args):
    from ..common.files import file_fingerprint
    from ..jobs import FactorJob
    out_extension(args)
    folder = partial_folder(args)           # checks --out (and --resume) before any work
    check_cluster(args)
    timer = Timer()
    with timer("load model and data"):
        model, _ = load_model(args)
        train = load_split(args.train, "--train", model, args.ctf_options)
    estimate = factors_plan(args, model, train)
    with cluster_executor(args, timer) as executor:
        with Warnings():
            job = FactorJob(model, train, folder=folder, resume=args.resume, damping=args.damping,
                            strategy=args.strategy, labels=args.labels, random_state=args.seed,
                            batch_size=args.batch_size, chunk_size=args.chunk_size, progress=not args.quiet,
                            executor=executor, inputs=job_inputs(args, {}))
            with job:
                with timer("fit (%s, labels %s)" % (args.strategy, args.labels)):
                    ekfac = job.run()
                with timer("write"):
                    ekfac.save(args.out)
    saved = file_fingerprint(args.out)
    summary = {"out": saved["path"], "size": saved["size"], "sha256": saved["sha256"], "strategy": ekfac.strategy,
               "labels": ekfac.labels, "seed": args.seed, "damping": args.damping,
               "block_damping": list(ekfac.block_damping), "n_params": int(model.n_params), "n_train": len(train),
               "passes": ekfac.n_passes, "blocks": ekfac.plan(), "estimated_seconds": estimate,
               "chunk_size": args.chunk_size, "chunks": job.chunks, "cluster": args.cluster,
               "seconds": timer.as_dict()}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return EXIT_OK
    print(str(ekfac))
    setting = "auto (0.1 × each block's mean eigenvalue)" if args.damping == "auto" else args.damping
    print("  damping %s: %s" % (setting, ", ".join("%.3g" % v for v in ekfac.block_damping) or "no blocks"))
    chunks = job.chunks
    if chunks and chunks["resumed"]:
        print("  chunks: %d of %d resumed from %s/, %d computed" % (chunks["resumed"], chunks["chunks"], folder,
                                                                   chunks["computed"]))
    print("saved %s (%.4g MB): reuse it with --factors %s (and --curvature ekfac or --preconditioner ekfac) on "
          "this --model and --train" % (args.out, saved["size"] / 1e6, args.out))
    print("timing:")
    print("\n".join(timer.lines()))
    return EXIT_OK
