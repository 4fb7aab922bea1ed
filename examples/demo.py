"""The influence demo: which training digits made a CNTK model misclassify this test digit?

Drives the command line (``influence train / score / verify``, called in-process through
``influence.cli.main``) on the bundled 8×8 digits, no download:

0. the notebook's toy Hessian-vector product (examples/toy_hvp.py), exact to 1e-6 in float32;
1. splits the digits into demo-output/train.npz and demo-output/test.npz;
2. trains a CNTK softmax regression and a 64-32-10 MLP (``influence train``, L-BFGS to an optimum),
   and times one Hessian-vector product on the softmax model (``influence hvp``);
3. for a test digit each model gets wrong, scores every training digit (``influence score``): with cg,
   and on the softmax regression also with the stochastic solver lissa (refined, self-stopping at its
   residual tolerance), comparing the two (relative difference and Spearman over all scores, overlap
   of the top-10 lists, timings). The MLP at damping 0 has κ ≈ 4e4: a stochastic solver cannot
   compete with cg there (docs/choosing-a-solver.md), so it is scored with cg only;
4. checks the predictions by retraining without some training digits (``influence verify``, on the
   softmax regression by default: convex and quick to retrain; ``--verify-model mlp`` for the MLP);
5. runs the mislabeled-labels experiment (examples/mislabeled_digits.py) at a reduced size;
6. draws demo-output/influence.png: each test digit beside its most helpful and most harmful
   training digits.

    python examples/demo.py            # a few minutes on 2 cores (make demo)
    python examples/demo.py --small    # reduced sizes, well under a minute
"""
from __future__ import print_function

import argparse
import contextlib
import csv
import io
import json
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import influence  # noqa: E402
from influence import cli  # noqa: E402
from influence.evaluate.leave_one_out import spearman, pearson  # noqa: E402

TOP = 10          # length of the ranked lists compared between solvers
SHOW = 5          # training digits per side in the picture


# ---------------------------------------------------------------------------------------- helpers
class Steps(object):
    """Prints each step with its wall time and keeps them for the closing summary."""

    def __init__(self):
        self.done = []
        self.t0 = time.time()

    @contextlib.contextmanager
    def __call__(self, title):
        print("\n== %s" % title)
        sys.stdout.flush()
        t = time.time()
        yield
        seconds = time.time() - t
        self.done.append((title, seconds))
        print("   [%.1f s] %s" % (seconds, title))
        sys.stdout.flush()


def run_cli(argv, echo=True):
    """``influence ARGV`` in-process; returns its stdout (echoed, indented, unless ``echo=False``).
    Raises RuntimeError when the command fails (its one-line error went to stderr)."""
    print("   $ influence %s" % " ".join(argv))
    sys.stdout.flush()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(argv)
    out = buf.getvalue()
    if echo and out.strip():
        print("\n".join("   " + line for line in out.rstrip().splitlines()))
    if rc != 0:
        raise RuntimeError("'influence %s' failed with exit code %d" % (" ".join(argv), rc))
    return out


def read_scores(path):
    """The ``--out scores.csv`` of one test point: (influence, predicted_loss_change, train_label)."""
    infl, delta, labels = [], [], []
    with io.open(path, newline="") as f:
        for row in csv.DictReader(f):
            infl.append(float(row["influence"]))
            delta.append(float(row["predicted_loss_change"]))
            labels.append(row["train_label"])
    return np.array(infl), np.array(delta), labels


def top_overlap(a, b, k=TOP):
    """Overlap of the k largest entries of a and of b (a fraction of k)."""
    ta = set(np.argsort(-a, kind="mergesort")[:k].tolist())
    tb = set(np.argsort(-b, kind="mergesort")[:k].tolist())
    return len(ta & tb) / float(k)


