"""Reports of the evaluations: the text summary and the picture."""
import numpy as np

from .datamodeling import LDSResult
from .leave_one_out import LOOEvaluation
from .mislabeled import MislabelResult

__all__ = ["summary", "plot", "pyplot"]


def _retraining(result):
    """How the retrainings were done, and the seed-to-seed spread of what they measured."""
    spread = np.asarray(result.spread, dtype=np.float64)
    return {"retrain": result.retrain, "seeds": int(result.seeds), "damping": float(result.damping),
            "method_seconds_per_test_point": dict(result.method_seconds),
            "mean_seed_spread": float(spread.mean()) if spread.size else 0.0}


def summary(result, details=False):
    """A JSON-able dict of ``result`` (of :func:`lds`, :func:`loo` or :func:`mislabel`): the headline
    numbers of every method; ``details=True`` adds the per-test-point values, predictions,
    measurements and subsets (what ``influence evaluate --out`` writes)."""
    def plain(d):
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
    if isinstance(result, LDSResult):
        out = {"metric": "lds", "target": result.target, "subsets": int(result.subsets.shape[0]),
               "subset_size": int(result.subsets.shape[1]), "n_train": result.n_train,
               "n_test": int(result.actual.shape[0]), "mean": plain(result.mean), "stderr": plain(result.stderr),
               "finite": {m: int(np.isfinite(result.lds[m]).sum()) for m in result.mean}, "gtol": result.gtol,
               "max_grad_norm": float(np.nanmax(result.grad_norms)) if np.any(np.isfinite(result.grad_norms))
               else None, "seconds": result.seconds}
        out.update(_retraining(result))
        if details:
            out.update(spread=result.spread.tolist(), lds={m: v.tolist() for m, v in result.lds.items()}, subset_rows=result.subsets.tolist(),
                       predicted={m: v.tolist() for m, v in result.predicted.items()},
                       actual=result.actual.tolist(), base=result.base.tolist())
    elif isinstance(result, LOOEvaluation):
        out = {"metric": "loo", "k": int(len(result.indices)), "n_train": result.n_train,
               "n_test": int(result.actual.shape[0]), "pearson": plain(result.pearson),
               "spearman": plain(result.spearman), "pooled_pearson": plain(result.pooled_pearson),
               "pooled_spearman": plain(result.pooled_spearman),
               "max_grad_norm": float(np.nanmax(result.grad_norms)) if np.any(np.isfinite(result.grad_norms))
               else None, "seconds": result.seconds}
        out.update(_retraining(result))
        if details:
            out.update(spread=result.spread.tolist(), indices=result.indices.tolist(), actual=result.actual.tolist(),
                       predicted={m: v.tolist() for m, v in result.predicted.items()})
    elif isinstance(result, MislabelResult):
        out = {"metric": "mislabel", "fraction": result.fraction, "flipped_count": int(result.flipped.size),
               "n_train": int(result.curves["random"].size), "top": list(result.top),
               "found": result.found, "auc": result.auc, "refit_grad_norm": result.refit_grad_norm,
               "seconds": result.seconds}
        if details:
            out.update(flipped=result.flipped.tolist(),
                       rankings={m: r.tolist() for m, r in result.rankings.items()})
    else:
        raise ValueError("summary(result=%s): pass the result of influence.evaluate.lds, loo or mislabel"
                         % type(result).__name__)
    return out


# ------------------------------------------------------------------------------------ pictures
_LABELS = {"influence": "influence (H⁻¹)", "grad_dot": "grad-dot (H → I)", "random": "random",
           "self_influence": "self-influence", "training_loss": "training loss"}


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("drawing the PNG needs matplotlib (%s); pip install matplotlib, or drop the "
                          "picture (--plot)" % str(e).splitlines()[0])
    return plt


def plot(result, path, title=None):
    """Draw ``result`` (of :func:`lds`, :func:`loo` or :func:`mislabel`) as a PNG at ``path``:
    per-test-point LDS (lds), predicted vs actual loss change (loo), detection curves (mislabel).
    Needs matplotlib (ImportError with the fix otherwise)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        if isinstance(result, LDSResult):
            order = np.argsort(-result.lds["influence"], kind="mergesort")
            x = np.arange(1, order.size + 1)
            for m in result.lds:
                ax.plot(x, result.lds[m][order], ".", ms=4,
                        label="%s: %.3f ± %.3f" % (_LABELS.get(m, m), result.mean[m], result.stderr[m]))
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set_xlabel("test point (sorted by the influence scores' LDS)")
            ax.set_ylabel("LDS (Spearman over %d subsets)" % result.subsets.shape[0])
            default = "Linear datamodeling score (%s)" % result.target
        elif isinstance(result, LOOEvaluation):
            for m in ("influence", "grad_dot"):
                pred = result.predicted[m].mean(axis=0)
                pred = pred / (np.max(np.abs(pred)) or 1.0) * np.max(np.abs(result.actual.mean(axis=0)))
                ax.plot(result.actual.mean(axis=0), pred, "o", ms=4,
                        label="%s: Pearson %.3f" % (_LABELS[m], result.pearson[m]))
            lim = np.max(np.abs(result.actual.mean(axis=0))) or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8)
            ax.set_xlabel("actual test-loss change (retrained without the point)")
            ax.set_ylabel("predicted (grad-dot rescaled to the same range)")
            default = "Leave-one-out: %d removed points" % len(result.indices)
        elif isinstance(result, MislabelResult):
            for m, c in result.curves.items():
                ax.plot(np.arange(1, c.size + 1) / float(c.size), c, label="%s: AUC %.3f" % (_LABELS[m], result.auc[m]))
            ax.set_xlabel("fraction of the training data checked")
            ax.set_ylabel("fraction of flipped labels found")
            default = "Mislabel detection (%.0f %% flipped)" % (100 * result.fraction)
        else:
            raise ValueError("plot(result=%s): pass the result of influence.evaluate.lds, loo or mislabel"
                             % type(result).__name__)
        ax.set_title(title or default)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
