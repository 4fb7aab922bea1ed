"""The worker side of a Dask run, shared by the scoring executor (:mod:`influence.dask.executor`) and
the curvature operator (:mod:`influence.dask.hessian`): what a task needs besides its rows
(:class:`WorkerJob`, shipped once per worker), the per-process caches of the loaded model and data,
and the client-side checks that the model can travel and the data can be read by the workers."""
import collections
import hashlib
import os
import pickle
import tempfile
import threading

import numpy as np

from ..common.files import check_unchanged
from ..adapters.base import weights_digest
from ..adapters.cntk import CNTKModel
from ..data import load_data

__all__ = ["WorkerJob", "check_inputs", "identity", "remember", "worker_model", "worker_data", "LOADS",
           "DEFAULT_RETRIES", "CACHE_SIZE"]

#: Extra attempts of a task that raised (a worker dying is handled by the scheduler on top of that).
DEFAULT_RETRIES = 3
#: Models / datasets kept per worker process (least recently used dropped first).
CACHE_SIZE = 4

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
        raise ValueError("DaskExecutor(%r): not a distributed.Client; pass influence.dask.executor.connect('local:2') "
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


class WorkerJob(object):
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


def identity(x):
    return x


# ------------------------------------------------------------------------------------ worker side
_LOCK = threading.Lock()
_MODELS = collections.OrderedDict()   # model_key -> (model, lock)
_DATA = collections.OrderedDict()     # (model_key, path, content fingerprint) -> validated Dataset
#: Number of times each model was loaded in this process (tests check: once per worker).
LOADS = collections.Counter()


def remember(cache, key, value, size=CACHE_SIZE):
    """Put ``value`` in the OrderedDict ``cache`` (newest last), dropping the oldest beyond ``size``."""
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


def _load_model(job):
    from ..common.threads import worker_threads
    worker_threads()          # one of several processes at once: one CPU thread (influence.common.threads)
    if job.model_kind == "pickle":
        return pickle.loads(job.model_blob)
    fd, path = tempfile.mkstemp(suffix=".model", prefix="influence-worker-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(job.model_blob)
        return CNTKModel.load(path, **job.model_options)
    finally:
        os.remove(path)


def worker_model(job):
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
            remember(_MODELS, job.model_key, entry)
        else:
            _MODELS.move_to_end(job.model_key)
        return entry


def worker_data(job, model):
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
        remember(_DATA, key, data)
    return data


