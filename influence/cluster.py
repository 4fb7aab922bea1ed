"""Scoring on a Dask cluster (``dask[distributed]``): the embarrassingly parallel part of
:func:`influence.influence_scores` — g_iᵀ s_test for every training row — spread over worker
processes on one machine (``local:N``) or many (``tcp://host:port``, a running ``dask-scheduler``),
with ``executor=DaskExecutor(client)`` (or ``influence.jobs.ScoreJob(..., executor=...)``).

What travels, and how often (see docs/cluster.md):

- s_test, the forward-difference steps and the model are computed/held on the client. They travel
  as ONE job object, submitted once as a task of its own; each worker fetches it once (from the
  scheduler's task or from a peer) and keeps it in memory while the run lasts. A CNTK model travels
  as the bytes of its ``Function.save`` file (the current weights), a NumPy reference model as its
  pickle. Each worker process loads the model once per job content (a module-level cache keyed by a
  hash of the model bytes and options), not once per task, and checks that the loaded weights are
  bit-identical to the client's.
- The training data does not travel: every task opens the ``.npz`` or ``.ctf`` file the client
  loaded it from (:attr:`influence.data.Dataset.source`, a path all workers must be able to read,
  e.g. a shared file system) with :func:`influence.load_data` (``.npz`` memory-mapped; ``.ctf``
  indexed and read lazily with the client's ``mapping``/``skip``, ``Dataset.source_options``; once
  per worker) and reads its chunk of rows. Before that, every task checks that the file still has the content fingerprint
  (size, modification time, sampled bytes) the client took: a file rewritten meanwhile is refused.
  Workers cache the loaded data per (model, path, fingerprint), so a long-lived ``tcp://`` worker
  never serves an old file's rows.
- Each task returns its chunk's scores (m × chunk floats); :func:`influence.chunks.run_chunks`
  saves them to the checkpoint as they arrive (``--resume`` never recomputes a finished chunk) and
  assembles them in row order. With the same chunk size the result is identical to the bit to the
  single-process run: same chunk bounds, same batches within a chunk, same steps.

A worker that dies mid-run loses nothing: the scheduler reruns its tasks elsewhere (and ``retries``
reruns tasks that raised), the job object is recomputed from its task if every copy was lost.
"""
import collections
import hashlib
import os
import pickle
import re
import socket
import tempfile
import threading
import uuid
import warnings

import numpy as np

from ._files import check_unchanged, file_fingerprint
from .adapters.base import weights_digest
from .adapters.cntk import CNTKModel
from .ctf_data import load_data
from .kernels import ForwardStep, chunk_scores

__all__ = ["connect", "check_reachable", "import_distributed", "parse_spec", "check_inputs",
           "DaskExecutor", "DEFAULT_RETRIES"]

#: Extra attempts of a task that raised (a worker dying is handled by the scheduler on top of that).
DEFAULT_RETRIES = 3
#: Models / datasets kept per worker process (least recently used dropped first).
_CACHE_SIZE = 4

_INSTALL = ("pip install 'dask[distributed]' (on Python 3.6: pip install 'dask[distributed]==2021.3.0'; "
            "or the extra: pip install 'cntk-influence[cluster]')")


def import_distributed():
    """Import ``distributed``, or raise ImportError saying how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import distributed
    except ImportError as e:
        raise ImportError("scoring on a cluster needs Dask (%s); %s" % (str(e).splitlines()[0], _INSTALL))
    return distributed


_LOCAL = re.compile(r"^local:(\d+)$")
_ADDRESS = re.compile(r"^(tcp|tls)://[^\s:/]+:\d+$")


def parse_spec(spec):
    """``"local:N"`` → ("local", N); ``"tcp://host:port"`` (or tls://) → ("address", spec)."""
    text = str(spec).strip()
    m = _LOCAL.match(text)
    if m and int(m.group(1)) >= 1:
        return "local", int(m.group(1))
    if _ADDRESS.match(text):
        return "address", text
    raise ValueError("cluster %r is not 'local:N' (N >= 1 worker processes on this machine) or "
                     "'tcp://HOST:PORT' (a running dask-scheduler); e.g. local:2 or tcp://10.0.0.5:8786"
                     % (spec,))


def check_reachable(spec, timeout=5.0):
    """Refuse (one-line ValueError) a ``tcp://HOST:PORT`` spec whose scheduler does not accept a TCP
    connection within ``timeout`` seconds: a quick check to run before any expensive work
    (``local:N`` and ``tls://`` specs pass unchecked)."""
    kind, value = parse_spec(spec)
    if kind != "address" or not value.startswith("tcp://"):
        return
    host, port = value[len("tcp://"):].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, IOError) as e:
        raise ValueError("cannot reach the Dask scheduler at %s (%s); start it with 'dask-scheduler' and "
                         "workers with 'dask-worker %s' (see docs/cluster.md)"
                         % (value, getattr(e, "strerror", None) or str(e) or type(e).__name__, value))


