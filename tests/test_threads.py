"""influence.set_threads (issue 22 item 2): the number reaches a CNTK loaded afterwards, and a CNTK
already loaded with another number keeps it (with a warning) instead of crashing: CNTK 2.7 dies with
SIGFPE building a CNN's gradient after its thread count changed in a running process. Each case runs
in a fresh interpreter (the number is per process)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import sys, warnings
import numpy as np
import influence
from influence.adapters.cntk import build_cnn, import_cntk
from influence.common.threads import get_threads
when, n = sys.argv[1], int(sys.argv[2])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if when == "after":
        import_cntk()
    effective = influence.set_threads(n)
    import_cntk()
x, y = influence.load_digits()
model = influence.CNTKModel(build_cnn((1, 8, 8), 10, channels=(2,), dtype=np.float64, seed=1), l2=0.01)
g = model.grad((x[:30].reshape(-1, 1, 8, 8), y[:30]))      # the SIGFPE of a changed count shows here
print(effective, get_threads(), len([w for w in caught if issubclass(w.category, RuntimeWarning)]),
      bool(np.all(np.isfinite(g))))
"""


def _child(when, n, omp=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("MKL_NUM_THREADS", None)
    if omp is not None:
        env["OMP_NUM_THREADS"] = str(omp)
    proc = subprocess.run([sys.executable, "-c", CHILD, when, str(n)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout.decode().split()


def test_set_before_cntk_loads(cntk):
    assert _child("before", 1, omp=2) == ["1", "1", "0", "True"]


def test_cntk_already_loaded_keeps_its_number(cntk):
    assert _child("after", 1, omp=2) == ["2", "2", "1", "True"]          # kept, with one warning
    assert _child("after", 2, omp=2) == ["2", "2", "0", "True"]          # the same number: nothing to change


def test_bad_numbers_are_refused():
    import influence
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads="):
            influence.set_threads(bad)
