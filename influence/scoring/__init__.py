"""Influence scores: s_test, the scores of every training point (forward-difference or gradient
kernels), self-influence, the chunked run over the training rows and the score matrix of many
test points. Imports fitting, solvers, curvature, adapters, data and the shared helpers."""
from .scores import (s_test, STest, influence_scores, predicted_loss_change, self_influence,
                     directional_derivatives)
from .chunks import run_chunks, chunk_bounds, ChunkRetryWarning, DEFAULT_CHUNK_SIZE, CHUNK_RETRIES
from .kernels import ForwardStep, forward_steps, forward_differences, gradient_blocks, chunk_scores
from .matrix import ScoreAggregates, MatrixCheckpoint, MATRIX_DTYPE
from .choice import CURVATURES, Curvature, check_curvature, choose_curvature

__all__ = ["s_test", "STest", "influence_scores", "predicted_loss_change", "self_influence",
           "directional_derivatives", "run_chunks", "chunk_bounds", "ChunkRetryWarning",
           "DEFAULT_CHUNK_SIZE", "CHUNK_RETRIES", "ForwardStep", "forward_steps", "forward_differences",
           "gradient_blocks", "chunk_scores", "ScoreAggregates", "MatrixCheckpoint", "MATRIX_DTYPE", "CURVATURES",
           "Curvature", "check_curvature", "choose_curvature"]