def connect(spec, timeout=30):
    """A ``distributed.Client`` for ``spec``: ``"local:N"`` starts a LocalCluster of N worker
    processes with one thread each (no dashboard, no memory limit: the memory-mapped training data
    counts as resident memory), closed with the client; ``"tcp://host:port"`` connects to a running
    scheduler (``dask-scheduler``, with ``dask-worker`` processes started in the CNTK environment).
    Use it as a context manager or call ``client.close()``."""
    kind, value = parse_spec(spec)
    distributed = import_distributed()
    if kind == "local":
        scratch = os.path.join(tempfile.gettempdir(), "influence-dask")   # not ./dask-worker-space
        # workers inherit this process's environment, OMP_NUM_THREADS included: CNTK's kernels can
        # differ in the last bits between native thread counts, so a cluster run is bit-identical to
        # a single-process run in the same environment (docs/cluster.md: export OMP_NUM_THREADS=1)
        return distributed.Client(n_workers=value, threads_per_worker=1, processes=True,
                                  dashboard_address=None, memory_limit=0, local_directory=scratch)
    try:
        return distributed.Client(value, timeout=timeout)
    except (OSError, IOError) as e:   # includes TimeoutError
        raise ValueError("cannot reach the Dask scheduler at %s (%s); start it with 'dask-scheduler' and "
                         "workers with 'dask-worker %s' (see docs/cluster.md)"
                         % (value, str(e).splitlines()[0] if str(e) else type(e).__name__, value))


# ------------------------------------------------------------------------------------ client side
def check_inputs(client, model, train):
    """Raise a one-line ValueError unless ``train`` comes from a file and ``model`` can be shipped."""
    if getattr(train, "source", None) is None:
        raise ValueError("scoring on a cluster needs training data the workers can read themselves: "
                         "load it with influence.load_npz(path) or influence.load_ctf(path, model) from "
                         "a path all workers can read (in-memory arrays are not shipped)")
    if not os.path.isfile(train.source):
        raise ValueError("the training data file %s no longer exists; reload it with influence.load_data"
                         % train.source)
    if not hasattr(client, "submit"):
        raise ValueError("DaskExecutor(%r): not a distributed.Client; pass influence.cluster.connect('local:2') "
                         "or distributed.Client('tcp://host:port')" % (client,))
    if not _is_cntk(model):
        _model_spec(model)     # a CNTKModel always ships (Function.save); anything else must pickle
    else:
        _exclude_names(model)


def _exclude_names(model):
    """The parameter names a CNTKModel was built with ``exclude=`` (None without); a predicate cannot
    travel to the workers and is refused."""
    exclude = getattr(model, "exclude", None)
    if exclude is None:
        return None
    if callable(exclude):
        raise ValueError("the model was built with a predicate exclude=%r, which cannot be sent to the cluster "
                         "workers; build it with exclude= parameter names (e.g. exclude=['scale', 'bias'])"
                         % (exclude,))
    return sorted({exclude} if isinstance(exclude, str) else {str(e) for e in exclude})


def _is_cntk(model):
    return isinstance(model, CNTKModel)


def _model_spec(model):
    """(kind, blob, options): what a worker needs to rebuild ``model`` with its current weights."""
    if _is_cntk(model):
        fd, path = tempfile.mkstemp(suffix=".model", prefix="influence-ship-")
        os.close(fd)
        try:
            model.save(path)
            with open(path, "rb") as f:
                blob = f.read()
        finally:
            os.remove(path)
        options = {"loss": model.loss_name, "l2": model.l2, "batch_size": model.batch_size}
        exclude = _exclude_names(model)
        if exclude is not None:
            options["exclude"] = exclude
        if model.loss_name is None:
            options["features"] = model.features.name or None
            options["labels"] = None if model.labels is None else (model.labels.name or None)
        return "cntk", blob, options
    try:
        blob = pickle.dumps(model, protocol=4)
    except Exception as e:
        raise ValueError("the model (%s) cannot be shipped to the workers: it is neither a CNTKModel nor "
                         "picklable (%s)" % (type(model).__name__, str(e).splitlines()[0] if str(e) else e))
    return "pickle", blob, {}


