"""Command-line interface: ``influence <command>`` / ``python -m influence <command>``.

Exit codes (docs/failure-modes.md): 0 success; 2 bad usage or input, or a refusal — one line on
stderr, nothing written; 1 an error after work began — one line, the finished work kept in
``OUT.partial/`` for ``--resume``; 130 interrupted (Ctrl-C). No traceback unless ``--debug``; output
files are written atomically. CNTK's own start-up and device messages are hidden unless ``--debug``.

Without a UTF-8 locale (Python 3.6 then opens stdio as ASCII), the symbols of the messages are
printed in ASCII (:data:`ASCII_SYMBOLS`: ‖ → ||, λ → lambda, ᵀ → ^T, ...); files are UTF-8 always.

Layout: :mod:`._common` (what every command shares) ← :mod:`.commands` (info, train, hvp, self,
verify), :mod:`.score`, :mod:`.evaluate`, :mod:`.factors` (the factors command, --factors and
--preconditioner) ← this module (the parser, error reporting, ``main``).
"""
from __future__ import print_function

import io
import os
import sys

from .._version import __version__
from ._common import (
    EXIT_NOT_CONVERGED, EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, TEST_INDEX_HELP,
    UsageError, Parser, ascii_safe_stdio, common_flags, ctf_flags, first_line, model_flags, stderr_hidden,
    vocab_flag, cli_text)
from .curvature import NotConverged, curvature_flags
from .commands import cmd_hvp, cmd_info, cmd_self, cmd_train, cmd_verify
from .retraining import retrain_flags
from .score import MATRIX_TEST_POINTS, cmd_score
from .evaluate import evaluate_parsers
from .factors import factor_flags, factors_parser
from ._common import ASCII_SYMBOLS, VOCABULARY, parse_test_indices  # noqa: F401  (part of influence.cli's surface)

__all__ = ["main", "build_parser", "UsageError", "ASCII_SYMBOLS", "MATRIX_TEST_POINTS", "VOCABULARY"]


