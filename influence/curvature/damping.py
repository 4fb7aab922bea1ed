"""``damping="auto"``: a damping that needs no tuning.

The rule (the default of kronfluence and LogIX): λ = 0.1 × the mean eigenvalue of the curvature C,
i.e. 0.1·trace(C)/d, with the trace estimated by Hutchinson's estimator on Rademacher probes z
(entries ±1, so zᵀz = d)::

    trace(C) ≈ (1/m) Σ_j z_jᵀ C z_j            (unbiased; variance 2 Σ_{i≠k} C_ik² per probe)

m = :data:`HUTCHINSON_PROBES` products of the operator, seeded (``random_state``), so the same model
and data give the same damping to the bit. The operator's own damping is not part of C (its ``damping``
attribute is subtracted), its L2 term is.
"""
import numpy as np

from ..common.numeric import check_damping

__all__ = ["auto_damping", "mean_eigenvalue", "resolve_damping", "DAMPING_FACTOR", "HUTCHINSON_PROBES"]

#: damping = DAMPING_FACTOR × mean eigenvalue of the curvature.
DAMPING_FACTOR = 0.1
#: Rademacher probes of the Hutchinson trace estimate (one operator product each).
HUTCHINSON_PROBES = 10


def resolve_damping(damping):
    """``"auto"`` as is, otherwise a finite number >= 0 (a one-line ValueError naming the fix)."""
    if isinstance(damping, str):
        if damping == "auto":
            return "auto"
        raise ValueError("damping=%r is not a number nor 'auto'; pass e.g. damping=0.01 or damping=\"auto\""
                         % (damping,))
    return check_damping(damping)


def _check_probes(probes):
    try:
        m = int(probes)
    except (TypeError, ValueError):
        m = 0
    if m < 1 or m != probes:
        raise ValueError("probes=%r must be a positive integer (e.g. %d)" % (probes, HUTCHINSON_PROBES))
    return m


def mean_eigenvalue(operator, probes=HUTCHINSON_PROBES, random_state=0):
    """``(mean, standard_error)``: trace(C)/d of the curvature C = operator − operator.damping·I by
    Hutchinson's estimator on ``probes`` seeded Rademacher vectors, and the standard error of that mean
    (from the spread of the probes; 0 with one probe)."""
    m = _check_probes(probes)
    d = int(operator.shape[0])
    own = float(getattr(operator, "damping", 0.0) or 0.0)
    rng = np.random.RandomState(random_state)
    values = np.empty(m)
    for j in range(m):
        z = rng.randint(0, 2, d).astype(np.float64) * 2.0 - 1.0
        values[j] = float(z @ np.asarray(operator.matvec(z), dtype=np.float64).reshape(-1)) / d - own
    stderr = float(values.std(ddof=1) / np.sqrt(m)) if m > 1 else 0.0
    return float(values.mean()), stderr


def auto_damping(operator, probes=HUTCHINSON_PROBES, random_state=0):
    """λ = :data:`DAMPING_FACTOR` × the mean eigenvalue of the curvature of ``operator`` (its own
    damping excluded), by :func:`mean_eigenvalue`: ``probes`` operator products. Returns a float."""
    return damping_from_mean(mean_eigenvalue(operator, probes, random_state)[0])


def damping_from_mean(mean):
    """:data:`DAMPING_FACTOR` × ``mean`` (a positive mean eigenvalue), else a one-line ValueError."""
    if not np.isfinite(mean) or mean <= 0:
        raise ValueError("damping='auto' needs a positive mean eigenvalue of the curvature, but its estimate "
                         "is %r; pass a number, e.g. damping=0.01" % (mean,))
    return DAMPING_FACTOR * mean
