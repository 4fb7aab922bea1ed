"""What every ``influence`` command shares: exit codes, the ASCII fallback of the symbols, the
parser class, logging and timing, loading models and data files, the common flags, test-point
selection, solver options, warnings, partial-result folders."""
from __future__ import print_function

import argparse
import codecs
import contextlib
import io
import json
import os
import re
import sys
import time

import numpy as np

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Exit code of a command whose solver ended above its tolerance (see check_converged).
EXIT_NOT_CONVERGED = 3
#: stdout was closed by its reader (``influence score ... | head``): quiet, as a process killed by SIGPIPE.
EXIT_BROKEN_PIPE = 141

#: Suffix of the metadata file ``influence train`` writes next to the model (loss, l2, arch, ...).
META_SUFFIX = ".json"


from .flags import API_ONLY, COMMAND_FLAGS, FLAGS, cli_spelling, cli_text, first_line  # noqa: F401
from .vocabulary import VOCABULARY, VOCABULARY_DEFAULTS, vocab_flag  # noqa: F401


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


def ascii_safe_stdio():
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
class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + message. A negative multiple of the mean
    eigenvalue ("--damping -1x") is read as a value, as a negative number is, so that its check names it."""

    def __init__(self, *args, **kwargs):
        argparse.ArgumentParser.__init__(self, *args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d+x?$|^-\d*\.\d+x?$")

    def error(self, message):
        raise UsageError("%s: %s (see '%s --help')" % (self.prog, message, self.prog))


def stderr_hidden():
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


def log(args, message):
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


class Timer(object):
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


def existing_file(path, flag):
    if os.path.isdir(path):
        raise UsageError("%s %s is a folder; pass the path of a file" % (flag, path))
    if not os.path.exists(path):
        raise UsageError("%s %s: no such file; check the path" % (flag, path))
    if not os.path.isfile(path):
        raise UsageError("%s %s is not a regular file (a device, pipe or socket); pass the path of a saved file"
                         % (flag, path))
    try:
        open(path, "rb").close()
    except (OSError, IOError) as e:
        raise UsageError("%s %s cannot be read (%s); check its permissions"
                         % (flag, path, getattr(e, "strerror", None) or e))
    return path


def check_numbers(args):
    """Refuse bad numeric flags before any work (and before OUT.partial/ is created)."""
    for flag, attr in (("--batch-size", "batch_size"), ("--chunk-size", "chunk_size")):
        value = getattr(args, attr, None)
        if value is not None and value < 1:
            raise UsageError("%s %d is not a positive integer; pass e.g. %s 1000" % (flag, value, flag))
    for flag, attr in (("--threads", "threads"), ("--rank", "rank"), ("--retrainings", "retrainings"),
                       ("--solver-maxiter", "solver_maxiter"), ("--lbfgs-maxiter", "lbfgs_maxiter"), ("--top", "top")):
        value = getattr(args, attr, None)
        if isinstance(value, int) and value < 1:
            raise UsageError("%s %d is not a positive integer; pass e.g. %s %s"
                             % (flag, value, flag, VOCABULARY_DEFAULTS.get(flag) or 100))
    damping = getattr(args, "damping", None)
    if damping is not None and not isinstance(damping, str) and not (np.isfinite(damping) and damping >= 0):
        raise UsageError("--damping %r must be a finite number >= 0 (e.g. 0.01)" % damping)
    l2 = getattr(args, "l2", None)
    if l2 is not None and not (np.isfinite(l2) and l2 >= 0):
        raise UsageError("--l2 %r is negative or not finite; pass a value >= 0" % l2)


def load_data_file(path, flag="--data"):
    """A .npz file without a model (``influence train``): a CTF file needs the model's dimensions."""
    from ..data import is_ctf_path, load_npz
    existing_file(path, flag)
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
        from ..data import is_ctf_path
        files = [getattr(args, a, None) for a in ("data", "train", "test")]
        if not any(f and is_ctf_path(f) for f in files):
            raise UsageError("%s apply to CTF data (.ctf or .txt files) only; none of the data files is one: "
                             "drop them" % ("--ctf-map" if maps else "--ctf-skip"))
    return {"mapping": mapping, "skip": list(skips)}


