"""The score matrix of many test points written chunk by chunk (influence.scoring.matrix, ScoreJob(matrix=...)),
on the NumPy reference model: the file equals influence_scores' matrix, a resume after a failure gives
the same bytes, a failure leaves no file, and the running aggregates equal NumPy's over the matrix."""
import os
import warnings

import numpy as np
import pytest

import influence
import influence.scoring.scores
from influence import jobs
from influence.scoring.chunks import ChunkRetryWarning, run_chunks
from influence.scoring.matrix import MATRIX_DTYPE, ScoreAggregates
from influence.models import SoftmaxRegression

from conftest import fail_chunks_from, make_classification

CHUNK = 100
N_TRAIN, N_TEST = 550, 14
#: Aggregates are sums of the same float64 numbers in another grouping than NumPy's over the matrix:
#: equal to this relative to the largest |score| (sums of scores of both signs cancel).
AGGREGATE_RTOL = 1e-12


def _close(got, expected, scale):
    np.testing.assert_allclose(got, expected, rtol=AGGREGATE_RTOL, atol=AGGREGATE_RTOL * N_TEST * scale)


@pytest.fixture()
def problem(tmp_path):
    x, y = make_classification(N_TRAIN + N_TEST, 5, 3, seed=5)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x[:N_TRAIN], y=y[:N_TRAIN])
    train = influence.load_npz(path)
    model = SoftmaxRegression(5, 3, l2=1e-2)
    influence.fit(model, train)
    test = influence.Dataset(x[N_TRAIN:], y[N_TRAIN:])
    return model, train, test


def _reference(model, train, test, scoring="forward"):
    return influence.influence_scores(model, train, test, solver="direct", scoring=scoring, chunk_size=CHUNK)


def test_run_chunks_sink_gets_every_chunk_and_assembles_nothing():
    got = {}
    values, info = run_chunks(lambda a, b: np.arange(a, b, dtype=float)[None, :], 35, chunk_size=10,
                              sink=lambda a, b, v: got.setdefault((a, b), v.copy()))
    assert values is None and info == {"chunks": 4, "computed": 4, "resumed": 0}
    assert sorted(got) == [(0, 10), (10, 20), (20, 30), (30, 35)]
    assert np.array_equal(np.hstack([got[k] for k in sorted(got)])[0], np.arange(35.0))


@pytest.mark.parametrize("scoring", ["forward", "gradient"])
def test_matrix_file_equals_influence_scores(problem, tmp_path, scoring):
    model, train, test = problem
    ref = _reference(model, train, test, scoring)
    path = str(tmp_path / "m.npy")
    result = jobs.ScoreJob(model, train, test, folder=str(tmp_path / "p"), solver="direct", scoring=scoring,
                           chunk_size=CHUNK, matrix=path, groups=test.y).run()
    assert result.scores is None and result.matrix == path
    saved = np.load(path)
    assert saved.dtype == MATRIX_DTYPE and saved.shape == (N_TEST, N_TRAIN)
    assert np.array_equal(saved, ref)                       # the same chunks, the same bits
    assert not os.path.exists(str(tmp_path / "p"))
    agg, scale = result.aggregates, np.abs(ref).max()
    assert agg.complete
    _close(agg.sum, ref.sum(axis=0), scale)
    _close(agg.mean, ref.mean(axis=0), scale)
    delta = influence.predicted_loss_change(ref, N_TRAIN)
    _close(agg.loss_change(agg.sum), delta.sum(axis=0), scale / N_TRAIN)
    _close(agg.loss_change(agg.mean), delta.mean(axis=0), scale / N_TRAIN)
    assert agg.classes.tolist() == sorted(set(test.y.tolist()))
    for c, label in enumerate(agg.classes):
        rows = test.y == label
        assert agg.counts[c] == rows.sum()
        _close(agg.class_sum[c], ref[rows].sum(axis=0), scale)
        _close(agg.class_mean[c], ref[rows].mean(axis=0), scale)


