"""The retraining flags of ``verify``, ``evaluate lds`` and ``evaluate loo`` (``--retrain``, ``--seeds``,
``--recipe``, ``--train-fn``, ``--init``), and ``--damping`` as a number or ``auto``."""
import os

from ._common import UsageError, existing_file

__all__ = ["retrain_flags", "retrain_options", "load_train_fn", "damping_value", "method_flags", "split_dampings"]


def method_flags(p):
    """The extra scored methods of evaluate lds/loo: TracIn-CP over checkpoints."""
    p.add_argument("--checkpoints", nargs="+", metavar="W.cntk", help="add TracIn-CP: -sum_k lr_k g_test.g_i over "
                   "these saved checkpoints of the training run (same network)")
    p.add_argument("--checkpoint-lr", nargs="+", type=float, metavar="LR", help="the learning rate at each "
                   "checkpoint (one value for all; default 1)")


def split_dampings(args):
    """``--damping A [B ...]``: A is the damping of the influence scores (and the proximal λ), every
    further value one more scored method (the damping sweep)."""
    values = args.damping if isinstance(args.damping, list) else [args.damping]
    args.damping, args.dampings = values[0], values[1:]


def retrain_flags(p):
    p.add_argument("--retrain", choices=["auto", "warm", "proximal", "scratch"], default="auto",
                   help="how to retrain: warm (L-BFGS from the optimum), proximal (the proximal Bregman "
                   "objective from the trained weights, what influence on Gauss-Newton predicts), scratch "
                   "(fresh initialisation + the training recipe, --seeds runs each); auto: warm at an "
                   "optimum, proximal otherwise (default auto)")
    p.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="--retrain scratch: K runs per retraining, their mean measured (default 1)")
    p.add_argument("--recipe", metavar="RECIPE", help="--retrain scratch: CNTK Trainer recipe, e.g. \"adam "
                   "lr=0.01 momentum=0.9 epochs=8 minibatch=64\" (learners sgd, momentum_sgd, adam, adagrad, "
                   "rmsprop; 'lbfgs': full-batch L-BFGS to --gtol); default: the recipe 'influence train' "
                   "recorded in the model's .json, else that adam recipe")
    p.add_argument("--train-fn", metavar="FILE.py:NAME", help="--retrain scratch: your own training loop, "
                   "NAME(function, dataset, seed) in FILE.py, training the CNTK Function in place")
    p.add_argument("--init", metavar="INIT.cntk", help="--retrain scratch: start from this saved initial model "
                   "(same parameters) instead of a seeded glorot_uniform initialisation")


def load_train_fn(spec):
    """``FILE.py:NAME`` → the callable NAME defined in FILE.py."""
    import runpy
    path, _, name = str(spec).rpartition(":")
    if not path or not name:
        raise UsageError("--train-fn %s: give FILE.py:NAME (e.g. --train-fn my_training.py:train)" % spec)
    existing_file(path, "--train-fn")
    namespace = runpy.run_path(os.path.abspath(path))
    fn = namespace.get(name)
    if not callable(fn):
        raise UsageError("--train-fn %s: %s defines no function %r; define %s(function, dataset, seed)"
                         % (spec, path, name, name))
    return fn


def retrain_options(args, meta):
    """The retraining keyword arguments of verify_loo / lds / loo from the flags (and the model's .json)."""
    from ..common.errors import InfluenceError
    from ..evaluate import parse_recipe
    recipe = args.recipe or (meta or {}).get("recipe")
    if recipe is not None:
        try:
            parse_recipe(recipe)
        except InfluenceError as e:
            raise UsageError("--recipe %r: %s" % (recipe, str(e).split(": ", 1)[-1]))
    if args.retrain != "scratch" and (args.recipe or args.train_fn or args.init):
        raise UsageError("--recipe, --train-fn and --init say how to retrain from scratch; add --retrain scratch")
    train_fn = load_train_fn(args.train_fn) if args.train_fn else None
    if args.init:
        existing_file(args.init, "--init")
    return {"retrain": args.retrain, "seeds": args.seeds, "recipe": recipe, "train_fn": train_fn,
            "init": args.init}


def damping_value(text):
    """``--damping``: a number >= 0, ``auto`` (0.1 × the mean eigenvalue of the curvature) or ``<f>x``
    (f × that mean eigenvalue)."""
    if text == "auto":
        return "auto"
    try:
        if text.endswith("x"):
            float(text[:-1])
            return text
        return float(text)
    except ValueError:
        raise UsageError("--damping %s: pass a number >= 0, 'auto' or a multiple of the mean eigenvalue such "
                         "as 0.1x" % text)
