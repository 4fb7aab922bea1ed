"""The examples run end to end at reduced size (CNTK)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))


def test_digits_influence_small(cntk, capsys):
    import digits_influence
    out = digits_influence.main(["--small"])
    assert out["softmax"]["pearson"] >= 0.99
    assert out["mlp"]["pearson"] >= 0.9
    text = capsys.readouterr().out
    assert "most helpful" in text and "Pearson" in text and "fit" in text


def test_mislabeled_digits_small(cntk, capsys):
    import mislabeled_digits
    out = mislabeled_digits.main(["--small"])
    assert out["self-influence"][0.1] > 2 * out["random"][0.1]
    assert "self-influence" in capsys.readouterr().out


def test_cnn_batchnorm_small(cntk, capsys):
    import cnn_batchnorm
    out = cnn_batchnorm.main(["--small", "--smooth"])
    assert out["scores"].shape == (40,) and np.all(np.isfinite(out["scores"]))
    assert out["fit"].grad_norm < 1e-6 and out["pearson"] > 0.5
    st = out["s_test"]            # as trained with the Trainer: Gauss-Newton at defaults, converged
    assert st.curvature == "gauss-newton" and st.damping > 0 and st.solutions[0].converged
    assert out["as_trained"].shape == (40,) and np.all(np.isfinite(out["as_trained"]))
    text = capsys.readouterr().out
    assert "inference mode rewrote" in text and "BatchNormalization" in text and "Pearson" in text


def test_lstm_sequences_small(cntk, capsys):
    import lstm_sequences
    out = lstm_sequences.main(["--small"])
    assert out["scores"].shape == (24,) and np.all(np.isfinite(out["scores"]))
    assert out["self_influence"].shape == (24,) and np.all(out["self_influence"] > 0)
    np.testing.assert_allclose(out["scores_ctf"], out["scores"], rtol=lstm_sequences.CTF_NPZ_RTOL,
                               atol=lstm_sequences.CTF_NPZ_RTOL * np.abs(out["scores"]).max())
    text = capsys.readouterr().out
    assert "Sequences(24 sequences" in text and "CTF: 24 sequences from train.ctf" in text


def test_onnx_model_small(cntk, capsys):
    import onnx_model
    out = onnx_model.main(["--small"])
    assert out["scores"].shape == (200,) and np.all(np.isfinite(out["scores"]))
    assert out["max_output_difference"] <= 1e-5
    assert "mlp.onnx" in capsys.readouterr().out
