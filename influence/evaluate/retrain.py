"""The retraining job every evaluation runs: subsets of the training rows retrained with L-BFGS from a
starting point, chunk by chunk (checkpointed, resumable, on Dask workers), and the checkpoint life
cycle the three evaluations share (:class:`EvalJob`)."""
import time

import numpy as np

from ..common.errors import InfluenceError, param
from ..fitting import check_optimum, minimize_lbfgs
from ..jobs import Job, PrefixedCheckpoint as Prefixed, data_identity
from ..scoring import run_chunks
from .baselines import SEED_RANDOM_SCORES, baseline_scores, curvature_operator, method_names
from .proximal import proximal_retrain
from .scratch import restore_state, saved_state, scratch_train

__all__ = ["EvalJob", "retrain_columns", "check_retrain", "check_mode", "retraining", "RETRAIN_MAXITER", "MAXCOR",
           "RETRAIN_MODES"]

#: Default L-BFGS iterations at most per retraining.
RETRAIN_MAXITER = 2000
#: L-BFGS memory of the retrainings (as verify_loo).
MAXCOR = 30


#: Retraining modes (:func:`retrain_columns`); "auto" picks warm at an optimum, proximal otherwise.
RETRAIN_MODES = ("warm", "proximal", "scratch")


def retraining(mode="warm", damping=0.0, seeds=1, recipe=None, train_fn=None, init=None, seed=0):
    """The plain dict that says how :func:`retrain_columns` retrains (it travels to Dask workers):
    ``mode`` one of :data:`RETRAIN_MODES`; ``damping`` λ of the proximal term; ``seeds`` retrainings
    per subset (scratch) and the first ``seed``; ``recipe``/``train_fn``/``init`` of
    :func:`influence.evaluate.scratch.scratch_train`."""
    return {"mode": mode, "damping": float(damping), "seeds": int(seeds), "recipe": recipe,
            "train_fn": train_fn, "init": init, "seed": int(seed)}


def _one(model, train, w0, rows, norm, gtol, maxiter, spec, seed, z_s):
    """Retrain once on ``rows`` by ``spec``; returns the final gradient norm (NaN for a recipe)."""
    if spec["mode"] == "proximal":
        removed = np.setdiff1d(np.arange(len(train)), rows)
        res = proximal_retrain(model, train, removed, w0, spec["damping"], gtol, maxiter, z_s=z_s)
        return float(np.linalg.norm(res.jac))
    if spec["mode"] == "scratch":
        return scratch_train(model, train.subset(np.asarray(rows)), seed, spec["recipe"], spec["train_fn"],
                             spec["init"], gtol, maxiter)
    model.set_params(w0)
    res = minimize_lbfgs(model, train.subset(np.asarray(rows)), norm, gtol, maxiter, MAXCOR)
    return float(np.linalg.norm(res.jac))


def retrain_columns(model, train, test, w0, kept, norm, gtol, maxiter, batch_size, spec=None, first=0):
    """(2T + 1, len(kept)): column j retrains on the rows kept[j] by ``spec`` (:func:`retraining`;
    default warm: L-BFGS from w0 on Σ_kept ℓ / norm + L2 to gtol; proximal: the PBRF objective from
    w0; scratch: ``seeds`` runs from fresh initialisations) and holds the test losses (the mean over
    the seeds), then their standard deviation over the seeds (T rows; 0 for one run), then the final
    gradient norm (mean over the seeds). ``first``: the index of kept[0] among all subsets (scratch
    seeds are ``seed + (first + j)·seeds + k``, distinct for every run). The model's weights and,
    for a scratch retraining, its BatchNormalization statistics are restored afterwards."""
    spec = retraining() if spec is None else spec
    T = len(test)
    out = np.empty((2 * T + 1, len(kept)))
    state = saved_state(model)
    try:
        z_s = None
        if spec["mode"] == "proximal":
            model.set_params(w0)
            z_s = model.outputs(train, batch_size)
        for j, rows in enumerate(kept):
            runs, norms = [], []
            count = spec["seeds"] if spec["mode"] == "scratch" else 1
            for k in range(count):
                seed = spec["seed"] + (first + j) * count + k
                norms.append(_one(model, train, w0, rows, norm, gtol, maxiter, spec, seed, z_s))
                runs.append(model.per_example_losses(test, batch_size))
                restore_state(model, state)
            runs = np.array(runs)
            out[:T, j] = runs.mean(axis=0)
            out[T:2 * T, j] = runs.std(axis=0, ddof=1) if count > 1 else 0.0
            out[-1, j] = float(np.mean(norms))
    finally:
        restore_state(model, state)
    return out


