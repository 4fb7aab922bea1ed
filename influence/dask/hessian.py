"""Curvature products on a Dask cluster: :class:`DaskHessianOperator`, the data-parallel
:class:`~influence.curvature.hessian.HessianOperator`, and :class:`DaskGaussNewtonOperator`, the
data-parallel :class:`~influence.curvature.GaussNewtonOperator` (its shards' Jᵀ H_ℓ J v on the workers).

The data term of H v is a central difference of the mean training gradient,
``(g(w + r v) − g(w − r v)) / 2r`` with ``g(w) = (1/n) Σ_i ∇ℓ(z_i, w)``. The sum over i splits over
shards of consecutive rows, ``Σ_i = Σ_shards Σ_{i ∈ shard}``: each worker process holds one shard
(rows memory-mapped from the training file the client loaded, never sent through the scheduler;
its model loaded once), and per product the client sends the shifted weights ``w ± r v`` (already
rounded to the model's dtype, exactly as the single-process operator sets them) and gets back, from
every shard, the gradient sums at each of them. The client adds the shards' sums in shard order,
divides by n and forms the same central difference with the same step (``rel_step``, calibrated by
the same :func:`~influence.curvature.hessian.adaptive_difference` on the same direction). Shards start at batch
boundaries, so every batch is the batch of the single-process pass: only the order of the float64
additions differs (≤ 1e-10 relative in float64, tested).

Per product, over the network: d weights × 2 (× 4 with ``stencil="richardson"``) to each shard's
task, d float64 sums × 2 (× 4) back per shard; nothing else. The model and the data path travel once
per worker, in one job object (:mod:`influence.cluster`).

A worker that dies mid-product loses nothing but time: its shard's task is rerun by the scheduler on
another worker (which memory-maps the shard then), and the next product assigns the shards to the
workers alive at that moment (a restarted ``local:N`` worker takes its share again).
"""
import collections
import os
import threading
import uuid
import warnings

import numpy as np

from ..adapters.base import preserved_params, weights_digest
from ..common.files import file_fingerprint
from .worker import DEFAULT_RETRIES, WorkerJob, check_inputs, identity, remember, worker_data, worker_model
from ..data import batch_bounds, check_batch_size
from ..curvature import GaussNewtonOperator
from ..curvature.hessian import PREPARE_MAX_BYTES, HessianOperator
from ..curvature.steps import combine_central, shifted_weights, step_scale

__all__ = ["DaskHessianOperator", "DaskGaussNewtonOperator"]

#: Prepared shards (converted batches) kept per worker process (least recently used dropped first).
_SHARD_CACHE_SIZE = 8


