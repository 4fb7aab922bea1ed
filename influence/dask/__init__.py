"""Running on a Dask cluster: :class:`DaskExecutor` (scoring chunks and evaluate's retrainings as
tasks, and the chunks of EK-FAC's factors: ``factors``), :class:`DaskHessianOperator` (s_test's
Hessian-vector products summed over worker shards),
and the worker side both use (``worker``: the cached model and data, the checks). Imports scoring
and everything below it; ``dask.distributed`` itself is imported only when a cluster is used."""
from .executor import connect, check_reachable, chunk_executor, import_distributed, parse_spec, DaskExecutor
from .hessian import DaskGaussNewtonOperator, DaskHessianOperator
from .worker import DEFAULT_RETRIES, WorkerJob, check_inputs, worker_data, worker_model

__all__ = ["connect", "check_reachable", "chunk_executor", "import_distributed", "parse_spec", "check_inputs",
           "DaskExecutor", "DaskHessianOperator", "DaskGaussNewtonOperator", "WorkerJob", "worker_data", "worker_model", "DEFAULT_RETRIES"]