def retrain_task(job, start, stop):
    """A Dask task: retrain the job's subsets start..stop on this worker (model and data cached)."""
    from ..dask import worker_data, worker_model
    model, lock = worker_model(job)
    data = worker_data(job, model)
    with lock:
        test = model.validate(job.test, job.test.name)
        return retrain_columns(model, data, test, job.w0, job.kept[start:stop], job.norm, job.gtol,
                                job.maxiter, job.batch_size, job.spec, start)


def dask_runner(executor, model, train, test, w0, kept, norm, gtol, maxiter, batch_size, spec=None):
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
    job.gtol, job.maxiter, job.spec = gtol, maxiter, spec
    return chunk_executor(executor.client, job, retrain_task, executor.retries, "retrain")


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

    def damping(self, s):
        """The damping of the scores as a number (``"auto"`` resolved once and saved)."""
        if s["damping"] is not None and not isinstance(s["damping"], str):
            return float(s["damping"])
        if getattr(self, "_damping", None) is None:
            self._damping = float(self._array("damping", lambda: [curvature_operator(
                self.model, self.train, s.get("curvature", "hessian"), s["damping"], s["batch_size"])[1]])[0])
        return self._damping

    def mode(self, s):
        """The retraining mode: ``s["retrain"]``, with "auto" = warm at an optimum, proximal otherwise."""
        mode = s.get("retrain", "warm")
        if mode != "auto":
            return mode
        ok = self._array("at_optimum", lambda: [float(check_optimum(self.model, self.train,
                                                                    batch_size=s["batch_size"]).ok)])[0]
        return "warm" if ok else "proximal"

    def spec(self, s, mode):
        """The :func:`retraining` of this job's settings (``train_fn`` from the job itself)."""
        return retraining(mode, self.damping(s) if mode == "proximal" else 0.0, s.get("seeds", 1),
                          s.get("recipe"), getattr(self, "train_fn", None),
                          s.get("init") if getattr(self, "init_vector", None) is None else self.init_vector, s["seed"])

    def start(self, s, at_model):
        """(mode, w0, base test losses): the warm mode re-tightens the reference optimum; proximal and
        scratch start from (and measure against) the trained weights as they are."""
        mode = self.mode(s)
        self.damping(s)                        # resolved (and saved) while the checkpoint is open
        if mode == "warm":
            w_ref, base, _ = self._reference(s)
            return mode, w_ref, base
        return mode, self.model.get_params(), np.asarray(at_model, dtype=np.float64)

    def scores_and_start(self, s, at_model):
        """(scores, seconds of scoring, mode, w0, base): :meth:`start`, then the scores at the weights the
        retrainings start from. Warm: the reference optimum re-tightened to gtol, so that prediction and
        measurement share their weights (a fit stopped short of its optimum along a flat direction is
        scored wrongly at its own weights: docs/evaluation.md, "The README's verify example, explained");
        proximal and scratch: the trained weights."""
        mode, w0, base = self.start(s, at_model)
        t0 = time.perf_counter()
        with self.model.preserving_params():
            if mode == "warm":
                self.model.set_params(w0)
            scores = self._scores(s)
        return scores, time.perf_counter() - t0, mode, w0, base

    def _scores(self, s):
        """{method: (T, n) scores}; ``self.method_seconds`` {method: seconds per test point}. Saved in
        the checkpoint (random is redrawn from the seed)."""
        names = [m for m in method_names(s.get("dampings"), s.get("checkpoints")) if m != "random"]
        ckpt = self.checkpoint
        saved = [ckpt.load_array("scores_%d" % i) if ckpt is not None else None for i in range(len(names))]
        times = ckpt.load_array("score_seconds") if ckpt is not None else None
        if all(v is not None for v in saved) and times is not None:
            out = dict(zip(names, saved))
            out["random"] = np.random.RandomState(s["seed"] + SEED_RANDOM_SCORES).standard_normal(saved[0].shape)
            self.method_seconds = dict(zip(names, times.tolist()), random=0.0)
            return out
        self.method_seconds = {}
        out = baseline_scores(self.model, self.train, self.test, s["seed"], s["solver"], self.damping(s),
                              s["scoring"], s["batch_size"], s["check_optimum"], self.progress,
                              s.get("curvature", "hessian"), s.get("dampings") or (),
                              getattr(self, "checkpoints", None), s.get("learning_rates"),
                              self.method_seconds, **self.solver_options)
        if ckpt is not None:
            for i, m in enumerate(names):
                ckpt.save_array("scores_%d" % i, out[m])
            ckpt.save_array("score_seconds", np.array([self.method_seconds[m] for m in names]))
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

    def _retrain(self, s, w0, kept, norm, spec=None):
        """(test losses (T, m), their seed-to-seed standard deviation (T, m), final gradient norms (m,))."""
        ckpt = None if self.checkpoint is None else Prefixed(self.checkpoint, "retrain")
        runner = None
        if self.executor is not None:
            runner = self.executor if not hasattr(self.executor, "bind") else dask_runner(
                self.executor, self.model, self.train, self.test, w0, kept, norm, s["gtol"], s["maxiter"],
                s["batch_size"], spec)

        def compute(a, b):
            return retrain_columns(self.model, self.train, self.test, w0, kept[a:b], norm, s["gtol"],
                                    s["maxiter"], s["batch_size"], spec, a)
        values, _ = run_chunks(compute, len(kept), self.chunk_size, ckpt, self.progress, "retraining", runner)
        T = len(self.test)
        return values[:T], values[T:2 * T], values[-1]


