"""The command line, end to end on a tiny trained model (needs CNTK for everything but usage errors)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from influence.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    import influence
    d = tmp_path_factory.mktemp("cli")
    x, y = influence.load_digits()
    np.savez(str(d / "train.npz"), x=x[:300], y=y[:300])
    np.savez(str(d / "test.npz"), x=x[1500:1520], y=y[1500:1520])
    return d


@pytest.fixture(scope="module")
def trained(workdir, cntk):
    model = str(workdir / "model.cntk")
    assert main(["train", "--data", str(workdir / "train.npz"), "--arch", "softmax", "--l2", "1e-2",
                 "--out", model, "--quiet"]) == 0
    return model


def test_train_writes_model_and_metadata(trained, workdir, capsys):
    meta = json.load(open(trained + ".json"))
    assert meta["loss"] == "cross_entropy" and meta["l2"] == 1e-2 and meta["fit"]["converged"]
    import influence
    model = influence.CNTKModel.load(trained, l2=1e-2)
    assert model.n_params == 64 * 10 + 10


def test_hvp_command_matches_the_api(trained, workdir, capsys):
    import influence
    v = np.random.RandomState(0).standard_normal(650)
    np.save(str(workdir / "v.npy"), v)
    out_path = str(workdir / "hv.npy")
    code, out, err = run(["hvp", "--model", trained, "--data", str(workdir / "train.npz"),
                          "--vector", str(workdir / "v.npy"), "--out", out_path, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    hv = np.load(out_path)
    model = influence.CNTKModel.load(trained, l2=1e-2)
    expected = influence.HessianOperator(model, influence.load_npz(str(workdir / "train.npz"))) @ v
    assert np.linalg.norm(hv - expected) <= 1e-3 * np.linalg.norm(expected)
    assert summary["n_params"] == 650 and "HVP" in summary["seconds"]


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "missing.npz", "--out", "m.cntk"], "no such file"),
    (["train", "--data", "{train}", "--arch", "mlp:0", "--out", "m.cntk"], "--arch"),
    (["train", "--data", "{train}", "--l2", "-1", "--out", "m.cntk"], "negative"),
    (["train", "--data", "{train}", "--out", "/no/such/folder/m.cntk"], "does not exist"),
    (["hvp", "--model", "{model}", "--data", "{train}", "--vector", "{train}"], "--vector"),
    (["hvp", "--model", "missing.cntk", "--data", "{train}", "--vector", "v.npy"], "no such file"),
    (["frobnicate"], "invalid choice"),
    (["train", "--data"], "expected one argument"),
])
def test_bad_usage_exits_2_with_one_line(argv, needle, workdir, request, capsys):
    model = request.getfixturevalue("trained") if "{model}" in argv else "model.cntk"
    argv = [a.format(train=str(workdir / "train.npz"), model=model) for a in argv]
    before = sorted(os.listdir(str(workdir)))
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
    assert sorted(os.listdir(str(workdir))) == before      # nothing written


def test_not_a_model_file(workdir, cntk, capsys):
    code, _, err = run(["hvp", "--model", str(workdir / "train.npz"), "--data", str(workdir / "train.npz"),
                        "--vector", str(workdir / "train.npz")], capsys)
    assert code == 2 and "not a CNTK model file" in err and len(err.strip().splitlines()) == 1


def test_python_dash_m_and_script_hide_cntk_noise(trained, workdir):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "influence", "info"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert proc.returncode == 0 and b"influence" in proc.stdout
    assert proc.stderr.strip() == b""


def test_score_command_matches_the_api(trained, workdir, capsys):
    import influence
    out_csv = str(workdir / "scores.csv")
    code, out, err = run(["score", "--model", trained, "--train", str(workdir / "train.npz"),
                          "--test", str(workdir / "test.npz"), "--test-index", "2", "7",
                          "--out", out_csv, "--quiet", "--chunk-size", "128"], capsys)
    assert code == 0, err
    assert "most helpful" in out and "most harmful" in out and "inverse HVP" in out
    table = np.genfromtxt(out_csv, delimiter=",", names=True)
    assert table.shape == (2 * 300,)
    model = influence.CNTKModel.load(trained, l2=1e-2)
    train = influence.load_npz(str(workdir / "train.npz"))
    test = influence.load_npz(str(workdir / "test.npz")).subset(np.array([2, 7]))
    expected = influence.influence_scores(model, train, test, chunk_size=128, check_optimum=False)
    # the API reads MODEL.json as the CLI does: the same objective without passing it, the same scores
    from_file = influence.CNTKModel.load(trained)
    assert from_file.l2 == 1e-2 and from_file.loss_name == "cross_entropy"
    np.testing.assert_array_equal(influence.influence_scores(from_file, train, test, chunk_size=128,
                                                             check_optimum=False), expected)
    with pytest.warns(UserWarning, match=r"l2=0.5 was given, but .*model.cntk.json says l2=0.01"):
        influence.CNTKModel.load(trained, l2=0.5)
    got = table["influence"].reshape(2, 300)
    assert np.array_equal(table["train_index"].reshape(2, 300)[0], np.arange(300))
    # same computation (the solver's float32 stagnation point and the forward step are deterministic)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(table["predicted_loss_change"], -table["influence"] / 300, rtol=1e-12)
    assert not os.path.exists(out_csv + ".partial")

    out_json = str(workdir / "scores.json")
    code, out, err = run(["score", "--model", trained, "--train", str(workdir / "train.npz"),
                          "--test", str(workdir / "test.npz"), "--test-index", "2", "--solver", "direct",
                          "--out", out_json, "--json", "--quiet"], capsys)
    assert code == 0, err
    summary, saved = json.loads(out), json.load(open(out_json))
    assert summary["solver"] == "direct" and summary["solutions"][0]["converged"]
    assert len(saved["influence"][0]) == 300 and saved["test_index"] == [2]


def test_self_and_verify_commands(trained, workdir, capsys):
    import influence
    out_csv = str(workdir / "ranking.csv")
    code, out, err = run(["self", "--model", trained, "--train", str(workdir / "train.npz"),
                          "--out", out_csv, "--top", "5", "--quiet"], capsys)
    assert code == 0, err
    assert "most likely mislabeled" in out
    table = np.genfromtxt(out_csv, delimiter=",", names=True)
    model = influence.CNTKModel.load(trained, l2=1e-2)
    expected = influence.self_influence(model, influence.load_npz(str(workdir / "train.npz")),
                                        check_optimum=False)
    np.testing.assert_allclose(table["self_influence"], expected, rtol=1e-10)
    assert sorted(table["rank"].astype(int).tolist()) == list(range(1, 301))
    assert table["rank"][np.argmax(expected)] == 1

    loo_csv = str(workdir / "loo.csv")
    code, out, err = run(["verify", "--model", trained, "--train", str(workdir / "train.npz"),
                          "--test", str(workdir / "test.npz"), "--test-index", "4", "--retrainings", "6", "--json",
                          "--quiet", "--out", loo_csv], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["k"] == 6 and res["pearson"] > 0.9 and res["retrain"] == "warm" and res["note"] is None
    # each measured change with its retraining noise (warm: |s·r_i| + |s·r_0|), in --json and in --out
    table = np.genfromtxt(loo_csv, delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert table["train_index"].tolist() == res["indices"] and len(res["noise"]) == 6
    np.testing.assert_array_equal(table["noise"], res["noise"])
    assert [str(v) == "True" for v in table["above_noise"]] == res["above_noise"]
    assert all(n >= 0 for n in res["noise"]) and sum(res["above_noise"]) >= 4
    code, _, err = run(["verify", "--model", trained, "--train", str(workdir / "train.npz"), "--test",
                        str(workdir / "test.npz"), "--test-index", "4", "--out", str(workdir / "loo.npy")], capsys)
    assert code == 2 and "'influence verify' writes .csv or .json files" in err


def test_score_usage_errors(trained, workdir, capsys):
    base = ["score", "--model", trained, "--train", str(workdir / "train.npz"),
            "--test", str(workdir / "test.npz")]
    for extra, needle in [(["--test-index", "99"], "out of range"),
                          (["--solver", "newton"], "invalid choice"),
                          (["--resume"], "--resume needs --out")]:
        code, _, err = run(base + extra, capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_score_on_a_local_cluster_is_identical(trained, workdir, capsys):
    pytest.importorskip("distributed")
    base = ["score", "--model", trained, "--train", str(workdir / "train.npz"), "--test",
            str(workdir / "test.npz"), "--test-index", "1", "--chunk-size", "100", "--quiet"]
    single, clustered = str(workdir / "single.csv"), str(workdir / "clustered.csv")
    # both runs as a user runs them, in fresh processes like the workers': CNTK in this test process has
    # already run other networks, and its float32 sums then differ from a fresh process's in the last bits
    env = dict(os.environ, PYTHONPATH=ROOT)
    for argv in (base + ["--out", single], base + ["--out", clustered, "--cluster", "local:2"]):
        proc = subprocess.run([sys.executable, "-m", "influence"] + argv, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, universal_newlines=True)
        assert proc.returncode == 0, proc.stderr
    assert open(single, "rb").read() == open(clustered, "rb").read()
    code, _, err = run(base + ["--cluster", "local:zero"], capsys)
    assert code == 2 and "local:N" in err


def test_a_reader_closing_the_pipe_ends_quietly(tmp_path):
    """``influence ... | head``: stdout closed early is exit 141 without a traceback or an
    'internal error' line (no 'Exception ignored' at interpreter exit either)."""
    import subprocess
    import sys
    env = dict(os.environ, LC_ALL="C")
    env.pop("LANG", None)
    proc = subprocess.Popen([sys.executable, "-m", "influence", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(tmp_path))
    proc.stdout.close()                       # the reader is gone before anything is written
    err = proc.stderr.read().decode("ascii", "replace")
    assert proc.wait() == 141, err
    assert "Traceback" not in err and "internal error" not in err and "Exception ignored" not in err, err
