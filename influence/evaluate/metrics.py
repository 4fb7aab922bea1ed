"""The measures of the evaluations, on plain arrays: subsets and their first-order predictions,
the linear datamodeling score, correlations, flipped labels and detection curves."""
import numpy as np

__all__ = ["draw_subsets", "subset_predictions", "linear_datamodeling_score", "mean_and_error", "flip_labels",
           "detection_curve", "found_at", "pearson", "spearman", "explain_correlation"]


def draw_subsets(n, m, alpha=0.5, seed=0):
    """(m, ⌊α·n⌋) int64 array: row j = the sorted training rows of subset j, drawn without
    replacement; the same ``seed`` gives the same subsets."""
    n, m = int(n), int(m)
    if m < 2:
        raise ValueError("subsets=%r: the LDS is a correlation over subsets; pass at least 2 (e.g. 50)" % (m,))
    if not (0 < alpha < 1):
        raise ValueError("alpha=%r must lie strictly between 0 and 1 (e.g. 0.5)" % (alpha,))
    size = int(np.floor(alpha * n))
    if size < 1 or size >= n:
        raise ValueError("alpha=%r keeps %d of %d training points; choose alpha so that 1 <= alpha*n < n"
                         % (alpha, size, n))
    rng = np.random.RandomState(seed)
    return np.array([np.sort(rng.choice(n, size=size, replace=False)) for _ in range(m)], dtype=np.int64)


def subset_predictions(scores, subsets, n_train, base=None):
    """(T, m) first-order predictions f̂_t(S_j) = base_t + (1/s) Σ_{i∈S_j} I_ti − (1/n) Σ_i I_ti of the
    value after retraining on each subset with the mean-over-subset objective (module docstring);
    ``scores``: (T, n) I_up,loss; ``subsets``: (m, s) rows; ``base``: (T,) (default 0)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    subsets = np.atleast_2d(np.asarray(subsets))
    n = int(n_train)
    if scores.shape[1] != n:
        raise ValueError("scores have %d columns but n_train=%d" % (scores.shape[1], n))
    kept = np.zeros((len(subsets), n))
    kept[np.repeat(np.arange(len(subsets)), subsets.shape[1]), subsets.ravel()] = 1.0
    pred = scores @ kept.T / float(subsets.shape[1]) - scores.sum(axis=1, keepdims=True) / float(n)
    return pred if base is None else pred + np.asarray(base, dtype=np.float64).reshape(-1, 1)


def linear_datamodeling_score(predicted, actual):
    """LDS per test point: Spearman correlation (ranks with ties averaged) over the subsets (columns)
    of ``predicted`` and ``actual`` (T, m); NaN for a row that is constant on either side."""
    predicted, actual = np.atleast_2d(predicted), np.atleast_2d(actual)
    if predicted.shape != actual.shape:
        raise ValueError("predicted %s and actual %s differ in shape" % (predicted.shape, actual.shape))
    return np.array([spearman(p, a) for p, a in zip(predicted, actual)])


def mean_and_error(values):
    """(mean, standard error, count) of the finite entries of ``values`` (se: sample std / √count;
    NaN with fewer than 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    se = float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(np.mean(v)), se, int(v.size)


def flip_labels(y, fraction, n_classes, seed=0):
    """(new labels, flipped rows): ⌊fraction·n⌋ rows drawn without replacement from ``seed``, each
    label moved to another class uniformly, (y + U{1..C−1}) mod C."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError("mislabel detection needs integer class labels y of shape (n,); got %s %s"
                         % (y.dtype, y.shape))
    if not (0 < fraction < 1):
        raise ValueError("fraction=%r must lie strictly between 0 and 1 (e.g. 0.1)" % (fraction,))
    n = y.size
    count = int(np.floor(fraction * n))
    if count < 1:
        raise ValueError("fraction=%r flips no label of %d; pass a larger fraction" % (fraction, n))
    if n_classes < 2:
        raise ValueError("n_classes=%r: flipping a label needs at least 2 classes" % (n_classes,))
    rng = np.random.RandomState(seed)
    flipped = np.sort(rng.choice(n, size=count, replace=False))
    out = y.copy()
    out[flipped] = (out[flipped] + rng.randint(1, n_classes, size=count)) % n_classes
    return out, flipped


def detection_curve(ranking, flipped):
    """(n,) fraction of the ``flipped`` rows among the first c = 1..n rows of ``ranking``."""
    hit = np.isin(np.asarray(ranking), np.asarray(flipped)).astype(np.float64)
    return np.cumsum(hit) / float(len(flipped))


def found_at(curve, top):
    n = curve.size
    return [float(curve[max(1, int(round(k * n))) - 1]) for k in top]

def pearson(a, b):
    """Pearson correlation of two 1-D arrays (nan when either is constant)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else float("nan")


def spearman(a, b):
    """Spearman rank correlation: Pearson of the (tie-averaged) ranks."""
    from scipy.stats import rankdata
    return pearson(rankdata(np.ravel(a)), rankdata(np.ravel(b)))


def explain_correlation(predicted, actual, noise=None, what="measured change"):
    """None when the correlation of ``predicted`` and ``actual`` is defined and the measurements are
    above their noise; otherwise one sentence saying why it is NaN or why it means little: every
    measured change exactly 0 (the retrainings did not move the weights), one side constant, or
    every measured change within ``noise`` (its first-order estimate, same shape)."""
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    actual = np.asarray(actual, dtype=np.float64).ravel()
    k = actual.size
    if k < 2:
        return "a correlation needs at least 2 retrainings; %d ran" % k
    if not np.all(np.isfinite(actual)):
        return ("%d of %d %ss are not finite (a retraining diverged): the correlation is undefined"
                % (int(np.sum(~np.isfinite(actual))), k, what))
    if np.all(actual == 0):
        return ("every %s is exactly 0: the retrainings ended where they started (the weights did not move, "
                "so the test loss could not change); a warm retraining that stops at once means the "
                "objective's gradient is already below the tolerance: tighten gtol, or retrain 'proximal' "
                "or 'scratch'" % what)
    if np.ptp(actual) == 0:
        return "every %s is the same (%.3g): the correlation is undefined" % (what, actual[0])
    if np.ptp(predicted) == 0:
        return ("every prediction is the same (%.3g): the correlation is undefined (are the scores all zero? "
                "a test point the model fits exactly has a zero gradient)" % predicted[0])
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64).ravel()
        below = np.abs(actual) <= noise
        if np.all(below):
            return ("every %s is within its retraining noise (the first-order change still to come if the "
                    "retrainings were run to exactness): the correlation measures the noise; tighten gtol"
                    % what)
    return None