def test_aggregate_without_a_file_or_groups(problem):
    model, train, test = problem
    ref = _reference(model, train, test)
    result = jobs.ScoreJob(model, train, test, solver="direct", chunk_size=CHUNK, aggregate=True).run()
    assert result.scores is None and result.matrix is None and result.aggregates.classes is None
    scale = np.abs(ref).max()
    _close(result.aggregates.sum, ref.sum(axis=0), scale)


def test_resume_after_a_failure_gives_the_same_file_and_a_failure_leaves_none(problem, tmp_path, monkeypatch):
    model, train, test = problem
    ref_path, path, folder = str(tmp_path / "ref.npy"), str(tmp_path / "m.npy"), str(tmp_path / "p")
    ref = jobs.ScoreJob(model, train, test, folder=str(tmp_path / "r"), solver="direct", chunk_size=CHUNK,
                        matrix=ref_path, groups=test.y).run()
    with monkeypatch.context() as m:
        fail_chunks_from(m, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ChunkRetryWarning)
            with pytest.raises(jobs.JobFailed, match="injected failure"):
                jobs.ScoreJob(model, train, test, folder=folder, solver="direct", chunk_size=CHUNK,
                              matrix=path, groups=test.y).run()
    assert not os.path.exists(path)                                    # nothing partial
    kept = sorted(os.listdir(folder))
    assert "matrix.npy" in kept and not any(f.startswith("chunk-") for f in kept)
    assert sorted(f for f in kept if f.startswith("matrix-chunk-")) == [
        "matrix-chunk-%012d-%012d.npy" % (a, a + CHUNK) for a in (0, CHUNK)]
    with pytest.raises(ValueError, match="differs in matrix_file"):   # a resume must also write the file
        jobs.ScoreJob(model, train, test, folder=folder, resume=True, solver="direct", chunk_size=CHUNK).run()
    got = jobs.ScoreJob(model, train, test, folder=folder, resume=True, solver="direct", chunk_size=CHUNK,
                        matrix=path, groups=test.y).run()
    assert got.chunks == {"chunks": 6, "computed": 4, "resumed": 2}
    assert open(path, "rb").read() == open(ref_path, "rb").read()
    assert not os.path.exists(folder)
    for name in ("sum", "class_sum"):                                  # resumed chunks aggregated too
        assert np.array_equal(getattr(got.aggregates, name), getattr(ref.aggregates, name))


def test_a_damaged_matrix_file_is_recomputed_on_resume(problem, tmp_path, monkeypatch):
    model, train, test = problem
    path, folder = str(tmp_path / "m.npy"), str(tmp_path / "p")
    with monkeypatch.context() as m:
        fail_chunks_from(m, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ChunkRetryWarning)
            with pytest.raises(jobs.JobFailed):
                jobs.ScoreJob(model, train, test, folder=folder, solver="direct", chunk_size=CHUNK,
                              matrix=path).run()
    with open(os.path.join(folder, "matrix.npy"), "wb") as f:
        f.write(b"not a npy file")
    got = jobs.ScoreJob(model, train, test, folder=folder, resume=True, solver="direct", chunk_size=CHUNK,
                        matrix=path).run()
    assert got.chunks["resumed"] == 0 and got.chunks["computed"] == 6
    assert np.array_equal(np.load(path), _reference(model, train, test))


def test_bad_arguments_are_refused(problem, tmp_path):
    model, train, test = problem
    with pytest.raises(ValueError, match="matrix=.*needs folder="):
        jobs.ScoreJob(model, train, test, matrix=str(tmp_path / "m.npy"))
    with pytest.raises(ValueError, match="groups has 3 labels for 14 test points"):
        ScoreAggregates(N_TEST, N_TRAIN, groups=[0, 1, 2])
    agg = ScoreAggregates(2, 5)
    with pytest.raises(ValueError, match=r"chunk 0:5 has shape \(1, 5\); expected \(2, 5\)"):
        agg.add(0, 5, np.zeros((1, 5)))


def test_ranking_orders_helpful_and_harmful():
    delta = np.array([0.0, 3.0, -1.0, 3.0, -5.0, 1.0])
    assert ScoreAggregates.ranking(delta, 2) == ([1, 3], [4, 2])
    assert ScoreAggregates.ranking(delta, 10) == ([1, 3, 5], [4, 2])
