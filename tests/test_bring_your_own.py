"""examples/bring_your_own_model.py: a network built, trained and saved with plain CNTK, loaded and
scored by influence (CNTK)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))


def test_bring_your_own_model_small(cntk, tmp_path, capsys):
    import bring_your_own_model
    res = bring_your_own_model.main(["--small", "--keep", str(tmp_path)])
    text = capsys.readouterr().out
    assert os.path.isfile(str(tmp_path / "my_net.model")) and os.path.isfile(str(tmp_path / "my_loss.model"))
    assert res["fit"].converged
    assert res["scores"].shape == (200,) and np.all(np.isfinite(res["scores"]))
    assert res["self_influence"].shape == (200,) and np.all(res["self_influence"] >= -1e-8)
    # the network-output form and the loss-Function form are the same objective
    assert res["agreement"]["scores_spearman"] > 0.99
    assert res["agreement"]["self_spearman"] > 0.99
    for piece in ("CNTK Trainer", "CNTKModel.load", "loss=None", "most helpful", "self_influence"):
        assert piece in text, piece
