"""Command-line interface: ``influence <command>`` / ``python -m influence <command>``.

Exit codes (docs/failure-modes.md): 0 success; 2 bad usage or input, or a refusal — one line on
stderr, nothing written; 1 an error after work began — one line, the finished work kept in
``OUT.partial/`` for ``--resume``; 130 interrupted (Ctrl-C). No traceback unless ``--debug``; output
files are written atomically. CNTK's own start-up and device messages are hidden unless ``--debug``.

Without a UTF-8 locale (Python 3.6 then opens stdio as ASCII), the symbols of the messages are
printed in ASCII (:data:`ASCII_SYMBOLS`: ‖ → ||, λ → lambda, ᵀ → ^T, ...); files are UTF-8 always.
"""
from __future__ import print_function

import argparse
import codecs
import io
import json
import os
import platform
import re
import sys
import time

import numpy as np

from ._version import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Suffix of the metadata file ``influence train`` writes next to the model (loss, l2, arch, ...).
META_SUFFIX = ".json"


class UsageError(ValueError):
    """Bad command-line usage or input: reported in one line, exit code 2."""


# ---------------------------------------------------------------------------------------- locale
#: ASCII rendering of the non-ASCII symbols in messages and help, used when stdout/stderr cannot
#: encode them (no UTF-8 locale); any other character becomes '?'.
ASCII_SYMBOLS = {"‖": "||", "λ": "lambda", "ᵀ": "^T", "⁻": "^-", "¹": "1", "²": "^2", "⁴": "^4",
                 "·": "*", "×": "x", "≤": "<=", "≥": ">=", "≈": "~", "≪": "<<", "−": "-", "–": "-",
                 "—": "--", "→": "->", "…": "...", "∇": "grad ", "∂": "d", "Σ": "sum", "ε": "eps",
                 "θ": "theta", "ℓ": "l", "ˢ": "^s", "ᵢ": "_i"}
ASCII_ERRORS = "influence-ascii"


def _ascii_symbols(error):
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return ASCII_SYMBOLS.get(error.object[error.start], "?"), error.start + 1


codecs.register_error(ASCII_ERRORS, _ascii_symbols)


