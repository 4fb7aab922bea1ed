"""``influence ARGS`` in a fresh process, as a user runs it: for tests that compare outputs to the byte.

CNTK in the test process has already run other networks; its float sums then differ from a fresh
process's in the last bits (measured: a score CSV whose cg solve took 176 iterations differed at 1e-7
after the modules before it had run, and was identical when its module ran alone). A reference that a
fresh process (an interrupted run, a Dask worker) is compared with must come from a fresh process too.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_fresh(argv, cwd=ROOT, timeout=600):
    """(exit code, stdout, stderr) of ``python -m influence ARGV`` in a new process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "influence"] + list(argv), cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
