"""Networks as their users train them, at the command line: a tanh MLP trained a few epochs with CNTK's
Trainer and Adam (not at an optimum) is scored at defaults with the Gauss-Newton matrix and an auto
damping, and the output says so; asking for the Hessian there is refused or flagged, never printed as
if it were fine; self (exact and lanczos), verify and hvp accept what score accepts."""
import json
import os

import numpy as np
import pytest

from test_cli import run


@pytest.fixture(scope="module")
def adam_mlp(tmp_path_factory, cntk):
    import influence
    from cntk_nets import train_with_trainer
    from influence.adapters.cntk import build_network
    d = tmp_path_factory.mktemp("curvature")
    x, y = influence.load_digits()
    x = x.astype(np.float64)
    np.savez(str(d / "train.npz"), x=x[:240], y=y[:240])
    np.savez(str(d / "test.npz"), x=x[1500:1504], y=y[1500:1504])
    z = build_network(64, 10, hidden=(4,), activation="tanh", dtype=np.float64, seed=1)
    train_with_trainer(z, {z.arguments[0]: x[:240]}, y[:240], epochs=5)
    path = str(d / "adam.cntk")
    z.save(path)
    return d, path


def _base(d, model, *extra):
    return ["--model", model, "--train", str(d / "train.npz")] + list(extra)


def test_score_at_defaults_uses_gauss_newton_and_records_it(adam_mlp, capsys):
    d, model = adam_mlp
    out = str(d / "scores.json")
    code, stdout, err = run(["score"] + _base(d, model, "--test", str(d / "test.npz"), "--test-index", "0",
                                              "--out", out, "--json"), capsys)
    assert code == 0, err
    assert "influence: curvature: the Gauss-Newton matrix, damping" in err and "not at a minimum" in err
    summary = json.loads(stdout)
    assert summary["curvature"] == "gauss-newton" and summary["damping"] > 0
    assert all(s["converged"] for s in summary["solutions"])
    saved = json.load(open(out))
    assert saved["curvature"] == "gauss-newton" and saved["damping"] == summary["damping"]


def test_the_hessian_off_the_optimum_is_never_printed_as_fine(adam_mlp, capsys):
    d, model = adam_mlp
    out = str(d / "hessian.csv")
    hessian = ["score"] + _base(d, model, "--test", str(d / "test.npz"), "--test-index", "0",
                                "--curvature", "hessian", "--solver", "cg", "--out", out)
    code, stdout, err = run(hessian + ["--strict"], capsys)
    # an indefinite H is refused naming --damping (exit 2), or cg misses its tolerance (exit 3 with
    # --strict): either way one line, and no scores written
    assert code in (2, 3), (code, err)
    assert "--curvature gauss-newton" in err or "not positive definite" in err, err
    assert not os.path.exists(out) and "Traceback" not in err
    code, stdout, err = run(hessian, capsys)
    # without --strict: the same refusal, or the scores marked NOT CONVERGED on stderr and in the report
    assert code == 2 or (code == 0 and "NOT CONVERGED" in err and "NOT CONVERGED" in stdout), (code, err)


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_self_accepts_what_score_accepts(adam_mlp, capsys, method):
    d, model = adam_mlp
    extra = ["--method", method] + (["--rank", "8"] if method == "lanczos" else [])
    code, stdout, err = run(["self"] + _base(d, model, "--top", "3", *extra), capsys)
    assert code == 0, err
    assert "influence: curvature: the Gauss-Newton matrix" in err


def test_hvp_with_each_curvature(adam_mlp, capsys):
    d, model = adam_mlp
    import influence
    m = influence.CNTKModel.load(model)
    v = np.random.RandomState(0).standard_normal(m.n_params)
    np.save(str(d / "v.npy"), v)
    results = {}
    for curvature in ("gauss-newton", "fisher"):
        out = str(d / ("hv-%s.npy" % curvature))
        code, stdout, err = run(["hvp", "--model", model, "--data", str(d / "train.npz"), "--vector",
                                 str(d / "v.npy"), "--curvature", curvature, "--damping", "0.5", "--out", out,
                                 "--json"], capsys)
        assert code == 0, err
        assert json.loads(stdout)["curvature"] == curvature
        results[curvature] = np.load(out)
    train = influence.load_npz(str(d / "train.npz"))
    expected = influence.GaussNewtonOperator(m, train, damping=0.5) @ v
    assert np.allclose(results["gauss-newton"], expected, rtol=1e-10, atol=0)
    # v·(F + 0.5 I)·v >= 0.5 ‖v‖² (F positive semi-definite)
    assert float(v @ results["fisher"]) >= 0.5 * float(v @ v) * (1 - 1e-12)
    for curvature in ("gauss-newton", "fisher"):       # the .npy says how it was computed
        meta = json.load(open(str(d / ("hv-%s.npy.meta.json" % curvature))))
        assert meta["curvature"] == curvature and meta["damping"] == 0.5 and meta["command"] == "hvp"


def _meta(path):
    with open(path + ".meta.json") as f:
        return json.load(f)


@pytest.mark.parametrize("out_name", ["scores.csv", "scores.npy"])
def test_csv_and_npy_outputs_record_curvature_and_damping(adam_mlp, capsys, out_name):
    """A CSV header and an .npy array have no room for how the numbers were computed: the file next
    to them (OUT.meta.json) says it, with the same curvature and damping as --json."""
    d, model = adam_mlp
    out = str(d / out_name)
    code, stdout, err = run(["score"] + _base(d, model, "--test", str(d / "test.npz"), "--test-index", "1", "2",
                                              "--out", out, "--json"), capsys)
    assert code == 0, err
    summary, meta = json.loads(stdout), _meta(out)
    assert meta["curvature"] == summary["curvature"] == "gauss-newton"
    assert meta["damping"] == summary["damping"] > 0
    assert meta["test_index"] == [1, 2] and meta["converged"] is True and meta["not_converged"] is None
    assert meta["file"] == out_name and meta["command"] == "score" and meta["model"] == os.path.abspath(model)
    assert meta["inputs"]["model_file"] and meta["influence_version"]
    # a number wins over auto, and is what the file records
    code, stdout, err = run(["score"] + _base(d, model, "--test", str(d / "test.npz"), "--test-index", "1",
                                              "--damping", "0.25", "--out", out), capsys)
    assert code == 0, err
    assert _meta(out)["damping"] == 0.25 and _meta(out)["test_index"] == [1]


def test_the_score_matrix_and_self_record_curvature_and_damping(adam_mlp, capsys):
    d, model = adam_mlp
    agg, matrix = str(d / "agg.csv"), str(d / "M.npy")
    code, stdout, err = run(["score"] + _base(d, model, "--test", str(d / "test.npz"), "--matrix", matrix,
                                              "--out", agg, "--json"), capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    for path in (agg, matrix):
        meta = _meta(path)
        assert meta["curvature"] == "gauss-newton" and meta["damping"] == summary["damping"] > 0, path
        assert meta["test_index"] == [0, 1, 2, 3]
    out = str(d / "self.csv")
    code, stdout, err = run(["self"] + _base(d, model, "--out", out, "--json"), capsys)
    assert code == 0, err
    summary, meta = json.loads(stdout), _meta(out)
    assert summary["curvature"] == meta["curvature"] == "gauss-newton"
    assert meta["damping"] == summary["damping"] > 0 and meta["method"] == "exact"
