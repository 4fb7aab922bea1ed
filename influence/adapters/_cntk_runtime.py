"""Importing CNTK (the one place that does it) and calling it with the retry its intermittent
"... is a view" error needs; the adapter, its graph rewriting and per-example gradients use both."""
import warnings

__all__ = ["import_cntk", "VIEW_ERROR_RETRIES"]


def import_cntk():
    """Import CNTK with its start-up warnings silenced; a clear error when it is unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cntk
    except ImportError as e:
        raise ImportError(
            "CNTK is not importable (%s); it needs Python 3.5/3.6 with cntk==2.7.post2 and OpenMPI: "
            "run 'make venv' and use .venv/bin/python (see docs/installing.md)" % e)
    return cntk


#: CNTK 2.7 now and then fails a call with "Resize: Cannot resize the matrix because it is a view"
#: (microsoft/CNTK#1354, open upstream). Seen here on Dask workers summing float32 gradients over
#: 500,000 memory-mapped rows; a second attempt of the same call succeeded. A call that fails that
#: way is repeated up to this many times (it changes no weights and returns nothing partial).
VIEW_ERROR_RETRIES = 2


def _cntk_call(call):
    """``call()``, repeated on CNTK's intermittent "... because it is a view" error (see
    :data:`VIEW_ERROR_RETRIES`); any other error, or that one too often, is raised."""
    for attempt in range(VIEW_ERROR_RETRIES + 1):
        try:
            return call()
        except RuntimeError as e:
            if "because it is a view" not in str(e) or attempt == VIEW_ERROR_RETRIES:
                raise