# ---------------------------------------------------------------------------------------- steps
def prepare_data(out_dir, n_train, seed):
    x, y = influence.load_digits()
    perm = np.random.RandomState(seed).permutation(len(x))
    tr, te = perm[:n_train], perm[n_train:]
    paths = {"train": os.path.join(out_dir, "train.npz"), "test": os.path.join(out_dir, "test.npz")}
    np.savez(paths["train"], x=x[tr], y=y[tr])
    np.savez(paths["test"], x=x[te], y=y[te])
    print("   %d training and %d test digits (8×8, pixels in [0, 1]) -> %s, %s"
          % (tr.size, te.size, paths["train"], paths["test"]))
    return paths, (x[tr], y[tr]), (x[te], y[te])


def misclassified(model_path, test):
    """The first test digit the saved model gets wrong (or 0), its prediction, and the accuracy."""
    model = influence.CNTKModel.load(model_path)        # loss/l2 are irrelevant for predict
    pred = np.argmax(model.predict(test[0]), axis=1)
    wrong = np.flatnonzero(pred != test[1])
    j = int(wrong[0]) if wrong.size else 0
    return j, int(pred[j]), float(np.mean(pred == test[1]))


def score_both(name, model_path, paths, j, out_dir, args, solvers=("cg", "lissa")):
    """``influence score`` with cg (its tables printed) and, when ``solvers`` has it, with lissa (JSON);
    returns the scores and the comparison (None with cg alone)."""
    common = ["--model", model_path, "--train", paths["train"], "--test", paths["test"],
              "--test-index", str(j), "--damping", str(args.damping), "--quiet", "--top", str(SHOW)]
    res = {}
    for solver in solvers:
        out = os.path.join(out_dir, "scores-%s-%s.csv" % (name, solver))
        argv = ["score"] + common + ["--solver", solver, "--out", out]
        if solver == "lissa":
            argv += ["--json", "--seed", str(args.seed)]
            if args.lissa_maxiter is not None:
                argv += ["--solver-maxiter", str(args.lissa_maxiter)]
        t = time.time()
        text = run_cli(argv, echo=(solver == "cg"))
        wall = time.time() - t
        infl, delta, labels = read_scores(out)
        entry = {"wall_s": wall, "influence": infl, "delta": delta, "labels": labels, "csv": out}
        if solver == "lissa":
            summary = json.loads(text)
            sol = summary["solutions"][0]
            entry.update(n_hvp=sol["n_hvp"], residual=sol["residual"], solve_s=sol["seconds"])
            print("   lissa: %s, %d minibatch steps, %d HVPs, relative residual %.1e, %.1f s for the inverse "
                  "HVP, %.1f s in all; its own top %d (in %s)"
                  % ("converged" if sol["converged"] else "NOT converged", sol["n_iter"], sol["n_hvp"],
                     sol["residual"], sol["seconds"], wall, SHOW, out))
            for side in ("helpful", "harmful"):
                print("     %-8s %s" % (side, "  ".join("#%d (label %s) %+.2e" % tuple(r)
                                                      for r in summary["top"][0][side])))
        else:
            m = re.search(r"(\d+) HVPs", text)
            entry["n_hvp"] = int(m.group(1)) if m else None
        res[solver] = entry
    if "lissa" not in res:
        return res, None
    cg, li = res["cg"], res["lissa"]
    agree = {"spearman": spearman(cg["influence"], li["influence"]),
             "pearson": pearson(cg["influence"], li["influence"]),
             "rel_diff": float(np.linalg.norm(li["influence"] - cg["influence"]) / np.linalg.norm(cg["influence"])),
             "helpful_overlap": top_overlap(cg["delta"], li["delta"]),
             "harmful_overlap": top_overlap(-cg["delta"], -li["delta"]),
             "cg_s": cg["wall_s"], "lissa_s": li["wall_s"], "cg_hvp": cg["n_hvp"], "lissa_hvp": li["n_hvp"]}
    print("   cg vs lissa over all %d training digits: Spearman %.4f, Pearson %.4f, relative difference %.1e; "
          "top-%d overlap: helpful %d/%d, harmful %d/%d; time cg %.1f s (%s HVPs), lissa %.1f s (%s HVPs)"
          % (len(cg["influence"]), agree["spearman"], agree["pearson"], agree["rel_diff"], TOP,
             round(TOP * agree["helpful_overlap"]), TOP, round(TOP * agree["harmful_overlap"]), TOP,
             agree["cg_s"], agree["cg_hvp"], agree["lissa_s"], agree["lissa_hvp"]))
    return res, agree


