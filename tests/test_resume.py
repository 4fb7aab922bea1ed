"""Resumable scoring for real: ``influence score``/``self`` run as a subprocess are killed (SIGKILL, and
separately SIGINT) once some chunks exist in OUT.partial/; the final file does not exist, and a rerun
with --resume reuses the finished chunks and writes a file byte-identical to an uninterrupted run.
Also: a resume with changed inputs is refused, and the same --seed gives byte-identical LiSSA scores.

The subprocesses run through tests/slow_cli.py, which pauses after each saved chunk (a monkeypatch
in the test-side wrapper: the production code has no test hook).
"""
import contextlib
import io
import json
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
N_TRAIN, CHUNK = 3000, 200
N_CHUNKS = N_TRAIN // CHUNK


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def job(tmp_path_factory, cntk):
    d = tmp_path_factory.mktemp("resume")
    rng = np.random.RandomState(0)
    x = rng.standard_normal((N_TRAIN + 10, 20)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((20, 3)) + rng.gumbel(size=(N_TRAIN + 10, 3)), axis=1)
    np.savez(str(d / "train.npz"), x=x[:N_TRAIN], y=y[:N_TRAIN])
    np.savez(str(d / "test.npz"), x=x[N_TRAIN:], y=y[N_TRAIN:])
    model = str(d / "model.cntk")
    code, _, err = _cli(["train", "--data", str(d / "train.npz"), "--l2", "1e-2", "--out", model, "--quiet"])
    assert code == 0, err
    base = {"score": ["score", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"),
                      "--test-index", "0", "3", "--chunk-size", str(CHUNK), "--quiet"],
            "self": ["self", "--model", model, "--train", str(d / "train.npz"), "--chunk-size", str(CHUNK),
                     "--quiet"]}
    refs = {}
    for command, argv in base.items():
        out = str(d / ("ref-%s.csv" % command))
        code, _, err = run_fresh(argv + ["--out", out])        # fresh, as the interrupted runs: cli_process.py
        assert code == 0, err
        refs[command] = open(out, "rb").read()
    return d, base, refs


def _finished(partial):
    """Finished chunk files (not the temporary files of a chunk being written)."""
    return sorted(f for f in os.listdir(partial) if f.startswith("chunk-") and ".tmp-" not in f)


def _interrupt(argv, partial, sig, min_chunks=3, timeout=60.0):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "slow_cli.py"), "0.25"] + argv, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if os.path.isdir(partial) and len(_finished(partial)) >= min_chunks:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be interrupted: %r" % (proc.communicate(),)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode("utf-8", "replace")


@pytest.mark.parametrize("command,sig", [("score", signal.SIGKILL), ("score", signal.SIGINT),
                                         ("self", signal.SIGKILL), ("self", signal.SIGINT)])
def test_interrupt_then_resume_is_byte_identical(job, tmp_path, command, sig):
    d, base, refs = job
    out = str(tmp_path / "s.csv")
    partial = out + ".partial"
    code, err = _interrupt(base[command] + ["--out", out], partial, sig)
    if sig == signal.SIGINT:
        assert code == 130 and err.strip().splitlines()[-1] == (
            "influence: interrupted; the finished work is kept in %s/: rerun the same command with --resume to "
            "continue" % partial), err
    else:
        assert code == -signal.SIGKILL
    assert not os.path.exists(out)                                  # never a truncated result
    assert not [f for f in os.listdir(str(tmp_path)) if ".tmp-" in f]
    done = _finished(partial)
    assert 3 <= len(done) < N_CHUNKS
    mtimes = {f: os.stat(os.path.join(partial, f)).st_mtime_ns for f in done}

    # a resume with other inputs is refused in one line, and the partial results are kept
    code, _, err = _cli(base[command] + ["--out", out, "--resume", "--damping", "0.1"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot resume" in err and "damping" in err and "rerun without --resume" in err
    assert {f: os.stat(os.path.join(partial, f)).st_mtime_ns for f in done} == mtimes
    assert not os.path.exists(out)

    # resume (in a fresh process, as a user runs it): the finished chunks are reused, not recomputed
    code, stdout, err = run_fresh(base[command] + ["--out", out, "--resume", "--json"])
    assert code == 0, err
    chunks = json.loads(stdout)["chunks"]
    assert chunks["chunks"] == N_CHUNKS and chunks["resumed"] >= len(done)
    assert chunks["computed"] == N_CHUNKS - chunks["resumed"]
    assert open(out, "rb").read() == refs[command]                 # byte-identical
    assert not os.path.exists(partial)                              # cleaned up after success


def test_same_seed_same_lissa_scores_byte_for_byte(job, tmp_path):
    d, base, _ = job
    argv = base["score"] + ["--solver", "lissa", "--solver-maxiter", "300", "--damping", "0.01"]
    outs = []
    for seed, name in ((3, "a.csv"), (3, "b.csv"), (4, "c.csv")):
        out = str(tmp_path / name)
        code, _, err = _cli(argv + ["--seed", str(seed), "--out", out])
        assert code == 0, err
        outs.append(open(out, "rb").read())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
