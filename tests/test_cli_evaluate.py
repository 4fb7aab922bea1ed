"""``influence evaluate {lds,loo,mislabel}`` on a CNTK softmax (runs in .venv, never skips there):
results and files, subsets from --seed, --resume after Ctrl-C gives the same numbers, refusals
(exit 2, one line, nothing written), no locale."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import influence.evaluate as ev
from influence.evaluate import retrain as ev_retrain
from influence.cli import main

from test_cli import ROOT, run

#: A small problem: 16 pixel features, 120 training and 6 test digits (a 170-parameter softmax).
FEATURES, N_TRAIN, N_TEST = 16, 120, 6


@pytest.fixture(scope="module")
def files(tmp_path_factory, cntk):
    import influence
    d = tmp_path_factory.mktemp("clieval")
    x, y = influence.load_digits()
    x = x[:, 24:24 + FEATURES].astype(np.float64)
    np.savez(str(d / "train.npz"), x=x[:N_TRAIN], y=y[:N_TRAIN])
    np.savez(str(d / "test.npz"), x=x[1500:1500 + N_TEST], y=y[1500:1500 + N_TEST])
    model = str(d / "model.cntk")
    assert main(["train", "--data", str(d / "train.npz"), "--l2", "1e-2", "--dtype", "float64", "--gtol", "1e-8",
                 "--out", model, "--quiet"]) == 0
    return d, model


def _lds(d, model, *extra):
    return ["evaluate", "lds", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"),
            "--subsets", "5", "--quiet"] + list(extra)


def test_lds_writes_json_and_png_with_subsets_from_the_seed(files, tmp_path, capsys):
    d, model = files
    out, png = str(tmp_path / "lds.json"), str(tmp_path / "lds.png")
    code, text, err = run(_lds(d, model, "--seed", "3", "--out", out, "--plot", png), capsys)
    assert code == 0, err
    assert "influence (H^-1)" in text and "grad-dot (H -> I)" in text and "random" in text
    body = json.load(open(out, encoding="utf-8"))
    assert body["metric"] == "lds" and body["seed"] == 3 and body["subsets"] == 5
    assert np.array_equal(body["subset_rows"], ev.draw_subsets(N_TRAIN, 5, 0.5, 3))
    assert set(body["mean"]) == set(ev.METHODS) and len(body["lds"]["influence"]) == N_TEST
    assert body["mean"]["influence"] > 0.5
    assert open(png, "rb").read(4) == b"\x89PNG"
    assert not os.path.exists(out + ".partial")


def test_resume_after_ctrl_c_gives_the_same_numbers(files, tmp_path, capsys, monkeypatch):
    d, model = files
    whole, part = str(tmp_path / "whole.json"), str(tmp_path / "part.json")
    assert run(_lds(d, model, "--out", whole), capsys)[0] == 0
    real, calls = ev_retrain.retrain_columns, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(ev_retrain, "retrain_columns", interrupted)
    code, _, err = run(_lds(d, model, "--out", part), capsys)
    assert code == 130 and "interrupted" in err
    assert not os.path.exists(part) and os.path.isdir(part + ".partial")
    monkeypatch.setattr(ev_retrain, "retrain_columns", real)
    code, _, err = run(_lds(d, model, "--out", part, "--resume", "--json"), capsys)
    assert code == 0, err
    a, b = json.load(open(whole, encoding="utf-8")), json.load(open(part, encoding="utf-8"))
    for key in ("actual", "lds", "predicted", "subset_rows", "mean"):
        assert a[key] == b[key], key
    assert not os.path.exists(part + ".partial")


def test_loo_and_mislabel_report_every_baseline(files, capsys):
    d, model = files
    code, text, err = run(["evaluate", "loo", "--model", model, "--train", str(d / "train.npz"), "--test",
                           str(d / "test.npz"), "--test-index", "0-2", "--k", "4", "--quiet", "--json"], capsys)
    assert code == 0, err
    body = json.loads(text)
    assert body["k"] == 4 and body["n_test"] == 3 and set(body["pearson"]) == set(ev.METHODS)
    assert body["pearson"]["influence"] > 0.9
    code, text, err = run(["evaluate", "mislabel", "--model", model, "--train", str(d / "train.npz"),
                           "--fraction", "0.2", "--top", "10", "50", "--quiet"], capsys)
    assert code == 0, err
    for name in ("self-influence", "grad-dot", "training loss", "random", "top 10%", "top 50%", "AUC"):
        assert name in text


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "0"], "--alpha 0.0 must lie strictly between 0 and 1"),
    (["--subsets", "1"], "--subsets 1 must be at least 2"),
    (["--resume"], "--resume needs --out"),
    (["--plot", "x.jpg"], "--plot x.jpg: the picture is a PNG"),
    (["--out", "x.csv"], "--out x.csv: the results are JSON"),
    (["--gtol", "0"], "--gtol 0.0 must be positive"),
    (["--cluster", "local"], "local:N"),
    (["--test-index", "99"], "--test-index 99 is out of range"),
    (["--retrain", "warm", "--seeds", "3"], "--seeds 3: several seeds per subset need --retrain scratch"),
    (["--recipe", "adam"], "add --retrain scratch"),
    (["--retrain", "scratch", "--recipe", "adam lr=x"], "--recipe 'adam lr=x': lr='x' is not a number"),
    (["--retrain", "scratch", "--train-fn", "nowhere.py:train"], "--train-fn"),
])
def test_bad_flags_are_refused_in_one_line_and_write_nothing(files, tmp_path, capsys, monkeypatch, extra,
                                                            message):
    d, model = files
    monkeypatch.chdir(str(tmp_path))
    out = [] if "--out" in extra or "--resume" in extra else ["--out", "r.json"]
    code, _, err = run(_lds(d, model, *out) + extra, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err and os.listdir(str(tmp_path)) == []


def test_retraining_modes_on_the_command_line(files, capsys):
    d, model = files
    assert json.load(open(model + ".json", encoding="utf-8"))["recipe"] == "lbfgs"
    code, text, err = run(_lds(d, model, "--subsets", "4", "--alpha", "0.95", "--retrain", "proximal", "--damping",
                               "auto", "--curvature", "gauss-newton", "--json"), capsys)
    assert code == 0, err
    body = json.loads(text)
    assert body["retrain"] == "proximal" and body["damping"] > 0 and body["seeds"] == 1
    code, text, err = run(["evaluate", "loo", "--model", model, "--train", str(d / "train.npz"), "--test",
                           str(d / "test.npz"), "--k", "3", "--retrain", "scratch", "--seeds", "2", "--quiet"], capsys)
    assert code == 0, err
    assert "retrainings: scratch" in text and "seeds: 2 per retraining" in text
    code, text, err = run(["verify", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"),
                           "--test-index", "0", "--k", "3", "--retrain", "proximal", "--json", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(text)["retrain"] == "proximal"


def test_damping_sweep_and_tracin_on_the_command_line(files, tmp_path, capsys):
    d, model = files
    ckpt = str(tmp_path / "early.cntk")
    m = __import__("influence").CNTKModel.load(model)
    m.set_params(m.get_params() * 0.5)
    m.save(ckpt)
    code, text, err = run(_lds(d, model, "--subsets", "4", "--damping", "0.01", "0.1x", "1x", "--checkpoints", model,
                               ckpt, "--checkpoint-lr", "0.1"), capsys)
    assert code == 0, err
    for name in ("influence (H^-1)", "influence λ=0.1x", "influence λ=1x", "TracIn-CP", "s/test point"):
        assert name in text, text
    code, _, err = run(_lds(d, model, "--checkpoints", str(tmp_path / "nothing.cntk")), capsys)
    assert code == 2 and "--checkpoints" in err and len(err.strip().splitlines()) == 1, err


def test_bad_metric_flags_are_refused(files, tmp_path, capsys):
    d, model = files
    base = ["evaluate", "mislabel", "--model", model, "--train", str(d / "train.npz")]
    for extra, message in ((["--fraction", "1.5"], "--fraction 1.5"), (["--method", "lanczos"], "--rank K"),
                           (["--top", "0"], "--top 0.0")):
        code, _, err = run(base + extra, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run(["evaluate"], capsys)
    assert code == 2 and "choose a metric" in err
    code, _, err = run(["evaluate", "lds", "--model", model, "--train", str(d / "train.npz")], capsys)
    assert code == 2 and "--test" in err


def test_runs_without_a_locale(files, tmp_path):
    d, model = files
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "influence"] + _lds(d, model, "--subsets", "3"), env=env,
                          cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    err = proc.stderr.decode("ascii")
    assert proc.returncode == 0, err
    text = proc.stdout.decode("ascii")
    assert "||grad R_S||" in text and "mean LDS" in text


def test_cluster_retrains_a_cntk_model_on_dask_workers(files, tmp_path, capsys):
    pytest.importorskip("distributed")
    d, model = files
    here, there = str(tmp_path / "here.json"), str(tmp_path / "there.json")
    assert run(_lds(d, model, "--subsets", "3", "--out", here), capsys)[0] == 0
    code, _, err = run(_lds(d, model, "--subsets", "3", "--out", there, "--cluster", "local:1"), capsys)
    assert code == 0, err
    a, b = json.load(open(here, encoding="utf-8")), json.load(open(there, encoding="utf-8"))
    assert np.allclose(a["actual"], b["actual"], rtol=0, atol=1e-12)
    assert a["lds"] == b["lds"]