def _read_meta(model_path):
    from ..adapters.cntk.model import read_metadata
    try:
        return read_metadata(model_path)
    except ValueError as e:
        raise UsageError(str(e).replace("pass loss= and l2= explicitly", "pass --loss/--l2 explicitly"))


def load_model(args):
    """The CNTKModel for ``--model``, with loss and l2 from the flags or from the metadata that
    ``influence train`` wrote beside the model."""
    from ..adapters.cntk import CNTKModel
    check_numbers(args)
    existing_file(args.model, "--model")
    meta = _read_meta(args.model)
    loss = args.loss or meta.get("loss") or "cross_entropy"
    l2 = args.l2 if args.l2 is not None else float(meta.get("l2", 0.0))
    if l2 < 0:
        raise UsageError("--l2 %r is negative; pass a value >= 0" % l2)
    try:
        model = CNTKModel.load(args.model, loss=None if loss == "none" else loss, output=args.output,
                               l2=l2, batch_size=args.batch_size)
    except ValueError as e:
        text = first_line(e)
        raise UsageError(text if args.model in text else "--model %s: %s" % (args.model, text))
    args.ctf_options = _ctf_options(args, model)      # checked against the model before any data loads
    return model, meta


def _model_inputs(args):
    """Identity of the model file and its metadata for a job's fingerprint (--resume)."""
    from ..common.files import file_fingerprint
    meta = args.model + META_SUFFIX
    return {"model_file": file_fingerprint(args.model), "output": args.output,
            "model_metadata": file_fingerprint(meta) if os.path.isfile(meta) else None}


def parse_arch(arch):
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


def common_flags(seed=True):
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--quiet", action="store_true", help="no progress bars or progress messages on stderr")
    if seed:
        g.add_argument("--seed", type=int, default=0, help="random seed for everything random, e.g. the "
                       "lissa and lanczos solvers (default 0)")
    g.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")
    vocab_flag(g, "--threads", "CPU threads of CNTK's math in this process; Dask workers and parallel "
                "retrainings always use 1 (measured: one thread per process is as fast alone and several "
                "times faster next to other runs; docs/performance.md)", type=int, metavar="N")
    g.add_argument("--debug", action="store_true",
                   help="show tracebacks and CNTK's own messages on errors")
    return common


def ctf_flags(p):
    g = p.add_argument_group("CTF data", "--train/--test/--data may be CNTK Text Format files (.ctf or .txt), "
                             "read lazily in chunks; their streams map to the model's inputs by name (the "
                             "label stream to the label input: 'labels', 'targets' with squared_error, or "
                             "the loss Function's label input)")
    g.add_argument("--ctf-map", action="append", metavar="STREAM=INPUT",
                   help="read CTF stream STREAM into model input INPUT (repeatable), e.g. --ctf-map label=labels")
    g.add_argument("--ctf-skip", action="append", metavar="STREAM",
                   help="ignore CTF stream STREAM (repeatable), e.g. a column the model has no input for")


def model_flags(p, need_labels=True):
    p.add_argument("--model", required=True, metavar="M", help="model file saved by Function.save "
                   "(e.g. by 'influence train')")
    vocab_flag(p, "--output-node", "name of the node to use (network output, or a loss node with --loss "
                "none) when the file holds several", dest="output", old=("--output",), metavar="NAME")
    p.add_argument("--loss", choices=["cross_entropy", "binary_cross_entropy", "squared_error", "none"],
                   help="per-example loss on the network output ('none': the model is already a loss); "
                   "default: from the model's .json metadata, else cross_entropy")
    p.add_argument("--l2", type=float, help="L2 coefficient λ of the training objective (λ/2)‖w‖²; "
                   "default: from the model's .json metadata, else 0")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="examples per forward/backward pass (default 2048)")


