"""influence train: --arch cnn:C1,C2 on images (n, C, H, W), refusals of data it cannot build a network
for (needs CNTK)."""
import json
import os

import numpy as np
import pytest

import influence
from influence.cli import main
from influence.data import save_npz


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_cnn_on_digit_images_then_score_it(cntk, tmp_path, capsys):
    x, y = influence.load_digits()
    images = x[:200].reshape(-1, 1, 8, 8)
    np.savez(str(tmp_path / "img.npz"), x=images, y=y[:200])
    np.savez(str(tmp_path / "img_test.npz"), x=x[1500:1502].reshape(-1, 1, 8, 8), y=y[1500:1502])
    model_path = str(tmp_path / "cnn.model")
    code, out, err = run(["train", "--data", str(tmp_path / "img.npz"), "--arch", "cnn:2,3", "--l2", "0.01",
                          "--lbfgs-maxiter", "30", "--out", model_path, "--json", "--quiet"], capsys)
    assert code == 0, err
    meta = json.loads(out)
    assert meta["arch"] == "cnn:2,3" and meta["input_shape"] == [1, 8, 8]
    model = influence.CNTKModel.load(model_path, l2=0.01)
    names = [p.name for p in model.parameters]
    # conv 1->2 (3x3) and 2->3, BN scale/bias of each, Dense from 3 x 2 x 2 to 10
    assert model.n_params == (2 * 9 + 2) + (3 * 2 * 9 + 3) + 2 * (2 + 3) + (12 * 10 + 10), names
    ops = sorted(r.split(" node ")[0] for r in model.rewritten)    # evaluated in inference mode
    assert ops == ["BatchNormalization", "BatchNormalization", "Dropout"], model.rewritten
    # 30 L-BFGS iterations from random weights are far from an optimum: H has negative eigenvalues of order
    # -1e4 here, their size set by float32 rounding (it differs between 1 and 2 CPU threads); the damping is
    # far above them, as the point is that self runs on a network train built
    code, out, err = run(["self", "--model", model_path, "--train", str(tmp_path / "img.npz"), "--damping", "1e5",
                          "--no-optimum-check", "--quiet", "--top", "3"], capsys)
    assert code == 0, err


def test_train_refuses_cnn_on_flat_data_and_dicts_and_sequences(cntk, tmp_path, capsys):
    x, y = influence.load_digits()
    np.savez(str(tmp_path / "flat.npz"), x=x[:50], y=y[:50])
    out_path = str(tmp_path / "m.model")
    code, out, err = run(["train", "--data", str(tmp_path / "flat.npz"), "--arch", "cnn:4", "--out", out_path],
                         capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--arch cnn:4 needs images of shape (n, C, H, W) but --data" in err and "x.reshape(-1, 1, 8, 8)" in err
    save_npz(str(tmp_path / "two.npz"), {"a": x[:50, :32], "b": x[:50, 32:]}, y[:50])
    code, out, err = run(["train", "--data", str(tmp_path / "two.npz"), "--out", out_path], capsys)
    assert code == 2 and "several inputs (x.<input name>)" in err and "builds only dense MLP/CNN" in err
    save_npz(str(tmp_path / "seq.npz"), [x[i].reshape(-1, 8)[:1 + i % 5] for i in range(50)], y[:50])
    code, out, err = run(["train", "--data", str(tmp_path / "seq.npz"), "--out", out_path], capsys)
    assert code == 2 and "variable-length sequences" in err
    for bad in ("cnn:", "cnn:0", "cnn:a"):
        code, out, err = run(["train", "--data", str(tmp_path / "flat.npz"), "--arch", bad, "--out", out_path],
                             capsys)
        assert code == 2 and "'cnn:C1,C2,...'" in err
    assert not os.path.exists(out_path)
