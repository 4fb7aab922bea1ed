"""Ctrl-C anywhere (issue 22 item 1): a real ``influence score`` process gets SIGINT during the cg solve
and during scoring (many small chunks of per-example gradients, so that the signal lands inside a
CNTK call, where CNTK's SWIG wrapper turns it into a SystemError). Each time: exit 130, one line
``influence: interrupted`` naming --resume, no traceback, no retry warning, no output file; then
``--resume`` completes and writes the same bytes as an uninterrupted run (each run in a fresh process,
as a user runs them: tests/cli_process.py says why).

The processes run through tests/interrupt_cli.py, which creates a marker file at the chosen moment
(the N-th Hessian-vector product, the N-th saved chunk); the test sends SIGINT when it appears.
"""
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_process import run_fresh
from influence.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, CHUNK = 1200, 10


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def job(tmp_path_factory, cntk):
    d = tmp_path_factory.mktemp("interrupt")
    rng = np.random.RandomState(0)
    x = rng.standard_normal((N_TRAIN + 10, 30))
    y = np.argmax(x @ rng.standard_normal((30, 5)) + rng.gumbel(size=(N_TRAIN + 10, 5)), axis=1)
    np.savez(str(d / "train.npz"), x=x[:N_TRAIN], y=y[:N_TRAIN])
    np.savez(str(d / "test.npz"), x=x[N_TRAIN:], y=y[N_TRAIN:])
    model = str(d / "model.cntk")
    code, _, err = _cli(["train", "--data", str(d / "train.npz"), "--arch", "mlp:20", "--dtype", "float64",
                         "--l2", "1e-2", "--gtol", "1e-6", "--out", model, "--quiet"])
    assert code == 0, err
    # cg (about a hundred products) and gradient scoring in 120 chunks: each a few seconds
    argv = ["score", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"),
            "--test-index", "3", "--solver", "cg", "--scoring", "gradient", "--chunk-size", str(CHUNK), "--quiet"]
    ref = str(d / "ref.csv")
    code, _, err = run_fresh(argv + ["--out", ref])
    assert code == 0, err
    return d, argv, open(ref, "rb").read()


def _interrupt(argv, marker, when, timeout=120.0):
    """Run ``influence ARGV`` through tests/interrupt_cli.py, SIGINT it when MARKER appears; (exit code,
    stderr, how the interrupt was met: the SystemErrors converted)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "interrupt_cli.py"), marker, when] + argv,
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not os.path.exists(marker) and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before the moment %s: %r" % (when, proc.communicate())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    how = open(marker + ".how").read() if os.path.exists(marker + ".how") else ""
    return proc.returncode, err.decode("utf-8", "replace"), how


def _check_interrupted(code, err, out):
    lines = err.strip().splitlines()
    assert code == 130, err
    assert lines[-1].startswith("influence: interrupted") and "--resume" in lines[-1], err
    assert "Traceback" not in err and "internal error" not in err and "ChunkRetryWarning" not in err, err
    assert not os.path.exists(out)                                  # never a partial result file


def test_ctrl_c_during_the_cg_solve(job, tmp_path):
    d, argv, ref = job
    out = str(tmp_path / "s.csv")
    code, err, how = _interrupt(argv + ["--out", out], str(tmp_path / "marker"), "hvp:15")
    _check_interrupted(code, err, out)
    # nothing was finished (s_test is saved when the solve ends): nothing kept, and --resume says so
    assert not os.path.exists(out + ".partial"), os.listdir(out + ".partial")
    assert "before any work was finished" in err.strip().splitlines()[-1], err
    code, _, err = run_fresh(argv + ["--out", out, "--resume"])
    assert code == 0, err
    assert "nothing to resume; starting" in err
    assert open(out, "rb").read() == ref


def test_ctrl_c_inside_a_cntk_call_during_scoring(job, tmp_path):
    d, argv, ref = job
    out = str(tmp_path / "s.csv")
    partial = out + ".partial"
    code, err, how = _interrupt(argv + ["--out", out], str(tmp_path / "marker"), "chunk:3")
    _check_interrupted(code, err, out)
    assert err.strip().splitlines()[-1] == ("influence: interrupted; the finished work is kept in %s/: rerun the "
                                            "same command with --resume to continue" % partial), err
    done = [f for f in os.listdir(partial) if f.startswith("chunk-") and ".tmp-" not in f]
    assert 3 <= len(done) < N_TRAIN // CHUNK and "s_test.npy" in os.listdir(partial)
    if how:                             # it landed inside a CNTK call: the SWIG SystemError was converted
        assert how.startswith("SystemError: ") and "returned a result with an error set" in how, how
    code, stdout, err = run_fresh(argv + ["--out", out, "--resume", "--json"])
    assert code == 0, err
    assert "nothing to resume" not in err
    assert open(out, "rb").read() == ref                            # the same bytes as an uninterrupted run
    assert not os.path.exists(partial)
