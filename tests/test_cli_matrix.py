"""``influence score`` with many test points: the score matrix as .npy (chunk by chunk, resumable,
nothing partial), aggregate rankings in the table and the CSV, the cost line of the default "all"."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import influence.scoring.scores
from influence.cli import MATRIX_TEST_POINTS

from conftest import fail_chunks_from
from test_cli import ROOT, run, trained, workdir  # noqa: F401 - the tiny trained model of the CLI tests

CHUNK = "128"
#: Aggregates: sums of the same float64 scores grouped per chunk instead of over the matrix at once,
#: relative to the largest |score| times the number of test points.
AGGREGATE_RTOL = 1e-12


def _base(workdir, trained, *extra):
    return ["score", "--model", trained, "--train", str(workdir / "train.npz"), "--test", str(workdir / "test.npz"),
            "--chunk-size", CHUNK, "--quiet"] + list(extra)


def _api_scores(trained, workdir, rows=None):
    model = influence.CNTKModel.load(trained, l2=1e-2)
    train = influence.load_npz(str(workdir / "train.npz"))
    test = influence.load_npz(str(workdir / "test.npz"))
    if rows is not None:
        test = test.subset(np.asarray(rows))
    return influence.influence_scores(model, train, test, solver="direct", chunk_size=int(CHUNK),
                                      check_optimum=False), test


def _close(got, expected, matrix):
    atol = AGGREGATE_RTOL * np.abs(matrix).max() * len(matrix)
    np.testing.assert_allclose(got, expected, rtol=AGGREGATE_RTOL, atol=atol)


def test_all_test_points_write_the_matrix_and_aggregates(trained, workdir, tmp_path, capsys):
    out = str(tmp_path / "s.csv")
    code, stdout, err = run(_base(workdir, trained, "--out", out, "--top", "3"), capsys)
    assert code == 0, err
    expected, test = _api_scores(trained, workdir)
    assert len(test) == 20 > MATRIX_TEST_POINTS
    cost = [line for line in err.splitlines() if line.startswith("influence: cost:")]
    assert len(cost) == 1 and "all 20 test points (the default --test-index) x 300 training points = 6000 scores" \
        in cost[0] and "estimated ~" in cost[0] and "s for scoring" in cost[0] and "proceeding" in cost[0]
    matrix = np.load(str(tmp_path / "s.npy"))
    assert matrix.dtype == np.float64 and matrix.shape == (20, 300)
    np.testing.assert_array_equal(matrix, expected)                # the API's matrix, to the bit
    assert not os.path.exists(out + ".partial")
    table = np.genfromtxt(out, delimiter=",", names=True)
    assert table.shape == (300,) and np.array_equal(table["train_index"], np.arange(300))
    _close(table["influence_sum"], matrix.sum(axis=0), matrix)
    _close(table["influence_mean"], matrix.mean(axis=0), matrix)
    delta = influence.predicted_loss_change(matrix, 300)
    _close(table["predicted_loss_change_sum"], delta.sum(axis=0), delta)
    _close(table["predicted_loss_change_mean"], delta.mean(axis=0), delta)
    assert table["rank"][np.argmax(delta.mean(axis=0))] == 1
    for label in np.unique(test.y):
        rows = test.y == label
        _close(table["influence_mean_class_%d" % label], matrix[rows].mean(axis=0), matrix)
        _close(table["predicted_loss_change_mean_class_%d" % label], delta[rows].mean(axis=0), delta)
    # the printed table: overall and per class, ranked by the mean change
    assert "20 test points: training points ranked by the mean" in stdout and "  overall:" in stdout
    best = int(np.argmax(delta.mean(axis=0)))
    first = stdout.split("  overall:")[1].splitlines()[2].split()
    assert int(first[1]) == best and int(first[4]) == int(np.argmin(delta.mean(axis=0)))
    for label in np.unique(test.y):
        assert "test points of class %d (%d):" % (label, (test.y == label).sum()) in stdout
    assert "saved %s (20 x 300 float64" % str(tmp_path / "s.npy") in stdout


def test_json_summary_and_explicit_matrix_with_few_test_points(trained, workdir, tmp_path, capsys):
    path = str(tmp_path / "few.npy")
    code, stdout, err = run(_base(workdir, trained, "--test-index", "2", "7", "11", "--matrix", path, "--json"),
                            capsys)
    assert code == 0, err
    assert "influence: cost:" not in err                             # the test points were chosen
    summary = json.loads(stdout)
    expected, test = _api_scores(trained, workdir, [2, 7, 11])
    matrix = np.load(path)
    np.testing.assert_array_equal(matrix, expected)
    assert summary["matrix"] == path and summary["matrix_shape"] == [3, 300] and summary["out"] is None
    delta = influence.predicted_loss_change(matrix, 300).mean(axis=0)
    helpful = summary["aggregate"]["helpful"]
    assert helpful[0][0] == int(np.argmax(delta)) and helpful[0][2] == pytest.approx(delta.max(), rel=1e-12)
    classes = [c["class"] for c in summary["aggregate"]["per_class"]]
    assert classes == sorted(set(test.y.tolist()))
    assert not os.path.exists(path + ".partial")


def test_a_failure_leaves_no_matrix_and_resume_gives_the_same_file(trained, workdir, tmp_path, capsys,
                                                                     monkeypatch):
    ref, out = str(tmp_path / "ref.csv"), str(tmp_path / "s.csv")
    assert run(_base(workdir, trained, "--out", ref), capsys)[0] == 0
    with monkeypatch.context() as m:
        fail_chunks_from(m, 1, "disk on fire")
        code, _, err = run(_base(workdir, trained, "--out", out), capsys)
    assert code == 1 and "disk on fire" in err and "--resume" in err, err
    assert not os.path.exists(out) and not os.path.exists(str(tmp_path / "s.npy"))     # nothing partial
    partial = sorted(os.listdir(out + ".partial"))
    assert "matrix.npy" in partial and len([f for f in partial if f.startswith("matrix-chunk-")]) == 1
    code, stdout, err = run(_base(workdir, trained, "--out", out, "--resume", "--json"), capsys)
    assert code == 0, err
    assert json.loads(stdout)["chunks"] == {"chunks": 3, "computed": 2, "resumed": 1}
    assert open(str(tmp_path / "s.npy"), "rb").read() == open(str(tmp_path / "ref.npy"), "rb").read()
    assert open(out, "rb").read() == open(ref, "rb").read()
    assert not os.path.exists(out + ".partial")


@pytest.mark.parametrize("extra,needle", [
    (["--matrix", "m.txt"], "--matrix m.txt: the score matrix is written as a .npy file; pass a path ending in .npy"),
    (["--out", "s.txt"], "--out s.txt: 'influence score' writes .csv, .json or .npy files (the extension decides"),
    (["--out", "s.npy", "--matrix", "m.npy"], "--out s.npy is the score matrix already (.npy); drop --matrix"),
    (["--out", "same.npy", "--matrix", "same.npy"], "--matrix same.npy is also --out"),
    (["--matrix", "nofolder/m.npy"], "--matrix nofolder/m.npy: folder"),
])
def test_bad_matrix_paths_are_one_line_usage_errors(trained, workdir, tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(str(tmp_path))
    code, _, err = run(_base(workdir, trained, *extra), capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(str(tmp_path)) == []                           # nothing written


def test_regression_skips_per_class_aggregates(workdir, tmp_path, capsys, cntk):
    x, y = influence.load_digits()
    target = (y[:300] / 9.0).astype(np.float64)
    np.savez(str(tmp_path / "train.npz"), x=x[:300], y=target)
    np.savez(str(tmp_path / "test.npz"), x=x[1500:1512], y=(y[1500:1512] / 9.0).astype(np.float64))
    model = str(tmp_path / "reg.cntk")
    assert run(["train", "--data", str(tmp_path / "train.npz"), "--l2", "1e-2", "--out", model, "--quiet"],
               capsys)[0] == 0
    out = str(tmp_path / "r.csv")
    code, stdout, err = run(["score", "--model", model, "--train", str(tmp_path / "train.npz"), "--test",
                             str(tmp_path / "test.npz"), "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert "per class: skipped (the test labels are not integer classes)" in stdout
    header = open(out).readline()
    assert "influence_mean," in header and "class" not in header
    assert np.load(str(tmp_path / "r.npy")).shape == (12, 300)


def test_matrix_run_without_a_locale(trained, workdir, tmp_path):
    """Python 3.6 opens stdio as ASCII under env -i: the matrix run prints in ASCII and exits 0."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "influence"] + _base(workdir, trained, "--out", "s.csv"),
                          env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    err = proc.stderr.decode("ascii")
    assert proc.returncode == 0, err
    assert "influence: cost: all 20 test points" in err and "x 300 training points" in err
    assert "ranked by the mean" in proc.stdout.decode("ascii")
    assert np.load(str(tmp_path / "s.npy")).shape == (20, 300)


def test_matrix_on_a_local_cluster_is_identical(trained, workdir, tmp_path, capsys):
    pytest.importorskip("distributed")
    single, clustered = str(tmp_path / "single.csv"), str(tmp_path / "clustered.csv")
    # both in fresh processes, like the workers (see test_cli.test_score_on_a_local_cluster_is_identical)
    env = dict(os.environ, PYTHONPATH=ROOT)
    for argv in (_base(workdir, trained, "--out", single),
                 _base(workdir, trained, "--out", clustered, "--cluster", "local:2")):
        proc = subprocess.run([sys.executable, "-m", "influence"] + argv, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, universal_newlines=True)
        assert proc.returncode == 0, proc.stderr
    assert open(str(tmp_path / "single.npy"), "rb").read() == open(str(tmp_path / "clustered.npy"), "rb").read()
    assert open(single, "rb").read() == open(clustered, "rb").read()