# ---------------------------------------------------------------------------------------- parser
def build_parser():
    common = common_flags()
    parser = Parser(prog="influence", description="Influence functions (Koh & Liang 2017) on CNTK models: "
                     "which training examples made the model predict this?")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("info", parents=[common_flags(seed=False)],
                       help="versions of influence, Python, numpy, scipy, CNTK",
                       description="Show the versions of influence, Python, numpy, scipy and CNTK.")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", parents=[common], help="build a CNTK network and fit it to an optimum",
                       description="Build a CNTK network, fit it to an optimum of the L2-regularized "
                       "training objective with full-batch L-BFGS (influence.fit), and save it with "
                       "Function.save plus a .json file of metadata (loss, l2, arch) beside it.")
    p.add_argument("--data", required=True, metavar="TRAIN.npz",
                   help="training data: .npz with arrays x (n × features) and y (labels or targets)")
    p.add_argument("--arch", default="softmax", help="'softmax' (no hidden layer), 'mlp:H1,H2,...' or "
                   "'cnn:C1,C2,...' (per entry a 3x3 convolution, BatchNormalization, the activation and 2x2 "
                   "pooling: average, or max with relu; then Dropout and Dense; x of shape (n, C, H, W)) "
                   "(default softmax)")
    p.add_argument("--activation", default="tanh", choices=["tanh", "relu", "sigmoid", "softplus"],
                   help="hidden-layer activation (default tanh)")
    p.add_argument("--loss", choices=["cross_entropy", "binary_cross_entropy", "squared_error"],
                   help="default: cross_entropy for integer labels, squared_error for float targets")
    p.add_argument("--classes", type=int, help="number of classes (default: max label + 1)")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 coefficient λ in (λ/2)‖w‖² (default 1e-3)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default float32")
    p.add_argument("--gtol", type=float, default=1e-5, help="stop when max |∂R/∂w| <= GTOL (default 1e-5)")
    vocab_flag(p, "--lbfgs-maxiter", "L-BFGS iterations at most", old=("--maxiter",), type=int, metavar="N")
    p.add_argument("--batch-size", type=int, default=None, metavar="B", help="examples per pass (default 2048)")
    p.add_argument("--out", required=True, metavar="MODEL", help="where to save the model (e.g. model.cntk)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("hvp", parents=[common], help="one Hessian-vector product of the training objective",
                       description="Compute (C + damping·I)·v for the mean training objective of a model "
                       "on a dataset (C the Hessian by central finite differences of gradients, or the "
                       "Gauss-Newton matrix or the empirical Fisher: --curvature), and report its time.")
    model_flags(p)
    p.add_argument("--data", required=True, metavar="D.npz", help=".npz with x and y, or a .ctf file")
    ctf_flags(p)
    p.add_argument("--vector", required=True, metavar="v.npy", help="flat vector (.npy), one entry per parameter")
    curvature_flags(p)
    p.add_argument("--out", metavar="hv.npy", help="save (C + damping·I)·v here (.npy)")
    p.set_defaults(func=cmd_hvp)

    factors_parser(sub, common)

    def score_flags(p, solver=True):
        model_flags(p)
        p.add_argument("--train", required=True, metavar="T.npz", help="training data (.npz with x, y, or .ctf)")
        ctf_flags(p)
        curvature_flags(p)
        factor_flags(p, preconditioner=solver)
        p.add_argument("--chunk-size", type=int, default=10000, metavar="C",
                       help="training rows per chunk: the unit of progress and of --resume (default 10000)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.partial/ "
                       "without recomputing finished chunks")
        p.add_argument("--no-optimum-check", action="store_true",
                       help="skip the check that the model is at an optimum of the training objective")
        if solver:
            p.add_argument("--solver", choices=["auto", "cg", "lissa", "direct", "lanczos"], default="auto",
                           help="inverse-HVP solver (default auto: direct or cg by a cost model of the "
                           "parameters, training rows, test points and memory, printed before the solve)")
            p.add_argument("--rtol", type=float, help="relative tolerance of the inverse HVP: stop when "
                           "‖(H + λI)x − g_test‖ <= RTOL·‖g_test‖ (default: the solver's)")
            vocab_flag(p, "--solver-maxiter", "iterations of the inverse-HVP solver at most", old=("--maxiter",),
                        type=int, metavar="N")
            p.add_argument("--strict", action="store_true",
                           help="refuse the scores (exit code 3, nothing written) when the solver ends above "
                           "its tolerance (default: keep them, marked NOT CONVERGED on stderr, in the "
                           "report and in --json)")

    p = sub.add_parser("score", parents=[common], help="influence of every training point on test points",
                       description="Influence of every training point on the loss at test points: "
                       "I_up,loss = -g_testᵀ H⁻¹ g_i and the predicted test-loss change if the point were "
                       "removed, -I_up,loss/n (positive: it helped). Prints the most helpful and harmful "
                       "training points (per test point; with more than %d test points their sums and means "
                       "over the test points, overall and per class, and the whole score matrix goes to "
                       ".npy) and a timing breakdown; --out holds every score." % MATRIX_TEST_POINTS)
    score_flags(p)
    p.add_argument("--test", required=True, metavar="Q.npz", help="test data (.npz with x, y)")
    p.add_argument("--test-index", nargs="+", metavar="I", help=TEST_INDEX_HELP)
    p.add_argument("--scoring", choices=["forward", "gradient"], default="forward",
                   help="forward: finite differences of batched forward passes (fast, default); gradient: "
                   "per-example gradients (reference)")
    vocab_flag(p, "--rank", "rank of --solver lanczos", old=("--k",), type=int, metavar="K")
    vocab_flag(p, "--top", "rows of each ranked table", type=int, metavar="N")
    p.add_argument("--out", metavar="scores.csv|scores.json|scores.npy", help="write every score here; the "
                   "extension decides the format: .csv or .json a table (with more than %d test points or "
                   "--matrix: one row per training point with the sums and means over the test points, overall "
                   "and per class, and the whole score matrix in OUT.npy: scores.csv -> scores.npy), .npy the "
                   "score matrix (test points x training points, I_up,loss, float64)" % MATRIX_TEST_POINTS)
    p.add_argument("--matrix", metavar="M.npy", help="write the whole score matrix (test points x training "
                   "points, I_up,loss, float64) here, chunk by chunk through a memory-mapped file in "
                   "M.partial/ or OUT.partial/ (resumable), also for %d test points or fewer; default with more: "
                   "OUT.npy" % MATRIX_TEST_POINTS)
    p.add_argument("--cluster", metavar="SPEC", help="solve s_test and score the training points on a Dask "
                   "cluster: local:N (N worker processes on this machine) or tcp://HOST:PORT (a running dask-scheduler; "
                   "--train must be readable at the same path by every worker); see docs/cluster.md")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("self", parents=[common], help="rank training points by self-influence (likely mislabeled)",
                       description="Self-influence s_i = g_iᵀ H⁻¹ g_i of every training point; the highest "
                       "are the most likely mislabeled.")
    score_flags(p, solver=False)
    p.add_argument("--method", choices=["exact", "lanczos"], default="exact",
                   help="exact: dense Hessian (small models); lanczos: rank-k approximation (default exact)")
    vocab_flag(p, "--rank", "rank of --method lanczos", old=("--k",), type=int, metavar="K")
    vocab_flag(p, "--top", "rows of the ranked table", type=int, metavar="N")
    p.add_argument("--out", metavar="ranking.csv|ranking.json|ranking.npy", help="write every training point's "
                   "self-influence here; the extension decides the format: .csv or .json a table (index, label, "
                   "self-influence, rank, training loss), .npy the self-influence vector (float64)")
    p.set_defaults(func=cmd_self)

    p = sub.add_parser("verify", parents=[common], help="leave-one-out check of the influence predictions",
                       description="Retrain without k training points (the most influential and random "
                       "ones; --retrain says how: warm from the optimum, proximal or from scratch), measure the "
                       "actual change of the test loss and compare with the prediction.")
    model_flags(p)
    p.add_argument("--train", required=True, metavar="T.npz", help="training data (.npz with x, y)")
    p.add_argument("--test", required=True, metavar="Q.npz", help="test data (.npz with x, y)")
    p.add_argument("--test-index", type=int, nargs="+", required=True, metavar="I", help="test point(s)")
    vocab_flag(p, "--retrainings", "training points to retrain without, one at a time (half the most "
                "influential, half at random)", old=("--k",), type=int, metavar="N")
    ctf_flags(p)
    curvature_flags(p)
    factor_flags(p)
    p.add_argument("--solver", choices=["cg", "lissa", "direct", "lanczos"], default="cg", help="default cg")
    vocab_flag(p, "--top", "worst disagreements to print", type=int, metavar="N")
    retrain_flags(p)
    p.add_argument("--out", metavar="loo.csv|loo.json", help="write the whole table here, one row per retraining "
                   "(index, predicted, actual, noise, above_noise); the extension decides the format")
    p.set_defaults(func=cmd_verify)

    evaluate_parsers(sub, common)
    return parser


