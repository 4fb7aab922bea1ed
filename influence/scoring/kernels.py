"""Scoring kernels: the per-chunk computations shared by a local run (:mod:`influence.scores`) and
the Dask workers (:mod:`influence.cluster`).

For a direction s (an s_test vector or a Lanczos eigenvector) and training rows z_i::

    D_i(r) = (ℓ_i(w + r s) − ℓ_i(w − r s)) / 2r  ≈  g_iᵀ s            (central, O(r²))
    (16·D_i(r/4) − D_i(r)) / 15                  ≈  g_iᵀ s            (Richardson, O(r⁴))

:func:`forward_steps` chooses r per direction on a pilot subset, :func:`forward_differences`
evaluates any rows with those steps (batched forward passes; both live in
:mod:`influence.curvature.forward`, which the Fisher product shares), :func:`gradient_blocks` yields
per-example gradients block by block (the reference path), and :func:`chunk_scores` is one chunk of
g_iᵀ s_j for either path. The result for a row depends only on the row, the step and the batching
within the chunk, so chunked, resumed and clustered runs agree to the bit.
"""
import numpy as np

from ..curvature.forward import (FORWARD_STENCIL, PILOT_ROWS, ForwardStep, forward_differences,  # noqa: F401
                                 forward_steps, pilot_subset, validated)

__all__ = ["ForwardStep", "forward_steps", "forward_differences", "gradient_blocks", "chunk_scores",
           "PILOT_ROWS", "FORWARD_STENCIL", "GRADIENT_CHUNK"]

#: Training rows per block of per-example gradients (memory: block × d floats).
GRADIENT_CHUNK = 256


def gradient_blocks(model, train, a, b, batch_size):
    """Per-example gradients of rows a..b in blocks of GRADIENT_CHUNK rows (memory: block × d)."""
    with model.preserving_params():
        for start in range(a, b, GRADIENT_CHUNK):
            yield model.per_example_grads(train.subset(slice(start, min(start + GRADIENT_CHUNK, b))),
                                          batch_size)


def chunk_scores(model, train, vectors, scoring, steps, start, stop, batch_size=None):
    """g_iᵀ vectors[j] for the training rows start..stop, float64 (m, stop − start): one chunk of a
    scoring run, here or on a cluster worker. ``scoring="forward"``: forward differences with the
    given ``steps``; ``"gradient"``: per-example gradients in blocks of GRADIENT_CHUNK rows."""
    if scoring == "forward":
        return forward_differences(model, train.subset(slice(start, stop)), vectors, steps, batch_size)
    return np.hstack([vectors @ G.T for G in gradient_blocks(model, train, start, stop, batch_size)])