class DaskHessianOperator(HessianOperator):
    """(H + damping·I)·v for the mean training loss of ``model`` on ``train``, with the gradient sums
    computed by the workers of ``client`` (a ``distributed.Client``, e.g.
    :func:`influence.dask.executor.connect`), one shard of rows each.

    ``train`` must come from a file every worker can read at the same path
    (:func:`influence.load_npz` or :func:`influence.load_ctf`). ``shards``: number of row shards
    (default: the number of workers when the operator is built); shard k runs on the k-th worker alive
    at each product (another one if it dies). The other arguments and attributes are those of
    :class:`~influence.curvature.hessian.HessianOperator`, and so are the numbers: the same step rule and
    calibration, the same batches, sums added in a different order (equal to ≤ 1e-10 relative in
    float64). ``minibatch(index)`` (LiSSA's small stochastic products) returns a single-process
    operator on those rows, computed on the client. Each worker converts its shard once for all
    products (``Model.prepare``) when the single-process operator would convert the whole data (its
    ``nbytes ≤`` :data:`influence.curvature.hessian.PREPARE_MAX_BYTES`), so the number of workers changes the speed
    only by splitting the work.

    The client's weights are never moved by a product (only the one-time calibration moves them, and
    restores them bit-identically); each worker checks before every task that its model's weights are
    those the client had when the operator was built, and a product refuses to run if the client's
    weights have changed since. ``close()`` (or ``with``) releases the job on the cluster.
    """

    def __init__(self, client, model, train, damping=0.0, batch_size=None, rel_step=None, stencil="central",
                 shards=None, retries=DEFAULT_RETRIES, data_fingerprint=None):
        super(DaskHessianOperator, self).__init__(model, train, damping, batch_size, rel_step, stencil)
        check_inputs(client, model, self.data)
        if shards is not None and (int(shards) != shards or shards < 1):
            raise ValueError("shards=%r must be a positive integer (e.g. the number of workers), or None "
                             "for one shard per worker" % (shards,))
        self.client = client
        self.retries = retries
        if data_fingerprint is None or data_fingerprint.get("path") != self.data.source:
            data_fingerprint = file_fingerprint(self.data.source)
        size = model.batch_size if batch_size is None else check_batch_size(batch_size)
        self._job = WorkerJob(model, self.data, np.zeros((0, model.n_params)), None, "gradient", size, data_fingerprint)
        self._digest = self._job.params_digest
        self._prepare = self.data.nbytes <= PREPARE_MAX_BYTES
        n_shards = int(shards) if shards is not None else max(1, len(self._workers()))
        self.shard_bounds = _shard_bounds(_batch_bounds(self.data, size), n_shards)
        self._job_future = None
        self._token = uuid.uuid4().hex[:10]
        self._n_round = 0

    # ------------------------------------------------------------------ the cluster
    def _workers(self):
        return sorted(self.client.scheduler_info()["workers"])

    def _ship(self):
        if self._job_future is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Ll]arge object.*")
                # a task of its own (not scatter): if every worker holding it dies, it is recomputed
                self._job_future = self.client.submit(identity, self._job, key="influence-hjob-%s" % self._token,
                                                      pure=False)
        return self._job_future

    def close(self):
        """Release the job object on the cluster (the workers keep their cached model and data)."""
        if self._job_future is not None:
            self._job_future.release()
            self._job_future = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_client_weights(self):
        if weights_digest(self.model) != self._digest:
            raise ValueError("the model's weights changed since this DaskHessianOperator was built (the "
                             "workers hold the old ones); build a new operator for the new weights")

    def run_shards(self, task, *args):
        """``task(job, a, b, *args)`` once per shard (a, b) on the workers, in one round of tasks; the
        results in shard order. Used by the gradient sums here and by
        :class:`influence.dask.gauss_newton.DaskGaussNewtonOperator`'s products."""
        job = self._ship()
        workers = self._workers()
        self._n_round += 1
        futures = []
        try:
            for k, (a, b) in enumerate(self.shard_bounds):
                # pinned to the k-th live worker (any other may take it over); with no worker yet
                # registered (a cluster still starting) the task waits for the first one
                placement = dict(workers=[workers[k % len(workers)]], allow_other_workers=True) if workers else {}
                futures.append(self.client.submit(
                    task, job, a, b, *args, key="influence-hvp-%s-%d-%d" % (self._token, self._n_round, k),
                    retries=self.retries, pure=False, **placement))
            return self.client.gather(futures)
        finally:
            unfinished = [f for f in futures if f.status != "finished"]
            if unfinished:
                self.client.cancel(unfinished)

    def _grad_sums(self, weights):
        """Σ_i ∇ℓ(z_i, w) over all rows for each w in ``weights`` (each in the model's dtype): one task
        per shard, the shards' float64 sums added in shard order. Returns an (len(weights), d) array."""
        weights = np.ascontiguousarray(np.stack(weights))
        parts = self.run_shards(_shard_grad_sums, weights, self._prepare)
        total = np.array(parts[0], dtype=np.float64)
        for part in parts[1:]:
            total += part
        self.n_grad += len(weights)
        return total

    # ------------------------------------------------------------------ HessianOperator hooks
    def _prepared(self):
        raise RuntimeError("a DaskHessianOperator never passes over the whole data on the client")

    def _mean_data_grad(self):
        """The mean data gradient at the client's current weights (what calibration differentiates)."""
        g = self._grad_sums([self.model.get_params()])[0]
        g /= len(self.data)
        return g

    def calibrate(self, v=None):
        self.check_client_weights()
        return super(DaskHessianOperator, self).calibrate(v)

    def _central_differences(self, v, rel_steps):
        """All the shifted weights of this product evaluated in one round of tasks."""
        self.check_client_weights()
        v = np.asarray(v, dtype=np.float64)
        w0 = self.model.get_params().astype(np.float64)      # the client's weights are not moved
        scale = step_scale(w0, v)
        rs = [float(t * scale) for t in rel_steps]
        weights = []
        for r in rs:
            weights.extend(shifted_weights(w0, v, r, self.model.dtype))
        sums = self._grad_sums(weights)
        n = float(len(self.data))
        return [combine_central(sums[2 * j] / n, sums[2 * j + 1] / n, r) for j, r in enumerate(rs)]