def draw(png, panels, train_x, test_x):
    """One row per model: the test digit, its most helpful and most harmful training digits."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = 1 + 2 * SHOW
    fig, axes = plt.subplots(len(panels), cols, figsize=(1.3 * cols + 0.6, 1.9 * len(panels)), squeeze=False)
    for row, p in zip(axes, panels):
        order = np.argsort(-p["delta"], kind="mergesort")
        cells = [("test #%d\nlabel %d, pred %d" % (p["j"], p["label"], p["pred"]), test_x[p["j"]], "black")]
        cells += [("#%d (%s)\nΔ %+.1e" % (i, p["labels"][i], p["delta"][i]), train_x[i], "tab:green")
                  for i in order[:SHOW]]
        cells += [("#%d (%s)\nΔ %+.1e" % (i, p["labels"][i], p["delta"][i]), train_x[i], "tab:red")
                  for i in order[::-1][:SHOW]]
        for ax, (title, img, color) in zip(row, cells):
            ax.imshow(np.asarray(img).reshape(8, 8), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2)
        row[0].set_ylabel(p["model"], fontsize=8)
    fig.suptitle("test digit | most helpful training digits (green) | most harmful (red); "
                 "Δ = test-loss change if removed", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="demo-output", help="where every file goes (default demo-output/)")
    p.add_argument("--small", action="store_true", help="reduced sizes for a quick run (used by the tests)")
    p.add_argument("--n-train", type=int, default=1200, help="training digits; the rest are test digits")
    p.add_argument("--l2", type=float, default=1e-2, help="L2 coefficient of both models (default 1e-2)")
    p.add_argument("--damping", type=float, default=0.0, help="damping of the inverse HVP (default 0)")
    p.add_argument("--lissa-maxiter", type=int, default=None,
                   help="lissa's minibatch steps at most (default: the solver's; it stops at its tolerance)")
    p.add_argument("--gtol", type=float, default=1e-7, help="training tolerance max|∂R/∂w| (default 1e-7)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units of the MLP (default 32)")
    p.add_argument("--k", type=int, default=20, help="leave-one-out retrainings (default 20)")
    p.add_argument("--verify-model", default="softmax", choices=["softmax", "mlp"],
                   help="model of the leave-one-out check (default softmax: convex, quick to retrain)")
    p.add_argument("--mislabeled-n", type=int, default=600, help="training size of the mislabeled demo")
    p.add_argument("--mislabeled-seeds", type=int, default=2, help="seeds of the mislabeled demo")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.small:
        args.n_train, args.hidden, args.k, args.gtol = 200, 16, 5, 1e-6
        args.mislabeled_n, args.mislabeled_seeds = 200, 1
    out_dir = args.out_dir
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    steps = Steps()
    result = {"out_dir": out_dir}
    print("influence %s demo%s: influence functions on CNTK models, bundled 8×8 digits"
          % (influence.__version__, " (--small)" if args.small else ""))

    with steps("the notebook's toy HVP (examples/toy_hvp.py): exact answer 1, 1"):
        import toy_hvp
        toy = toy_hvp.main()
        result["toy_max_error"] = max(abs(v - 1.0) for v in toy.values())

    with steps("prepare the digits (bundled, no download)"):
        paths, train, test = prepare_data(out_dir, args.n_train, args.seed)

    models = [("softmax", "softmax"), ("mlp", "mlp:%d" % args.hidden)]
    for name, arch in models:
        with steps("train the %s model: influence train --arch %s" % (name, arch)):
            path = os.path.join(out_dir, "%s.cntk" % name)
            run_cli(["train", "--data", paths["train"], "--arch", arch, "--l2", str(args.l2),
                     "--dtype", "float64", "--gtol", str(args.gtol), "--seed", str(args.seed), "--quiet", "--out", path])
            paths[name] = path

    with steps("one Hessian-vector product on the trained softmax model: influence hvp"):
        v = np.random.RandomState(args.seed).standard_normal(64 * 10 + 10)
        v_path = os.path.join(out_dir, "v.npy")
        np.save(v_path, v)
        run_cli(["hvp", "--model", paths["softmax"], "--data", paths["train"], "--vector", v_path,
                 "--out", os.path.join(out_dir, "hv.npy"), "--quiet"])

    panels = []
    solvers = {"softmax": ("cg", "lissa"), "mlp": ("cg",)}
    for name, _ in models:
        j, pred, acc = misclassified(paths[name], test)
        with steps("%s: who made it misclassify test digit #%d (label %d, predicted %d)? influence score, "
                   "%s" % (name, j, test[1][j], pred, " and ".join(solvers[name]))):
            print("   test accuracy of the %s model: %.3f" % (name, acc))
            res, agree = score_both(name, paths[name], paths, j, out_dir, args, solvers[name])
        result[name] = {"test_index": j, "label": int(test[1][j]), "predicted": pred, "accuracy": acc,
                        "agreement": agree}
        cg = res["cg"]
        order = np.argsort(-cg["delta"], kind="mergesort")
        result[name]["helpful"] = [int(i) for i in order[:SHOW]]
        result[name]["harmful"] = [int(i) for i in order[::-1][:SHOW]]
        panels.append({"model": name, "j": j, "label": int(test[1][j]), "pred": pred, "delta": cg["delta"],
                       "labels": cg["labels"]})

    vm = args.verify_model
    with steps("leave-one-out check of the %s's predictions: influence verify (%d retrainings)" % (vm, args.k)):
        text = run_cli(["verify", "--model", paths[vm], "--train", paths["train"], "--test", paths["test"],
                        "--test-index", str(result[vm]["test_index"]), "--retrainings", str(args.k),
                        "--damping", str(args.damping), "--quiet"])
        m = re.search(r"Pearson ([-\d.naninf]+), Spearman ([-\d.naninf]+)", text)
        result["loo"] = {"model": vm, "pearson": float(m.group(1)), "spearman": float(m.group(2))} if m else {}

    with steps("mislabeled labels: rank by self-influence (examples/mislabeled_digits.py, n=%d, %d seed%s)"
               % (args.mislabeled_n, args.mislabeled_seeds, "" if args.mislabeled_seeds == 1 else "s")):
        import mislabeled_digits
        result["mislabeled"] = mislabeled_digits.main(["--n-train", str(args.mislabeled_n),
                                                       "--seeds", str(args.mislabeled_seeds)])

    png = os.path.join(out_dir, "influence.png")
    with steps("draw %s" % png):
        draw(png, panels, train[0], test[0])
    result["png"] = png

    print("\n== summary")
    for name, _ in models:
        r = result[name]
        a = r["agreement"]
        line = ("   %-8s test #%d (label %d, predicted %d): most helpful %s, most harmful %s"
                % (name, r["test_index"], r["label"], r["predicted"], r["helpful"], r["harmful"]))
        if a is not None:
            line += ("; cg vs lissa relative difference %.1e, Spearman %.4f, top-%d overlap %d/%d helpful, "
                     "%d/%d harmful" % (a["rel_diff"], a["spearman"], TOP, round(TOP * a["helpful_overlap"]),
                                        TOP, round(TOP * a["harmful_overlap"]), TOP))
        print(line)
    if result["loo"]:
        print("   leave-one-out (%s, %d retrainings): Pearson %.3f, Spearman %.3f"
              % (vm, args.k, result["loo"]["pearson"], result["loo"]["spearman"]))
    total = time.time() - steps.t0
    width = max(len(t) for t, _ in steps.done)
    for title, seconds in steps.done:
        print("   %-*s %7.1f s" % (width, title, seconds))
    print("   %-*s %7.1f s" % (width, "total", total))
    print("   files in %s/: train.npz test.npz softmax.cntk mlp.cntk (+ .json metadata), scores-*.csv, "
          "influence.png" % out_dir)
    result["seconds"] = total
    return result


if __name__ == "__main__":
    main()
