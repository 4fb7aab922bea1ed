"""Library errors in the command line's words: the ONE table from library parameters to flags
(:data:`FLAGS`), and rendering of the parameter mentions that library errors and warnings carry
(influence.common.errors) in those flags. No regular expression rewrites a message."""
import ast

from ..common.errors import api_spelling, render

__all__ = ["FLAGS", "COMMAND_FLAGS", "API_ONLY", "cli_spelling", "cli_text", "first_line"]


#: The flag that sets each library parameter a library error may name (influence.common.errors.param):
#: the ONE table from API words to command-line words. A command whose flag differs says so in
#: COMMAND_FLAGS.
FLAGS = {"damping": "--damping", "rtol": "--rtol", "maxiter": "--solver-maxiter", "random_state": "--seed",
         "chunk_size": "--chunk-size", "batch_size": "--batch-size", "k": "--rank", "resume": "--resume",
         "folder": "--out", "l2": "--l2", "scoring": "--scoring", "method": "--solver", "solver": "--solver",
         "mapping": "--ctf-map", "skip": "--ctf-skip", "gtol": "--gtol", "curvature": "--curvature",
         "retrain": "--retrain", "seeds": "--seeds", "recipe": "--recipe", "train_fn": "--train-fn", "init": "--init",
         "dampings": "--damping", "checkpoints": "--checkpoints", "learning_rates": "--checkpoint-lr",
         "preconditioner": "--preconditioner", "strategy": "--strategy", "labels": "--labels"}
COMMAND_FLAGS = {"self": {"method": "--method"}, "verify": {"k": "--retrainings", "maxiter": "--lbfgs-maxiter"},
                 "train": {"maxiter": "--lbfgs-maxiter"}, "evaluate lds": {"maxiter": "--lbfgs-maxiter"},
                 "evaluate loo": {"k": "--retrainings", "maxiter": "--lbfgs-maxiter"},
                 "evaluate mislabel": {"maxiter": "--lbfgs-maxiter"}}
#: Parameters only the Python API has: the CLI never sets them, so an error naming one keeps the API word.
API_ONLY = {"x0": "cg's starting point", "callback": "per-iteration hook", "recycle": "solve_many option",
            "eigsh_tol": "lanczos option", "ncv": "lanczos option", "atol": "absolute tolerance",
            "scale": "lissa option", "repeats": "lissa option", "depth": "lissa option",
            "batches": "lissa option", "check_every": "lissa option", "steps": "lissa option",
            "power_steps": "lissa option", "rel_step": "HessianOperator option", "subsets": "evaluate lds option",
            "fraction": "evaluate mislabel option", "curvature_steps": "cg option", "inner_steps": "lissa option",
            "stagnation": "cg option"}


def _flag_value(name, value):
    """A value as the command line writes it: strings bare, CTF mappings as STREAM=INPUT."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    if isinstance(parsed, dict):
        return " ".join("%s=%s" % item for item in parsed.items())
    if isinstance(parsed, (list, tuple)):
        return " ".join(str(v) for v in parsed)
    return str(parsed)


def cli_spelling(command=None):
    """``spelling(name, value)`` for influence.common.errors.render in this command's flags."""
    table = dict(FLAGS, **COMMAND_FLAGS.get(command, {}))

    def spelling(name, value):
        flag = table.get(name)
        if flag is None:
            return api_spelling(name, value)
        if value is None or value == "True":
            return flag
        return "%s %s" % (flag, _flag_value(name, value))
    return spelling


def cli_text(e, command=None):
    """The first line of exception ``e`` in the flags of ``command`` (library errors name parameters as
    data; see influence.common.errors)."""
    template = getattr(e, "template", None)
    return first_line(e) if template is None else first_line(render(template, cli_spelling(command)))


def first_line(e):
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    return text.splitlines()[0] if text else type(e).__name__
