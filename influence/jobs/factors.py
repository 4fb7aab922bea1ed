"""Resumable EK-FAC factors: :class:`FactorJob` fits :class:`influence.EKFAC` chunk by chunk of rows.

Each pass of the fit (:class:`influence.curvature.ekfac_fit.FactorFit`) is a sum over the training
rows, so a chunk's result is the vector of sums over its rows (``first_sums``, then, with
``strategy="ekfac"``, ``second_sums`` in the eigenbases of the first pass). Every finished chunk is
saved in the checkpoint folder as it completes: the first pass's as ``first-START-STOP``, the second
pass's under a key of the summed first pass (``second-KEY-START-STOP``), so that they are reused only
with the eigenbases they were computed in. The client adds the chunks in row order whatever order
they finish in (here, resumed from the folder, or on Dask workers through the executor's
``factor_runner``), so resumed and clustered fits give the same bits as an uninterrupted run with the
same chunk size; other chunk sizes and batch sizes change only the order of float64 additions.
"""
import time

import numpy as np

from ..common.errors import InfluenceError, param
from ..common.progress import Progress
from ..curvature import EKFAC
from ..curvature.damping import resolve_damping
from ..curvature.ekfac_fit import DEFAULT_SEED, LABELS, STRATEGIES, FactorFit, check_choice
from ..data import check_batch_size
from ..scoring.chunks import chunk_bounds, run_chunks
from .checkpoint import Job, PrefixedCheckpoint, array_digest

__all__ = ["FactorJob", "OrderedSum"]


class OrderedSum(object):
    """The sum of one vector per chunk of ``bounds``, added in the order of ``bounds`` whatever order
    they arrive in (a chunk that arrives early waits for the ones before it): the same bits from one
    process, many workers, or a resumed run."""

    def __init__(self, bounds, size):
        self.order = list(bounds)
        self.position = {ab: i for i, ab in enumerate(self.order)}
        self.next = 0
        self.pending = {}
        self.total = np.zeros(size)

    def add(self, a, b, values):
        i = self.position.get((a, b))
        if i is None or i < self.next or (a, b) in self.pending:
            raise RuntimeError("chunk %d:%d is not a chunk still to add" % (a, b))
        self.pending[(a, b)] = np.asarray(values, dtype=np.float64)
        while self.next < len(self.order) and self.order[self.next] in self.pending:
            self.total += self.pending.pop(self.order[self.next])
            self.next += 1

    def result(self):
        if self.next != len(self.order):
            missing = self.order[self.next]
            raise RuntimeError("chunk %d:%d was never added; %d of %d chunks are missing"
                               % (missing[0], missing[1], len(self.order) - self.next, len(self.order)))
        return self.total


class FactorJob(Job):
    """Resumable (and, with ``executor``, clustered) :class:`influence.EKFAC` of ``model`` on ``train``.

    ``damping``, ``strategy``, ``labels``, ``random_state`` (an integer seed or None: the job records
    it), ``batch_size`` as in :class:`influence.EKFAC`; ``chunk_size``: training rows per chunk (the
    unit of progress, of the checkpoint and of the tasks on a cluster); ``folder``, ``resume``,
    ``inputs`` as in :class:`influence.jobs.ScoreJob`; ``progress``: a bar over the rows of each pass.
    ``executor``: an :class:`influence.dask.executor.DaskExecutor` (the chunks then run on its
    client's workers, which read the training file themselves; the sums are added here).

    The sampled labels are drawn once for all rows, here, before any chunk. The damping is not part of
    the fingerprint (the factors do not depend on it), the seed only with ``labels="sampled"``.
    ``run()`` returns the EKFAC; ``chunks`` then holds {"chunks", "computed", "resumed"} over both
    passes (None without a folder), ``seconds`` the time of the fit. Weights are unchanged."""

    kind = "factors"

    def __init__(self, model, train, folder=None, resume=False, damping="auto", strategy="ekfac", labels="sampled",
                 random_state=None, batch_size=None, chunk_size=None, progress=False, executor=None, inputs=None):
        self.damping = resolve_damping(damping)
        self.strategy = check_choice("strategy", strategy, STRATEGIES)
        self.labels = check_choice("labels", labels, LABELS)
        if batch_size is not None:
            check_batch_size(batch_size)
        if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer))
                                         or random_state < 0):
            raise InfluenceError("%s is not a seed a resumable fit can record; pass an integer >= 0 or None"
                                 % param("random_state", random_state), parameter="random_state")
        train = model.validate(train, getattr(train, "name", "training data"))
        Job.__init__(self, model, train, folder, resume, chunk_size, progress, inputs)
        self.random_state = DEFAULT_SEED if random_state is None else int(random_state)
        self.batch_size = batch_size
        if executor is not None:
            if not callable(getattr(executor, "factor_runner", None)):
                raise InfluenceError("executor=%r cannot fit EK-FAC factors; pass influence.dask.DaskExecutor(client), "
                                     "or None to fit here" % (executor,))
            if hasattr(executor, "data_fingerprint") and self._train_fp is not None:
                executor.data_fingerprint = self._train_fp
            executor.check(model, train)
        self.executor = executor
        self.chunks = self.seconds = None

    def _settings(self):
        return {"strategy": self.strategy, "labels": self.labels, "batch_size": self.batch_size,
                "seed": self.random_state if self.labels == "sampled" else None}

    def _compute(self):
        t0 = time.time()
        fit = FactorFit(self.model, self.train, self.strategy, self.labels, self.random_state, self.batch_size)
        first = self._pass(fit, "first", "EK-FAC factors", fit.first_size, None)
        second = None
        if fit.passes == 2:
            bases = fit.eigen(first).bases
            # keyed to the first pass's result: chunks computed in other eigenbases are never added
            second = self._pass(fit, "second-" + array_digest(first)[:16], "EK-FAC eigenvalues",
                                fit.second_size, bases)
        ekfac = EKFAC.from_sums(fit, first, second, self.damping)
        ekfac.seconds = self.seconds = time.time() - t0
        self.chunks = self.stats
        return ekfac

    def _pass(self, fit, prefix, desc, size, bases):
        """One pass: the sum over all chunks of the first (``bases`` None) or second pass's vectors."""
        ckpt = None if self.checkpoint is None else PrefixedCheckpoint(self.checkpoint, prefix)
        total = OrderedSum(chunk_bounds(fit.n, self.chunk_size), size)
        bar = Progress(self.progress, fit.n, desc, unit="row")
        here = set()

        def compute(a, b):
            counted = [0]

            def on_rows(k):
                counted[0] += k
                bar.update(n=k)
            try:
                values = fit.first_sums(a, b, on_rows) if bases is None else fit.second_sums(bases, a, b, on_rows)
            except BaseException:
                bar.update(n=-counted[0])        # a retried chunk counts its rows once
                raise
            here.add((a, b))
            return values

        def sink(a, b, values):
            if (a, b) not in here:               # resumed, or computed on a worker
                bar.update(n=b - a)
            total.add(a, b, values)
        runner = None if self.executor is None else self.executor.factor_runner(fit, bases)
        try:
            run_chunks(compute, fit.n, self.chunk_size, ckpt, False, desc, runner, sink=sink, width=size)
        finally:
            bar.close()
        return total.result()