def load_split(path, flag, model, ctf_options):
    """--train/--test/--data for ``model``: a .npz file, or a CTF file (.ctf/.txt) read lazily with
    ``ctf_options`` ({"mapping", "skip"}: the command's --ctf-map/--ctf-skip, from load_model)."""
    from ..data import is_ctf_path
    name = "%s %s" % (flag, path)
    if is_ctf_path(path):
        from ..data import load_ctf
        existing_file(path, flag)
        try:
            data = load_ctf(path, model, mapping=ctf_options["mapping"], skip=ctf_options["skip"],
                            name=name)
        except ValueError as e:
            text = cli_text(e).replace(os.path.abspath(path), path)
            raise UsageError("%s %s" % (flag, text) if text.startswith(path) else "%s %s: %s" % (flag, path, text))
    else:
        data = load_data_file(path, flag)
        data.name = name
    try:
        return model.validate(data, name)
    except ValueError as e:
        raise UsageError(str(e))


def check_indices(indices, n, flag, what):
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise UsageError("%s %d is out of range: %s has %d points (0..%d)" % (flag, bad[0], what, n, n - 1))
    return np.asarray(indices, dtype=np.int64)


#: ``score`` prints one inverse-HVP line per test point for the first SOLUTION_LINES of them (with
#: direct/lanczos the shared factorisation's HVPs are in the first one).
SOLUTION_LINES = 10

#: Help of ``score --test-index``; the grammar is :func:`parse_test_indices`.
TEST_INDEX_HELP = ("test points to explain (default: all): indices, inclusive ranges A-B (10-20 is 10, "
                   "11, ..., 20) and 'misclassified' (the test points whose predicted class differs from "
                   "their label), in any mix, e.g. --test-index 3 7 10-20 misclassified; repeats are "
                   "kept once, in the order given")


def parse_test_indices(items, test, model, batch_size):
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
    idx = check_indices(chosen, n, "--test-index", "the test set")
    _, first = np.unique(idx, return_index=True)
    idx = idx[np.sort(first)]
    if not idx.size:
        raise UsageError("--test-index misclassified selects nothing: the model predicts every one of the %d "
                         "test labels correctly; pass indices (e.g. --test-index 0 1 2)" % n)
    return idx


def _misclassified(test, model, batch_size):
    labels = data_labels(test)
    if model.output is None or not model.n_classes or labels is None \
            or not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise UsageError("--test-index misclassified needs a classifier and integer class labels in --test "
                         "(y of shape (n,)); pass indices instead")
    predicted = np.argmax(model.predict(test.x, batch_size), axis=1)
    return np.flatnonzero(predicted != np.asarray(labels))


def solver_options(args):
    """The solver options of --rtol/--solver-maxiter/--seed/--rank, one to one: rtol, maxiter,
    random_state, k."""
    opts = {"progress": not args.quiet, "random_state": args.seed}
    if args.rtol is not None:
        opts["rtol"] = args.rtol
    if args.solver_maxiter is not None:
        if args.solver == "direct":
            raise UsageError("--solver-maxiter %d does not apply to --solver direct (it factorises once); drop "
                             "it or pass --solver cg" % args.solver_maxiter)
        opts["maxiter"] = args.solver_maxiter
    if args.solver == "lanczos":
        opts["k"] = args.rank
    return opts


#: numpy's import-time note about compiled extensions built against another numpy (scipy.stats on
#: numpy 1.19 under "always"): harmless and not about the user's run, so not printed.
_BINARY_NOISE = re.compile(r"numpy\.(ufunc|dtype|ndarray) size changed")


class Warnings(object):
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
            text = "%s: %s" % (w.category.__name__, cli_text(w.message))
            if text not in seen and not issubclass(w.category, (DeprecationWarning, ImportWarning)) \
                    and not _BINARY_NOISE.match(str(w.message)):
                seen.add(text)
                print("influence: warning: %s" % text, file=sys.stderr)


def data_labels(data):
    return data.y if data.y is not None and data.y.ndim == 1 else None


