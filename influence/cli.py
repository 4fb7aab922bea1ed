"""Command-line interface: ``influence <command>`` / ``python -m influence <command>``.

Every command exits 0 on success and 2 on bad usage or bad input, with one line on stderr and no
traceback unless ``--debug``; output files are written atomically, so a failure never leaves a
partial one. CNTK's own start-up and device messages are hidden unless ``--debug``.
"""
from __future__ import print_function

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from ._version import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Suffix of the metadata file ``influence train`` writes next to the model (loss, l2, arch, ...).
META_SUFFIX = ".json"


class UsageError(ValueError):
    """Bad command-line usage or input: reported in one line, exit code 2."""


# ---------------------------------------------------------------------------------------- plumbing
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + message."""

    def error(self, message):
        raise UsageError("%s: %s (see '%s --help')" % (self.prog, message, self.prog))


def _stderr_hidden():
    """Send file descriptor 2 (where CNTK's C++ code writes) to /dev/null. Python's ``sys.stderr``
    keeps writing to the original stream (when it was file descriptor 2; a stream that is not, such
    as a test's capture, is left alone). Returns a function that undoes it."""
    try:
        sys.stderr.flush()
        redirect_python = sys.stderr.fileno() == 2
    except (AttributeError, ValueError, OSError):
        redirect_python = False
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    old = sys.stderr
    if redirect_python:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)

    def restore():
        if redirect_python:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)
    return restore


def _log(args, message):
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


class _Timer(object):
    """Named wall-clock timings, printed as a breakdown."""

    def __init__(self):
        self.steps = []

    def __call__(self, name):
        timer = self

        class _Step(object):
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.steps.append((name, time.perf_counter() - self.t))
        return _Step()

    def as_dict(self):
        return {name: seconds for name, seconds in self.steps}

    def lines(self):
        width = max([len(n) for n, _ in self.steps] + [5])
        return ["  %-*s %8.3f s" % (width, n, s) for n, s in self.steps] + \
               ["  %-*s %8.3f s" % (width, "total", sum(s for _, s in self.steps))]


def _existing_file(path, flag):
    if not os.path.isfile(path):
        raise UsageError("%s %s: no such file; check the path" % (flag, path))
    return path


def _load_data(path, flag="--data"):
    from .data import load_npz
    _existing_file(path, flag)
    try:
        return load_npz(path)
    except ValueError as e:
        raise UsageError("%s %s" % (flag, e))


def _read_meta(model_path):
    meta_path = model_path + META_SUFFIX
    if not os.path.isfile(meta_path):
        return {}
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except ValueError as e:
        raise UsageError("%s is not valid JSON (%s); delete it or pass --loss/--l2 explicitly" % (meta_path, e))
    return meta if isinstance(meta, dict) else {}


def _load_model(args):
    """The CNTKModel for ``--model``, with loss and l2 from the flags or from the metadata that
    ``influence train`` wrote beside the model."""
    from .adapters.cntk import CNTKModel
    _existing_file(args.model, "--model")
    meta = _read_meta(args.model)
    loss = args.loss or meta.get("loss") or "cross_entropy"
    l2 = args.l2 if args.l2 is not None else float(meta.get("l2", 0.0))
    if l2 < 0:
        raise UsageError("--l2 %r is negative; pass a value >= 0" % l2)
    model = CNTKModel.load(args.model, loss=None if loss == "none" else loss, output=args.output,
                           l2=l2, batch_size=args.batch_size)
    return model, meta


def _parse_arch(arch):
    if arch == "softmax":
        return ()
    if arch.startswith("mlp:"):
        try:
            hidden = tuple(int(h) for h in arch[4:].split(",") if h.strip())
        except ValueError:
            hidden = ()
        if hidden and all(h > 0 for h in hidden):
            return hidden
    raise UsageError("--arch %r is not 'softmax' or 'mlp:H1,H2,...' (e.g. mlp:100,50)" % arch)


def _common_flags():
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--quiet", action="store_true", help="no progress bars or progress messages on stderr")
    g.add_argument("--seed", type=int, default=0, help="random seed for everything random (default 0)")
    g.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")
    g.add_argument("--debug", action="store_true",
                   help="show tracebacks and CNTK's own messages on errors")
    return common


def _model_flags(p, need_labels=True):
    p.add_argument("--model", required=True, metavar="M", help="model file saved by Function.save "
                   "(e.g. by 'influence train')")
    p.add_argument("--output", metavar="NAME", help="name of the node to use (network output, or a loss "
                   "node with --loss none) when the file holds several")
    p.add_argument("--loss", choices=["cross_entropy", "binary_cross_entropy", "squared_error", "none"],
                   help="per-example loss on the network output ('none': the model is already a loss); "
                   "default: from the model's .json metadata, else cross_entropy")
    p.add_argument("--l2", type=float, help="L2 coefficient λ of the training objective (λ/2)‖w‖²; "
                   "default: from the model's .json metadata, else 0")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="examples per forward/backward pass (default 2048)")


