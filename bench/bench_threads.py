"""CPU threads per process: one ``influence score`` run alone vs two at once, with ``--threads 1`` and
``--threads 2`` (2 = CNTK's own default on a 2-core machine: one thread per core), on a machine without
and with a background load (one busy-looping process). Wall and CPU seconds of each run (the child's
own rusage). The numbers behind the command line's default ``--threads 1`` (influence/threads.py).

The workload: ``influence score`` of one test digit with cg (damping 0.01) on a float64 mlp:32 trained
on 1,200 digits (d = 2,410), as the README's example; every run is a fresh process (CNTK's import and
start-up included, as a user sees it).

    .venv/bin/python bench/bench_threads.py            # 2 repeats per cell
    .venv/bin/python bench/bench_threads.py --quick    # 1 repeat, 600 training digits

``main(argv)`` returns {"rows": [{"threads", "concurrent", "background", "wall", "cpu", ...}],
"two_vs_one": {threads: mean wall of a run next to another ÷ alone}, "alone_1_vs_2": wall of a lone
run with 1 thread ÷ with 2, "load": the 1-minute load average before each cell, "cores"}.
"""
from __future__ import print_function

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BUSY = "import time\nend = time.time() + %f\nwhile time.time() < end:\n    pass\n"


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)            # --threads decides, not the caller's environment
    return env


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return None


def _run_together(argvs):
    """Start every argv at once; [(wall seconds, cpu seconds)] of each (its own rusage)."""
    procs = []
    for argv in argvs:
        procs.append((subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                      time.perf_counter()))
    out = [None] * len(procs)
    pending = {p.pid: i for i, (p, _) in enumerate(procs)}
    while pending:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in pending:
            continue
        i = pending.pop(pid)
        proc, t0 = procs[i]
        proc.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") \
            else (status >> 8)
        if proc.returncode != 0:
            raise RuntimeError("influence failed (%d): %s" % (proc.returncode, proc.stderr.read().decode()[-500:]))
        out[i] = (time.perf_counter() - t0, usage.ru_utime + usage.ru_stime)
    for p, _ in procs:
        p.stderr.close()
    return out


def _prepare(folder, n_train):
    import numpy as np
    import influence
    x, y = influence.load_digits()
    np.savez(os.path.join(folder, "train.npz"), x=x[:n_train], y=y[:n_train])
    np.savez(os.path.join(folder, "test.npz"), x=x[1200:], y=y[1200:])
    model = os.path.join(folder, "mlp.cntk")
    subprocess.run([sys.executable, "-m", "influence", "train", "--data", os.path.join(folder, "train.npz"),
                    "--arch", "mlp:32", "--l2", "0.01", "--dtype", "float64", "--gtol", "1e-6", "--out", model,
                    "--quiet", "--threads", "1"], env=_env(), check=True, stdout=subprocess.DEVNULL)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repeat per cell, 600 training digits")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else 2
    rows, load = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as folder:
        model = _prepare(folder, 600 if args.quick else 1200)

        def score(threads, i):
            return [sys.executable, "-m", "influence", "score", "--model", model, "--train",
                    os.path.join(folder, "train.npz"), "--test", os.path.join(folder, "test.npz"),
                    "--test-index", "7", "--solver", "cg", "--damping", "0.01", "--quiet", "--no-optimum-check",
                    "--threads", str(threads), "--out", os.path.join(folder, "s-%d-%d.csv" % (threads, i))]
        for background in (False, True):
            busy = None
            if background:
                busy = subprocess.Popen([sys.executable, "-c", BUSY % 3600.0])
                time.sleep(1.0)
            try:
                for threads in (1, 2):
                    for concurrent in (1, 2):
                        key = "%s, %d thread%s, %d at once" % ("loaded" if background else "idle", threads,
                                                               "" if threads == 1 else "s", concurrent)
                        load[key] = _loadavg()
                        walls, cpus = [], []
                        for _ in range(repeats):
                            for wall, cpu in _run_together([score(threads, i) for i in range(concurrent)]):
                                walls.append(wall)
                                cpus.append(cpu)
                        row = {"threads": threads, "concurrent": concurrent, "background": background,
                               "wall": sum(walls) / len(walls), "wall_max": max(walls), "cpu": sum(cpus) / len(cpus),
                               "runs": len(walls), "load_before": load[key]}
                        rows.append(row)
                        print("%-32s wall %6.2f s (max %6.2f)  cpu %6.2f s  load before %s"
                              % (key, row["wall"], row["wall_max"], row["cpu"], load[key]), flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()

    def wall(threads, concurrent, background):
        return [r["wall"] for r in rows if (r["threads"], r["concurrent"], r["background"]) ==
                (threads, concurrent, background)][0]
    two_vs_one = {"%s, %d thread%s" % ("loaded" if b else "idle", t, "" if t == 1 else "s"):
                  wall(t, 2, b) / wall(t, 1, b) for b in (False, True) for t in (1, 2)}
    alone = {("loaded" if b else "idle"): wall(1, 1, b) / wall(2, 1, b) for b in (False, True)}
    for key, ratio in sorted(two_vs_one.items()):
        print("two at once ÷ alone (%s): %.2f" % (key, ratio))
    for key, ratio in sorted(alone.items()):
        print("alone, 1 thread ÷ 2 threads (%s): %.2f" % (key, ratio))
    return {"rows": rows, "two_vs_one": two_vs_one, "alone_1_vs_2": alone, "cores": os.cpu_count(),
            "repeats": repeats, "quick": args.quick}


if __name__ == "__main__":
    main()
