"""Two of issue 21's targets, measured through the command line a user types (fresh processes):

1. **Scratch equals warm on a convex model.** The digits softmax (`influence train --arch softmax --l2
   0.01 --dtype float64 --gtol 1e-7` on the README's 1,200 training digits) judged by `influence
   evaluate lds` on test points 0-49 (50 subsets, alpha 0.5), once with `--retrain warm` and once with
   `--retrain scratch --seeds 3` (the recipe `influence train` recorded: L-BFGS from a fresh glorot
   initialisation). Both reach the same optimum: the LDS must agree (target: within 0.05).
2. **50 subsets x 3 seeds on the digits CNN in <= 10 minutes.** The CNN of bench/evaluate_trained.py
   (Convolution2D 3x3x4 -> BatchNormalization -> ReLU -> MaxPooling -> Dropout 0.3 -> Dense 10, float32,
   300 digits, trained with CNTK's Trainer and Adam for 8 epochs) judged by `influence evaluate lds
   --retrain scratch --recipe "adam lr=0.01 momentum=0.9 epochs=8 minibatch=32" --seeds 3 --subsets 50`
   on 16 test points, in one process and with `--cluster local:2` (the retrainings spread over both
   cores).

    .venv/bin/python bench/evaluate_cli.py            # writes bench/results/evaluate_cli.json

Wall seconds include process start-up, CNTK import and the scores; the JSON keeps each run's own split
(`seconds`: scores, retraining) and the 1-minute load average before and after.
"""
from __future__ import print_function

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

RESULTS = os.path.join(HERE, "results", "evaluate_cli.json")
CNN_RECIPE = "adam lr=0.01 momentum=0.9 epochs=8 minibatch=32"


def _load():
    return os.getloadavg()[0]


def influence_cli(folder, argv):
    """``influence ARGV`` in a fresh process in ``folder``: (wall seconds, exit code, stderr's last line)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "influence"] + argv, cwd=folder, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    tail = proc.stderr.strip().splitlines()[-1:] if proc.returncode else []
    return time.perf_counter() - t0, proc.returncode, tail


def lds_run(folder, name, argv):
    load = _load()
    wall, code, tail = influence_cli(folder, ["evaluate", "lds"] + argv + ["--out", name + ".json", "--quiet"])
    row = {"argv": argv, "wall_seconds": wall, "exit": code, "load_before": load, "load_after": _load()}
    if code:
        row["error"] = tail
        return row
    with open(os.path.join(folder, name + ".json")) as f:
        res = json.load(f)
    row.update({k: res[k] for k in ("retrain", "seeds", "subsets", "mean", "stderr", "mean_seed_spread", "seconds",
                                    "n_test", "n_train", "curvature", "damping")})
    return row


def softmax_part(folder):
    import influence
    x, y = influence.load_digits()
    np.savez(os.path.join(folder, "train.npz"), x=x[:1200], y=y[:1200])
    np.savez(os.path.join(folder, "test.npz"), x=x[1200:], y=y[1200:])
    _, code, tail = influence_cli(folder, ["train", "--data", "train.npz", "--arch", "softmax", "--l2", "0.01",
                                           "--dtype", "float64", "--gtol", "1e-7", "--out", "softmax.cntk", "--quiet"])
    if code:
        raise SystemExit("influence train failed: %s" % tail)
    base = ["--model", "softmax.cntk", "--train", "train.npz", "--test", "test.npz", "--test-index", "0-49"]
    out = {"warm": lds_run(folder, "softmax-warm", base + ["--retrain", "warm"]),
           "scratch": lds_run(folder, "softmax-scratch", base + ["--retrain", "scratch", "--seeds", "3"])}
    if "mean" in out["warm"] and "mean" in out["scratch"]:
        out["difference"] = abs(out["warm"]["mean"]["influence"] - out["scratch"]["mean"]["influence"])
    return out


def cnn_part(folder):
    import evaluate_trained as et
    args = argparse.Namespace(seed=0, n_train=300, n_test=16)
    z, train, test = et.cnn_problem(args)
    et.train_with_checkpoints(z, train[0], train[1], args.seed)
    z.save(os.path.join(folder, "cnn.cntk"))
    np.savez(os.path.join(folder, "cnn-train.npz"), x=train[0], y=train[1])
    np.savez(os.path.join(folder, "cnn-test.npz"), x=test[0], y=test[1])
    base = ["--model", "cnn.cntk", "--train", "cnn-train.npz", "--test", "cnn-test.npz", "--retrain", "scratch",
            "--recipe", CNN_RECIPE, "--seeds", "3", "--subsets", "50", "--no-optimum-check"]
    return {"one_process": lds_run(folder, "cnn-scratch", base),
            "cluster_local_2": lds_run(folder, "cnn-scratch-cluster", base + ["--cluster", "local:2"])}


def _line(name, row):
    if row.get("exit"):
        return "%s: exit %d %s" % (name, row["exit"], row.get("error"))
    m, e = row["mean"], row["stderr"]
    return ("%s: %.1f s wall (retraining %.1f s, scores %.1f s; load %.2f -> %.2f); LDS influence %.4f +- %.4f, "
            "grad-dot %.4f +- %.4f, random %.4f; seed spread %.3g"
            % (name, row["wall_seconds"], row["seconds"]["retraining"], row["seconds"]["scores"], row["load_before"],
               row["load_after"], m["influence"], e["influence"], m["grad_dot"], e["grad_dot"], m["random"],
               row["mean_seed_spread"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["softmax", "cnn"])
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="evaluate-cli-")
    out = {"machine_cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.only in (None, "softmax"):
        out["softmax"] = softmax_part(folder)
        for k in ("warm", "scratch"):
            print(_line("softmax %s" % k, out["softmax"][k]))
        if "difference" in out["softmax"]:
            print("softmax: |LDS warm - LDS scratch| = %.2g (target <= 0.05)" % out["softmax"]["difference"])
    if args.only in (None, "cnn"):
        out["cnn"] = cnn_part(folder)
        for k, row in out["cnn"].items():
            print(_line("cnn scratch 50 x 3, %s" % k, row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
    return out


if __name__ == "__main__":
    main()
