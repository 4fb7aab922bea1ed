"""The command line end to end (score, self, verify) on a model with two feature inputs, data in the
``.npz`` layout ``x.<input name>`` (needs CNTK)."""
import json

import numpy as np

import influence
from influence.data import save_npz
from cntk_nets import two_input_network
from test_cli import run

#: CLI scores vs the API's on the same model, data and solver (cg; float64): the same computation.
CLI_API_RTOL = 1e-8
L2 = 0.01


def _two_input_files(C, d):
    z, a, b, y = two_input_network(50, np.float64, hidden=4)
    influence.fit(influence.CNTKModel(z, l2=L2), ({"a": a[:40], "b": b[:40]}, y[:40]), gtol=1e-8)
    path = str(d / "two.model")
    z.save(path)
    save_npz(str(d / "train.npz"), {"a": a[:40], "b": b[:40]}, y[:40])
    save_npz(str(d / "test.npz"), {"a": a[40:], "b": b[40:]}, y[40:])
    return path


def test_score_self_verify_on_a_two_input_model(cntk, tmp_path, capsys):
    path = _two_input_files(cntk, tmp_path)
    train_path, test_path = str(tmp_path / "train.npz"), str(tmp_path / "test.npz")
    common = ["--model", path, "--train", train_path, "--l2", str(L2), "--damping", "0.01", "--quiet"]
    out_csv = str(tmp_path / "x.csv")
    code, out, err = run(["score"] + common + ["--test", test_path, "--test-index", "1", "3", "--solver", "cg",
                                               "--json", "--out", out_csv], capsys)
    assert code == 0, err
    assert json.loads(out)["out"] == out_csv
    table = np.genfromtxt(out_csv, delimiter=",", names=True)
    assert table.shape == (2 * 40,)
    model = influence.CNTKModel.load(path, l2=L2)
    train, test = influence.load_npz(train_path), influence.load_npz(test_path).subset(np.array([1, 3]))
    assert set(train.x) == {"a", "b"}
    expected = influence.influence_scores(model, train, test, damping=0.01, check_optimum=False)
    got = table["influence"].reshape(2, 40)
    np.testing.assert_allclose(got, expected, rtol=CLI_API_RTOL, atol=CLI_API_RTOL * np.abs(expected).max())

    code, out, err = run(["self"] + common + ["--top", "3"], capsys)
    assert code == 0, err
    assert "most likely mislabeled" in out

    code, out, err = run(["verify"] + common + ["--test", test_path, "--test-index", "1", "--retrainings", "2",
                                                "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["k"] == 2 and np.isfinite(res["pearson"])
