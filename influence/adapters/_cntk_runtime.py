"""Importing CNTK: the one place that does it (the adapter and its graph rewriting both need it)."""
import warnings

__all__ = ["import_cntk"]


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
