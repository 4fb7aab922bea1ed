"""Scoring on a Dask cluster (``dask[distributed]``): the embarrassingly parallel part of
:func:`influence.influence_scores` — g_iᵀ s_test for every training row — spread over worker
processes on one machine (``local:N``) or many (``tcp://host:port``, a running ``dask-scheduler``).

What travels, and how often (see docs/cluster.md):

- s_test, the forward-difference steps and the model are computed/held on the client. They travel
  as ONE job object, submitted once as a task of its own; each worker fetches it once (from the
  scheduler's task or from a peer) and keeps it in memory while the run lasts. A CNTK model travels
  as the bytes of its ``Function.save`` file (the current weights), a NumPy reference model as its
  pickle. Each worker process loads the model once per job content (a module-level cache keyed by a
  hash of the model bytes and options), not once per task, and checks that the loaded weights are
  bit-identical to the client's.
- The training data does not travel: every task opens the ``.npz`` file the client loaded it from
  (:attr:`influence.data.Dataset.source`, a path all workers must be able to read, e.g. a shared
  file system) with :func:`influence.data.load_npz` (memory-mapped, once per worker) and reads its
  chunk of rows.
- Each task returns its chunk's scores (m × chunk floats); :func:`influence.jobs.run_chunks`
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
import tempfile
import threading
import uuid
import warnings

import numpy as np

__all__ = ["connect", "import_distributed", "parse_spec", "check_inputs", "scoring_executor",
           "DEFAULT_RETRIES"]

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
        raise ValueError("scoring with client= needs training data the workers can read themselves: "
                         "load it with influence.load_npz(path) from a path all workers can read "
                         "(in-memory arrays are not shipped)")
    if not os.path.isfile(train.source):
        raise ValueError("the training data file %s no longer exists; reload it with influence.load_npz"
                         % train.source)
    if not hasattr(client, "submit"):
        raise ValueError("client=%r is not a distributed.Client; pass influence.cluster.connect('local:2') "
                         "or distributed.Client('tcp://host:port')" % (client,))
    if not _is_cntk(model):
        _model_spec(model)     # a CNTKModel always ships (Function.save); anything else must pickle


def _is_cntk(model):
    from .adapters.cntk import CNTKModel
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


def _params_digest(model):
    w = np.ascontiguousarray(model.get_params())
    return hashlib.sha256(w.dtype.str.encode() + w.tobytes()).hexdigest()


class _Job(object):
    """Everything a task needs besides its row range; shipped once per worker."""

    def __init__(self, model, train, vectors, steps, scoring, batch_size):
        kind, blob, options = _model_spec(model)
        self.model_kind, self.model_blob, self.model_options = kind, blob, options
        h = hashlib.sha256(blob)
        h.update(repr(sorted(options.items())).encode())
        self.model_key = h.hexdigest()[:24]
        self.params_digest = _params_digest(model)
        self.data_path = train.source
        self.data_size = os.path.getsize(train.source)
        self.data_name = train.name
        self.n_rows = len(train)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float64)
        self.steps = None if steps is None else [tuple(s) for s in steps]
        self.scoring = scoring
        self.batch_size = batch_size


def _identity(x):
    return x


def scoring_executor(client, model, train, vectors, steps=None, scoring="forward", batch_size=None,
                     retries=DEFAULT_RETRIES):
    """An ``executor(missing_bounds, on_done)`` for :func:`influence.jobs.run_chunks` that scores the
    missing chunks on ``client``'s workers: ``scoring="forward"`` → forward_differences(model, rows,
    vectors, steps, batch_size); ``"gradient"`` → vectors @ per-example gradientsᵀ. ``train`` must
    come from :func:`influence.load_npz` (its ``source`` path is read by the workers)."""
    if scoring not in ("forward", "gradient"):
        raise ValueError("scoring=%r is not one of 'forward', 'gradient'" % (scoring,))
    if scoring == "forward" and steps is None:
        raise ValueError("forward scoring on a cluster needs the steps (influence.scores.forward_steps)")
    check_inputs(client, model, train)
    job = _Job(model, train, vectors, steps, scoring, batch_size)

    def executor(missing, on_done):
        if not missing:
            return
        distributed = import_distributed()
        token = uuid.uuid4().hex[:10]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ll]arge object.*")
            # a task of its own (not scatter): if every worker holding it dies, it is recomputed
            job_future = client.submit(_identity, job, key="influence-job-%s" % token, pure=False)
        futures = {}
        for a, b in missing:
            fut = client.submit(_score_chunk, job_future, a, b, key="influence-chunk-%s-%d-%d" % (token, a, b),
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
_DATA = collections.OrderedDict()     # (model_key, path, size) -> validated Dataset
#: Number of times each model was loaded in this process (tests check: once per worker).
LOADS = collections.Counter()


def _remember(cache, key, value):
    cache[key] = value
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def _load_model(job):
    if job.model_kind == "pickle":
        return pickle.loads(job.model_blob)
    from .adapters.cntk import CNTKModel
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
            if _params_digest(model) != job.params_digest:
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
    from .data import load_npz
    key = (job.model_key, job.data_path, job.data_size)
    with _LOCK:
        data = _DATA.get(key)
        if data is not None:
            _DATA.move_to_end(key)
            return data
    here = "worker pid %d" % os.getpid()
    if not os.path.isfile(job.data_path):
        raise ValueError("%s cannot read the training data %s: every worker needs it at the same path "
                         "(a shared file system)" % (here, job.data_path))
    size = os.path.getsize(job.data_path)
    data = model.validate(load_npz(job.data_path, name=job.data_name), job.data_name)
    if size != job.data_size or len(data) != job.n_rows:
        raise ValueError("the training data %s on %s (%d bytes, %d rows) differs from the client's "
                         "(%d bytes, %d rows); all workers must read the same file"
                         % (job.data_path, here, size, len(data), job.data_size, job.n_rows))
    with _LOCK:
        _remember(_DATA, key, data)
    return data


def _score_chunk(job, start, stop):
    """g_iᵀ vectors[j] for rows start..stop of the job's training data: (m, stop - start) float64."""
    from .scores import ForwardStep, chunk_scores
    model, lock = _worker_model(job)
    data = _worker_data(job, model)
    steps = None if job.steps is None else [ForwardStep(*s) for s in job.steps]
    with lock:
        return chunk_scores(model, data, job.vectors, job.scoring, steps, start, stop, job.batch_size)
