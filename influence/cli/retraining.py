"""The retraining flags of ``verify``, ``evaluate lds`` and ``evaluate loo`` (``--retrain``, ``--seeds``,
``--recipe``, ``--train-fn``, ``--init``) and the extra scored methods of ``evaluate lds``/``loo`` (the
damping sweep of ``--damping A B ...``, TracIn-CP over ``--checkpoints`` with ``--checkpoint-lr``):
the flags, their checks before any work, and the keyword arguments of :mod:`influence.evaluate` they
become. The library checks what it can (:func:`influence.evaluate.retrain.check_mode`,
:func:`influence.evaluate.parse_recipe`, :func:`influence.evaluate.parse_dampings`); its errors name
the parameters, which the CLI words as these flags (cli/flags.py)."""
import os

from ._common import UsageError, existing_file

__all__ = ["retrain_flags", "method_flags", "retrain_options", "method_options", "split_dampings",
           "load_train_fn", "retrain_text", "retrain_inputs", "damping_text"]

#: What each value of --retrain does, for --help and the plan line.
RETRAIN_HELP = ("how to retrain: warm (L-BFGS from the optimum, re-tightened first), proximal (the proximal "
                "Bregman objective from the trained weights, λ = the damping of the scores: what influence on "
                "the damped Gauss-Newton matrix predicts), scratch (fresh initialisation + --recipe, --train-fn "
                "or the recipe in the model's .json; --seeds runs each, their mean measured); auto: warm at an "
                "optimum, proximal otherwise; the report names the mode used (default auto)")


def retrain_flags(p):
    """--retrain, --seeds, --recipe, --train-fn, --init."""
    from ..evaluate import RETRAIN_MODES
    g = p.add_argument_group("retraining", "how the model is retrained (docs/evaluation.md, 'Retraining modes')")
    g.add_argument("--retrain", choices=("auto",) + tuple(RETRAIN_MODES), default="auto", help=RETRAIN_HELP)
    g.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="--retrain scratch: K runs per retraining from K seeds (drawn from --seed), their mean "
                   "measured and their spread reported (default 1)")
    g.add_argument("--recipe", metavar="RECIPE",
                   help="--retrain scratch: the training recipe, 'LEARNER key=value ...', e.g. \"adam lr=0.01 "
                   "momentum=0.9 epochs=8 minibatch=64\" (CNTK's Trainer with sgd, momentum_sgd, adam, adagrad or "
                   "rmsprop on the training graph) or lbfgs (full-batch L-BFGS to the retraining tolerance, what "
                   "'influence train' does and records); default: the recipe the model's .json records, else that adam recipe")
    g.add_argument("--train-fn", metavar="FILE.py:NAME",
                   help="--retrain scratch: your own training loop instead of a recipe: the function NAME in "
                   "FILE.py, called as NAME(function, dataset, seed), trains the CNTK Function in place")
    g.add_argument("--init", metavar="INIT.cntk",
                   help="--retrain scratch: start every run from this saved initial model (the same network) "
                   "instead of a seeded glorot_uniform initialisation")


def method_flags(p):
    """--checkpoints and --checkpoint-lr: TracIn-CP as one more scored method of evaluate lds/loo."""
    p.add_argument("--checkpoints", nargs="+", metavar="W.cntk",
                   help="add TracIn-CP as a scored method: −Σ_k lr_k g_test(w_k)ᵀ g_i(w_k) over these saved "
                   "checkpoints of the training run (model files of the same network)")
    p.add_argument("--checkpoint-lr", nargs="+", type=float, metavar="LR",
                   help="with --checkpoints: the learning rate lr_k at each checkpoint, one per checkpoint or one "
                   "for all (default 1)")


def split_dampings(args):
    """``--damping A [B ...]``: A the damping of the influence scores (and the proximal λ), every further
    value one more scored method, "influence λ=B" (the damping sweep): ``args.damping``, ``args.dampings``."""
    values = args.damping if isinstance(args.damping, list) else [args.damping]
    args.damping, args.dampings = values[0], list(values[1:])
    if "auto" in args.dampings:
        raise UsageError("--damping %s: only the first value may be auto (the damping of the influence scores); "
                         "give the sweep as numbers or multiples of the mean eigenvalue, e.g. --damping auto 0.1x 1x"
                         % " ".join(str(v) for v in values))
    texts = [str(v) for v in values]
    if len(set(texts)) < len(texts):
        raise UsageError("--damping %s: a value is given twice; give each damping once, e.g. --damping 1x 0.1x 10x"
                         % " ".join(texts))
    if args.dampings:
        from ..evaluate import parse_dampings
        parse_dampings(args.dampings)              # a library error names the damping (--damping)


def load_train_fn(spec):
    """``FILE.py:NAME`` → the callable NAME that FILE.py defines (FILE.py is run once, as a script)."""
    import runpy
    path, _, name = str(spec).rpartition(":")
    if not path or not name.isidentifier():
        raise UsageError("--train-fn %s is not FILE.py:NAME; pass e.g. --train-fn my_training.py:train" % spec)
    existing_file(path, "--train-fn")
    try:
        namespace = runpy.run_path(os.path.abspath(path), run_name="influence_train_fn")
    except Exception as e:          # the user's file: any error of it is an input error, in one line
        raise UsageError("--train-fn %s: running %s failed (%s: %s); fix the file" % (
            spec, path, type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else ""))
    fn = namespace.get(name)
    if not callable(fn):
        raise UsageError("--train-fn %s: %s defines no function %s; define %s(function, dataset, seed) in it"
                         % (spec, path, name, name))
    return fn