def _dense_text(e, command):
    """The dense Hessian would not fit: the advice in this command's flags."""
    if command == "self":
        return "--method exact: %s; use --method lanczos --rank 50 (a rank-50 approximation) instead" % e.reason
    return "--solver direct: %s; use --solver cg (or --solver lanczos --rank K, K < d - 1) instead" % e.reason


def _error_text(e, args):
    """One line for a refused input, in the flags of the command that ran."""
    from ..solvers.dense import DenseMemoryError
    command = getattr(args, "command", None)
    if command == "evaluate" and getattr(args, "metric", None):
        command = "evaluate " + args.metric
    if isinstance(e, DenseMemoryError):
        return _dense_text(e, command)
    return cli_text(e, command)


def _job_failed_text(e, args=None):
    from ..common.files import InputChangedError
    cause = _error_text(e.cause, args)
    folder = os.path.relpath(e.folder)
    if isinstance(e.cause, InputChangedError):
        return "%s (the partial results in %s/ belong to the old input)" % (cause, folder)
    if not isinstance(e.cause, ValueError):
        cause = "%s: %s" % (type(e.cause).__name__, cause)
    return "%s; the finished work is kept in %s/: rerun the same command with --resume to continue" % (cause, folder)


def _interrupted_text(args):
    """The one line after Ctrl-C: for a resumable command (--out given), where its finished work is
    and that --resume continues it."""
    if args is None or not hasattr(args, "resume"):
        return "influence: interrupted"
    out = getattr(args, "out", None) or getattr(args, "matrix", None)
    if not out:
        return "influence: interrupted (without --out nothing is kept to --resume)"
    folder = out + ".partial"
    if os.path.isdir(folder):
        return "influence: interrupted; the finished work is kept in %s/: rerun the same command with " \
               "--resume to continue" % folder
    return "influence: interrupted before any work was finished; rerun the same command (with --resume " \
           "it starts afresh)"


def _stdout_to_devnull():
    """After EPIPE: point stdout's descriptor at /dev/null so the final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    restore_stdio = ascii_safe_stdio()
    restore = None if debug else stderr_hidden()
    from ..common.interrupt import install_sigint_flag
    restore_sigint = install_sigint_flag()
    args = None
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if getattr(args, "func", None) is None:
                parser.print_help()
                return EXIT_USAGE
            from ..common.threads import set_threads
            if getattr(args, "threads", None) is not None:
                if args.threads < 1:
                    raise UsageError("--threads %d is not a positive integer; pass e.g. --threads 1" % args.threads)
                # before CNTK loads (OMP_NUM_THREADS), and into CNTK itself; a CNTK already loaded in
                # this process (main() called from Python) keeps its number: changing it crashes CNTK
                set_threads(args.threads, warn=False)
            code = args.func(args)
            sys.stdout.flush()         # a reader that closed the pipe shows here, not at exit
            return code
        except BrokenPipeError:
            _stdout_to_devnull()
            return EXIT_BROKEN_PIPE
        except (UsageError, ValueError, ImportError) as e:
            if debug:
                raise
            print("influence: error: %s" % _error_text(e, args), file=sys.stderr)
            return EXIT_USAGE
        except NotConverged as e:
            print("influence: error: %s" % e, file=sys.stderr)
            return EXIT_NOT_CONVERGED
        except KeyboardInterrupt:
            print(_interrupted_text(args), file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:   # after work began, a bug or a CNTK failure: still one line, unless --debug
            from ..common.interrupt import is_interrupt
            from ..jobs import JobFailed
            if is_interrupt(e) or isinstance(e, JobFailed) and is_interrupt(e.cause):
                print(_interrupted_text(args), file=sys.stderr)      # Ctrl-C inside a CNTK call
                return EXIT_INTERRUPTED
            if debug:
                raise
            if isinstance(e, JobFailed):
                print("influence: error: %s" % _job_failed_text(e, args), file=sys.stderr)
            else:
                print("influence: internal error: %s: %s (rerun with --debug for the traceback)"
                      % (type(e).__name__, first_line(e)), file=sys.stderr)
            return EXIT_FAILURE
    finally:
        restore_sigint()
        if restore is not None:
            restore()
        restore_stdio()


if __name__ == "__main__":
    sys.exit(main())