def label_text(labels, i):
    return "-" if labels is None else str(labels[i].item() if hasattr(labels[i], "item") else labels[i])


#: What ``--out`` of each command can write, by extension (the extension decides the format).
OUT_FORMATS = {"score": (".csv", ".json", ".npy"), "self": (".csv", ".json", ".npy"), "hvp": (".npy",),
               "evaluate": (".json",), "verify": (".csv", ".json"), "factors": (".npz",)}


def out_extension(args, command=None):
    """The format of ``--out`` (its extension: ".csv", ".json" or ".npy"); an extension the command
    cannot write is a usage error naming the ones it can. None without --out."""
    path = getattr(args, "out", None)
    if not path:
        return None
    command = command or args.command
    formats = OUT_FORMATS[command]
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        names = formats[0] if len(formats) == 1 else "%s or %s" % (", ".join(formats[:-1]), formats[-1])
        raise UsageError("--out %s: 'influence %s' writes %s files (the extension decides the format); give "
                         "a name ending in %s, e.g. --out %s" % (path, command, names, names,
                                                                 os.path.splitext(path)[0] + formats[0]))
    return ext


def partial_folder(args):
    """OUT.partial (MATRIX.partial with ``score --matrix`` and no --out; None without either); checks
    --out, --matrix and --resume before any work."""
    from ..common.files import check_writable
    matrix = getattr(args, "matrix", None)
    if matrix is not None:
        if not matrix.lower().endswith(".npy"):
            raise UsageError("--matrix %s: the score matrix is written as a .npy file; pass a path ending "
                             "in .npy" % matrix)
        if args.out and os.path.abspath(matrix) == os.path.abspath(args.out):
            raise UsageError("--matrix %s is also --out; give the matrix and the table two paths" % matrix)
        if args.out and args.out.lower().endswith(".npy"):
            raise UsageError("--out %s is the score matrix already (.npy); drop --matrix, or give --out a .csv "
                             "or .json name for the table" % args.out)
        check_writable(matrix, "--matrix")
    if not args.out:
        if matrix is None:
            if args.resume:
                raise UsageError("--resume needs --out (the partial results live in OUT.partial/)")
            return None
        folder = matrix + ".partial"
    else:
        check_writable(args.out)
        folder = args.out + ".partial"
    if args.resume and not os.path.isfile(os.path.join(folder, "manifest.json")):
        print("influence: --resume: %s/ holds nothing to resume; starting" % folder,
              file=sys.stderr)
    return folder


def job_inputs(args, extra):
    """A job's extra fingerprint: the command, the model file, --factors (its content fingerprint) and
    --preconditioner when given, and ``extra``."""
    from ..common.files import file_fingerprint
    fp = {"command": args.command}
    fp.update(_model_inputs(args))
    if getattr(args, "factors", None):
        fp["factors"] = file_fingerprint(args.factors)
    if (getattr(args, "preconditioner", None) or "none") != "none":
        fp["preconditioner"] = args.preconditioner
    fp.update(extra)
    return fp


def print_timing(timer, idx, solutions, plan):
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


def solutions_json(solutions):
    return None if solutions is None else [
        {"converged": bool(sl.converged), "n_iter": int(sl.n_iter), "n_hvp": int(sl.n_hvp),
         "residual": float(sl.residual), "seconds": float(sl.seconds)} for sl in solutions]


def check_cluster(args):
    """--cluster: a bad spec or an unreachable scheduler fails here, before any work."""
    if getattr(args, "cluster", None):
        from ..dask.executor import check_reachable
        check_reachable(args.cluster)


@contextlib.contextmanager
def cluster_executor(args, timer):
    """The :class:`~influence.dask.executor.DaskExecutor` of --cluster (None without it), connected
    under ``timer``; its client is closed afterwards, whatever happens."""
    if not getattr(args, "cluster", None):
        yield None
        return
    from ..dask.executor import DaskExecutor, connect
    with timer("start/connect cluster (%s)" % args.cluster):
        client = connect(args.cluster)
    try:
        yield DaskExecutor(client)
    finally:
        client.close()
