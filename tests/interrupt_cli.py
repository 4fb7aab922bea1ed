"""Test-side wrapper of the command line for the Ctrl-C tests: ``python tests/interrupt_cli.py MARKER
WHEN ARGS...`` runs ``influence ARGS...`` and creates the file MARKER at a chosen moment, so that a
test can send SIGINT then: WHEN is ``hvp:N`` (when the N-th Hessian-vector product starts: inside
the inverse-HVP solve) or ``chunk:N`` (when the N-th chunk has been saved: during scoring). It also
appends to MARKER.how one line per SystemError turned into KeyboardInterrupt (Ctrl-C that landed
inside a CNTK call). Monkeypatches in this wrapper only: the production code has no test hook."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import influence.adapters.cntk.runtime as runtime  # noqa: E402
import influence.jobs  # noqa: E402
from influence.cli import main  # noqa: E402
from influence.curvature.hessian import HessianOperator  # noqa: E402


def _mark(path):
    with open(path, "w") as f:
        f.write("%d\n" % os.getpid())


def _counting(method, n, marker, after=False):
    count = [0]

    def counted(*args, **kwargs):
        count[0] += 1
        if count[0] == n and not after:
            _mark(marker)
        result = method(*args, **kwargs)
        if count[0] == n and after:
            _mark(marker)
        return result
    return counted


def _logging_is_interrupt(is_interrupt, log):
    def logged(error):
        answer = is_interrupt(error)
        if answer and isinstance(error, SystemError):
            with open(log, "a") as f:
                f.write("SystemError: %s\n" % str(error).splitlines()[0])
        return answer
    return logged


if __name__ == "__main__":
    marker, when = sys.argv[1], sys.argv[2]
    kind, n = when.split(":")
    if kind == "hvp":
        HessianOperator._matvec = _counting(HessianOperator._matvec, int(n), marker)
    else:
        influence.jobs.Checkpoint.save_chunk = _counting(influence.jobs.Checkpoint.save_chunk, int(n), marker,
                                                         after=True)
    runtime.is_interrupt = _logging_is_interrupt(runtime.is_interrupt, marker + ".how")
    sys.exit(main(sys.argv[3:]))