class _Job(object):
    """Everything a task needs besides its row range; shipped once per worker."""

    def __init__(self, model, train, vectors, steps, scoring, batch_size, data_fingerprint):
        kind, blob, options = _model_spec(model)
        self.model_kind, self.model_blob, self.model_options = kind, blob, options
        h = hashlib.sha256(blob)
        h.update(repr(sorted(options.items())).encode())
        self.model_key = h.hexdigest()[:24]
        self.params_digest = weights_digest(model)
        self.data_path = train.source
        self.data_fingerprint = data_fingerprint
        self.data_name = train.name
        self.data_options = dict(getattr(train, "source_options", None) or {})
        self.n_rows = len(train)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float64)
        self.steps = None if steps is None else [tuple(s) for s in steps]
        self.scoring = scoring
        self.batch_size = batch_size


def _identity(x):
    return x


class DaskExecutor(object):
    """Score the chunks of :func:`influence.influence_scores` (``executor=DaskExecutor(client)``) on
    the workers of ``client``, a ``distributed.Client`` (e.g. :func:`connect`).

    ``check(model, train)`` refuses early (before the solve) training data not loaded from a file,
    a model that cannot be shipped, or a client that is not one, and takes the content fingerprint
    of the training file (:func:`influence._files.file_fingerprint`) unless ``data_fingerprint`` is
    given (e.g. the one :class:`influence.jobs.ScoreJob` took when it started). Every worker
    verifies that fingerprint before it reads a row, so a file rewritten after the client looked at
    it is refused naming it. ``bind(...)`` returns the ``executor(missing, on_done)`` callable of
    :func:`influence.chunks.run_chunks`; failed tasks are retried ``retries`` times by Dask.
    ``hessian=True`` (default): s_test's Hessian-vector products run on the workers as well
    (:meth:`hessian_operator`, a :class:`influence.cluster_hvp.DaskHessianOperator`); ``False`` solves
    s_test on the client."""

    def __init__(self, client, retries=DEFAULT_RETRIES, data_fingerprint=None, hessian=True):
        self.client = client
        self.retries = retries
        #: whether s_test's Hessian-vector products run on the workers too (hessian_operator)
        self.hessian = bool(hessian)
        #: the training file's fingerprint the workers verify: pinned when given, else taken by check()
        self.data_fingerprint = data_fingerprint
        self._taken = None

    def check(self, model, train):
        check_inputs(self.client, model, train)
        pinned = self.data_fingerprint
        self._taken = pinned if pinned is not None and pinned.get("path") == train.source \
            else file_fingerprint(train.source)

    def hessian_operator(self, model, train, batch_size=None):
        """The :class:`influence.cluster_hvp.DaskHessianOperator` of ``train`` on this client's
        workers (None when built with ``hessian=False``: s_test is then solved on the client);
        :func:`influence.influence_scores` and :class:`influence.jobs.ScoreJob` solve s_test on it."""
        if not self.hessian:
            return None
        from .cluster_hvp import DaskHessianOperator       # it builds on this module
        if self._taken is None or self._taken.get("path") != getattr(train, "source", None):
            self.check(model, train)
        return DaskHessianOperator(self.client, model, train, batch_size=batch_size, retries=self.retries,
                                   data_fingerprint=self._taken)

    def bind(self, model, train, vectors, steps=None, scoring="forward", batch_size=None):
        if scoring not in ("forward", "gradient"):
            raise ValueError("scoring=%r is not one of 'forward', 'gradient'" % (scoring,))
        if scoring == "forward" and steps is None:
            raise ValueError("forward scoring on a cluster needs the steps (influence.kernels.forward_steps)")
        if self._taken is None or self._taken.get("path") != train.source:
            self.check(model, train)
        check_inputs(self.client, model, train)
        return _executor(self.client, _Job(model, train, vectors, steps, scoring, batch_size, self._taken),
                         self.retries)


def _executor(client, job, retries):
    return chunk_executor(client, job, _score_chunk, retries, "chunk")


