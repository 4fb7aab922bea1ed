"""Resumable scoring jobs: a checkpoint folder, a lock, and a fingerprint of every input.

:class:`ScoreJob` (influence of every training point on test points) and
:class:`SelfInfluenceJob` run :func:`influence.influence_scores` / :func:`influence.self_influence`
chunk by chunk (:func:`influence.scoring.chunks.run_chunks`) with a :class:`Checkpoint` folder: every
finished chunk, the s_test vectors, the forward-difference steps, the dense Hessian or the Lanczos
eigenpairs are saved as they are computed. A later job with the same fingerprint and
``resume=True`` loads them instead of recomputing, so an interrupted job (Ctrl-C, kill, a crash)
continues where it stopped and produces exactly the numbers of an uninterrupted run.

The fingerprint holds everything the numbers depend on: the model's weights (a hash), loss and l2,
the content fingerprint of the training file (:func:`file_fingerprint`: size, modification time and
a hash of sampled bytes) or a hash of in-memory rows, the test rows, the solver and its options,
damping, scoring, batch and chunk sizes, plus what the caller adds (``inputs``, e.g. the model
file's fingerprint). The training file is checked again before results are returned: a file
rewritten under a running job is refused naming it.

Rules (docs/failure-modes.md): the folder holds a lock (pid + host) while a job uses it; a second
job on it is refused naming the holder, a stale lock (a dead pid on this host) is taken over with a
:class:`StaleLockWarning`. A refusal writes nothing: a folder this job created that holds nothing
worth resuming is removed. An error after work was saved raises :class:`JobFailed` (the folder is
kept for ``resume=True``), except after a solver refusal (:data:`REFUSALS`), which discards the
work this job saved and propagates as it is.
"""
import errno
import hashlib
import json
import os
import shutil
import socket
import time
import warnings

import numpy as np
import scipy.sparse

from .common.errors import InfluenceError, param
from .common.files import InputChangedError, check_unchanged, file_fingerprint, write_json, write_npy
from ._version import __version__
from .data import Sequences
from .common.interrupt import is_interrupt
from .adapters.base import weights_digest
from .scoring.chunks import CHUNK_RETRIES, DEFAULT_CHUNK_SIZE, ChunkRetryWarning, chunk_bounds, run_chunks
from .scoring.choice import check_curvature, curvature_setting, is_ekfac
from .scoring.matrix import MatrixCheckpoint, ScoreAggregates
from .scoring.scores import executor_hessian, influence_scores, s_test, self_influence
from .solvers import DivergenceError, NonPositiveCurvatureError

#: Errors that refuse the problem as posed (another damping or solver is needed, hence another
#: fingerprint): the work this job saved before them cannot be resumed and is discarded.
REFUSALS = (NonPositiveCurvatureError, DivergenceError)

__all__ = ["ScoreJob", "ScoreResult", "SelfInfluenceJob", "Checkpoint", "JobFailed", "LockedError",
           "StaleLockWarning", "InputChangedError", "REFUSALS", "run_chunks", "chunk_bounds", "file_fingerprint", "DEFAULT_CHUNK_SIZE",
           "CHUNK_RETRIES", "ChunkRetryWarning", "damping_setting"]


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


class LockedError(ValueError):
    """The checkpoint folder is in use by another running job."""


class StaleLockWarning(UserWarning):
    """The lock of a job that no longer runs (dead pid on this host) was taken over."""


class JobFailed(RuntimeError):
    """An error after work was saved: ``folder`` keeps it for a resumed run; ``cause`` is the error."""

    def __init__(self, cause, folder):
        text = str(cause).strip().splitlines()
        self.cause, self.folder = cause, folder
        RuntimeError.__init__(self, "%s: %s; the finished work is kept in %s (resume=True continues it)"
                              % (type(cause).__name__, text[0] if text else "", folder))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno != errno.ESRCH       # EPERM: it exists, owned by someone else
    return True


