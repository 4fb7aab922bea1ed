"""Test-side wrapper of the command line: ``python tests/slow_cli.py SECONDS ARGS...`` runs
``influence ARGS...`` with a pause of SECONDS after each saved chunk, so that tests can interrupt a
run between chunks (fault injection without any hook in the production code)."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import influence.jobs  # noqa: E402
from influence.cli import main  # noqa: E402


def _slowed(save_chunk, seconds):
    def save_then_wait(self, start, stop, values):
        save_chunk(self, start, stop, values)
        time.sleep(seconds)
    return save_then_wait


if __name__ == "__main__":
    influence.jobs.Checkpoint.save_chunk = _slowed(influence.jobs.Checkpoint.save_chunk, float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
