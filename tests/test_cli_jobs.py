"""The command line around its jobs: any locale, early refusals that write nothing, the lock on
OUT.partial/, exit 1 after work began, --resume refusing changed inputs, errors in CLI terms."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import influence.jobs
from influence.cli import _error_text, main

from conftest import fail_chunks_from

from test_cli import ROOT, run


@pytest.fixture(scope="module")
def files(tmp_path_factory, cntk):
    import influence
    d = tmp_path_factory.mktemp("clijobs")
    x, y = influence.load_digits()
    np.savez(str(d / "train.npz"), x=x[:400], y=y[:400])
    np.savez(str(d / "test.npz"), x=x[1500:1510], y=y[1500:1510])
    np.save(str(d / "v.npy"), np.ones(650))
    model = str(d / "model.cntk")
    assert main(["train", "--data", str(d / "train.npz"), "--l2", "1e-2", "--out", model, "--quiet"]) == 0
    # a network far from its optimum (one L-BFGS step from a random start, no L2): H is indefinite
    raw = str(d / "raw.cntk")
    assert main(["train", "--data", str(d / "train.npz"), "--arch", "mlp:8", "--l2", "0", "--lbfgs-maxiter", "1",
                 "--out", raw, "--quiet"]) == 0
    return d, model, raw


def _score(d, model, out, *extra):
    return ["score", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"),
            "--test-index", "1", "--chunk-size", "100", "--quiet", "--out", out] + list(extra)


# ------------------------------------------------------------------------------------ locale
def test_every_command_runs_without_a_locale(files, tmp_path):
    """Python 3.6 opens stdio as ASCII without a UTF-8 locale: every command still prints (the
    symbols in ASCII), exits 0 and writes its files."""
    d, model, _ = files
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT, "LC_ALL": "C"}
    csv = str(tmp_path / "x.csv")
    commands = [
        ["train", "--data", str(d / "train.npz"), "--out", str(tmp_path / "m.cntk")],
        ["score", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"),
         "--test-index", "1", "--json", "--out", csv],
        ["self", "--model", model, "--train", str(d / "train.npz"), "--top", "3"],
        ["verify", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"),
         "--test-index", "1", "--retrainings", "3"],
        ["hvp", "--model", model, "--data", str(d / "train.npz"), "--vector", str(d / "v.npy")],
        ["score", "--help"],
    ]
    outputs = []
    for argv in commands:
        proc = subprocess.run([sys.executable, "-m", "influence"] + argv, env=env, cwd=str(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        err = proc.stderr.decode("ascii")          # ASCII only: the fallback rendering
        assert proc.returncode == 0, (argv, err)
        assert "codec" not in err and "Error" not in err, err
        outputs.append(proc.stdout.decode("ascii"))
    assert "max |dR/dw| =" in outputs[0]                        # ∂ in ASCII
    assert json.loads(outputs[1])["out"] == csv and open(csv, encoding="utf-8").readline().startswith("test_index,")
    assert "g_i^T H^-1 g_i" in outputs[2]
    assert "Pearson" in outputs[3]
    assert "v^THv" in outputs[4] and "H*v" in outputs[4]
    assert "(C + damping*I)^-1" in outputs[5]                   # · and ⁻¹ in ASCII


# ------------------------------------------------------------------------------------ refusals
def test_unwritable_out_is_a_usage_error_naming_the_path(files, capsys):
    d, model, _ = files
    code, _, err = run(_score(d, model, "/proc/x.csv"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--out /proc/x.csv" in err and "internal error" not in err


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_a_solver_refusal_writes_nothing(files, tmp_path, capsys, solver):
    d, _, raw = files
    out = str(tmp_path / "y.csv")
    code, _, err = run(_score(d, raw, out, "--solver", solver, "--no-optimum-check", "--curvature", "hessian"),
                       capsys)
    assert code == 2, err
    assert "not positive definite" in err and "--damping" in err and "damping=" not in err
    assert len(err.strip().splitlines()) == 1
    assert os.listdir(str(tmp_path)) == []                  # no y.csv, no y.csv.partial/


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_auto_curvature_switches_to_gauss_newton_where_the_hessian_is_refused(files, tmp_path, capsys, solver):
    d, _, raw = files
    out = str(tmp_path / "y.json")
    code, stdout, err = run(_score(d, raw, out, "--solver", solver, "--no-optimum-check", "--json"), capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["curvature"] == "gauss-newton" and "not positive definite" in summary["curvature_reason"]


def test_a_self_influence_refusal_writes_nothing(files, tmp_path, capsys):
    """self --method exact on an indefinite H: the dense Hessian was already built (and checkpointed)
    when the Cholesky factorisation refuses it; the refusal still exits 2 and leaves no folder."""
    d, _, raw = files
    out = str(tmp_path / "r.csv")
    code, _, err = run(["self", "--model", raw, "--train", str(d / "train.npz"), "--no-optimum-check",
                        "--quiet", "--out", out], capsys)
    assert code == 2, err
    assert "not positive definite" in err and "--damping" in err and "damping=" not in err
    assert len(err.strip().splitlines()) == 1
    assert os.listdir(str(tmp_path)) == []


def test_unreachable_scheduler_is_refused_before_any_solve(files, tmp_path, capsys, monkeypatch):
    d, model, _ = files
    monkeypatch.setattr(influence.jobs, "s_test", lambda *a, **k: pytest.fail("solved before the check"))
    t0 = time.time()
    code, _, err = run(_score(d, model, str(tmp_path / "c.csv"), "--cluster", "tcp://127.0.0.1:9"), capsys)
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert time.time() - t0 < 10
    assert os.listdir(str(tmp_path)) == []


# ------------------------------------------------------------------------------------ the lock
def _write_lock(partial, pid):
    os.makedirs(partial, exist_ok=True)
    with open(os.path.join(partial, "lock.json"), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "started": "earlier"}, f)


def test_a_second_run_on_the_same_out_is_refused_and_a_stale_lock_taken_over(files, tmp_path, capsys):
    d, model, _ = files
    out = str(tmp_path / "s.csv")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(out + ".partial", holder.pid)
        code, _, err = run(_score(d, model, out), capsys)
        assert code == 2 and "pid %d" % holder.pid in err and "in use" in err
        assert len(err.strip().splitlines()) == 1
        assert os.listdir(out + ".partial") == ["lock.json"] and not os.path.exists(out)
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run(_score(d, model, out), capsys)          # its pid is dead now: taken over
    assert code == 0, err
    assert "pid %d" % holder.pid in err and "no longer runs; taking it over" in err
    assert os.path.isfile(out) and not os.path.exists(out + ".partial")


# ------------------------------------------------------------------------------------ after work began
def test_error_after_work_began_exits_1_keeps_partial_and_resume_checks_model_json(files, tmp_path, capsys,
                                                                                   monkeypatch):
    d, model, _ = files
    ref, out = str(tmp_path / "ref.csv"), str(tmp_path / "s.csv")
    assert run(_score(d, model, ref), capsys)[0] == 0
    with monkeypatch.context() as m:
        fail_chunks_from(m, 2, "disk on fire")
        code, _, err = run(_score(d, model, out), capsys)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert "disk on fire" in last and "s.csv.partial/" in last and "--resume" in last
    assert "ChunkRetryWarning" in err and "chunk 200:300" in err       # the retry was reported
    partial = out + ".partial"
    assert len([f for f in os.listdir(partial) if f.startswith("chunk-")]) == 2
    assert not os.path.exists(out) and not os.path.exists(os.path.join(partial, "lock.json"))

    # l2 changed in MODEL.json between the interrupt and --resume: refused, nothing touched
    meta_path = model + ".json"
    original, st = open(meta_path, "rb").read(), os.stat(meta_path)
    meta = json.loads(original.decode("utf-8"))
    meta["l2"] = 0.5
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    try:
        before = sorted(os.listdir(partial))
        code, _, err = run(_score(d, model, out, "--resume"), capsys)
        assert code == 2 and "cannot resume" in err and "l2" in err, err
        assert sorted(os.listdir(partial)) == before
    finally:
        with open(meta_path, "wb") as f:
            f.write(original)
        os.utime(meta_path, ns=(st.st_atime_ns, st.st_mtime_ns))     # the fingerprint includes mtime
    code, stdout, err = run(_score(d, model, out, "--resume", "--json"), capsys)
    assert code == 0, err
    assert json.loads(stdout)["chunks"] == {"chunks": 4, "computed": 2, "resumed": 2}
    assert open(out, "rb").read() == open(ref, "rb").read()


# ------------------------------------------------------------------------------------ CLI terms
def test_library_advice_is_translated_into_flags():
    from influence.common.errors import InfluenceError, param
    from influence.solvers.dense import DenseMemoryError, check_dense_memory

    class Args(object):
        command = "self"
    with pytest.raises(DenseMemoryError) as e:
        check_dense_memory(10 ** 7)           # 800 TB: refused on any machine
    assert "method='cg'" in str(e.value) and "k < d - 1" in str(e.value)        # the API's words
    text = _error_text(e.value, Args())
    assert "--method lanczos --rank 50" in text and "method=" not in text and text.startswith("--method exact")
    Args.command = "score"
    text = _error_text(e.value, Args())
    assert text.startswith("--solver direct") and text.endswith("use --solver cg (or --solver lanczos --rank K, K < d - 1) instead")
    assert "method=" not in text
    err = InfluenceError("pass %s > 0.5 (e.g. %s)" % (param("damping"), param("damping", 1.0)))
    assert str(err) == "pass damping > 0.5 (e.g. damping=1.0)"
    assert _error_text(err, Args()) == "pass --damping > 0.5 (e.g. --damping 1.0)"
    err = InfluenceError("raise %s or %s" % (param("maxiter", 10), param("rtol", 1e-3)))
    assert _error_text(err, Args()) == "raise --solver-maxiter 10 or --rtol 0.001"
    # a parameter the command line does not have keeps its API word
    assert _error_text(InfluenceError("drop %s" % param("x0")), Args()) == "drop x0"