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

:class:`FactorJob` (:mod:`.factors`) fits EK-FAC's factors the same way: its chunks are the sums of
row ranges, added in row order (so the result does not depend on how many chunks ran where).
The checkpoint folder and the life cycle the jobs share are in :mod:`.checkpoint`.
"""
import os
import time

import numpy as np

from ..common.files import InputChangedError, file_fingerprint
from ..scoring.chunks import CHUNK_RETRIES, DEFAULT_CHUNK_SIZE, ChunkRetryWarning, chunk_bounds, run_chunks
from ..scoring.choice import check_curvature, curvature_setting, is_ekfac
from ..scoring.matrix import MatrixCheckpoint, ScoreAggregates
from ..scoring.scores import executor_hessian, influence_scores, s_test, self_influence
from .checkpoint import (REFUSALS, Checkpoint, Job, JobFailed, LockedError, PrefixedCheckpoint, StaleLockWarning,
                         damping_setting, data_identity, model_identity, plain_options)
from .factors import FactorJob

__all__ = ["ScoreJob", "ScoreResult", "SelfInfluenceJob", "FactorJob", "Checkpoint", "PrefixedCheckpoint", "Job",
           "JobFailed", "LockedError", "StaleLockWarning", "InputChangedError", "REFUSALS", "run_chunks",
           "chunk_bounds", "file_fingerprint", "DEFAULT_CHUNK_SIZE", "CHUNK_RETRIES", "ChunkRetryWarning",
           "damping_setting", "data_identity", "model_identity"]


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