def _encodes_symbols(stream):
    try:
        "‖λᵀ⁻¹·≤".encode(getattr(stream, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def _ascii_safe_stdio():
    """Rewrap sys.stdout/sys.stderr that cannot encode the symbols so that they print ASCII
    renderings (:data:`ASCII_SYMBOLS`) instead of raising. Returns a function that undoes it."""
    swapped = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or _encodes_symbols(stream) or not hasattr(stream, "buffer"):
            continue
        stream.flush()
        safe = io.TextIOWrapper(stream.buffer, encoding=stream.encoding or "ascii", errors=ASCII_ERRORS,
                                line_buffering=True)
        setattr(sys, name, safe)
        swapped.append((name, stream, safe))

    def restore():
        for name, stream, safe in reversed(swapped):
            setattr(sys, name, stream)
            try:
                safe.flush()
                safe.detach()      # the buffer stays open for the original stream
            except (OSError, ValueError):
                pass
    return restore


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
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=old.encoding,
                               errors=getattr(old, "errors", None) or "strict")

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
    if os.path.isdir(path):
        raise UsageError("%s %s is a folder; pass the path of a file" % (flag, path))
    if not os.path.isfile(path):
        raise UsageError("%s %s: no such file; check the path" % (flag, path))
    try:
        open(path, "rb").close()
    except (OSError, IOError) as e:
        raise UsageError("%s %s cannot be read (%s); check its permissions"
                         % (flag, path, getattr(e, "strerror", None) or e))
    return path


def _check_numbers(args):
    """Refuse bad numeric flags before any work (and before OUT.partial/ is created)."""
    for flag, attr in (("--batch-size", "batch_size"), ("--chunk-size", "chunk_size")):
        value = getattr(args, attr, None)
        if value is not None and value < 1:
            raise UsageError("%s %d is not a positive integer; pass e.g. %s 1000" % (flag, value, flag))
    damping = getattr(args, "damping", None)
    if damping is not None and not (np.isfinite(damping) and damping >= 0):
        raise UsageError("--damping %r must be a finite number >= 0 (e.g. 0.01)" % damping)
    l2 = getattr(args, "l2", None)
    if l2 is not None and not (np.isfinite(l2) and l2 >= 0):
        raise UsageError("--l2 %r is negative or not finite; pass a value >= 0" % l2)


def _load_data(path, flag="--data"):
    """A .npz file without a model (``influence train``): a CTF file needs the model's dimensions."""
    from .data import is_ctf_path, load_npz
    _existing_file(path, flag)
    if is_ctf_path(path):
        raise UsageError("%s %s: 'influence train' reads .npz files only (a CTF file takes its dimensions "
                         "from a model); save the data with np.savez(path, x=..., y=...)" % (flag, path))
    try:
        return load_npz(path)
    except ValueError as e:
        raise UsageError("%s %s" % (flag, e))


def _ctf_options(args, model):
    """Parse and check --ctf-map STREAM=INPUT / --ctf-skip STREAM against the model's inputs."""
    maps, skips = getattr(args, "ctf_map", None) or [], getattr(args, "ctf_skip", None) or []
    mapping = {}
    for item in maps:
        stream, sep, name = item.partition("=")
        stream, name = stream.strip(), name.strip()
        if not sep or not stream or not name:
            raise UsageError("--ctf-map %r is not STREAM=INPUT; write e.g. --ctf-map features=x" % item)
        if stream in mapping:
            raise UsageError("--ctf-map %s is given twice; map each CTF stream once" % stream)
        mapping[stream] = name
    inputs = [v.name for v in model.inputs] + ([model.labels.name] if model.labels is not None else [])
    for stream, name in mapping.items():
        if name not in inputs:
            raise UsageError("--ctf-map %s=%s: the model has no input %r; its inputs are %s"
                             % (stream, name, name, ", ".join(repr(i) for i in inputs)))
    for stream in skips:
        if stream in mapping:
            raise UsageError("--ctf-skip %s: the stream is also mapped by --ctf-map %s=%s; drop one"
                             % (stream, stream, mapping[stream]))
    if maps or skips:
        from .data import is_ctf_path
        files = [getattr(args, a, None) for a in ("data", "train", "test")]
        if not any(f and is_ctf_path(f) for f in files):
            raise UsageError("%s apply to CTF data (.ctf or .txt files) only; none of the data files is one: "
                             "drop them" % ("--ctf-map" if maps else "--ctf-skip"))
    return {"mapping": mapping, "skip": list(skips)}


def _ctf_terms(text):
    """A CTF reader's advice in the flags of the CLI."""
    text = re.sub(r"mapping=\{'?([^:'}]+)'?: '?([^'}]+)'?\}", r"--ctf-map \1=\2", text)
    return re.sub(r"skip=\['([^']+)'\]", r"--ctf-skip \1", text)


def _read_meta(model_path):
    meta_path = model_path + META_SUFFIX
    if not os.path.isfile(meta_path):
        return {}
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:
        raise UsageError("%s is not valid JSON (%s); delete it or pass --loss/--l2 explicitly" % (meta_path, e))
    return meta if isinstance(meta, dict) else {}


def _load_model(args):
    """The CNTKModel for ``--model``, with loss and l2 from the flags or from the metadata that
    ``influence train`` wrote beside the model."""
    from .adapters.cntk import CNTKModel
    _check_numbers(args)
    _existing_file(args.model, "--model")
    meta = _read_meta(args.model)
    loss = args.loss or meta.get("loss") or "cross_entropy"
    l2 = args.l2 if args.l2 is not None else float(meta.get("l2", 0.0))
    if l2 < 0:
        raise UsageError("--l2 %r is negative; pass a value >= 0" % l2)
    try:
        model = CNTKModel.load(args.model, loss=None if loss == "none" else loss, output=args.output,
                               l2=l2, batch_size=args.batch_size)
    except ValueError as e:
        text = _first_line(e)
        raise UsageError(text if args.model in text else "--model %s: %s" % (args.model, text))
    args.ctf_options = _ctf_options(args, model)      # checked against the model before any data loads
    return model, meta


def _model_inputs(args):
    """Identity of the model file and its metadata for a job's fingerprint (--resume)."""
    from ._files import file_fingerprint
    meta = args.model + META_SUFFIX
    return {"model_file": file_fingerprint(args.model), "output": args.output,
            "model_metadata": file_fingerprint(meta) if os.path.isfile(meta) else None}


def _parse_arch(arch):
    """--arch → (kind, sizes): ("mlp", ()) for softmax, ("mlp", hidden sizes), ("cnn", channels)."""
    if arch == "softmax":
        return "mlp", ()
    for kind in ("mlp", "cnn"):
        if arch.startswith(kind + ":"):
            try:
                sizes = tuple(int(h) for h in arch[4:].split(",") if h.strip())
            except ValueError:
                sizes = ()
            if sizes and all(h > 0 for h in sizes):
                return kind, sizes
    raise UsageError("--arch %r is not 'softmax', 'mlp:H1,H2,...' (e.g. mlp:100,50) or 'cnn:C1,C2,...' "
                     "(e.g. cnn:8,16)" % arch)


def _common_flags():
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--quiet", action="store_true", help="no progress bars or progress messages on stderr")
    g.add_argument("--seed", type=int, default=0, help="random seed for everything random, e.g. the "
                   "lissa and lanczos solvers (default 0)")
    g.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")
    g.add_argument("--debug", action="store_true",
                   help="show tracebacks and CNTK's own messages on errors")
    return common


def _ctf_flags(p):
    g = p.add_argument_group("CTF data", "--train/--test/--data may be CNTK Text Format files (.ctf or .txt), "
                             "read lazily in chunks; their streams map to the model's inputs by name (the "
                             "label stream to the label input: 'labels', 'targets' with squared_error, or "
                             "the loss Function's label input)")
    g.add_argument("--ctf-map", action="append", metavar="STREAM=INPUT",
                   help="read CTF stream STREAM into model input INPUT (repeatable), e.g. --ctf-map label=labels")
    g.add_argument("--ctf-skip", action="append", metavar="STREAM",
                   help="ignore CTF stream STREAM (repeatable), e.g. a column the model has no input for")


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
    from .adapters.cntk import CNTKModel, build_cnn, build_network
    from .data import Sequences
    from .fitting import fit
    from ._files import atomic_path, check_writable, write_json
    kind, sizes = _parse_arch(args.arch)
    if args.l2 < 0:
        raise UsageError("--l2 %r is negative; pass a value >= 0" % args.l2)
    check_writable(args.out)
    timer = _Timer()
    with timer("load data"):
        data = _load_data(args.data)
    x, y = data.x, data.y
    if isinstance(x, (dict, Sequences)) or isinstance(y, Sequences):
        raise UsageError("--data %s holds %s; 'influence train' builds only dense MLP/CNN networks on one "
                         "array x: build and train that network with CNTK, then score it with --model"
                         % (args.data, "several inputs (x.<input name>)" if isinstance(x, dict)
                            else "variable-length sequences" if isinstance(x, Sequences) else "per-step labels"))
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
    if kind == "cnn" and len(shape) != 3:
        raise UsageError("--arch %s needs images of shape (n, C, H, W) but --data %s has x of shape %s; save "
                         "x reshaped (e.g. x.reshape(-1, 1, 8, 8)) or use --arch mlp:..."
                         % (args.arch, args.data, tuple(x.shape)))
    with timer("build"):
        if kind == "cnn":
            # max pooling has kinks like relu; with a smooth activation the whole network is kept smooth
            z = build_cnn(shape, n_out, channels=sizes, activation=args.activation,
                          pooling="max" if args.activation == "relu" else "average",
                          dtype=np.dtype(args.dtype), seed=args.seed)
        else:
            z = build_network(shape if len(shape) != 1 else shape[0], n_out, hidden=sizes,
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
        data = _load_split(args.data, "--data", model, args.ctf_options)
    _existing_file(args.vector, "--vector")
    with open(args.vector, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"PK":
        raise UsageError("--vector %s is an .npz archive; save the vector with np.save(path, v)" % args.vector)
    if magic != b"\x93NUMPY":
        raise UsageError("--vector %s is not a .npy file; save the vector with np.save(path, v)" % args.vector)
    try:
        v = np.load(args.vector, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UsageError("--vector %s is not a readable .npy file without pickled objects (%s)" % (args.vector, e))
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


def _load_split(path, flag, model, ctf_options):
    """--train/--test/--data for ``model``: a .npz file, or a CTF file (.ctf/.txt) read lazily with
    ``ctf_options`` ({"mapping", "skip"}: the command's --ctf-map/--ctf-skip, from _load_model)."""
    from .data import is_ctf_path
    name = "%s %s" % (flag, path)
    if is_ctf_path(path):
        from .ctf_data import load_ctf
        _existing_file(path, flag)
        try:
            data = load_ctf(path, model, mapping=ctf_options["mapping"], skip=ctf_options["skip"],
                            name=name)
        except ValueError as e:
            text = _ctf_terms(_first_line(e)).replace(os.path.abspath(path), path)
            raise UsageError("%s %s" % (flag, text) if text.startswith(path) else "%s %s: %s" % (flag, path, text))
    else:
        data = _load_data(path, flag)
        data.name = name
    try:
        return model.validate(data, name)
    except ValueError as e:
        raise UsageError(str(e))


def _check_indices(indices, n, flag, what):
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise UsageError("%s %d is out of range: %s has %d points (0..%d)" % (flag, bad[0], what, n, n - 1))
    return np.asarray(indices, dtype=np.int64)


#: ``score`` prints one inverse-HVP line per test point for the first SOLUTION_LINES of them (with
#: direct/lanczos the shared factorisation's HVPs are in the first one).
SOLUTION_LINES = 10

#: Help of ``score --test-index``; the grammar is :func:`_test_indices`.
TEST_INDEX_HELP = ("test points to explain (default: all): indices, inclusive ranges A-B (10-20 is 10, "
                   "11, ..., 20) and 'misclassified' (the test points whose predicted class differs from "
                   "their label), in any mix, e.g. --test-index 3 7 10-20 misclassified; repeats are "
                   "kept once, in the order given")


def _test_indices(items, test, model, batch_size):
    """The test points selected by ``--test-index`` items (see :data:`TEST_INDEX_HELP`)."""
    n = len(test)
    chosen = []
    for item in items:
        text = item.strip()
        m = re.match(r"^(\d+)\s*-\s*(\d+)$", text)
        if re.match(r"^-?\d+$", text):
            chosen.append(int(text))
        elif m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise UsageError("--test-index %s is an empty range (ranges are inclusive, low-high); pass %d-%d"
                                 % (text, b, a))
            chosen.extend(range(a, b + 1))
        elif text.lower() == "misclassified":
            chosen.extend(_misclassified(test, model, batch_size).tolist())
        else:
            raise UsageError("--test-index %r is not an index, an inclusive range A-B or 'misclassified'; "
                             "pass e.g. --test-index 3 7 10-20 misclassified" % item)
    idx = _check_indices(chosen, n, "--test-index", "the test set")
    _, first = np.unique(idx, return_index=True)
    idx = idx[np.sort(first)]
    if not idx.size:
        raise UsageError("--test-index misclassified selects nothing: the model predicts every one of the %d "
                         "test labels correctly; pass indices (e.g. --test-index 0 1 2)" % n)
    return idx


def _misclassified(test, model, batch_size):
    labels = _labels(test)
    if model.output is None or not model.n_classes or labels is None \
            or not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise UsageError("--test-index misclassified needs a classifier and integer class labels in --test "
                         "(y of shape (n,)); pass indices instead")
    predicted = np.argmax(model.predict(test.x, batch_size), axis=1)
    return np.flatnonzero(predicted != np.asarray(labels))


def _solver_options(args):
    """The solver options of --rtol/--maxiter/--seed/--k, one to one: rtol, maxiter, random_state, k."""
    opts = {"progress": not args.quiet, "random_state": args.seed}
    if args.rtol is not None:
        opts["rtol"] = args.rtol
    if args.maxiter is not None:
        if args.solver == "direct":
            raise UsageError("--maxiter %d does not apply to --solver direct (it factorises once); drop it "
                             "or pass --solver cg" % args.maxiter)
        opts["maxiter"] = args.maxiter
    if args.solver == "lanczos":
        opts["k"] = args.k
    return opts


#: numpy's import-time note about compiled extensions built against another numpy (scipy.stats on
#: numpy 1.19 under "always"): harmless and not about the user's run, so not printed.
_BINARY_NOISE = re.compile(r"numpy\.(ufunc|dtype|ndarray) size changed")


class _Warnings(object):
    """Collect warnings during a command and print each once, in one line, on stderr."""

    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        seen = set()
        for w in self.caught:
            text = "%s: %s" % (w.category.__name__, _first_line(w.message))
            if text not in seen and not issubclass(w.category, (DeprecationWarning, ImportWarning)) \
                    and not _BINARY_NOISE.match(str(w.message)):
                seen.add(text)
                print("influence: warning: %s" % text, file=sys.stderr)


def _labels(data):
    return data.y if data.y is not None and data.y.ndim == 1 else None


def _label_text(labels, i):
    return "-" if labels is None else str(labels[i].item() if hasattr(labels[i], "item") else labels[i])


def _partial_folder(args):
    """OUT.partial (MATRIX.partial with ``score --matrix`` and no --out; None without either); checks
    --out, --matrix and --resume before any work."""
    from ._files import check_writable
    matrix = getattr(args, "matrix", None)
    if matrix is not None:
        if not matrix.lower().endswith(".npy"):
            raise UsageError("--matrix %s: the score matrix is written as a .npy file; pass a path ending "
                             "in .npy" % matrix)
        if args.out and os.path.abspath(matrix) == os.path.abspath(args.out):
            raise UsageError("--matrix %s is also --out; give the matrix and the table two paths" % matrix)
        check_writable(matrix, "--matrix")
    if not args.out:
        if matrix is not None:
            return matrix + ".partial"
        if args.resume:
            raise UsageError("--resume needs --out (the partial results live in OUT.partial/)")
        return None
    check_writable(args.out)
    return args.out + ".partial"


def _job_inputs(args, extra):
    fp = {"command": args.command}
    fp.update(_model_inputs(args))
    fp.update(extra)
    return fp


def _write_scores(args, timer, idx, n, train, scores):
    from .scores import predicted_loss_change
    from ._files import write_table, write_json
    if not args.out:
        return
    delta = predicted_loss_change(scores, n)
    train_labels = _labels(train)
    with timer("write"):
        if args.out.lower().endswith(".json"):
            write_json(args.out, {"test_index": idx, "n_train": n, "train_label": train_labels,
                                  "influence": scores, "predicted_loss_change": delta,
                                  "definition": "influence = I_up,loss = -g_test^T H^-1 g_i; "
                                  "predicted_loss_change = -influence / n_train"})
        else:
            rows = ((int(t), i, _label_text(train_labels, i), scores[j, i], delta[j, i])
                    for j, t in enumerate(idx) for i in range(n))     # streamed, not a list
            write_table(args.out, ["test_index", "train_index", "train_label", "influence",
                                   "predicted_loss_change"], rows)


def cmd_score(args):
    from .jobs import ScoreJob
    from .scores import predicted_loss_change
    folder = _partial_folder(args)
    if args.cluster:
        from .cluster import check_reachable
        check_reachable(args.cluster)     # a bad spec or an unreachable scheduler fails before any work
    timer = _Timer()
    with timer("load model and data"):
        model, _ = _load_model(args)
        train = _load_split(args.train, "--train", model, args.ctf_options)
        test = _load_split(args.test, "--test", model, args.ctf_options)
    if args.test_index:
        idx = _test_indices(args.test_index, test, model, args.batch_size)
    else:
        idx = _check_indices(range(len(test)), len(test), "--test-index", "the test set")
    test_sel = test.subset(idx)
    n = len(train)
    many = args.matrix is not None or len(idx) > MATRIX_TEST_POINTS
    matrix_path = _matrix_path(args, len(idx)) if many else None
    groups = _class_labels(test_sel) if many else None
    if many and not args.test_index and args.solver != "auto":
        _cost_line(args, len(idx), n, matrix_path)
    client = executor = None
    try:
        if args.cluster:
            from .cluster import DaskExecutor, connect
            with timer("start/connect cluster (%s)" % args.cluster):
                client = connect(args.cluster)
            executor = DaskExecutor(client)

        def on_plan(plan):
            _log(args, "influence: " + str(plan))
            if many and not args.test_index:
                _cost_line(args, len(idx), n, matrix_path, plan)
        with _Warnings():
            job = ScoreJob(model, train, test_sel, folder=folder, resume=args.resume, solver=args.solver,
                           damping=args.damping, scoring=args.scoring, batch_size=args.batch_size,
                           chunk_size=args.chunk_size, check_optimum=not args.no_optimum_check,
                           progress=not args.quiet, executor=executor,
                           inputs=_job_inputs(args, {"test_index": idx.tolist()}),
                           solver_options=_solver_options(args), on_plan=on_plan,
                           aggregate=many, matrix=matrix_path, groups=groups)
            with job:
                result = job.run()
                solver_used = args.solver if result.plan is None else "auto: %s" % result.plan.method
                timer.steps.append(("test gradients + inverse HVP (%s)" % solver_used, job.seconds["s_test"]))
                timer.steps.append(("scoring (%s, %d training points)" % (args.scoring, n), job.seconds["scoring"]))
                scores, solutions, chunks = result.scores, result.solutions, result.chunks
                if many:
                    _write_aggregates(args, timer, train, result.aggregates)
                else:
                    _write_scores(args, timer, idx, n, train, scores)
    finally:
        if client is not None:
            client.close()
    if many:
        return _report_many(args, timer, model, train, test_sel, idx, result, matrix_path)
    delta = predicted_loss_change(scores, n)
    train_labels = _labels(train)
    plan = result.plan
    summary = {"n_train": n, "test_index": idx.tolist(), "solver": args.solver, "damping": args.damping,
               "plan": None if plan is None else dict(plan._asdict()),
               "scoring": args.scoring, "seconds": timer.as_dict(), "out": args.out,
               "chunks": chunks, "solutions": _solutions_json(solutions),
               "top": []}
    predicted = None
    if model.output is not None and model.n_classes:
        predicted = np.argmax(model.predict(test_sel.x, args.batch_size), axis=1)
    test_losses = model.per_example_losses(test_sel, args.batch_size)
    for j, t in enumerate(idx):
        order = np.argsort(-delta[j], kind="mergesort")
        helpful = [int(i) for i in order[:args.top] if delta[j, i] > 0]
        harmful = [int(i) for i in order[::-1][:args.top] if delta[j, i] < 0]
        summary["top"].append({"test_index": int(t), "test_loss": float(test_losses[j]),
                               "helpful": [[i, _label_text(train_labels, i), float(delta[j, i])] for i in helpful],
                               "harmful": [[i, _label_text(train_labels, i), float(delta[j, i])] for i in harmful]})
        if args.json:
            continue
        head = "test point %d: label %s" % (t, _label_text(_labels(test_sel), j))
        if predicted is not None:
            head += ", predicted %d" % predicted[j]
        print("%s, test loss %.4g" % (head, test_losses[j]))
        for title, chosen in (("most helpful (removing them would raise the test loss)", helpful),
                              ("most harmful (removing them would lower the test loss)", harmful)):
            print("  %s:" % title)
            print("    %5s %8s %7s %24s" % ("rank", "index", "label", "test-loss change if removed"))
            for r, i in enumerate(chosen):
                print("    %5d %8d %7s %+24.4e" % (r + 1, i, _label_text(train_labels, i), delta[j, i]))
            if not chosen:
                print("    (none)")
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return EXIT_OK
    _print_timing(timer, idx, solutions, plan)
    if args.out:
        print("saved %s (%d rows)" % (args.out, n * len(idx)))
    return EXIT_OK


def _print_timing(timer, idx, solutions, plan):
    print("timing:")
    print("\n".join(timer.lines()))
    if solutions is not None:
        print("  inverse HVP for %d test point%s: %d HVPs in all, %d of %d converged, largest relative "
              "residual %.2e%s" % (len(idx), "" if len(idx) == 1 else "s", sum(sl.n_hvp for sl in solutions),
                                   sum(bool(sl.converged) for sl in solutions), len(solutions),
                                   max(sl.residual for sl in solutions),
                                   "" if plan is None else " (%s chosen by --solver auto)" % plan.method))
        for t, sl in list(zip(idx, solutions))[:SOLUTION_LINES]:
            print("  inverse HVP for test point %d: %s, %d iterations, %d HVPs, relative residual %.2e"
                  % (t, "converged" if sl.converged else "NOT converged", sl.n_iter, sl.n_hvp, sl.residual))
        if len(solutions) > SOLUTION_LINES:
            print("  (one line per test point for the first %d; --json lists all)" % SOLUTION_LINES)
    else:
        print("  inverse HVP: reused from the checkpoint (--resume)")


def _solutions_json(solutions):
    return None if solutions is None else [
        {"converged": bool(sl.converged), "n_iter": int(sl.n_iter), "n_hvp": int(sl.n_hvp),
         "residual": float(sl.residual), "seconds": float(sl.seconds)} for sl in solutions]


# ------------------------------------------------------------------ score: many test points (matrix)
#: With more than this many test points (or with --matrix), ``score`` writes the whole score matrix
#: (test x train I_up,loss, float64) as a .npy file and reports aggregate rankings over the test
#: points (sum and mean per training point, overall and per class of the test points) instead of
#: one table per test point; the CSV/JSON --out then holds one row per training point.
MATRIX_TEST_POINTS = 10

#: Cost line (``score`` with the default "all" test points in matrix mode): one forward-difference
#: pass over the training rows (weights shifted, per-example losses) is estimated at this fraction of
#: the Hessian-vector product timed by the plan; measured 0.69 on the digits softmax regression with
#: CNTK (1500 training rows, 297 test points: 13.1 s of scoring for 1188 passes, one HVP 0.016 s).
FORWARD_PASS_PER_HVP = 0.7


def _matrix_path(args, m):
    """Where the (m x n) score matrix goes: --matrix, else --out with its extension replaced by .npy
    (scores.csv -> scores.npy); None without either (aggregates only)."""
    if args.matrix is not None:
        return args.matrix
    if not args.out:
        return None
    path = os.path.splitext(args.out)[0] + ".npy"
    if os.path.abspath(path) == os.path.abspath(args.out):
        raise UsageError("--out %s: with %d test points (more than %d) the score matrix is written to OUT with "
                         "the extension .npy, here --out itself; give --out a .csv or .json name, or pass "
                         "--matrix PATH" % (args.out, m, MATRIX_TEST_POINTS))
    return path


def _class_labels(test):
    """The test points' integer class labels (per-class aggregates), or None (regression, no labels)."""
    labels = _labels(test)
    if labels is None or not np.issubdtype(np.asarray(labels).dtype, np.integer):
        return None
    return np.asarray(labels)


def _cost_line(args, m, n, matrix_path, plan=None):
    """One line on stderr before a matrix run over the default "all" test points (printed also with
    --quiet; the run proceeds, it never waits for input)."""
    from .kernels import FORWARD_STENCIL
    text = "influence: cost: all %d test points (the default --test-index) x %d training points = %d scores" \
           % (m, n, m * n)
    if matrix_path:
        text += " (%.4g MB matrix in %s)" % (m * n * 8 / 1e6, matrix_path)
    if plan is not None:
        passes = 4 if "richardson" in FORWARD_STENCIL.values() else 2
        scoring = m * passes * FORWARD_PASS_PER_HVP * plan.hvp_seconds if args.scoring == "forward" else None
        text += "; estimated ~%.3g s for the inverse HVP (%s)" % (plan.seconds, plan.method)
        text += "" if scoring is None else " + ~%.3g s for scoring (%d forward passes per test point)" \
            % (scoring, passes)
    else:
        text += "; %d inverse-HVP solves with --solver %s" % (m, args.solver)
    print(text + "; proceeding (pass --test-index to explain fewer, e.g. --test-index misclassified)",
          file=sys.stderr)


def _aggregate_columns(agg):
    """(names, arrays) of the aggregate table: one row per training point."""
    delta_sum, delta_mean = agg.loss_change(agg.sum), agg.loss_change(agg.mean)
    rank = np.empty(agg.n_train, dtype=np.int64)
    rank[np.argsort(-delta_mean, kind="mergesort")] = np.arange(1, agg.n_train + 1)
    names = ["influence_sum", "influence_mean", "predicted_loss_change_sum", "predicted_loss_change_mean",
             "rank"]
    arrays = [agg.sum, agg.mean, delta_sum, delta_mean, rank]
    if agg.classes is not None:
        for c, label in enumerate(agg.classes):
            names += ["influence_mean_class_%s" % label, "predicted_loss_change_mean_class_%s" % label]
            arrays += [agg.class_mean[c], agg.loss_change(agg.class_mean[c])]
    return names, arrays


def _write_aggregates(args, timer, train, agg):
    """--out in matrix mode: one row per training point (streamed), written atomically."""
    from ._files import write_table
    if not args.out:
        return
    labels = _labels(train)
    names, arrays = _aggregate_columns(agg)
    with timer("write"):
        write_table(args.out, ["train_index", "train_label"] + names,
                    ((i, _label_text(labels, i)) + tuple(a[i] for a in arrays) for i in range(agg.n_train)))


def _ranked(agg, delta, labels, top):
    helpful, harmful = agg.ranking(delta, top)
    return {"helpful": [[i, _label_text(labels, i), float(delta[i])] for i in helpful],
            "harmful": [[i, _label_text(labels, i), float(delta[i])] for i in harmful]}


def _print_ranked(title, ranked):
    print(title)
    print("    %5s %8s %7s %20s   %8s %7s %20s" % ("rank", "helpful", "label", "mean change", "harmful",
                                                  "label", "mean change"))
    rows = max(len(ranked["helpful"]), len(ranked["harmful"]))
    for r in range(rows):
        left = ranked["helpful"][r] if r < len(ranked["helpful"]) else None
        right = ranked["harmful"][r] if r < len(ranked["harmful"]) else None
        print("    %5d %s   %s" % (r + 1, "%8d %7s %+20.4e" % tuple(left) if left else " " * 37,
                                    "%8d %7s %+20.4e" % tuple(right) if right else ""))
    if not rows:
        print("    (none)")


def _report_many(args, timer, model, train, test, idx, result, matrix_path):
    """Print (or --json) the aggregate rankings of a matrix run."""
    agg, n, m = result.aggregates, len(train), len(idx)
    labels = _labels(train)
    delta_mean = agg.loss_change(agg.mean)
    overall = _ranked(agg, delta_mean, labels, args.top)
    per_class = []
    if agg.classes is not None:
        for c, label in enumerate(agg.classes):
            entry = _ranked(agg, agg.loss_change(agg.class_mean[c]), labels, args.top)
            entry.update({"class": label.item(), "test_points": int(agg.counts[c])})
            per_class.append(entry)
    plan = result.plan
    summary = {"n_train": n, "test_index": idx.tolist(), "solver": args.solver, "damping": args.damping,
               "plan": None if plan is None else dict(plan._asdict()), "scoring": args.scoring,
               "seconds": timer.as_dict(), "out": args.out, "matrix": matrix_path,
               "matrix_shape": [m, n], "matrix_dtype": "float64", "chunks": result.chunks,
               "solutions": _solutions_json(result.solutions),
               "aggregate": {"helpful": overall["helpful"], "harmful": overall["harmful"],
                             "per_class": per_class if agg.classes is not None else None}}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return EXIT_OK
    print("%d test points: training points ranked by the mean over the test points of the test-loss change "
          "if removed (-I_up,loss/n; positive: it helped)" % m)
    _print_ranked("  overall:", overall)
    if agg.classes is None:
        print("  per class: skipped (the test labels are not integer classes)")
    for entry in per_class:
        _print_ranked("  test points of class %s (%d):" % (entry["class"], entry["test_points"]), entry)
    if matrix_path is None:
        print("  per test point: pass --out (or --matrix PATH) to save the whole score matrix")
    _print_timing(timer, idx, result.solutions, plan)
    if args.out:
        print("saved %s (%d rows: sums and means over the test points per training point)" % (args.out, n))
    if matrix_path:
        print("saved %s (%d x %d float64 I_up,loss: row j is the j-th selected test point, column i the "
              "training point i)" % (matrix_path, m, n))
    return EXIT_OK


def cmd_self(args):
    from .jobs import SelfInfluenceJob
    from ._files import write_table
    folder = _partial_folder(args)
    timer = _Timer()
    with timer("load model and data"):
        model, _ = _load_model(args)
        train = _load_split(args.train, "--train", model, args.ctf_options)
    n = len(train)
    options = {"k": args.k, "random_state": args.seed} if args.method == "lanczos" else {}
    labels = _labels(train)
    with _Warnings():
        job = SelfInfluenceJob(model, train, folder=folder, resume=args.resume, method=args.method,
                               damping=args.damping, batch_size=args.batch_size, chunk_size=args.chunk_size,
                               check_optimum=not args.no_optimum_check, progress=not args.quiet,
                               inputs=_job_inputs(args, {}), **options)
        with job:
            with timer("self-influence (%s)" % args.method):
                values = job.run()
            chunks = job.stats
            with timer("training losses"):
                losses = model.per_example_losses(train, args.batch_size)
            order = np.argsort(-values, kind="mergesort")
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(1, n + 1)
            if args.out:
                with timer("write"):
                    write_table(args.out, ["train_index", "label", "self_influence", "rank", "training_loss"],
                                ((i, _label_text(labels, i), values[i], int(rank[i]), losses[i])
                                 for i in range(n)))
    top = [[int(i), _label_text(labels, i), float(values[i]), float(losses[i])] for i in order[:args.top]]
    if args.json:
        print(json.dumps({"n_train": n, "method": args.method, "top": top, "seconds": timer.as_dict(),
                          "out": args.out, "chunks": chunks},
                         indent=2, sort_keys=True))
        return EXIT_OK
    print("most likely mislabeled training points (highest self-influence g_iᵀ H⁻¹ g_i):")
    print("  %5s %8s %7s %16s %14s" % ("rank", "index", "label", "self-influence", "training loss"))
    for r, (i, lab, v, l) in enumerate(top):
        print("  %5d %8d %7s %16.4e %14.4g" % (r + 1, i, lab, v, l))
    print("timing:")
    print("\n".join(timer.lines()))
    if args.out:
        print("saved %s (%d rows)" % (args.out, n))
    return EXIT_OK


def cmd_verify(args):
    from .loo import verify_loo
    timer = _Timer()
    with timer("load model and data"):
        model, _ = _load_model(args)
        train = _load_split(args.train, "--train", model, args.ctf_options)
        test = _load_split(args.test, "--test", model, args.ctf_options)
    idx = _check_indices(args.test_index, len(test), "--test-index", "the test set")
    if args.k < 1:
        raise UsageError("--k %d: pass at least 1 training point to retrain without" % args.k)
    with _Warnings():
        with timer("influence + %d leave-one-out retrainings" % min(args.k, len(train))):
            res = verify_loo(model, train, test.subset(idx), k=args.k, damping=args.damping,
                             random_state=args.seed, solver=args.solver, batch_size=args.batch_size)
    err = np.abs(res.predicted - res.actual)
    worst = np.argsort(-err, kind="mergesort")[:args.top]
    rows = [[int(res.indices[i]), float(res.predicted[i]), float(res.actual[i])] for i in worst]
    if args.json:
        print(json.dumps({"pearson": res.pearson, "spearman": res.spearman, "k": len(res.indices),
                          "indices": res.indices, "predicted": res.predicted, "actual": res.actual,
                          "seconds": timer.as_dict()}, indent=2, sort_keys=True,
                         default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
        return EXIT_OK
    print("leave-one-out check on %d training points (test points %s):" % (len(res.indices), idx.tolist()))
    print("  Pearson %.4f, Spearman %.4f between predicted and actual test-loss change" % (res.pearson, res.spearman))
    print("  worst disagreements:")
    print("    %8s %16s %16s" % ("index", "predicted", "actual"))
    for i, p, a in rows:
        print("    %8d %+16.4e %+16.4e" % (i, p, a))
    print("timing:")
    print("\n".join(timer.lines()))
    return EXIT_OK


# ---------------------------------------------------------------------------------------- evaluate
#: How each score method is named in the printed tables of ``influence evaluate``.
EVALUATE_NAMES = {"influence": "influence (H^-1)", "grad_dot": "grad-dot (H -> I)", "random": "random",
                  "self_influence": "self-influence", "training_loss": "training loss"}


def _evaluate_check(args):
    """Refuse bad flags of ``influence evaluate`` before any work (nothing written)."""
    from ._files import check_writable
    _check_numbers(args)
    for flag, attr, low in (("--subsets", "subsets", 2), ("--k", "k", 2), ("--maxiter", "maxiter", 1)):
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
            raise UsageError("--top %r: pass percentages in (0, 100], e.g. --top 5 10 20" % p)
    if getattr(args, "method", None) == "lanczos" and args.rank is None:
        raise UsageError("--method lanczos needs --rank K (e.g. --rank 50)")
    if args.plot:
        if not args.plot.lower().endswith(".png"):
            raise UsageError("--plot %s: the picture is a PNG; give a file name ending in .png" % args.plot)
        check_writable(args.plot, "--plot")
        from .evaluate import _pyplot
        _pyplot()                                   # matplotlib missing: refused before any work
    if args.out and not args.out.lower().endswith(".json"):
        raise UsageError("--out %s: the results are JSON; give a file name ending in .json" % args.out)
    return _partial_folder(args)


def _evaluate_print(args, res, timer):
    from .evaluate import METHODS
    if args.metric == "lds":
        print("linear datamodeling score (%s): %d subsets of %d of %d training points, %d test points"
              % (res.target, res.subsets.shape[0], res.subsets.shape[1], res.n_train, res.actual.shape[0]))
        print("  %-20s %10s %10s %12s" % ("scores", "mean LDS", "std err", "test points"))
        for m in METHODS:
            print("  %-20s %10.4f %10.4f %12d" % (EVALUATE_NAMES[m], res.mean[m], res.stderr[m],
                                                 np.isfinite(res.lds[m]).sum()))
        print("  retrainings: largest final ‖∇R_S‖ %.2e (--gtol %g)" % (np.max(res.grad_norms), res.gtol))
    elif args.metric == "loo":
        print("leave-one-out: %d training points removed one at a time, %d test points"
              % (len(res.indices), res.actual.shape[0]))
        print("  %-20s %10s %10s %16s %16s" % ("scores", "Pearson", "Spearman", "pooled Pearson",
                                               "pooled Spearman"))
        for m in METHODS:
            print("  %-20s %10.4f %10.4f %16.4f %16.4f" % (EVALUATE_NAMES[m], res.pearson[m], res.spearman[m],
                                                         res.pooled_pearson[m], res.pooled_spearman[m]))
        print("  (Pearson/Spearman of the test-loss change averaged over the test points; pooled: over "
              "every test point and removed point)")
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
    from . import evaluate
    from ._files import atomic_path, to_json, write_json
    folder = _evaluate_check(args)
    if getattr(args, "cluster", None):
        from .cluster import check_reachable
        check_reachable(args.cluster)
    timer = _Timer()
    with timer("load model and data"):
        model, _ = _load_model(args)
        train = _load_split(args.train, "--train", model, args.ctf_options)
        test = idx = None
        if args.metric != "mislabel":
            test = _load_split(args.test, "--test", model, args.ctf_options)
            items = args.test_index or ["0-%d" % (len(test) - 1)]
            idx = _test_indices(items, test, model, args.batch_size)
            test = test.subset(idx)
    common = dict(seed=args.seed, gtol=args.gtol, maxiter=args.maxiter, damping=args.damping,
                  batch_size=args.batch_size, folder=folder, resume=args.resume, progress=not args.quiet,
                  inputs=_job_inputs(args, {} if idx is None else {"test_index": idx.tolist()}))
    client = None
    try:
        with _Warnings():
            if args.metric == "mislabel":
                with timer("refit on flipped labels + rankings"):
                    res = evaluate.mislabel(model, train, fraction=args.fraction,
                                            top=tuple(p / 100.0 for p in args.top_percent), method=args.method,
                                            k=args.rank, **common)
            else:
                executor = None
                if args.cluster:
                    from .cluster import DaskExecutor, connect
                    with timer("start/connect cluster (%s)" % args.cluster):
                        client = connect(args.cluster)
                    executor = DaskExecutor(client)
                scoring = dict(solver=args.solver, scoring="gradient", check_optimum=not args.no_optimum_check,
                               chunk_size=args.chunk_size, executor=executor, **common)
                if args.metric == "lds":
                    with timer("scores + %d retrainings" % args.subsets):
                        res = evaluate.lds(model, train, test, subsets=args.subsets, alpha=args.alpha,
                                           target=args.target, **scoring)
                else:
                    with timer("scores + %d leave-one-out retrainings" % min(args.k, len(train))):
                        res = evaluate.loo(model, train, test, k=args.k, **scoring)
    finally:
        if client is not None:
            client.close()
    if args.out:
        with timer("write"):
            body = evaluate.summary(res, details=True)
            body.update(command="evaluate " + args.metric, seed=args.seed,
                        test_index=None if idx is None else idx.tolist())
            write_json(args.out, body)
    if args.plot:
        with timer("plot"):
            with atomic_path(args.plot) as tmp:
                evaluate.plot(res, tmp)
    if args.json:
        out = evaluate.summary(res)
        out.update(seed=args.seed, out=args.out, plot=args.plot, timing=timer.as_dict(),
                   test_index=None if idx is None else idx.tolist())
        print(to_json(out))                   # NaN (e.g. an LDS without finite values) as null
        return EXIT_OK
    _evaluate_print(args, res, timer)
    return EXIT_OK


def _evaluate_no_metric(args):
    raise UsageError("influence evaluate: choose a metric: lds, loo or mislabel (e.g. 'influence evaluate lds "
                     "--model M --train T.npz --test Q.npz'; see 'influence evaluate --help')")


def _evaluate_parsers(sub, common):
    """``influence evaluate {lds,loo,mislabel}``: a parser with one sub-command per metric."""
    p = sub.add_parser("evaluate", help="how good are the scores? LOO, LDS, mislabel "
                       "detection, against baselines",
                       description="Judge the influence scores by retraining, next to baselines (grad-dot: "
                       "H replaced by the identity; random; training loss for mislabel): 'loo' (leave-one-out "
                       "for many test points), 'lds' (linear datamodeling score over random subsets), "
                       "'mislabel' (finding flipped labels). See docs/evaluation.md.")
    metrics = p.add_subparsers(dest="metric", metavar="METRIC", parser_class=_Parser)
    p.set_defaults(func=_evaluate_no_metric)

    def flags(q, test=True, chunks=True):
        _model_flags(q)
        q.add_argument("--train", required=True, metavar="T.npz", help="training data (.npz with x, y, or .ctf)")
        if test:
            q.add_argument("--test", required=True, metavar="Q.npz", help="test data (.npz with x, y, or .ctf)")
            q.add_argument("--test-index", nargs="+", metavar="I", help=TEST_INDEX_HELP)
        _ctf_flags(q)
        q.add_argument("--damping", type=float, default=0.0, help="λ added to the Hessian (default 0)")
        q.add_argument("--gtol", type=float, default=1e-6, help="retrain (and re-tighten the reference optimum) "
                       "until max |∂R/∂w| <= GTOL (default 1e-6)")
        q.add_argument("--maxiter", type=int, default=2000, help="L-BFGS iterations per retraining at most "
                       "(default 2000)")
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
        q.set_defaults(func=cmd_evaluate)

    q = metrics.add_parser("lds", parents=[common], help="linear datamodeling score over random subsets",
                           description="Linear datamodeling score (Park et al. 2023): retrain on SUBSETS "
                           "random subsets of floor(ALPHA*n) training points (warm start, mean loss over the "
                           "subset + the same L2), and correlate (Spearman, per test point) the measured test "
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
                           "half at random) and compare the actual test-loss change of every test point with "
                           "the prediction -I/n of the influence scores and of the baselines.")
    flags(q)
    q.add_argument("--k", type=int, default=20, help="training points to retrain without (default 20)")
    q = metrics.add_parser("mislabel", parents=[common], help="find flipped labels by self-influence",
                           description="Flip a fraction of the training labels (--seed), refit, and rank the "
                           "training points by self-influence g_iᵀ H⁻¹ g_i, by ‖g_i‖² (grad-dot), by training "
                           "loss and at random: the share of flipped labels in the top x% and the area under "
                           "the detection curve.")
    flags(q, test=False, chunks=False)
    q.add_argument("--fraction", type=float, default=0.1, help="fraction of labels to flip (default 0.1)")
    q.add_argument("--top", type=float, nargs="+", default=[5, 10, 20, 30], dest="top_percent", metavar="PCT",
                   help="report the share found in the top PCT%% of each ranking (default 5 10 20 30)")
    q.add_argument("--method", choices=["exact", "lanczos"], default="exact",
                   help="self-influence: exact (dense Hessian) or lanczos (rank --rank) (default exact)")
    q.add_argument("--rank", type=int, metavar="K", help="rank of --method lanczos (e.g. 50)")
    return p


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
    p.add_argument("--maxiter", type=int, default=2000, help="L-BFGS iterations at most (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B", help="examples per pass (default 2048)")
    p.add_argument("--out", required=True, metavar="MODEL", help="where to save the model (e.g. model.cntk)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("hvp", parents=[common], help="one Hessian-vector product of the training objective",
                       description="Compute (H + damping·I)·v for the mean training objective of a model "
                       "on a dataset, by central finite differences, and report its time.")
    _model_flags(p)
    p.add_argument("--data", required=True, metavar="D.npz", help=".npz with x and y, or a .ctf file")
    _ctf_flags(p)
    p.add_argument("--vector", required=True, metavar="v.npy", help="flat vector (.npy), one entry per parameter")
    p.add_argument("--damping", type=float, default=0.0, help="λ added to the Hessian (default 0)")
    p.add_argument("--out", metavar="hv.npy", help="save H·v here (.npy)")
    p.set_defaults(func=cmd_hvp)

    def score_flags(p, solver=True):
        _model_flags(p)
        p.add_argument("--train", required=True, metavar="T.npz", help="training data (.npz with x, y, or .ctf)")
        _ctf_flags(p)
        p.add_argument("--damping", type=float, default=0.0, help="λ added to the Hessian: (H + λI)⁻¹ (default 0)")
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
            p.add_argument("--maxiter", type=int, help="iterations of the solver at most (default: the solver's)")

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
    p.add_argument("--k", type=int, default=50, help="rank of the lanczos solver (default 50)")
    p.add_argument("--top", type=int, default=10, help="rows of each ranked table (default 10)")
    p.add_argument("--out", metavar="scores.csv|scores.json", help="write every score here; with more than %d "
                   "test points (or --matrix): one row per training point with the sums and means over the "
                   "test points (overall and per class), and the whole score matrix in OUT.npy (scores.csv -> "
                   "scores.npy)" % MATRIX_TEST_POINTS)
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
    p.add_argument("--k", type=int, default=50, help="rank for --method lanczos (default 50)")
    p.add_argument("--top", type=int, default=20, help="rows of the ranked table (default 20)")
    p.add_argument("--out", metavar="ranking.csv", help="write every training point's self-influence here")
    p.set_defaults(func=cmd_self)

    p = sub.add_parser("verify", parents=[common], help="leave-one-out check of the influence predictions",
                       description="Retrain without k training points (the most influential and random "
                       "ones), measure the actual change of the test loss and compare with the prediction.")
    _model_flags(p)
    p.add_argument("--train", required=True, metavar="T.npz", help="training data (.npz with x, y)")
    p.add_argument("--test", required=True, metavar="Q.npz", help="test data (.npz with x, y)")
    p.add_argument("--test-index", type=int, nargs="+", required=True, metavar="I", help="test point(s)")
    p.add_argument("--k", type=int, default=30, help="training points to retrain without (default 30)")
    _ctf_flags(p)
    p.add_argument("--damping", type=float, default=0.0, help="λ added to the Hessian (default 0)")
    p.add_argument("--solver", choices=["cg", "lissa", "direct", "lanczos"], default="cg", help="default cg")
    p.add_argument("--top", type=int, default=5, help="worst disagreements to print (default 5)")
    p.set_defaults(func=cmd_verify)

    _evaluate_parsers(sub, common)
    return parser


def _first_line(e):
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    return text.splitlines()[0] if text else type(e).__name__


#: API keywords in library messages and the flags that set them (score/verify; self: see _cli_terms).
_FLAG_OF = [(r"\bdamping\s*=\s*", "--damping "), (r"\bdamping\s*>", "--damping >"),
            (r"\brtol\s*=\s*", "--rtol "), (r"\bmaxiter\s*=\s*", "--maxiter "), (r"\bdepth\s*=\s*", "--maxiter "),
            (r"\brandom_state\s*=\s*", "--seed "), (r"\bchunk_size\s*=\s*", "--chunk-size "),
            (r"\bbatch_size\s*=\s*", "--batch-size "), (r"\bk\s*=\s*", "--k "), (r"\bk\s*<<", "--k <<"),
            (r"\bresume=True\b", "--resume"), (r"\bl2\s*=\s*", "--l2 "), (r"\bscoring\s*=\s*'?(\w+)'?", r"--scoring \1")]


def _cli_terms(text, args):
    """A library message in the flags of this command: ``method='lanczos'`` → ``--solver lanczos``,
    ``damping=`` → ``--damping``, ... For ``self`` (flag --method exact|lanczos), advice to use another
    solver for the dense Hessian becomes ``--method lanczos --k 50``."""
    command = getattr(args, "command", None)
    dense_refusal = re.search(r"the dense path holds", text)
    if command == "self":
        if dense_refusal:
            text = "--method exact: %s; use --method lanczos --k 50 (a rank-50 approximation) instead" \
                   % re.split(r";\s*use\b", text)[0]
        text = re.sub(r"\bmethod\s*=\s*'(exact|lanczos)'", r"--method \1", text)
    elif dense_refusal:
        text = "--solver direct: %s; use --solver cg (or --solver lanczos --k K, K < d - 1) instead" \
               % re.split(r";\s*use\b", text)[0]
    else:
        text = re.sub(r"\b(?:method|solver)\s*=\s*'(\w+)'", r"--solver \1", text)
        text = re.sub(r"\(or '(\w+)' with", r"(or --solver \1 with", text)
    for pattern, flag in _FLAG_OF:
        text = re.sub(pattern, flag, text)
    return text


def _job_failed_text(e):
    from ._files import InputChangedError
    cause = _first_line(e.cause)
    folder = os.path.relpath(e.folder)
    if isinstance(e.cause, InputChangedError):
        return "%s (the partial results in %s/ belong to the old input)" % (cause, folder)
    if not isinstance(e.cause, ValueError):
        cause = "%s: %s" % (type(e.cause).__name__, cause)
    return "%s; the finished work is kept in %s/: rerun the same command with --resume to continue" % (cause, folder)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    restore_stdio = _ascii_safe_stdio()
    restore = None if debug else _stderr_hidden()
    args = None
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
            print("influence: error: %s" % _cli_terms(_first_line(e), args), file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("influence: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:   # after work began, a bug or a CNTK failure: still one line, unless --debug
            if debug:
                raise
            from .jobs import JobFailed
            if isinstance(e, JobFailed):
                print("influence: error: %s" % _cli_terms(_job_failed_text(e), args), file=sys.stderr)
            else:
                print("influence: internal error: %s: %s (rerun with --debug for the traceback)"
                      % (type(e).__name__, _first_line(e)), file=sys.stderr)
            return EXIT_FAILURE
    finally:
        if restore is not None:
            restore()
        restore_stdio()


if __name__ == "__main__":
    sys.exit(main())