def chunk_executor(client, job, task, retries, name):
    """The ``executor(missing, on_done)`` of :func:`influence.chunks.run_chunks` that runs
    ``task(job, a, b)`` on the workers for every missing chunk (a, b): ``job`` travels once, as a task
    of its own (not scatter: if every worker holding it dies, it is recomputed), each chunk is retried
    ``retries`` times, results are handed to ``on_done`` as they finish, and what is still pending
    when the client side fails is cancelled. ``name`` prefixes the task keys."""
    def executor(missing, on_done):
        if not missing:
            return
        distributed = import_distributed()
        token = uuid.uuid4().hex[:10]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ll]arge object.*")
            job_future = client.submit(_identity, job, key="influence-%s-job-%s" % (name, token), pure=False)
        futures = {}
        for a, b in missing:
            fut = client.submit(task, job_future, a, b, key="influence-%s-%s-%d-%d" % (name, token, a, b),
                                retries=retries, pure=False)
            futures[fut.key] = (fut, a, b)
        done = set()
        try:
            for fut in distributed.as_completed([f for f, _, _ in futures.values()]):
                _, a, b = futures[fut.key]
                on_done(a, b, fut.result())
                done.add(fut.key)
        finally:
            pending = [f for k, (f, _, _) in futures.items() if k not in done]
            if pending:
                client.cancel(pending)
            job_future.release()
    return executor


# ------------------------------------------------------------------------------------ worker side
_LOCK = threading.Lock()
_MODELS = collections.OrderedDict()   # model_key -> (model, lock)
_DATA = collections.OrderedDict()     # (model_key, path, content fingerprint) -> validated Dataset
#: Number of times each model was loaded in this process (tests check: once per worker).
LOADS = collections.Counter()


def _remember(cache, key, value, size=_CACHE_SIZE):
    """Put ``value`` in the OrderedDict ``cache`` (newest last), dropping the oldest beyond ``size``."""
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


def _load_model(job):
    from .threads import worker_threads
    worker_threads()          # one of several processes at once: one CPU thread (influence.threads)
    if job.model_kind == "pickle":
        return pickle.loads(job.model_blob)
    fd, path = tempfile.mkstemp(suffix=".model", prefix="influence-worker-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(job.model_blob)
        return CNTKModel.load(path, **job.model_options)
    finally:
        os.remove(path)


def _worker_model(job):
    """(model, lock) for ``job``, loaded once per process. The lock serializes tasks on one model
    (forward differences move its weights), for workers started with several threads."""
    with _LOCK:
        entry = _MODELS.get(job.model_key)
        if entry is None:
            model = _load_model(job)
            if weights_digest(model) != job.params_digest:
                raise RuntimeError("the model loaded on worker pid %d has weights that differ from the "
                                   "client's; check that the workers run the same influence/CNTK versions"
                                   % os.getpid())
            entry = (model, threading.Lock())
            LOADS[job.model_key] += 1
            _remember(_MODELS, job.model_key, entry)
        else:
            _MODELS.move_to_end(job.model_key)
        return entry


def _worker_data(job, model):
    """The validated training data of ``job``, after checking that the file this worker reads has the
    content fingerprint the client took; cached per (model, path, fingerprint)."""
    fp = job.data_fingerprint
    key = (job.model_key, job.data_path, fp["size"], fp["mtime_ns"], fp["sha256"])
    here = "worker pid %d" % os.getpid()
    if not os.path.isfile(job.data_path):
        raise ValueError("%s cannot read the training data %s: every worker needs it at the same path "
                         "(a shared file system)" % (here, job.data_path))
    try:
        check_unchanged(fp, "the training data")
    except ValueError as e:
        raise ValueError("%s on %s: all workers must read the file the client loaded" % (e, here))
    with _LOCK:
        data = _DATA.get(key)
        if data is not None:
            _DATA.move_to_end(key)
            return data
    data = model.validate(load_data(job.data_path, model, name=job.data_name, **job.data_options), job.data_name)
    if len(data) != job.n_rows:
        raise ValueError("the training data %s on %s has %d rows, the client's %d; all workers must read "
                         "the same file" % (job.data_path, here, len(data), job.n_rows))
    with _LOCK:
        _remember(_DATA, key, data)
    return data


def _score_chunk(job, start, stop):
    """g_iᵀ vectors[j] for rows start..stop of the job's training data: (m, stop - start) float64."""
    model, lock = _worker_model(job)
    data = _worker_data(job, model)
    steps = None if job.steps is None else [ForwardStep(*s) for s in job.steps]
    with lock:
        return chunk_scores(model, data, job.vectors, job.scoring, steps, start, stop, job.batch_size)
