"""How good are the scores? Leave-one-out, the linear datamodeling score and mislabel detection,
each against baselines scored through the same code.

Definitions (docs/concepts-influence.md): R(w) = (1/n) Σ_i ℓ(z_i, w) + (λ/2)‖w‖², w* = argmin R,
H = ∇²R(w*), I_up,loss(z_i, z_t) = −g_tᵀ H⁻¹ g_i (what :func:`influence.influence_scores` returns).

**Baselines** (the ``methods`` of every result): ``"influence"`` (I_up,loss); ``"grad_dot"`` — the
same formula with H replaced by the identity, −g_tᵀ g_i, computed by the same scoring code with
g_t in place of s_test; ``"random"`` — standard normal scores drawn from the seed. Mislabel detection
adds ``"training_loss"`` (rank by ℓ(z_i, w)) and ranks by self-influence g_iᵀ H⁻¹ g_i, its
grad-dot counterpart ‖g_i‖², training loss and a random permutation.

More methods on request, scored by the same code and sharing the retrainings: a damping sweep
(``dampings=["0.01x", "0.1x", "1x", "10x"]``: "x" = the mean eigenvalue of the curvature, by seeded
Hutchinson probes) and TracIn-CP over saved checkpoints (``checkpoints``, ``learning_rates``:
−Σ_k lr_k g_t(w_k)ᵀ g_i(w_k), Pruthi et al. 2020). Every result gives each method's seconds per test point.

**Linear datamodeling score** (Park et al. 2023). Draw m subsets S_j of s = ⌊α·n⌋ training points
without replacement (:func:`draw_subsets`, from ``seed``); retrain on each, warm-started from w*, on
the subset's own objective R_S(w) = (1/s) Σ_{i∈S} ℓ(z_i, w) + (λ/2)‖w‖² to the gradient tolerance
``gtol`` (the full-data reference is first re-tightened to the same ``gtol``); record each test
point's loss f_t(S) = ℓ(z_t, w_S) (or its margin). R_S is R with the weights ε_i = 1/s − 1/n on the
kept points and ε_i = −1/n on the removed ones, so to first order (dℓ_t/dε_i = I_up,loss(z_i, z_t))::

    f̂_t(S) = ℓ(z_t, w*) + Σ_i ε_i I_ti = ℓ(z_t, w*) + (1/s) Σ_{i∈S} I_ti − (1/n) Σ_i I_ti
           = ℓ(z_t, w*) − (1/s) Σ_{i∉S} I_ti + (1/s − 1/n) Σ_i I_ti

With the 1/n objective of leave-one-out ((1/n) Σ_{i∈S} ℓ_i, see :mod:`influence.evaluate.leave_one_out`) the same
argument gives f̂_t(S) = ℓ(z_t, w*) − (1/n) Σ_{i∉S} I_ti: a loss change is predicted by −Σ I_up,loss/n
over the REMOVED points. Since every subset has the same size s, the two predictions differ by a
positive factor n/s and a constant per test point, and Spearman's correlation ignores both: the LDS
is the same. LDS_t = Spearman over the m subsets of (f̂_t(S_j), f_t(S_j)); reported: the mean over
test points and its standard error (sample standard deviation / √T; test points whose measured
values are constant over the subsets give NaN and are left out, and counted).

The margin option: for a cross-entropy loss ℓ = −log p_y, the logit margin is
m = log p_y − log(1 − p_y) = −log(e^ℓ − 1), a decreasing function of ℓ with dm/dℓ = −1/(1 − p_y);
its influence is I_up,margin = −I_up,loss / (1 − p_y(w*)). Per test point the margin's ranks are the
loss's reversed on both sides, so its LDS equals the loss's: the option reports values in the units
researchers use, not a different score.

**Leave-one-out** (:func:`loo`): :func:`influence.verify_loo` for many test points at once: k
training points (half with the largest mean |I_up,loss|, half at random) removed one at a time,
the retrainings shared by every test point; predicted Δ_ti = −I_ti/n vs actual ℓ(z_t, w*_{−i}) −
ℓ(z_t, w*), Pearson/Spearman of the means over test points and pooled over all pairs.

**Mislabel detection** (:func:`mislabel`): flip ⌊fraction·n⌋ labels to another class (seeded), refit
(warm start), rank the training points; the detection curve is the fraction of flipped labels among
the first c checked, c = 1..n; reported: the fraction found in the top k % and the area under the
curve (x = c/n; random ≈ 0.5, perfect = 1 − fraction/2).

**Retraining modes** (``retrain=``): ``"warm"`` as above (L-BFGS from the re-tightened optimum);
``"proximal"`` minimises the proximal Bregman response objective from the trained weights
(:mod:`influence.evaluate.proximal`: what influence on the damped Gauss-Newton matrix predicts off an
optimum); ``"scratch"`` re-initialises from seeds and trains with the model's recipe, ``seeds`` runs per
subset averaged (:mod:`influence.evaluate.scratch`); ``"auto"`` (default) is warm where
:func:`influence.check_optimum` passes and proximal otherwise. Results name the mode used.

The retrainings are chunks of :func:`influence.scoring.run_chunks` (``chunk_size`` subsets each):
with ``folder`` they are checkpointed (:class:`influence.jobs.Checkpoint`), ``resume=True``
continues an interrupted run with exactly the same numbers, and ``executor`` (an
:class:`influence.dask.DaskExecutor`, or a ``run_chunks`` executor callable) retrains them on Dask
workers. The model's weights are restored bit-identically afterwards, also on errors.

Modules: one per measure (``datamodeling``: :func:`lds`; ``leave_one_out``: :func:`loo` and
:func:`influence.verify_loo`; ``mislabeled``: :func:`mislabel`), the scores they compare
(``baselines``), the retraining job they share (``retrain``), the array measures (``metrics``) and
the reports (``report``). The top layer below the CLI: it may import everything but ``cli``.
"""
from .baselines import METHODS, baseline_scores, method_names, parse_dampings, tracin_scores
from .datamodeling import LDS_GTOL, LDSResult, lds
from .leave_one_out import LOO_GTOL, LOOEvaluation, LOOResult, loo, verify_loo
from .metrics import (detection_curve, draw_subsets, explain_correlation, flip_labels, linear_datamodeling_score,
                      mean_and_error, pearson, spearman, subset_predictions)
from .mislabeled import MISLABEL_TOP, MislabelResult, mislabel
from .report import plot, summary
from .proximal import BREGMAN_LOSSES, bregman, proximal_objective, proximal_retrain
from .retrain import RETRAIN_MAXITER, RETRAIN_MODES
from .scratch import LEARNERS, Recipe, parse_recipe, reinitialise, scratch_train

__all__ = ["lds", "loo", "mislabel", "LDSResult", "LOOEvaluation", "MislabelResult", "draw_subsets",
           "subset_predictions", "linear_datamodeling_score", "mean_and_error", "baseline_scores",
           "flip_labels", "detection_curve", "plot", "summary", "METHODS", "LDS_GTOL", "MISLABEL_TOP",
           "RETRAIN_MAXITER", "RETRAIN_MODES", "proximal_retrain", "proximal_objective", "bregman", "BREGMAN_LOSSES",
           "scratch_train", "reinitialise", "parse_recipe", "Recipe", "LEARNERS", "tracin_scores", "parse_dampings",
           "method_names", "explain_correlation"]