def _same_network(path, flag, model):
    """A saved model file with the parameters of ``model``: refused in one line otherwise."""
    from ..adapters.cntk import CNTKModel
    existing_file(path, flag)
    try:
        other = CNTKModel.load(path, loss=model.loss_name)        # as influence.evaluate loads it
    except ValueError as e:
        raise UsageError("%s %s: %s" % (flag, path, str(e).strip().splitlines()[0]))
    if other.n_params != model.n_params:
        raise UsageError("%s %s has %d parameters but --model %d; pass a model file of the same network"
                         % (flag, path, other.n_params, model.n_params))


def retrain_options(args, meta, model):
    """The retraining keyword arguments (``retrain``, ``seeds``, ``recipe``, ``train_fn``, ``init``) of
    verify_loo / lds / loo from the flags and the model's .json (its recorded recipe); refused in one
    line before any work."""
    from ..evaluate import parse_recipe
    from ..evaluate.retrain import check_mode
    check_mode(args.retrain, args.seeds)
    given = [flag for flag, attr in (("--recipe", "recipe"), ("--train-fn", "train_fn"), ("--init", "init"))
             if getattr(args, attr)]
    if given and args.retrain != "scratch":
        raise UsageError("%s says how to retrain from scratch, but --retrain is %s; add --retrain scratch (or drop "
                         "%s)" % (" and ".join(given), args.retrain, " and ".join(given)))
    if args.recipe and args.train_fn:
        raise UsageError("--recipe and --train-fn both say how to train; pass one of them")
    recipe = None
    if args.retrain == "scratch" and not args.train_fn:
        recipe = args.recipe or (meta or {}).get("recipe")
        if recipe is not None and not args.recipe:
            try:
                parse_recipe(recipe)
            except ValueError as e:
                raise UsageError("--model %s: its .json records the recipe %r, which is not one (%s); pass --recipe"
                                 % (args.model, recipe, str(e).split(": ", 1)[-1]))
        elif recipe is not None:
            parse_recipe(recipe)                   # a library error names the recipe (--recipe)
    train_fn = load_train_fn(args.train_fn) if args.train_fn else None
    if args.init:
        _same_network(args.init, "--init", model)
    return {"retrain": args.retrain, "seeds": args.seeds, "recipe": recipe, "train_fn": train_fn,
            "init": args.init}


def method_options(args, model):
    """``dampings``, ``checkpoints`` and ``learning_rates`` of lds / loo, checked before any work."""
    checkpoints, rates = args.checkpoints, args.checkpoint_lr
    if rates is not None and not checkpoints:
        raise UsageError("--checkpoint-lr %s without --checkpoints: name the checkpoints it belongs to, e.g. "
                         "--checkpoints epoch2.cntk epoch4.cntk --checkpoint-lr 0.01"
                         % " ".join("%g" % r for r in rates))
    for path in checkpoints or []:
        _same_network(path, "--checkpoints", model)
    if rates is not None:
        if len(rates) not in (1, len(checkpoints)):
            raise UsageError("--checkpoint-lr %s: give one learning rate per checkpoint (%d) or one for all"
                             % (" ".join("%g" % r for r in rates), len(checkpoints)))
        bad = [r for r in rates if not (r > 0 and r < float("inf"))]
        if bad:
            raise UsageError("--checkpoint-lr %g: a learning rate is a finite number > 0, e.g. --checkpoint-lr 0.01"
                             % bad[0])
    return {"dampings": args.dampings, "checkpoints": checkpoints, "learning_rates": rates}


def retrain_inputs(args):
    """The files behind --train-fn, --init and --checkpoints, for the fingerprint --resume checks."""
    from ..common.files import file_fingerprint
    out = {}
    if getattr(args, "train_fn", None):
        out["train_fn_file"] = file_fingerprint(args.train_fn.rpartition(":")[0])
    if getattr(args, "init", None):
        out["init_file"] = file_fingerprint(args.init)
    if getattr(args, "checkpoints", None):
        out["checkpoint_files"] = [file_fingerprint(p) for p in args.checkpoints]
    return out


def retrain_text(args):
    """How the retrainings will run, for the plan line: (noun with %s for the plural, the mode, λ and seeds
    in words)."""
    damping = "the curvature's default" if args.damping is None else args.damping
    if args.retrain == "warm":
        return "L-BFGS retraining%s", "warm: from the optimum"
    if args.retrain == "proximal":
        return "L-BFGS retraining%s", "proximal: λ = --damping %s" % damping
    if args.retrain == "auto":
        return "L-BFGS retraining%s", "auto: warm at an optimum, else proximal with λ = --damping %s" % damping
    how = ("--train-fn %s" % args.train_fn) if args.train_fn else \
        ("--recipe %s" % args.recipe) if args.recipe else "the model's recipe"
    return "retraining%s from scratch", "%s, %d seed%s each" % (how, args.seeds, "" if args.seeds == 1 else "s")


def damping_text(retrain, damping):
    """What λ was in a report of the retrainings: the proximal term's too, or only the scores'."""
    return ("λ = %.4g, the scores' damping and the proximal term's" if retrain == "proximal"
            else "scores at λ = %.4g") % damping