def check_mode(retrain="auto", seeds=1):
    """Refuse a retraining mode that is not one of auto or :data:`RETRAIN_MODES`, and ``seeds`` that are
    not a positive integer or several without ``retrain="scratch"``."""
    if retrain not in RETRAIN_MODES + ("auto",):
        raise InfluenceError("%s is not one of auto, %s" % (param("retrain", retrain), ", ".join(RETRAIN_MODES)),
                             parameter="retrain", suggestion="auto")
    if int(seeds) < 1:
        raise InfluenceError("%s must be a positive integer (retrainings per subset)" % param("seeds", seeds),
                             parameter="seeds", suggestion=3)
    if int(seeds) > 1 and retrain != "scratch":
        raise InfluenceError("%s: several seeds per subset need %s (warm and proximal retraining are "
                             "deterministic)" % (param("seeds", seeds), param("retrain", "scratch")),
                             parameter="seeds", suggestion=1)


def check_retrain(gtol, maxiter, chunk_size, retrain="warm", seeds=1):
    check_mode(retrain, seeds)
    if not (gtol > 0):
        raise ValueError("gtol=%r must be positive (e.g. 1e-6)" % (gtol,))
    if int(maxiter) < 1:
        raise InfluenceError("%s must be a positive integer (e.g. %s)" % (param("maxiter", maxiter), param("maxiter", 2000)),
                             parameter="maxiter", suggestion=2000)
    if chunk_size is not None and int(chunk_size) < 1:
        raise InfluenceError("%s must be a positive integer (subsets per chunk)" % param("chunk_size", chunk_size),
                             parameter="chunk_size")
