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
from influence.cli import main, plans

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
                           str(d / "test.npz"), "--test-index", "0-2", "--retrainings", "4", "--quiet", "--json"], capsys)
    assert code == 0, err
    body = json.loads(text)
    assert body["k"] == 4 and body["n_test"] == 3 and set(body["pearson"]) == set(ev.METHODS)
    assert body["pearson"]["influence"] > 0.9
    code, text, err = run(["evaluate", "mislabel", "--model", model, "--train", str(d / "train.npz"),
                           "--fraction", "0.2", "--top-percent", "10", "50", "--quiet"], capsys)
    assert code == 0, err
    for name in ("self-influence", "grad-dot", "training loss", "random", "top 10%", "top 50%", "AUC"):
        assert name in text


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "0"], "--alpha 0.0 must lie strictly between 0 and 1"),
    (["--subsets", "1"], "--subsets 1 must be at least 2"),
    (["--resume"], "--resume needs --out"),
    (["--plot", "x.jpg"], "--plot x.jpg: the picture is a PNG"),
    (["--out", "x.csv"], "--out x.csv: 'influence evaluate' writes .json files"),
    (["--gtol", "0"], "--gtol 0.0 must be positive"),
    (["--cluster", "local"], "local:N"),
    (["--test-index", "99"], "--test-index 99 is out of range"),
    (["--retrain", "warm", "--seeds", "3"], "--seeds 3: several seeds per subset need --retrain scratch"),
    (["--retrain", "scratch", "--seeds", "0"], "--seeds 0 must be a positive integer"),
    (["--retrain", "cold"], "argument --retrain: invalid choice: 'cold'"),
    (["--recipe", "adam"], "--recipe says how to retrain from scratch, but --retrain is auto; add --retrain scratch"),
    (["--retrain", "scratch", "--recipe", "adam lr=x"], "--recipe adam lr=x: lr='x' is not a number"),
    (["--retrain", "scratch", "--recipe", "adamw"], "--recipe adamw: start with a learner"),
    (["--retrain", "scratch", "--train-fn", "nowhere.py:train"], "--train-fn nowhere.py: no such file"),
    (["--retrain", "scratch", "--train-fn", "train.py"], "--train-fn train.py is not FILE.py:NAME"),
    (["--retrain", "scratch", "--init", "nothing.cntk"], "--init nothing.cntk: no such file"),
    (["--damping", "1x", "auto"], "--damping 1x auto: only the first value may be auto"),
    (["--damping", "-1x"], "'-1x': a multiple of the mean eigenvalue is >= 0"),
    (["--damping", "lots"], "'lots' is not a number, 'auto' or a multiple of the mean eigenvalue"),
    (["--damping", "0.1x", "0.1x"], "--damping 0.1x 0.1x: a value is given twice"),
    (["--checkpoints", "nothing.cntk"], "--checkpoints nothing.cntk: no such file"),
    (["--checkpoint-lr", "0.1"], "--checkpoint-lr 0.1 without --checkpoints"),
])
def test_bad_flags_are_refused_in_one_line_and_write_nothing(files, tmp_path, capsys, monkeypatch, extra,
                                                            message):
    d, model = files
    monkeypatch.chdir(str(tmp_path))
    out = [] if "--out" in extra or "--resume" in extra else ["--out", "r.json"]
    code, _, err = run(_lds(d, model, *out) + extra, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err and os.listdir(str(tmp_path)) == []


def _log_train_fn(tmp_path):
    """A --train-fn that trains nothing and logs its seed and the weights it starts from."""
    path = tmp_path / "log_training.py"
    path.write_text("import numpy as np\n"
                    "def train(function, dataset, seed):\n"
                    "    start = sum(float(np.abs(p.value).sum()) for p in function.parameters)\n"
                    "    with open(__file__ + '.log', 'a') as f:\n"
                    "        f.write('%d %d %r\\n' % (seed, len(dataset), start))\n")
    return str(path), str(path) + ".log"


def test_proximal_retraining_on_the_command_line_is_the_librarys(files, capsys):
    import influence
    d, model = files
    assert json.load(open(model + ".json", encoding="utf-8"))["recipe"] == "lbfgs"      # influence train's
    code, text, err = run(_lds(d, model, "--subsets", "4", "--alpha", "0.95", "--retrain", "proximal", "--damping",
                               "auto", "--curvature", "gauss-newton", "--json"), capsys)
    assert code == 0, err
    body = json.loads(text)
    assert body["retrain"] == "proximal" and body["seeds"] == 1 and body["damping"] > 0
    m = influence.CNTKModel.load(model)
    train, test = influence.load_npz(str(d / "train.npz")), influence.load_npz(str(d / "test.npz"))
    lib = ev.lds(m, train, test, subsets=4, alpha=0.95, retrain="proximal", damping="auto", curvature="gauss-newton")
    assert np.isclose(body["damping"], lib.damping, rtol=1e-9)
    assert np.allclose([body["mean"][k] for k in ev.METHODS], [lib.mean[k] for k in ev.METHODS], atol=1e-9)


def test_scratch_retraining_with_seeds_is_named_in_the_report_and_the_plan(files, capsys, monkeypatch):
    d, model = files
    # the recipe influence train recorded (full-batch L-BFGS), two seeds per retraining
    monkeypatch.setattr(plans, "PLAN_SECONDS", -1.0)
    code, text, err = run(["evaluate", "loo", "--model", model, "--train", str(d / "train.npz"), "--test",
                           str(d / "test.npz"), "--retrainings", "3", "--retrain", "scratch", "--seeds", "2"], capsys)
    assert code == 0, err
    assert "retrainings: scratch (scores at λ = 0), 2 seeds each" in text and "seeds: 2 per retraining" in text
    assert "influence: plan: evaluate loo:" in err and "6 retrainings from scratch (the model's recipe, 2 seeds each;" \
        in err, err


def test_verify_retrains_by_the_flags(files, tmp_path, capsys):
    d, model = files
    base = ["verify", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"),
            "--test-index", "0", "1", "--retrainings", "2", "--quiet"]
    code, text, err = run(base + ["--retrain", "proximal", "--damping", "0.1", "--json"], capsys)
    assert code == 0, err
    body = json.loads(text)
    assert body["retrain"] == "proximal" and body["damping"] == 0.1 and body["seeds"] == 1
    code, text, err = run(base, capsys)
    assert code == 0, err
    assert "warm retraining (scores at λ = 0), 1 seed each" in text          # auto, at an optimum
    # scratch with your own loop from a saved initial model: every run starts from it; the same seeds (from
    # --seed) with and without each removed point (common random numbers)
    fn, log = _log_train_fn(tmp_path)
    zero = str(tmp_path / "zero.cntk")
    import influence
    m = influence.CNTKModel.load(model)
    m.set_params(np.zeros(m.n_params))
    m.save(zero)
    code, text, err = run(base + ["--retrain", "scratch", "--seeds", "2", "--seed", "5", "--train-fn", fn + ":train",
                                  "--init", zero], capsys)
    assert code == 0, err
    assert "scratch retraining (scores at λ = 0), 2 seeds each" in text
    rows = [line.split() for line in open(log, encoding="utf-8")]                # (all data + 2 removed) × 2 seeds
    assert sorted(int(r[0]) for r in rows) == [5, 5, 5, 6, 6, 6]
    assert sorted(int(r[1]) for r in rows) == [N_TRAIN - 1] * 4 + [N_TRAIN] * 2 and {float(r[2]) for r in rows} == {0.0}
    os.remove(log)
    code, _, err = run(base + ["--retrain", "scratch", "--train-fn", fn + ":train"], capsys)
    assert code == 0, err
    assert all(float(line.split()[2]) > 0 for line in open(log, encoding="utf-8"))      # seeded glorot, not zeros
    for extra, message in ((["--damping", "1x"], "'1x': a multiple of the mean eigenvalue works in 'evaluate lds' "
                                                 "and 'evaluate loo' only"),
                           (["--seeds", "2"], "--seeds 2: several seeds per subset need --retrain scratch"),
                           (["--retrain", "scratch", "--init", model + ".json"], "--init %s.json" % model)):
        code, _, err = run(base + extra, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_resume_refuses_a_changed_train_fn_file(files, tmp_path, capsys, monkeypatch):
    d, model = files
    fn, _ = _log_train_fn(tmp_path)
    out = str(tmp_path / "r.json")
    argv = _lds(d, model, "--subsets", "3", "--retrain", "scratch", "--train-fn", fn + ":train", "--out", out)
    real, calls = ev_retrain.retrain_columns, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(ev_retrain, "retrain_columns", interrupted)
    assert run(argv, capsys)[0] == 130 and os.path.isdir(out + ".partial")
    monkeypatch.setattr(ev_retrain, "retrain_columns", real)
    with open(fn, "a") as f:
        f.write("# another training loop\n")
    code, _, err = run(argv + ["--resume"], capsys)
    assert code == 2 and "train_fn_file" in err and len(err.strip().splitlines()) == 1, err


def test_damping_sweep_and_tracin_on_the_command_line(files, tmp_path, capsys):
    import influence
    d, model = files
    ckpt = str(tmp_path / "early.cntk")
    m = influence.CNTKModel.load(model)
    m.set_params(m.get_params() * 0.5)
    m.save(ckpt)
    code, text, err = run(_lds(d, model, "--subsets", "4", "--damping", "0.01", "0.1x", "1x", "--checkpoints", model,
                               ckpt, "--checkpoint-lr", "0.1"), capsys)
    assert code == 0, err
    for name in ("influence (H^-1)", "influence λ=0.1x", "influence λ=1x", "TracIn-CP", "s/test point",
                 "warm (scores at λ = 0.01)"):
        assert name in text, text
    # one multiple alone is the damping of the scores: 1x = 10 × auto (0.1 × the same mean eigenvalue)
    damping = {}
    for value in ("1x", "auto"):
        code, text, err = run(["evaluate", "loo", "--model", model, "--train", str(d / "train.npz"), "--test",
                               str(d / "test.npz"), "--retrainings", "2", "--damping", value, "--quiet", "--json"],
                              capsys)
        assert code == 0, err
        damping[value] = json.loads(text)["damping"]
    assert damping["auto"] > 0 and np.isclose(damping["1x"], 10 * damping["auto"], rtol=1e-9)
    other = str(tmp_path / "other.cntk")
    from influence.adapters.cntk import build_network
    build_network(FEATURES, 10, hidden=(3,)).save(other)
    for extra, message in ((["--checkpoints", other], "--checkpoints %s has %d parameters but --model 170"),
                           (["--checkpoints", model, ckpt, "--checkpoint-lr", "1", "2", "3"],
                            "--checkpoint-lr 1 2 3: give one learning rate per checkpoint (2) or one for all"),
                           (["--retrain", "scratch", "--init", other], "--init %s has %d parameters but --model 170")):
        code, _, err = run(_lds(d, model) + extra, capsys)
        message = message % (other, FEATURES * 3 + 3 + 3 * 10 + 10) if "%s" in message else message
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_bad_metric_flags_are_refused(files, tmp_path, capsys):
    d, model = files
    base = ["evaluate", "mislabel", "--model", model, "--train", str(d / "train.npz")]
    for extra, message in ((["--fraction", "1.5"], "--fraction 1.5"), (["--method", "lanczos", "--rank", "0"], "--rank 0 is not a positive integer"),
                           (["--top-percent", "0"], "--top-percent 0.0")):
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


def test_cluster_runs_your_train_fn_on_the_workers(files, tmp_path, capsys):
    """--train-fn FILE.py:NAME travels to the Dask workers: every run calls it there with the seeds a
    single process uses, and the measured values are the single process's."""
    pytest.importorskip("distributed")
    d, model = files
    fn, log = _log_train_fn(tmp_path)
    base = _lds(d, model, "--subsets", "3", "--retrain", "scratch", "--seeds", "2", "--train-fn", fn + ":train")
    here, there = str(tmp_path / "here.json"), str(tmp_path / "there.json")
    assert run(base + ["--out", here], capsys)[0] == 0
    local_calls = sorted(line.split()[:2] for line in open(log, encoding="utf-8"))
    os.remove(log)
    code, _, err = run(base + ["--out", there, "--cluster", "local:1"], capsys)
    assert code == 0, err
    assert sorted(line.split()[:2] for line in open(log, encoding="utf-8")) == local_calls and len(local_calls) == 6
    a, b = json.load(open(here, encoding="utf-8")), json.load(open(there, encoding="utf-8"))
    assert np.allclose(a["actual"], b["actual"], rtol=0, atol=1e-12) and a["lds"] == b["lds"]
