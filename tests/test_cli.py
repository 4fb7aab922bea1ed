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
