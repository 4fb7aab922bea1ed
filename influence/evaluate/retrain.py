"""The retraining job every evaluation runs: subsets of the training rows retrained with L-BFGS from a
starting point, chunk by chunk (checkpointed, resumable, on Dask workers), and the checkpoint life
cycle the three evaluations share (:class:`EvalJob`)."""
import numpy as np

from ..common.errors import InfluenceError, param
from ..fitting import minimize_lbfgs
from ..jobs import Job, data_identity
from ..scoring import run_chunks
from .baselines import SEED_RANDOM_SCORES, baseline_scores

__all__ = ["EvalJob", "retrain_columns", "check_retrain", "RETRAIN_MAXITER", "MAXCOR"]

#: Default L-BFGS iterations at most per retraining.
RETRAIN_MAXITER = 2000
#: L-BFGS memory of the retrainings (as verify_loo).
MAXCOR = 30


def retrain_columns(model, train, test, w0, kept, norm, gtol, maxiter, batch_size):
    """(T + 1, len(kept)): each column the test losses after retraining on the rows kept[j] (warm
    start w0, objective Σ_kept ℓ / norm + L2, to gtol); last row ‖∇R‖ of the last L-BFGS point."""
    out = np.empty((len(test) + 1, len(kept)))
    with model.preserving_params():
        for j, rows in enumerate(kept):
            model.set_params(w0)
            res = minimize_lbfgs(model, train.subset(np.asarray(rows)), norm, gtol, maxiter, MAXCOR)
            out[:-1, j] = model.per_example_losses(test, batch_size)
            out[-1, j] = float(np.linalg.norm(res.jac))
    return out


def retrain_task(job, start, stop):
    """A Dask task: retrain the job's subsets start..stop on this worker (model and data cached)."""
    from ..dask import worker_data, worker_model
    model, lock = worker_model(job)
    data = worker_data(job, model)
    with lock:
        test = model.validate(job.test, job.test.name)
        return retrain_columns(model, data, test, job.w0, job.kept[start:stop], job.norm, job.gtol,
                                job.maxiter, job.batch_size)


def dask_runner(executor, model, train, test, w0, kept, norm, gtol, maxiter, batch_size):
    """The run_chunks executor that retrains on the workers of a DaskExecutor's client: the model,
    test rows and subsets travel once (one job task), every worker reads the training file."""
    from ..dask import chunk_executor, WorkerJob
    job = WorkerJob(model, train, np.zeros((0, model.n_params)), None, "gradient", batch_size,
                    executor.fingerprint(model, train))
    from ..data import Dataset
    # the test rows travel as plain arrays (a validated Dataset remembers the client's model, which
    # does not pickle) and are validated again by the worker's model
    plain = Dataset(test.x if not hasattr(test.x, "filename") else np.array(test.x),
                    None if test.y is None else np.array(test.y), test.name)
    job.test, job.w0, job.kept, job.norm = plain, np.asarray(w0), np.asarray(kept), norm
    job.gtol, job.maxiter = gtol, maxiter
    return chunk_executor(executor.client, job, retrain_task, executor.retries, "retrain")


class Prefixed(object):
    """A Checkpoint's chunks under a name prefix (the retrainings' chunks beside other arrays)."""

    def __init__(self, checkpoint, prefix):
        self.checkpoint, self.prefix = checkpoint, prefix
        self.stats = checkpoint.stats

    def load_chunk(self, a, b):
        return self.checkpoint.load_array("%s-%08d-%08d" % (self.prefix, a, b))

    def save_chunk(self, a, b, values):
        self.checkpoint.save_array("%s-%08d-%08d" % (self.prefix, a, b), values)


def check_executor(executor, model, train):
    if executor is not None and hasattr(executor, "check"):
        executor.check(model, train)


