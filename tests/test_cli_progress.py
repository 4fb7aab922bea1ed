"""Long commands are never silent (issue 22 item 3): before work estimated longer than PLAN_SECONDS, one
``influence: plan: ...`` line with the estimate, then a progress bar on stderr: train (L-BFGS), self
(the dense Hessian's products; Lanczos), verify (the retrainings), evaluate. Here PLAN_SECONDS is 0
so that the small test problems count as long; --quiet prints neither. Also: train prints the
quantity --gtol bounds (the max-norm of the gradient)."""
import contextlib
import io
import json
import re

import numpy as np
import pytest

import influence
import influence.cli.plans as common
from influence.cli import main


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory, cntk):
    d = tmp_path_factory.mktemp("progress")
    x, y = influence.load_digits()
    np.savez(str(d / "train.npz"), x=x[:150], y=y[:150])
    np.savez(str(d / "test.npz"), x=x[150:160], y=y[150:160])
    return d


def _plan_lines(err):
    return [line for line in err.splitlines() if line.startswith("influence: plan: ")]


def test_train_plans_shows_a_bar_and_prints_the_max_norm(files, monkeypatch):
    monkeypatch.setattr(common, "PLAN_SECONDS", 0.0)
    model = str(files / "m.cntk")
    code, out, err = _run(["train", "--data", str(files / "train.npz"), "--l2", "1e-2", "--dtype", "float64",
                           "--gtol", "1e-7", "--out", model])
    assert code == 0, err
    plan = _plan_lines(err)
    assert len(plan) == 1 and "L-BFGS on 650 parameters and 150 examples" in plan[0] and "estimated ~" in plan[0]
    assert "L-BFGS:" in err                                          # the bar
    grad_max = float(re.search(r"max \|∂R/∂w\| = (\S+) \(--gtol 1e-07\)", out).group(1))
    meta = json.load(open(model + ".json"))
    assert meta["fit"]["grad_max"] == pytest.approx(grad_max, rel=0.01) and grad_max <= 1e-7
    loaded = influence.CNTKModel.load(model, l2=1e-2)
    data = influence.load_npz(str(files / "train.npz"))
    g = loaded.grad(data)
    assert np.max(np.abs(g)) == pytest.approx(meta["fit"]["grad_max"], rel=1e-6)     # max-norm, not 2-norm
    assert meta["fit"]["grad_norm"] == pytest.approx(np.linalg.norm(g), rel=1e-6)


@pytest.mark.parametrize("argv,needles", [
    (["self", "--method", "exact"], ["self --method exact: the dense Hessian from d = 650", "dense H"]),
    (["self", "--method", "lanczos", "--rank", "5"], ["self --method lanczos: rank 5", "lanczos"]),
    (["verify", "--test", "{d}/test.npz", "--test-index", "1", "--retrainings", "2"],
     ["verify: influence scores", "3 L-BFGS retrainings", "retraining"]),
    (["evaluate", "loo", "--test", "{d}/test.npz", "--test-index", "1", "2", "--retrainings", "2"],
     ["evaluate loo: influence scores", "3 L-BFGS retrainings", "retraining"]),
    (["evaluate", "mislabel", "--fraction", "0.1"], ["evaluate mislabel (a refit on flipped labels", "d = 650"]),
])
def test_long_commands_print_a_plan_and_a_bar(files, monkeypatch, argv, needles):
    model = str(files / "m.cntk")
    if not (files / "m.cntk").exists():
        assert _run(["train", "--data", str(files / "train.npz"), "--l2", "1e-2", "--dtype", "float64",
                     "--gtol", "1e-7", "--out", model, "--quiet"])[0] == 0
    argv = [a.format(d=files) for a in argv]
    argv = argv[:2 if argv[0] == "evaluate" else 1] + ["--model", model, "--train", str(files / "train.npz")] + \
        argv[2 if argv[0] == "evaluate" else 1:]
    monkeypatch.setattr(common, "PLAN_SECONDS", 0.0)
    code, out, err = _run(argv)
    assert code == 0, err
    plan = _plan_lines(err)
    assert len(plan) == 1 and "estimated ~" in plan[0] and "a progress bar follows" in plan[0], err
    for needle in needles:
        assert needle in err, (needle, err[-2000:])
    # nothing of it with --quiet, and (once) nothing under the threshold
    code, out, err = _run(argv + ["--quiet"])
    assert code == 0 and not _plan_lines(err) and "%|" not in err, err
    if argv[:3] == ["self", "--method", "exact"]:
        monkeypatch.setattr(common, "PLAN_SECONDS", 1e9)
        code, out, err = _run(argv)
        assert code == 0 and not _plan_lines(err), err


def test_plan_estimates_count_what_the_solver_and_the_recipe_spend():
    """The plan line's products follow the solver (direct: d for every test point; auto: the smaller),
    and a Trainer recipe's retraining is its epochs over the retrained rows, not L-BFGS's rough figure."""
    d, cg_per_point = 650, 302
    assert common.score_products(d, 50, "auto") == d
    assert common.score_products(d, 1, "auto") == cg_per_point
    assert common.score_products(d, 50, "cg") == 50 * cg_per_point
    assert common.score_products(d, 50, "direct") == d
    assert common.score_products(d, 0, "direct") == 0
    adam = "adam lr=0.01 momentum=0.9 epochs=8 minibatch=32"
    assert common.retrain_passes("scratch", adam, 0.5) == 8 * 0.5 * common.TRAINER_PASS_FACTOR
    assert common.retrain_passes("scratch", None, 1.0) == 8 * common.TRAINER_PASS_FACTOR   # the default recipe
    for retrain, recipe, train_fn in (("scratch", "lbfgs", None), ("warm", adam, None), ("proximal", None, None),
                                      ("scratch", adam, lambda f, data, seed: None)):
        assert common.retrain_passes(retrain, recipe, 0.5, train_fn) == common.RETRAIN_PASSES_ESTIMATE