class Checkpoint(object):
    """A folder of finished chunks and named arrays for one job, identified by ``fingerprint`` (a
    JSON-able dict of everything the results depend on), locked while this object holds it.

    Opening takes the lock (``lock.json``: pid, host, start time): a live holder raises
    :class:`LockedError` naming it; a dead holder on this host is replaced (a
    :class:`StaleLockWarning` names it). ``resume=True`` reuses the chunks of a folder whose
    fingerprint matches and refuses (ValueError naming the difference) one that does not;
    ``resume=False`` empties the folder at the first save (not before: a refusal leaves it alone).
    ``release()`` drops the lock and removes a folder this object created when it holds nothing
    worth resuming; ``remove()`` deletes the folder (after success).
    """

    MANIFEST = "manifest.json"
    LOCK = "lock.json"

    def __init__(self, folder, fingerprint, resume=False):
        self.folder = os.path.abspath(folder)
        self.fingerprint = fingerprint
        #: {"chunks", "computed", "resumed"} summed over the run_chunks calls using this checkpoint.
        self.stats = {"chunks": 0, "computed": 0, "resumed": 0}
        self.key = _digest(fingerprint)
        self._lock_path = os.path.join(self.folder, self.LOCK)
        self._prepared = self._usable = False
        self.created = not os.path.isdir(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        stale = self._lock()
        try:
            self._usable = resume and self._matches()
        except BaseException:
            self.release()
            raise
        self._prepared = self._usable
        if stale is not None:
            warnings.warn("%s was locked by pid %s on %s (started %s), which no longer runs; taking it over"
                          % (self.folder, stale.get("pid"), stale.get("host"), stale.get("started")),
                          StaleLockWarning, stacklevel=2)

    # -- the lock
    def _lock(self):
        """Create lock.json exclusively; return the stale holder replaced, if any."""
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        stale = None
        for _ in range(2):
            try:
                fd = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _pid_alive(holder["pid"]):
                    stale = holder
                    os.remove(self._lock_path)
                    continue
                raise LockedError("%s is in use by pid %s on %s (started %s); wait for that run to end, "
                                  "or if it is gone, delete %s"
                                  % (self.folder, holder.get("pid"), holder.get("host"),
                                     holder.get("started"), self._lock_path))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.holder = me
            return stale
        raise LockedError("%s: another run took the lock at the same time; wait for it to end" % self.folder)

    def _holder(self):
        try:
            with open(self._lock_path, encoding="utf-8") as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _matches(self):
        manifest = os.path.join(self.folder, self.MANIFEST)
        if not os.path.isfile(manifest):
            return False
        with open(manifest, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("key") != self.key:
            before = old.get("fingerprint", {})
            diff = sorted(k for k in set(before) | set(self.fingerprint) if before.get(k) != self.fingerprint.get(k))
            raise ValueError("cannot resume from %s: the job differs in %s; rerun without --resume "
                             "to start afresh" % (self.folder, ", ".join(diff) or "its inputs"))
        return True

    def release(self, discard=False):
        """Drop the lock. Returns True when the folder is kept (it holds work to resume), False when
        it was removed (this object created it, or emptied it, and nothing was saved; or
        ``discard=True`` and all it holds was saved by this object)."""
        fresh = self.created or (self._prepared and not self._usable)
        if fresh and (discard or not self.has_work()):
            self.remove()
            return False
        if os.path.isfile(self._lock_path) and self._holder().get("pid") == os.getpid():
            os.remove(self._lock_path)
        return self.has_work()

    def has_work(self):
        """True when the folder holds results of this job (chunks or arrays) that a resume would use."""
        return self._prepared and os.path.isdir(self.folder) and any(
            f.endswith(".npy") and ".tmp-" not in f for f in os.listdir(self.folder))

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- contents
    def _prepare(self):
        """Before the first save of a fresh job: empty the folder (but the lock), write the manifest."""
        if self._prepared:
            return
        for name in os.listdir(self.folder):
            if name != self.LOCK:
                path = os.path.join(self.folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        write_json(os.path.join(self.folder, self.MANIFEST), {"key": self.key, "fingerprint": self.fingerprint})
        self._prepared = True

    def prepared_folder(self):
        """The folder, emptied and given its manifest first when this is a fresh job (as before any
        save): for files a job builds there itself (the memory-mapped score matrix)."""
        self._prepare()
        return self.folder

    def _chunk_path(self, start, stop):
        return os.path.join(self.folder, "chunk-%012d-%012d.npy" % (start, stop))

    def load_chunk(self, start, stop):
        path = self._chunk_path(start, stop)
        if not self._prepared or not os.path.isfile(path):
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError):   # a damaged file: recompute that chunk
            return None

    def save_chunk(self, start, stop, values):
        self._prepare()
        write_npy(self._chunk_path(start, stop), values)

    def save_array(self, name, values):
        self._prepare()
        write_npy(os.path.join(self.folder, name + ".npy"), values)

    def load_array(self, name):
        path = os.path.join(self.folder, name + ".npy")
        return np.load(path, allow_pickle=False) if self._prepared and os.path.isfile(path) else None


# ------------------------------------------------------------------------------------ fingerprints
def _array_digest(a):
    """sha256 of an array's dtype, shape and bytes, block by block (memory-mapped arrays too)."""
    h = hashlib.sha256(("%s %s" % (a.dtype.str, a.shape)).encode())
    step = max(1, (1 << 24) // max(1, a[:1].nbytes))
    for start in range(0, len(a), step):
        h.update(np.ascontiguousarray(a[start:start + step]).tobytes())
    return h.hexdigest()[:32]


def data_identity(data):
    """The fingerprint of a Dataset: its file's :func:`file_fingerprint` when it is a whole file
    (``data.source``), else a hash of its rows."""
    if getattr(data, "source", None) is not None:
        return dict(file_fingerprint(data.source), rows=len(data), **_source_options(data))
    return {"rows": len(data), "x": _part_digest(data.x),
            "y": None if data.y is None else _part_digest(data.y)}


def _part_digest(a):
    """:func:`_array_digest` of what a Dataset holds: an array, a CSR matrix, Sequences or a dict."""
    if isinstance(a, dict):
        return {str(k): _part_digest(v) for k, v in sorted(a.items())}
    if isinstance(a, Sequences):
        return {"values": _part_digest(a.values), "lengths": _array_digest(a.lengths)}
    if scipy.sparse.issparse(a):
        a = a.tocsr()
        return {"shape": list(a.shape), "data": _array_digest(a.data), "indices": _array_digest(a.indices),
                "indptr": _array_digest(a.indptr)}
    return _array_digest(a)


def _source_options(data):
    """{"options": how the file is read (a CTF file's mapping/skip)} when it matters, else {}."""
    options = getattr(data, "source_options", None)
    return {"options": options} if options else {}


def model_identity(model):
    """Class, size and a hash of the current weights of ``model``."""
    return {"class": type(model).__name__, "n_params": int(model.n_params), "weights": weights_digest(model)}


def plain_options(options):
    """Solver options as a fingerprint records them: plain values as they are, an object with a
    ``fingerprint()`` (an :class:`influence.EKFAC` preconditioner) by it, anything else by its repr."""
    def plain(v):
        if isinstance(v, (int, float, str, bool, type(None))):
            return v
        return v.fingerprint() if callable(getattr(v, "fingerprint", None)) else repr(v)
    return {k: plain(v) for k, v in sorted(options.items())}


# ------------------------------------------------------------------------------------ jobs
class Job(object):
    """Checkpoint life cycle shared by the jobs: open (lock) → compute → check inputs → finish."""

    kind = None

    def __init__(self, model, train, folder, resume, chunk_size, progress, inputs):
        self.model, self.train = model, train
        self.folder, self.resume = folder, resume
        self.chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
        chunk_bounds(1, self.chunk_size)       # refuse a bad chunk size before anything runs
        self.progress = progress
        self.inputs = dict(inputs or {})
        self.checkpoint = None
        self._in_context = False
        if resume and folder is None:
            raise InfluenceError("%s needs %s (where the finished chunks are kept)" % (param("resume", True), param("folder")),
                                 parameter="folder")
        self._train_fp = file_fingerprint(train.source) if getattr(train, "source", None) else None

    def fingerprint(self):
        """Everything the results depend on (a JSON-able dict)."""
        train = data_identity(self.train) if self._train_fp is None else \
            dict(self._train_fp, rows=len(self.train), **_source_options(self.train))
        fp = {"kind": self.kind, "version": __version__, "model": model_identity(self.model),
              "loss": getattr(self.model, "loss_name", None), "l2": getattr(self.model, "l2", None),
              "train": train, "chunk_size": self.chunk_size}
        fp.update(self._settings())
        fp.update(self.inputs)
        return fp

    def _open(self):
        if self.folder is not None and self.checkpoint is None:
            self.checkpoint = Checkpoint(self.folder, self.fingerprint(), resume=self.resume)

    def _fail(self, error):
        """After ``error``: release the checkpoint; raise JobFailed when it keeps work to resume."""
        ckpt, self.checkpoint = self.checkpoint, None
        refusal = isinstance(error, REFUSALS)
        if ckpt is not None and ckpt.release(discard=refusal) and not refusal \
                and not isinstance(error, SystemExit) and not is_interrupt(error):
            raise JobFailed(error, ckpt.folder) from error

    def _finish(self):
        ckpt, self.checkpoint = self.checkpoint, None
        if ckpt is not None:
            ckpt.remove()

    def _checked_compute(self):
        result = self._compute()
        if self._train_fp is not None:
            check_unchanged(self._train_fp, "the training data")
        return result

    def run(self):
        """Compute (resuming from the folder when ``resume=True``) and return the result. Outside a
        ``with`` block the folder is removed after success; inside, when the block ends without error
        (so that the caller can save the result first)."""
        if self._in_context:
            return self._checked_compute()
        self._open()
        try:
            result = self._checked_compute()
        except BaseException as e:
            self._fail(e)
            raise
        self._finish()
        return result

    def __enter__(self):
        self._open()
        self._in_context = True
        return self

    def __exit__(self, kind, error, tb):
        self._in_context = False
        if kind is None:
            self._finish()
        else:
            self._fail(error)
        return False

    @property
    def stats(self):
        """{"chunks", "computed", "resumed"} of the run (None without a folder)."""
        return None if self.checkpoint is None else dict(self.checkpoint.stats)


def damping_setting(damping):
    """A job's damping as recorded in its fingerprint: None (the curvature's default), "auto" or a float."""
    if damping is None or (isinstance(damping, str) and damping == "auto"):
        return damping
    return float(damping)


class ScoreResult(object):
    """``scores``: (n_test, n_train) I_up,loss (None with ``aggregate``/``matrix``); ``solutions``:
    the solver's Solution per test point (None when s_test came from the checkpoint); ``chunks``:
    {"chunks", "computed", "resumed"}; ``plan``: the :class:`influence.solvers.Plan` of
    ``solver="auto"`` (None otherwise, or when s_test came from the checkpoint); ``aggregates``: the
    :class:`influence.scoring.matrix.ScoreAggregates` (with ``aggregate``/``matrix``, else None);
    ``matrix``: the path the score matrix file is moved to when the job finishes (else None)."""

    def __init__(self, scores, solutions, chunks, plan=None, aggregates=None, matrix=None):
        self.scores, self.solutions, self.chunks, self.plan = scores, solutions, chunks, plan
        self.aggregates, self.matrix = aggregates, matrix


class ScoreJob(Job):
    """Resumable :func:`influence.influence_scores`: I_up,loss of every training point on each test
    point, s_test and the chunks checkpointed in ``folder``.

    ``model``, ``train``, ``test`` (a Dataset or (x, y), one row per test point), ``solver``,
    ``damping``, ``scoring``, ``batch_size``, ``check_optimum`` as in
    :func:`influence.influence_scores`; ``solver_options``: a dict of the solver's keywords (e.g.
    ``{"rtol": 1e-6, "progress": True}``); ``progress``: a bar over the chunks; ``executor`` e.g.
    ``influence.dask.executor.DaskExecutor(client)`` (it is checked before the solve, and gets the training
    file's fingerprint taken here). ``folder``: the checkpoint folder (None: no checkpoint);
    ``resume``: reuse a matching folder; ``inputs``: extra JSON-able identity for the fingerprint.
    ``solver="auto"``: the plan (:func:`influence.solvers.plan_solver`) is made before the solve and
    handed to ``on_plan(plan)`` (e.g. to print it) before the long work starts.
    ``run()`` returns a :class:`ScoreResult` with ``scores`` always 2-D (n_test, n_train).

    Many test points: ``aggregate=True`` keeps no matrix in memory and returns instead the running
    sums over the test points (``result.aggregates``, a :class:`influence.scoring.matrix.ScoreAggregates`;
    per class of ``groups``, one label per test point, when given). ``matrix``: a path: the whole
    (n_test, n_train) float64 matrix is also written there as ``.npy``, chunk by chunk into a
    memory-mapped file in ``folder`` (a :class:`influence.scoring.matrix.MatrixCheckpoint`: resumable, the
    same bits as an uninterrupted run), moved to ``matrix`` when the job finishes (the end of the
    ``with`` block); it needs ``folder`` and implies ``aggregate``. Peak memory then holds a chunk
    (n_test × ``chunk_size`` scores) and a few (n_train,) vectors, not the matrix."""

    kind = "score"

    def __init__(self, model, train, test, folder=None, resume=False, solver="cg", damping=None,
                 scoring="forward", batch_size=None, chunk_size=None, check_optimum=True, progress=False,
                 executor=None, inputs=None, solver_options=None, on_plan=None, aggregate=False, matrix=None,
                 groups=None, curvature="auto", on_curvature=None):
        train = model.validate(train, getattr(train, "name", "training data"))
        if matrix is not None and folder is None:
            raise ValueError("matrix=%r needs folder= (the matrix file is built there and moved to %s at "
                             "the end)" % (matrix, matrix))
        Job.__init__(self, model, train, folder, resume, chunk_size, progress, inputs)
        self.test = model.validate(test, getattr(test, "name", "test data"))
        self.matrix = None if matrix is None else os.path.abspath(matrix)
        self.aggregate = bool(aggregate) or matrix is not None
        self.groups = groups
        self._matrix_store = None
        self.on_plan = on_plan
        self.solver, self.damping, self.scoring = solver, damping_setting(damping), scoring
        self.curvature, self.on_curvature = check_curvature(curvature), on_curvature
        #: the STest of the last run's solve (None when s_test came from the checkpoint)
        self.s_test = None
        self.batch_size, self.check_optimum = batch_size, check_optimum
        self.executor, self.solver_options = executor, dict(solver_options or {})
        if executor is not None and hasattr(executor, "check"):
            if hasattr(executor, "data_fingerprint") and self._train_fp is not None:
                executor.data_fingerprint = self._train_fp
            executor.check(model, train)

    def _settings(self):
        return {"test": data_identity(self.test), "solver": self.solver, "damping": self.damping,
                "curvature": curvature_setting(self.curvature), "scoring": self.scoring, "batch_size": self.batch_size, "matrix_file": self.matrix is not None,
                "solver_options": plain_options(dict(self.solver_options, progress=None))}

    def _finish(self):
        store, self._matrix_store = self._matrix_store, None
        if store is not None and self.checkpoint is not None:
            store.publish(self.matrix)
        Job._finish(self)

    def _compute(self):
        ckpt = self.checkpoint
        self._matrix_store = None
        solutions = plan = None
        t0 = time.perf_counter()
        vectors = ckpt.load_array("s_test") if ckpt is not None else None
        if vectors is None:
            on_workers = self.executor if not is_ekfac(self.curvature) and self.curvature != "fisher" else None
            with executor_hessian(on_workers, self.model, self.train, self.batch_size) as hessian:
                st = s_test(self.model, self.train, self.test, self.solver, self.damping, self.batch_size,
                            hessian=hessian, check_optimum=self.check_optimum, curvature=self.curvature,
                            on_curvature=self.on_curvature, on_plan=self.on_plan, **self.solver_options)
            vectors, solutions, plan = st.vectors, st.solutions, st.plan
            self.s_test = st
            if ckpt is not None:
                ckpt.save_array("s_test", vectors)
        t1 = time.perf_counter()
        aggregates = store = None
        if self.aggregate:
            aggregates = ScoreAggregates(len(self.test), len(self.train), self.groups)
            if self.matrix is not None:
                store = MatrixCheckpoint(ckpt, len(self.test), len(self.train))
        scores = influence_scores(self.model, self.train, self.test, scoring=self.scoring, s=vectors,
                                  batch_size=self.batch_size, check_optimum=False,
                                  chunk_size=self.chunk_size, checkpoint=ckpt if store is None else store,
                                  progress=self.progress, executor=self.executor,
                                  sink=None if aggregates is None else aggregates.add)
        #: seconds of the last run: {"s_test", "scoring"}
        self.seconds = {"s_test": t1 - t0, "scoring": time.perf_counter() - t1}
        self._matrix_store = store
        return ScoreResult(None if scores is None else np.atleast_2d(scores), solutions, self.stats, plan,
                           aggregates, self.matrix)


class SelfInfluenceJob(Job):
    """Resumable :func:`influence.self_influence` (arguments as there; ``folder``, ``resume``,
    ``inputs`` as in :class:`ScoreJob`). ``run()`` returns the (n,) self-influence values."""

    kind = "self"

    def __init__(self, model, train, folder=None, resume=False, method="exact", k=None, damping=None,
                 batch_size=None, chunk_size=None, check_optimum=True, progress=False, inputs=None,
                 curvature="auto", on_curvature=None, **lanczos_options):
        train = model.validate(train, getattr(train, "name", "training data"))
        Job.__init__(self, model, train, folder, resume, chunk_size, progress, inputs)
        self.method, self.k, self.damping = method, k, damping_setting(damping)
        self.curvature, self.on_curvature = check_curvature(curvature), on_curvature
        self.batch_size, self.check_optimum = batch_size, check_optimum
        self.lanczos_options = lanczos_options

    def _settings(self):
        return {"method": self.method, "k": self.k, "damping": self.damping,
                "curvature": curvature_setting(self.curvature),
                "batch_size": self.batch_size,
                "solver_options": plain_options(dict(self.lanczos_options, progress=None))}

    def _compute(self):
        return self_influence(self.model, self.train, self.method, self.k, self.damping, self.batch_size,
                              check_optimum=self.check_optimum, chunk_size=self.chunk_size,
                              checkpoint=self.checkpoint, progress=self.progress, curvature=self.curvature,
                              on_curvature=self.on_curvature, **self.lanczos_options)
