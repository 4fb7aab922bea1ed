"""EK-FAC's factors on a Dask cluster: the chunks of :class:`influence.jobs.FactorJob` (sums over
row ranges, :class:`influence.curvature.ekfac_fit.FactorFit`) computed by the workers.

What travels: one job object per pass (the model as :class:`influence.dask.worker.WorkerJob` ships it,
the fit's settings, the sampled labels of all rows drawn on the client, and for the second pass the
eigenbases of the first); each worker loads the model once and reads its rows from the training file
(checked against the client's content fingerprint). A task returns its chunk's vector of sums; the
client adds them in row order (:class:`influence.jobs.factors.OrderedSum`)."""
import numpy as np

from ..curvature.ekfac_fit import FactorFit
from .worker import WorkerJob, check_inputs, worker_data, worker_model

__all__ = ["factor_job", "factor_task"]


def factor_job(executor, fit, bases=None):
    """What the tasks of one pass of ``fit`` (a FactorFit on the client) need on the workers of
    ``executor`` (a :class:`influence.dask.executor.DaskExecutor`, whose ``factor_runner`` runs
    :func:`factor_task` with it): ``fit.first_sums`` (``bases`` None) or ``fit.second_sums(bases, ...)``."""
    model, train = fit.model, fit.data
    check_inputs(executor.client, model, train)
    job = WorkerJob(model, train, np.zeros((0, model.n_params)), None, "gradient", fit.batch_size,
                    executor.fingerprint(model, train))
    job.strategy, job.labels, job.drawn = fit.strategy, fit.labels, fit.drawn
    job.sizes = (fit.first_size, fit.second_size)
    job.bases = None if bases is None else [(np.asarray(qs), np.asarray(qa)) for qs, qa in bases]
    return job


def factor_task(job, start, stop):
    """A Dask task: the sums of rows start..stop of the job's pass, on this worker's model and data."""
    model, lock = worker_model(job)
    data = worker_data(job, model)
    with lock:
        fit = FactorFit(model, data, job.strategy, job.labels, batch_size=job.batch_size, drawn=job.drawn)
        if (fit.first_size, fit.second_size) != job.sizes:
            raise RuntimeError("the model on this worker has other EK-FAC layers than the client's (sums of "
                               "%s values, the client's %s); run the same influence version everywhere"
                               % ((fit.first_size, fit.second_size), job.sizes))
        if job.bases is None:
            return fit.first_sums(start, stop)
        return fit.second_sums(job.bases, start, stop)