class DaskGaussNewtonOperator(GaussNewtonOperator):
    """(G + damping·I)·v for the mean training loss of ``model`` on ``train`` (a file every worker can
    read), with the data term computed on the workers of ``client``. Arguments and attributes as
    :class:`influence.GaussNewtonOperator` (``damping="auto"`` probes run on the workers too) plus
    ``shards``, ``retries`` and ``data_fingerprint`` as :class:`~influence.dask.DaskHessianOperator`,
    whose shard machinery (job shipping, placement, retries, cancellation, the weights check) it
    uses. ``minibatch(index)`` is a single-process operator on those rows, computed on the client.
    ``close()`` (or ``with``) releases the job on the cluster."""

    single_process_class = GaussNewtonOperator

    def __init__(self, client, model, train, damping=0.0, batch_size=None, rel_step=None, stencil="central",
                 shards=None, retries=DEFAULT_RETRIES, data_fingerprint=None):
        # the shard runner first: damping="auto" multiplies by the operator while it is being built
        self._shards = DaskHessianOperator(client, model, train, batch_size=batch_size, shards=shards,
                                           retries=retries, data_fingerprint=data_fingerprint)
        super(DaskGaussNewtonOperator, self).__init__(model, self._shards.data, damping, batch_size, False,
                                                      rel_step, stencil)

    @property
    def shard_bounds(self):
        return self._shards.shard_bounds

    def close(self):
        self._shards.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _data_term(self, v):
        if self.rel_step is None:
            self.calibrate()
        self._shards.check_client_weights()
        v = np.asarray(v, dtype=np.float64)
        parts = self._shards.run_shards(_shard_gauss_newton, v, self.rel_step, self.stencil)
        out = np.array(parts[0], dtype=np.float64)
        for part in parts[1:]:
            out += part
        self.n_forward += 2 if self.stencil == "central" else 4
        self.n_backward += 1
        out /= len(self.data)
        return out



def _batch_bounds(data, size):
    """The (start, stop) of the batches ``data.batches(size)`` yields (without reading any row)."""
    lengths = getattr(data, "_lengths", None)            # a CTFDataset: sequence step counts in memory
    if lengths is not None:
        return batch_bounds(len(data), list(lengths.values()), size)
    return data._batch_bounds(size)


def _shard_bounds(bounds, n_shards):
    """[(start, stop)] of at most ``n_shards`` shards of consecutive batches ``bounds``, as equal in rows
    as the batch boundaries allow (every shard starts and ends on a batch boundary)."""
    n_batches = len(bounds)
    n_shards = max(1, min(n_shards, n_batches))
    n = bounds[-1][1]
    cuts = [0]
    starts = np.array([a for a, _ in bounds])
    for k in range(1, n_shards):
        target = k * n / float(n_shards)
        j = int(np.searchsorted(starts, target))         # the batch boundary nearest to the target
        if j > 0 and (j == n_batches or target - starts[j - 1] <= starts[j] - target):
            j -= 1
        j = min(max(j, cuts[-1] + 1), n_batches - (n_shards - k))
        cuts.append(j)
    cuts.append(n_batches)
    return [(bounds[cuts[k]][0], bounds[cuts[k + 1] - 1][1]) for k in range(n_shards)]


# ------------------------------------------------------------------------------------ worker side
_SHARD_LOCK = threading.Lock()
_SHARDS = collections.OrderedDict()   # (model_key, path, fingerprint, a, b, size, prepare) -> rows
#: Gradient passes over a shard done in this process (tests check where the work ran).
GRAD_PASSES = collections.Counter()


def worker_shard(job, model, a, b, prepare):
    """The rows a..b of the job's training data on this worker (validated; prepared when ``prepare``),
    cached per (model, file, fingerprint, rows, batch size)."""
    data = worker_data(job, model)
    fp = job.data_fingerprint
    key = (job.model_key, job.data_path, fp["size"], fp["mtime_ns"], fp["sha256"], a, b, job.batch_size, prepare)
    with _SHARD_LOCK:
        rows = _SHARDS.get(key)
        if rows is not None:
            _SHARDS.move_to_end(key)
            return rows
    rows = data.subset(slice(a, b))
    rows._valid_for = model                      # rows of validated data: no second check
    if prepare:
        rows = model.prepare(rows, job.batch_size)
    with _SHARD_LOCK:
        remember(_SHARDS, key, rows, _SHARD_CACHE_SIZE)
    return rows


def _shard_grad_sums(job, a, b, weights, prepare):
    """Σ_{i in a..b} ∇ℓ(z_i, w) (no L2 term, float64) for each row w of ``weights``: (len, d)."""
    model, lock = worker_model(job)
    rows = worker_shard(job, model, a, b, prepare)
    out = np.empty((len(weights), model.n_params), dtype=np.float64)
    with lock:
        if weights_digest(model) != job.params_digest:
            raise RuntimeError("the model on worker pid %d does not hold the client's weights; its cached "
                               "copy was changed" % os.getpid())
        with preserved_params(model):
            for j, w in enumerate(weights):
                model.set_params(w)
                out[j] = model.grad_sum(rows, job.batch_size)
                GRAD_PASSES[job.model_key] += 1
    return out


def _shard_gauss_newton(job, a, b, v, rel_step, stencil):
    """Σ_{i in a..b} J_iᵀ H_ℓ J_i v (float64, no L2 term) on this worker's rows, at the job's weights."""
    model, lock = worker_model(job)
    rows = worker_shard(job, model, a, b, False)
    with lock:
        if weights_digest(model) != job.params_digest:
            raise RuntimeError("the model on this worker does not hold the client's weights")
        op = GaussNewtonOperator(model, rows, damping=0.0, batch_size=job.batch_size, rel_step=rel_step,
                                 stencil=stencil)
        return op.data_term(v) * len(rows)
