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
- Each task returns its chunk's scores (m × chunk floats); :func:`influence.scoring.chunks.run_chunks`
  saves them to the checkpoint as they arrive (``--resume`` never recomputes a finished chunk) and
  assembles them in row order. With the same chunk size the result is identical to the bit to the
  single-process run: same chunk bounds, same batches within a chunk, same steps.

A worker that dies mid-run loses nothing: the scheduler reruns its tasks elsewhere (and ``retries``
reruns tasks that raised), the job object is recomputed from its task if every copy was lost.
"""
import os
import re
import socket
import tempfile
import uuid
import warnings


from ..common.errors import InfluenceError, param
from ..common.files import file_fingerprint
from ..scoring.kernels import ForwardStep, chunk_scores
from .worker import DEFAULT_RETRIES, WorkerJob, check_inputs, identity, worker_data, worker_model  # noqa: F401 (check_inputs: public here too)

__all__ = ["connect", "check_reachable", "import_distributed", "parse_spec", "check_inputs", "chunk_executor",
           "DaskExecutor", "DEFAULT_RETRIES"]


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


class DaskExecutor(object):
    """Score the chunks of :func:`influence.influence_scores` (``executor=DaskExecutor(client)``) on
    the workers of ``client``, a ``distributed.Client`` (e.g. :func:`connect`).

    ``check(model, train)`` refuses early (before the solve) training data not loaded from a file,
    a model that cannot be shipped, or a client that is not one, and takes the content fingerprint
    of the training file (:func:`influence.common.files.file_fingerprint`) unless ``data_fingerprint`` is
    given (e.g. the one :class:`influence.jobs.ScoreJob` took when it started). Every worker
    verifies that fingerprint before it reads a row, so a file rewritten after the client looked at
    it is refused naming it. ``bind(...)`` returns the ``executor(missing, on_done)`` callable of
    :func:`influence.scoring.chunks.run_chunks`; failed tasks are retried ``retries`` times by Dask.
    ``hessian=True`` (default): s_test's Hessian-vector products run on the workers as well
    (:meth:`hessian_operator`, a :class:`influence.dask.hessian.DaskHessianOperator`); ``False`` solves
    s_test on the client. ``factor_runner(fit, bases)``: the same for the chunks of EK-FAC's factors
    (:class:`influence.jobs.FactorJob`)."""

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

    def fingerprint(self, model, train):
        """The training file's fingerprint the workers verify: the one :meth:`check` took for this file,
        checking first when it has not looked at ``train``'s file yet."""
        if self._taken is None or self._taken.get("path") != getattr(train, "source", None):
            self.check(model, train)
        return self._taken

    def hessian_operator(self, model, train, batch_size=None):
        """The :class:`influence.dask.hessian.DaskHessianOperator` of ``train`` on this client's
        workers (None when built with ``hessian=False``: s_test is then solved on the client);
        :func:`influence.influence_scores` and :class:`influence.jobs.ScoreJob` solve s_test on it."""
        if not self.hessian:
            return None
        from .hessian import DaskHessianOperator       # it builds on this module
        return DaskHessianOperator(self.client, model, train, batch_size=batch_size, retries=self.retries,
                                   data_fingerprint=self.fingerprint(model, train))

    def factor_runner(self, fit, bases=None):
        """The run_chunks executor of :class:`influence.jobs.FactorJob`: the chunks of ``fit`` (an
        :class:`influence.curvature.ekfac_fit.FactorFit`) on this client's workers (first pass, or the
        second in ``bases``); see :mod:`influence.dask.factors`."""
        from .factors import factor_job, factor_task
        return chunk_executor(self.client, factor_job(self, fit, bases), factor_task, self.retries,
                              "factors-first" if bases is None else "factors-second")

    def bind(self, model, train, vectors, steps=None, scoring="forward", batch_size=None):
        if scoring not in ("forward", "gradient"):
            raise InfluenceError("%s is not one of 'forward', 'gradient'" % param("scoring", scoring), parameter="scoring")
        if scoring == "forward" and steps is None:
            raise ValueError("forward scoring on a cluster needs the steps (influence.scoring.kernels.forward_steps)")
        taken = self.fingerprint(model, train)
        check_inputs(self.client, model, train)
        return _executor(self.client, WorkerJob(model, train, vectors, steps, scoring, batch_size, taken),
                         self.retries)


def _executor(client, job, retries):
    return chunk_executor(client, job, _score_chunk, retries, "chunk")


def chunk_executor(client, job, task, retries, name):
    """The ``executor(missing, on_done)`` of :func:`influence.scoring.chunks.run_chunks` that runs
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
            job_future = client.submit(identity, job, key="influence-%s-job-%s" % (name, token), pure=False)
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


def _score_chunk(job, start, stop):
    """g_iᵀ vectors[j] for rows start..stop of the job's training data: (m, stop - start) float64."""
    model, lock = worker_model(job)
    data = worker_data(job, model)
    steps = None if job.steps is None else [ForwardStep(*s) for s in job.steps]
    with lock:
        return chunk_scores(model, data, job.vectors, job.scoring, steps, start, stop, job.batch_size)
