"""The toy example script runs and prints the exact answer."""
import os
import runpy

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def test_toy_example(cntk, capsys):
    mod = runpy.run_path(os.path.join(EXAMPLES, "toy_hvp.py"))
    values = mod["main"]()
    assert all(abs(v - 1) <= 1e-6 for v in values.values())
    out = capsys.readouterr().out
    assert "bit-identical afterwards: True" in out
