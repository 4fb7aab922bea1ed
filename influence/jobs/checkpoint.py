"""The checkpoint folder every resumable job uses, and the :class:`Job` life cycle the jobs share.

A :class:`Checkpoint` is a folder of finished chunks and named arrays identified by a fingerprint of
everything the results depend on (:func:`data_identity`, :func:`model_identity`,
:func:`plain_options` build its parts). Rules (docs/failure-modes.md): the folder holds a lock (pid +
host) while a job uses it; a second job on it is refused naming the holder, a stale lock (a dead pid
on this host) is taken over with a :class:`StaleLockWarning`. A refusal writes nothing: a folder this
job created that holds nothing worth resuming is removed. An error after work was saved raises
:class:`JobFailed` (the folder is kept for ``resume=True``), except after a solver refusal
(:data:`REFUSALS`), which discards the work this job saved and propagates as it is.
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

from ..common.errors import InfluenceError, param
from ..common.files import check_unchanged, file_fingerprint, write_json, write_npy
from .._version import __version__
from ..data import Sequences
from ..common.interrupt import is_interrupt
from ..adapters.base import weights_digest
from ..scoring.chunks import DEFAULT_CHUNK_SIZE, chunk_bounds
from ..solvers import DivergenceError, NonPositiveCurvatureError

#: Errors that refuse the problem as posed (another damping or solver is needed, hence another
#: fingerprint): the work this job saved before them cannot be resumed and is discarded.
REFUSALS = (NonPositiveCurvatureError, DivergenceError)

__all__ = ["Checkpoint", "PrefixedCheckpoint", "Job", "JobFailed", "LockedError", "StaleLockWarning", "REFUSALS",
           "data_identity", "model_identity", "plain_options", "array_digest", "damping_setting"]


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


class PrefixedCheckpoint(object):
    """The chunks of one part of a job under a name prefix in its :class:`Checkpoint` (beside other
    parts' chunks and arrays): ``load_chunk``/``save_chunk`` as :func:`influence.scoring.chunks.run_chunks`
    uses them, stored as the arrays ``PREFIX-START-STOP``; ``stats`` is the checkpoint's."""

    def __init__(self, checkpoint, prefix):
        self.checkpoint, self.prefix = checkpoint, prefix
        self.stats = checkpoint.stats

    def load_chunk(self, a, b):
        return self.checkpoint.load_array("%s-%08d-%08d" % (self.prefix, a, b))

    def save_chunk(self, a, b, values):
        self.checkpoint.save_array("%s-%08d-%08d" % (self.prefix, a, b), values)


# ------------------------------------------------------------------------------------ fingerprints
def array_digest(a):
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
        return {"values": _part_digest(a.values), "lengths": array_digest(a.lengths)}
    if scipy.sparse.issparse(a):
        a = a.tocsr()
        return {"shape": list(a.shape), "data": array_digest(a.data), "indices": array_digest(a.indices),
                "indptr": array_digest(a.indptr)}
    return array_digest(a)


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