# ---------------------------------------------------------------------------------------- commands
def cmd_info(args):
    import scipy
    print("influence  %s" % __version__)
    print("python     %s (%s)" % (platform.python_version(), sys.executable))
    print("numpy      %s" % np.__version__)
    print("scipy      %s" % scipy.__version__)
    try:
        from .adapters.cntk import import_cntk
        print("cntk       %s" % import_cntk().__version__)
    except ImportError as e:
        print("cntk       not available (%s)" % str(e).splitlines()[0])
    return EXIT_OK


def cmd_train(args):
    from .adapters.cntk import CNTKModel, build_network
    from .fitting import fit
    from ._files import atomic_path, check_writable, write_json
    hidden = _parse_arch(args.arch)
    if args.l2 < 0:
        raise UsageError("--l2 %r is negative; pass a value >= 0" % args.l2)
    check_writable(args.out)
    timer = _Timer()
    with timer("load data"):
        data = _load_data(args.data)
    x, y = data.x, data.y
    if y is None:
        raise UsageError("--data %s has no 'y' array; save labels with np.savez(path, x=..., y=...)" % args.data)
    loss = args.loss
    if loss is None:
        loss = "cross_entropy" if np.issubdtype(y.dtype, np.integer) else "squared_error"
    if loss == "cross_entropy":
        if not np.issubdtype(y.dtype, np.integer):
            raise UsageError("--data %s: labels have dtype %s; cross_entropy needs integer class labels "
                             "(or pass --loss squared_error for regression targets)" % (args.data, y.dtype))
        if y.ndim != 1 or (y.size and y.min() < 0):
            raise UsageError("--data %s: labels must be integers 0..k-1 of shape (n,)" % args.data)
        n_out = int(args.classes or (int(y.max()) + 1))
        if n_out < 2:
            raise UsageError("--data %s has a single class; cross_entropy needs at least 2 (or --classes K)"
                             % args.data)
    elif loss == "binary_cross_entropy":
        n_out = 1
    else:
        n_out = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
    shape = tuple(x.shape[1:])
    with timer("build"):
        z = build_network(shape if len(shape) != 1 else shape[0], n_out, hidden=hidden,
                          activation=args.activation, dtype=np.dtype(args.dtype), seed=args.seed)
        model = CNTKModel(z, loss=loss, l2=args.l2, batch_size=args.batch_size)
        if loss == "squared_error" and y.ndim == 1:
            data.y = y.reshape(-1, 1)
    _log(args, "training %s (%d parameters, %s) on %d examples with L-BFGS ..."
         % (args.arch, model.n_params, args.dtype, len(x)))
    with timer("fit (L-BFGS)"):
        result = fit(model, data, gtol=args.gtol, maxiter=args.maxiter)
    with timer("save"):
        with atomic_path(args.out) as tmp:
            model.save(tmp)
        meta = {"format": "cntk-influence/1", "arch": args.arch, "activation": args.activation,
                "dtype": args.dtype, "loss": loss, "l2": args.l2, "n_outputs": n_out,
                "input_shape": list(shape), "train_data": os.path.abspath(args.data),
                "n_train": len(x), "fit": {"loss": result.loss, "grad_norm": result.grad_norm,
                                           "n_iter": result.n_iter, "converged": bool(result.converged)}}
        write_json(args.out + META_SUFFIX, meta)
    summary = dict(meta, model=os.path.abspath(args.out), seconds=timer.as_dict())
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print("trained %s: %d parameters, %d L-BFGS iterations, objective %.6g, ‖∇R‖ = %.2e%s"
              % (args.arch, model.n_params, result.n_iter, result.loss, result.grad_norm,
                 "" if result.converged else "  (NOT converged: raise --maxiter)"))
        print("saved %s and %s" % (args.out, args.out + META_SUFFIX))
        print("\n".join(timer.lines()))
    return EXIT_OK


