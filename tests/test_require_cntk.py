"""In the CNTK environment (INFLUENCE_REQUIRE_CNTK=1, set by the Makefile for .venv) a CNTK that does
not import fails the session loudly, naming the cause; without the variable the CNTK tests skip."""
import os
import subprocess
import sys

from conftest import CNTK_MISSING_EXIT, REQUIRE_CNTK_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The import error the shadow ``cntk`` package raises, as a broken OpenMPI shim would.
BROKEN = "libmpi.so.12: cannot open shared object file: No such file or directory (simulated)"
#: A cheap CNTK test that needs the ``cntk`` fixture.
CNTK_TEST = "tests/test_cntk_hvp.py::test_toy_fixed_step_reproduces_the_notebook"


def _run_with_broken_cntk(tmp_path, require):
    shadow = tmp_path / "shadow" / "cntk"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(%r)\n" % BROKEN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "shadow"), ROOT])
    env.pop(REQUIRE_CNTK_ENV, None)
    if require:
        env[REQUIRE_CNTK_ENV] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", CNTK_TEST],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    return proc.returncode, proc.stdout


def test_broken_cntk_fails_the_session_when_required(tmp_path):
    rc, out = _run_with_broken_cntk(tmp_path, require=True)
    assert rc == CNTK_MISSING_EXIT, out
    assert "CNTK does not import" in out and BROKEN in out, out
    assert "OpenMPI shim" in out, out
    assert "1 passed" not in out and "1 skipped" not in out, out     # no test ran


def test_broken_cntk_skips_when_not_required(tmp_path):
    rc, out = _run_with_broken_cntk(tmp_path, require=False)
    assert rc == 0, out
    assert "1 skipped" in out, out