class EvalJob(Job):
    """Shared by the three evaluations: checkpoint life cycle (lock, fingerprint, resume) from
    :class:`influence.jobs.Job`; scores, the reference optimum and the retrainings saved in it."""

    def __init__(self, model, train, test, folder, resume, chunk_size, progress, inputs, settings,
                 executor=None):
        train = model.validate(train, getattr(train, "name", "training data"))
        Job.__init__(self, model, train, folder, resume, 1 if chunk_size is None else chunk_size, progress,
                      inputs)
        self.test = None if test is None else model.validate(test, getattr(test, "name", "test data"))
        self.settings = settings
        self.executor = executor
        self.solver_options = {}
        check_executor(executor, model, train)

    def _settings(self):
        out = dict(self.settings)
        if self.test is not None:
            out["test"] = data_identity(self.test)
        return out

    def _array(self, name, compute):
        ckpt = self.checkpoint
        saved = ckpt.load_array(name) if ckpt is not None else None
        if saved is not None:
            return saved
        value = np.asarray(compute())
        if ckpt is not None:
            ckpt.save_array(name, value)
        return value

    def _scores(self, s):
        names = ("influence", "grad_dot")
        saved = [self.checkpoint.load_array("scores_" + m) if self.checkpoint is not None else None for m in names]
        if all(v is not None for v in saved):
            out = dict(zip(names, saved))
            out["random"] = np.random.RandomState(s["seed"] + SEED_RANDOM_SCORES).standard_normal(saved[0].shape)
            return out
        out = baseline_scores(self.model, self.train, self.test, s["seed"], s["solver"], s["damping"],
                              s["scoring"], s["batch_size"], s["check_optimum"], self.progress,
                              curvature=s.get("curvature", "auto"), **self.solver_options)
        if self.checkpoint is not None:
            for m in names:
                self.checkpoint.save_array("scores_" + m, out[m])
        return out

    def _reference(self, s, data=None):
        """(w_ref, test losses at w_ref, ‖∇R‖): the model's optimum re-tightened to gtol on ``data``."""
        data = self.train if data is None else data

        def compute():
            with self.model.preserving_params():
                res = minimize_lbfgs(self.model, data, len(data), s["gtol"], s["maxiter"], MAXCOR)
                w = self.model.get_params().astype(np.float64)
                base = self.model.per_example_losses(self.test, s["batch_size"]) if self.test is not None \
                    else np.zeros(0)
            return np.concatenate([[float(np.linalg.norm(res.jac))], base, w])
        packed = self._array("reference", compute)
        T = 0 if self.test is None else len(self.test)
        return packed[1 + T:].astype(self.model.dtype), packed[1:1 + T], float(packed[0])

    def _retrain(self, s, w0, kept, norm):
        ckpt = None if self.checkpoint is None else Prefixed(self.checkpoint, "retrain")
        runner = None
        if self.executor is not None:
            runner = self.executor if not hasattr(self.executor, "bind") else dask_runner(
                self.executor, self.model, self.train, self.test, w0, kept, norm, s["gtol"], s["maxiter"],
                s["batch_size"])

        def compute(a, b):
            return retrain_columns(self.model, self.train, self.test, w0, kept[a:b], norm, s["gtol"],
                                    s["maxiter"], s["batch_size"])
        values, _ = run_chunks(compute, len(kept), self.chunk_size, ckpt, self.progress, "retraining", runner)
        return values[:-1], values[-1]


def check_retrain(gtol, maxiter, chunk_size):
    if not (gtol > 0):
        raise ValueError("gtol=%r must be positive (e.g. 1e-6)" % (gtol,))
    if int(maxiter) < 1:
        raise InfluenceError("%s must be a positive integer (e.g. %s)" % (param("maxiter", maxiter), param("maxiter", 2000)),
                             parameter="maxiter", suggestion=2000)
    if chunk_size is not None and int(chunk_size) < 1:
        raise InfluenceError("%s must be a positive integer (subsets per chunk)" % param("chunk_size", chunk_size),
                             parameter="chunk_size")