def cmd_hvp(args):
    from .hvp import HessianOperator
    from ._files import check_writable, write_npy
    if args.out:
        check_writable(args.out)
    timer = _Timer()
    with timer("load model"):
        model, _ = _load_model(args)
    with timer("load data"):
        data = _load_data(args.data)
        try:
            data = model.validate(data, args.data)
        except ValueError as e:
            raise UsageError("--data %s" % e)
    _existing_file(args.vector, "--vector")
    try:
        v = np.load(args.vector, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UsageError("--vector %s is not a readable .npy file without pickled objects (%s)" % (args.vector, e))
    if not isinstance(v, np.ndarray):
        raise UsageError("--vector %s is an .npz archive; save the vector with np.save(path, v)" % args.vector)
    if v.shape != (model.n_params,) or not np.issubdtype(v.dtype, np.number):
        raise UsageError("--vector %s has shape %s, dtype %s; the model has %d parameters: pass a flat "
                         "numeric vector of that length" % (args.vector, v.shape, v.dtype, model.n_params))
    op = HessianOperator(model, data, damping=args.damping)
    with timer("calibrate step (first product)"):
        op @ v
    with timer("HVP"):
        hv = op @ v
    if args.out:
        write_npy(args.out, hv)
    summary = {"n_params": model.n_params, "norm_v": float(np.linalg.norm(v)),
               "norm_hv": float(np.linalg.norm(hv)), "vHv": float(v @ hv), "rel_step": op.rel_step,
               "gradients": op.n_grad, "seconds": timer.as_dict(), "out": args.out}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print("H·v for %d parameters: ‖v‖ = %.6g, ‖Hv‖ = %.6g, vᵀHv = %.6g (relative step %.3g)"
              % (model.n_params, summary["norm_v"], summary["norm_hv"], summary["vHv"], op.rel_step))
        if args.out:
            print("saved %s" % args.out)
        print("\n".join(timer.lines()))
    return EXIT_OK


# ---------------------------------------------------------------------------------------- parser
def build_parser():
    common = _common_flags()
    parser = _Parser(prog="influence", description="Influence functions (Koh & Liang 2017) on CNTK models: "
                     "which training examples made the model predict this?")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("info", parents=[common], help="versions of influence, Python, numpy, scipy, CNTK",
                       description="Show the versions of influence, Python, numpy, scipy and CNTK.")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", parents=[common], help="build a CNTK network and fit it to an optimum",
                       description="Build a CNTK network, fit it to an optimum of the L2-regularized "
                       "training objective with full-batch L-BFGS (influence.fit), and save it with "
                       "Function.save plus a .json file of metadata (loss, l2, arch) beside it.")
    p.add_argument("--data", required=True, metavar="TRAIN.npz",
                   help="training data: .npz with arrays x (n × features) and y (labels or targets)")
    p.add_argument("--arch", default="softmax", help="'softmax' (no hidden layer) or 'mlp:H1,H2,...' "
                   "(default softmax)")
    p.add_argument("--activation", default="tanh", choices=["tanh", "relu", "sigmoid", "softplus"],
                   help="hidden-layer activation (default tanh)")
    p.add_argument("--loss", choices=["cross_entropy", "binary_cross_entropy", "squared_error"],
                   help="default: cross_entropy for integer labels, squared_error for float targets")
    p.add_argument("--classes", type=int, help="number of classes (default: max label + 1)")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 coefficient λ in (λ/2)‖w‖² (default 1e-3)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default float32")
    p.add_argument("--gtol", type=float, default=1e-5, help="stop when max |∂R/∂w| <= GTOL (default 1e-5)")
    p.add_argument("--maxiter", type=int, default=2000, help="L-BFGS iterations at most (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B", help="examples per pass (default 2048)")
    p.add_argument("--out", required=True, metavar="MODEL", help="where to save the model (e.g. model.cntk)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("hvp", parents=[common], help="one Hessian-vector product of the training objective",
                       description="Compute (H + damping·I)·v for the mean training objective of a model "
                       "on a dataset, by central finite differences, and report its time.")
    _model_flags(p)
    p.add_argument("--data", required=True, metavar="D.npz", help=".npz with x and y")
    p.add_argument("--vector", required=True, metavar="v.npy", help="flat vector (.npy), one entry per parameter")
    p.add_argument("--damping", type=float, default=0.0, help="λ added to the Hessian (default 0)")
    p.add_argument("--out", metavar="hv.npy", help="save H·v here (.npy)")
    p.set_defaults(func=cmd_hvp)
    return parser


def _first_line(e):
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    return text.splitlines()[0] if text else type(e).__name__


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    restore = None if debug else _stderr_hidden()
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if getattr(args, "func", None) is None:
                parser.print_help()
                return EXIT_USAGE
            return args.func(args)
        except (UsageError, ValueError, ImportError) as e:
            if debug:
                raise
            print("influence: error: %s" % _first_line(e), file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("influence: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:   # a bug or a CNTK failure: still one line, unless --debug
            if debug:
                raise
            print("influence: internal error: %s: %s (rerun with --debug for the traceback)"
                  % (type(e).__name__, _first_line(e)), file=sys.stderr)
            return EXIT_FAILURE
    finally:
        if restore is not None:
            restore()


if __name__ == "__main__":
    sys.exit(main())
