"""Run every benchmark in ``bench/`` and write ``docs/performance.md`` from the numbers of this run.

A benchmark is a module ``bench/bench_*.py`` with a function ``main`` that returns a dict; they run in
file-name order. ``main`` gets an argument list when it takes one (``--quick`` is added for a module
that declares that flag); a failing benchmark is reported in the page and the run goes on (exit 1
at the end). The page is written atomically; the raw results go to ``bench/results.json`` (committed with the page, so
``--merge`` works from a fresh clone).

    python bench/run_all.py                  # every benchmark, full size (~10-15 min on 2 cores)
    python bench/run_all.py --quick          # reduced sizes where a benchmark supports it
    python bench/run_all.py --only hvp step  # a subset (bench_hvp.py, bench_step.py)
    python bench/run_all.py --only hvp --merge   # rerun one; keep the other sections of the last run

Every section records when it was measured and the machine's 1-minute load average just before it
ran, so a page assembled with ``--merge`` from runs on different days says so.
"""
from __future__ import print_function

import argparse
import datetime
import glob
import importlib.util
import inspect
import io
import json
import os
import platform
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---------------------------------------------------------------------------------------- discovery
def discover(bench_dir, only=None):
    """``[(name, path)]`` of ``bench_*.py`` files in ``bench_dir``, sorted by name; ``name`` is the
    part after ``bench_`` (``bench_hvp.py`` -> ``hvp``)."""
    found = []
    for path in sorted(glob.glob(os.path.join(bench_dir, "bench_*.py"))):
        name = os.path.basename(path)[len("bench_"):-len(".py")]
        if only and name not in only:
            continue
        found.append((name, path))
    return found


def load_module(name, path):
    spec = importlib.util.spec_from_file_location("bench_" + name, path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec.loader.exec_module(module)
    return module


def supports_quick(module):
    """A benchmark supports --quick when its source declares the flag."""
    try:
        return "--quick" in inspect.getsource(module)
    except (OSError, TypeError):
        return False


def takes_argv(func):
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params.values())


def run_one(name, path, quick):
    """Run one benchmark; returns ``{"name", "path", "seconds", "quick", "result"|"error"}``."""
    entry = {"name": name, "path": os.path.relpath(path, ROOT) if path.startswith(ROOT) else path,
             "quick": False, "measured": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
             "load_before": load_average()}
    t0 = time.time()
    try:
        module = load_module(name, path)
        main = getattr(module, "main", None)
        if not callable(main):
            entry["skipped"] = "no main() function"
            return entry
        if takes_argv(main):
            argv = []
            if quick and supports_quick(module):
                argv.append("--quick")
                entry["quick"] = True
            result = main(argv)
        else:
            result = main()
        entry["result"] = result if isinstance(result, dict) else {"value": result}
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit from argparse included
        traceback.print_exc()
        entry["error"] = "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
    finally:
        entry["seconds"] = time.time() - t0
    return entry


# ---------------------------------------------------------------------------------------- machine
def load_average():
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except (OSError, IOError):
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info():
    info = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "cores": os.cpu_count(), "cpu": cpu_model(),
            "os": "%s %s" % (platform.system(), platform.release()),
            "python": platform.python_version()}
    for mod in ("numpy", "scipy"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except ImportError:
            info[mod] = "not installed"
    try:
        sys.path.insert(0, ROOT)
        import influence
        info["influence"] = influence.__version__
    except ImportError:
        info["influence"] = "not importable"
    try:
        from influence.adapters.cntk import import_cntk
        info["cntk"] = import_cntk().__version__
    except Exception as e:  # ImportError, or a broken OpenMPI setup
        info["cntk"] = "not available (%s)" % str(e).splitlines()[0] if str(e) else "not available"
    return info


# ---------------------------------------------------------------------------------------- rendering
def _g(x, fmt="%.3g"):
    if x is None:
        return ""
    try:
        if x != x:  # NaN
            return "nan"
        return fmt % x
    except TypeError:
        return str(x)


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def render_hvp(res):
    lines = ["HVP time ÷ gradient time, 784-100-10 tanh MLP, 1000 examples (CNTK; median of the repeats). "
             "A central difference needs two gradients, so 2.0 is the floor. *raw*: CNTK's own "
             "`Function.grad` on an already converted feed; *gradient*: the adapter's `grad_sum`; *min*: "
             "the ratio of the fastest runs (less sensitive to other load). *naive*: the notebook's "
             "`Parameter.value = ...` shifts with restore by adding back. The one-time step calibration of "
             "a `HessianOperator` is reported separately.", ""]
    rows = [[r["dtype"], "{:,}".format(r["n_params"]), _g(1e3 * r.get("raw_s", float("nan")), "%.2f"),
             _g(1e3 * r["grad_s"], "%.2f"), _g(1e3 * r["hvp_s"], "%.2f"),
             "**%s**" % _g(r.get("raw_ratio", r["ratio"]), "%.2f"), _g(r.get("min_raw_ratio"), "%.2f"),
             _g(r.get("grad_calls"), "%.1f"), _g(r["naive_ratio"], "%.2f"), r["calibration_grads"],
             _g(r["calibration_ratio"], "%.1f"), _g(r["rel_step"], "%.2g")] for r in res["hvp"]]
    lines += _table(["dtype", "parameters", "raw grad ms", "gradient ms", "HVP ms", "HVP ÷ raw", "min ÷ min",
                     "gradient calls / HVP", "naive ÷ gradient", "calibration gradients",
                     "calibration ÷ gradient", "relative step"], rows)
    mini = [[r["dtype"], m["rows"], _g(1e3 * m["raw_s"], "%.2f"), _g(1e3 * m["hvp_s"], "%.2f"),
             "**%s**" % _g(m["ratio"], "%.2f"), _g(m["min_ratio"], "%.2f")]
            for r in res["hvp"] for m in r.get("minibatch", [])]
    if mini:
        lines += ["", "Minibatch operators (`H.minibatch(idx)`, a new one per product as in lissa; its "
                  "feed is converted once and used by both gradients):", ""]
        lines += _table(["dtype", "rows", "raw grad ms", "HVP ms", "HVP ÷ raw", "min ÷ min"], mini)
    curv = res.get("curvature") or []
    if curv:
        lines += ["", "Curvature products ÷ one raw gradient over the same data (float32; in brackets the ratio "
                  "of the minima): Gauss-Newton G·v (3 forward + 1 backward pass), empirical Fisher F·v, and the "
                  "finite-difference Hessian H·v; *forward*: one forward pass ÷ one gradient "
                  "(docs/concepts-curvature.md).", ""]
        rows = [[c["model"], "{:,}".format(c["n_params"]), _g(1e3 * c["raw_s"], "%.2f"),
                 _g(c.get("forward_ratio"), "%.2f")] +
                ["**%s** (%s)" % (_g(c[k]["ratio"], "%.2f"), _g(c[k]["min_ratio"], "%.2f"))
                 for k in ("gauss_newton", "fisher", "hessian")] for c in curv]
        lines += _table(["model", "parameters", "raw grad ms", "forward", "G·v ÷ raw", "F·v ÷ raw", "H·v ÷ raw"],
                        rows)
    return lines


def render_step(res):
    lines = ["Relative error of H·v against the closed form vs the relative step t (r = t·(1+‖w‖)/‖v‖), "
             "CNTK softmax regression on 500 digits (L2 = 1e-3): the plain central difference and its "
             "Richardson extrapolant; last row: what the adaptive choice picks.", ""]
    by = res["step"]
    header = ["t"]
    for r in by:
        header += ["%s central" % r["dtype"], "%s Richardson" % r["dtype"]]
    rows = []
    for i in range(len(by[0]["grid"])):
        row = [_g(by[0]["grid"][i][0], "%.2e")]
        for r in by:
            row += [_g(r["grid"][i][1], "%.1e"), _g(r["grid"][i][2], "%.1e")]
        rows.append(row)
    lines += _table(header, rows)
    lines.append("")
    for r in by:
        t, e, n = r["adaptive_richardson"]
        tc, ec = r["adaptive_central"]
        lines.append("- %s adaptive: Richardson at t = %.2e, error **%.1e** (%d gradients to choose); "
                     "central at t = %.2e, error %.1e" % (r["dtype"], t, e, n, tc, ec))
    return lines


def render_solvers(res):
    lines = ["Relative error of x = (H + λI)⁻¹b against a reference vs Hessian-vector products spent "
             "(b: mean loss gradient of 10 held-out examples, as in s_test).", ""]
    for key in sorted(res):
        part = res[key]
        info = part.get("info", {})
        if "skipped" in info:
            lines += ["**%s**: skipped (%s)" % (key, info["skipped"]), ""]
            continue
        lines.append("**%s**" % info.get("problem", key))
        lines.append("")
        extra = ["%s: %s" % (k, _g(v, "%.3g") if isinstance(v, float) else v)
                 for k, v in sorted(info.items()) if k != "problem"]
        if extra:
            lines += ["(" + "; ".join(extra) + ")", ""]
        rows = [[r["method"], r["setting"], r["n_hvp"], _g(r["seconds"], "%.2f"), _g(r["error"], "%.1e"),
                 _g(r["residual"], "%.1e")] for r in part.get("rows", [])]
        lines += _table(["method", "setting", "HVPs", "seconds", "relative error", "residual"], rows)
        lines.append("")
    return lines[:-1]


def render_scores(res):
    lines = ["Forward-difference scoring (4 batched forward passes per test point along s_test) vs "
             "per-example-gradient scoring, 784-100-10 tanh CNTK MLP on synthetic data, same s_test "
             "for both, one test point. Relative error = ‖I_fwd − I_grad‖/‖I_grad‖.", ""]
    rows = [[r["dtype"], r["n"], "{:,}".format(r["d"]), _g(r["grad_norm"], "%.1e"), _g(r["forward_s"], "%.2f"),
             _g(r["gradient_s"], "%.2f"), "**%s×**" % _g(r["speedup"], "%.1f"), _g(r["rel_err"], "%.1e"),
             _g(r["max_err"], "%.1e"), _g(r["spearman"], "%.6f")] for r in res.get("scoring", [])]
    lines += _table(["dtype", "n", "parameters", "‖∇R‖", "forward s", "gradient s", "speedup",
                     "relative error", "max error", "Spearman"], rows)
    loo = res.get("digits_loo")
    if loo:
        lines += ["", "Leave-one-out check on the digits (`examples/digits_influence.py`: predicted vs actual "
                  "test-loss change after retraining without each of k training points):", ""]
        lines += _table(["model", "test digit", "Pearson", "Spearman", "‖∇R‖ at the fit"],
                        [[m, r.get("test_index", ""), _g(r["pearson"], "%.4f"), _g(r["spearman"], "%.4f"),
                          _g(r.get("grad_norm"), "%.1e")] for m, r in sorted(loo.items())])
    mis = res.get("mislabeled")
    if mis:
        fracs = sorted(next(iter(mis.values())).keys(), key=float)
        lines += ["", "Mislabeled digits (`examples/mislabeled_digits.py`: 10 % of the labels flipped; "
                  "fraction of the flipped ones found in the top x % of each ranking):", ""]
        lines += _table(["ranking"] + ["top %d %%" % round(100 * float(f)) for f in fracs],
                        [[name] + [_g(row[f], "%.3f") for f in fracs] for name, row in mis.items()])
    return lines


def render_stochastic(res):
    lines = ["Relative error of the influence scores G·s (what users see) and of s = (H+λI)⁻¹b against cg "
             "at rtol 1e-9 in float64, versus work in full-data passes (a minibatch product of B rows = "
             "B/n) and seconds; *to 1e-2* / *to 1e-3*: first checkpoint at which the scores error is at "
             "most that (passes / seconds).", ""]
    png = res.get("png")
    if png:   # a path from the repository root; the page lives in docs/
        link = png[len("docs/"):] if png.startswith("docs/") else os.path.join("..", png)
        lines += ["![relative error of the scores vs full-data passes and seconds](%s)" % link, ""]
    for name, part in res["stochastic"].items():
        info = part["info"]
        lines += ["**%s** (n = {:,}, d = {:,}, %s, damping %g; reference residual %s)".format(info["n"], info["d"])
                  % (name, info["dtype"], info["damping"], _g(info["reference_residual"], "%.1e")), ""]
        rows = []
        for r in part["rows"]:
            reach = []
            for level in ("0.01", "0.001"):
                p, t = r.get("passes_to_%s" % level), r.get("seconds_to_%s" % level)
                reach.append("—" if p is None else "%s / %s s" % (_g(p, "%.1f"), _g(t, "%.1f")))
            rows.append([r["method"] + (" (up-front warning)" if r.get("upfront_warning") else ""),
                         _g(r["passes"], "%.1f"), _g(r["seconds"], "%.1f"), _g(r["error_scores"], "%.1e"),
                         _g(r["error_s"], "%.1e"), _g(r["residual"], "%.1e"),
                         "yes" if r["converged"] else "no"] + reach)
        lines += _table(["method", "passes", "seconds", "scores error", "s error", "residual", "converged",
                         "to 1e-2", "to 1e-3"], rows)
        lines.append("")
    return lines[:-1]


def render_many_tests(res):
    lines = ["s_test for m test points on the digits MLP (d = {:,}, n = {:,}, float64), one HessianOperator for "
             "every run; *× m = 1*: seconds ÷ the same solver's one-point run (target ≤ 3 at m = 100). "
             "cg warm starts each point from the Galerkin projection on the earlier solutions; cold "
             "starts from 0.".format(res["d"], res["n"]), ""]
    lines += _table(["solver", "m", "seconds", "products", "max residual", "converged", "× m = 1"],
                    [[r["solver"], r["m"], _g(r["seconds"], "%.2f"), r["n_hvp"], _g(r["max_residual"], "%.1e"),
                      "%d/%d" % (r["converged"], r["m"]), _g(r.get("ratio_vs_m1"), "%.2f")] for r in res["rows"]])
    plans = res.get("plans") or []
    if plans:
        lines += ["", "What `solver=\"auto\"` plans for each m:", ""]
        lines += ["- " + ", ".join("%s=%s" % (k, _g(v) if isinstance(v, float) else v)
                                   for k, v in sorted(p.items())) for p in plans]
    return lines


def render_pexgrads(res):
    r = res["pexgrads"]
    lines = ["Per-example gradients, 784-100-10 tanh CNTK MLP, %s, n = {:,}, d = {:,}: the batched path "
             "(one forward/backward pass per block of rows) vs the per-row loop (one `Function.grad` per "
             "row; timed on the first %d rows and scaled to n) vs one batched gradient pass over the same "
             "rows (`grad_sum`, the floor: one sum instead of n rows). Both paths are called on chunks of "
             "%d rows (the float64 result for all rows would be {:,} MB); *output*: allocating and writing "
             "that float64 result alone. Load average before / after: %s / %s (2 shared cores)."
             .format(r["n"], r["d"], int(r["n"] * r["d"] * 8 / 2 ** 20))
             % (r["dtype"], r["loop_rows"], r["chunk"], r.get("load_before"), r.get("load_after")), ""]
    lines += _table(["batched s", "loop s (scaled)", "grad_sum s", "output s", "loop ÷ batched",
                     "batched ÷ grad_sum", "batched ÷ output"],
                    [[_g(r["batched_s"], "%.2f"), _g(r["loop_scaled_s"], "%.1f"), _g(r["floor_s"], "%.2f"),
                      _g(r.get("output_s"), "%.2f"), "**%s×**" % _g(r["speedup"], "%.1f"),
                      _g(r["batched_over_floor"], "%.1f"), _g(r.get("batched_over_output"), "%.1f")]])
    lines += ["", "- plan: %s" % r["plan"],
              "- batched vs loop: max row relative error %s (whole matrix %s); against float64 gradients at "
              "the same weights: batched %s, loop %s"
              % (_g(r["max_row_rel_error"], "%.1e"), _g(r.get("rel_error"), "%.1e"),
                 _g(r.get("batched_vs_float64"), "%.1e"), _g(r.get("loop_vs_float64"), "%.1e"))]
    return lines


RENDERERS = {"pexgrads": render_pexgrads, "hvp": render_hvp, "many_tests": render_many_tests, "step": render_step,
             "solvers": render_solvers, "scores": render_scores,
             "stochastic": render_stochastic}
TITLES = {"pexgrads": "Per-example gradients: batched vs loop (bench_pexgrads.py)",
          "hvp": "HVP cost (bench_hvp.py)", "step": "Finite-difference step (bench_step.py)",
          "solvers": "Inverse-HVP solvers (bench_solvers.py)",
          "scores": "Scoring: forward vs gradient, and accuracy on the digits (bench_scores.py)",
          "stochastic": "Stochastic inverse-HVPs: cg, classic and refined LiSSA (bench_stochastic.py)",
          "many_tests": "Many test points: s_test for 1, 10, 100 points (bench_many_tests.py)"}


def render_cluster_hvp(res):
    lines = ["s_test by cg (%d iterations at most, damping %g) on a Dask LocalCluster: n = {:,}, %d-%d-%d tanh "
             "CNTK MLP (d = {:,}, float32, random weights), every process with OMP_NUM_THREADS=1; each cluster "
             "run timed end to end from a started cluster (operator, worker start-up, step calibration, solve). "
             "*rel. diff*: ‖s_cluster − s_single‖/‖s_single‖. Load average (1 min) before / after: %s / %s on "
             "%s cores.".format(res["n"], res["d"])
             % (res["maxiter"], res["damping"], res["features"], res["hidden"], res["classes"],
                _g(res["load_average_before"][0], "%.2f"), _g(res["load_average_after"][0], "%.2f"),
                res.get("cores")), ""]
    rows = [[r["mode"], r["workers"] or "–", _g(r["startup_s"], "%.2f"), _g(r["seconds"], "%.1f"),
             r["grad_passes"], r["n_hvp"], _g(r["s_per_pass"], "%.3f"), _g(r["rel_diff"], "%.1e")]
            for r in res["runs"]]
    lines += _table(["mode", "workers", "start-up s", "seconds", "gradient passes", "HVPs", "s / pass",
                     "rel. diff"], rows)
    if "ratio_2_vs_1" in res:
        lines += ["", "Scaling 2 vs 1 workers: **%.2f×** (target ≥ 1.7×)." % res["ratio_2_vs_1"]]
    if "product_ratio_median" in res:
        lines += ["", "The same products alternating between the two clusters (same load): 2 vs 1 workers "
                  "**%.2f×** (ratio of medians), %.2f× (ratio of minima)."
                  % (res["product_ratio_median"], res["product_ratio_min"])]
    return lines


RENDERERS["cluster_hvp"] = render_cluster_hvp
TITLES["cluster_hvp"] = "s_test on a Dask cluster: 2 workers vs 1 (bench_cluster_hvp.py)"


def render_threads(res):
    lines = ["One `influence score` process (digits mlp:32, float64, cg, one test point; CNTK start-up "
             "included) alone and two at once, with `--threads 1` and `--threads 2` (CNTK's own default here: "
             "one thread per core), without and with one busy-looping background process; mean wall and CPU "
             "seconds per run over %d repeat(s) on %s cores. The 1-minute load average before each cell says "
             "how busy the machine was besides (other users count too)." % (res.get("repeats", 1), res.get("cores")),
             ""]
    rows = [["loaded" if r["background"] else "idle", r["threads"], r["concurrent"], _g(r["wall"], "%.2f"),
             _g(r["wall_max"], "%.2f"), _g(r["cpu"], "%.2f"), r.get("load_before") or ""] for r in res["rows"]]
    lines += _table(["background", "threads", "runs at once", "wall s", "slowest wall s", "CPU s",
                     "load before"], rows)
    lines += ["", "Two at once ÷ alone (wall): " + ", ".join(
        "%s **%.2f×**" % (k, v) for k, v in sorted(res["two_vs_one"].items())) + ".",
              "A lone run, 1 thread ÷ 2 threads (wall): " + ", ".join(
        "%s **%.2f×**" % (k, v) for k, v in sorted(res["alone_1_vs_2"].items())) + "."]
    return lines


RENDERERS["threads"] = render_threads
TITLES["threads"] = "CPU threads per process: alone vs two at once (bench_threads.py)"


def render_ekfac(res):
    lines = ["Digits MLP (d = {:,}, n = {:,}, float64, l2 = %g) at an optimum fitted by `influence.fit`: s_test for "
             "%d test points by plain cg and by cg preconditioned with EK-FAC (`cg(H, b, preconditioner=ekfac)`), "
             "both to rtol 1e-6 on the unpreconditioned residual; *ratio*: preconditioned ÷ plain products "
             "(target ≤ 0.2). EK-FAC alone: Pearson and Spearman of its influence scores against the exact "
             "ones over the training points, per test point (targets ≥ 0.85 and ≥ 0.5). Load average (1 min) "
             "before / after: %s / %s on %s cores.".format(res["d"], res["n"])
             % (res["l2"], res["tests"], _g(res["load_average_before"][0], "%.2f"),
                _g(res["load_average_after"][0], "%.2f"), res.get("cores")), "",
             "Plain cg products: %s." % ", ".join(str(r["n_hvp"]) for r in res["plain"]), ""]
    rows = [[r["strategy"], r["labels"], r["damping"], _g(r["fit_seconds"], "%.1f"),
             ", ".join(str(t["n_hvp"]) for t in r["tests"]), _g(r["n_hvp_ratio"], "%.2f"),
             ", ".join(_g(t["pearson"], "%.2f") for t in r["tests"]),
             ", ".join(_g(t["spearman"], "%.2f") for t in r["tests"])] for r in res["settings"]]
    lines += _table(["strategy", "labels", "damping", "fit s", "preconditioned cg products", "ratio",
                     "alone: Pearson", "alone: Spearman"], rows)
    cnn = res.get("cnn")
    if cnn:
        lines += ["", "CNN (d = {:,}, n = {:,}, float32, random weights): EK-FAC fit %.1f s; 1 query %.2f s, 100 "
                  "queries %.2f s (per-example test gradients included); load %s before.".format(cnn["d"], cnn["n"])
                  % (cnn["fit_seconds"], cnn["query_seconds_1"], cnn["query_seconds_100"],
                     _g(cnn["load_average_before"][0], "%.2f"))]
    tc = res.get("trained_cnn")
    if tc:
        c = tc.get("condition", {})
        rows = [[str(j), str(t["plain_products"]), str(t["pre_products"]), _g(t["rel_diff"], "%.1e"),
                 _g(t["alone_pearson"], "%.2f"), _g(t["alone_spearman"], "%.2f")]
                for j, t in enumerate(tc["tests_detail"])]
        lines += ["", "Trained CNN (examples/cnn_batchnorm.py: Conv → BatchNormalization → ReLU → max-pool → Dropout → "
                  "Dense; d = {:,}, {} digits, {}, 8 Adam epochs with CNTK's Trainer, ‖∇R‖ = %.2g): Gauss-Newton "
                  "G + λI with damping auto λ = %.3g; cg plain and preconditioned by EK-FAC (sampled labels, the same "
                  "λ), both to the default rtol on the true residual; ratio %.2f (target ≤ 1/3); EK-FAC alone "
                  "against the exact solution (target Spearman ≥ 0.9). Load %s before.".format(
                      tc["d"], tc["n"], tc["dtype"])
                  % (tc["grad_norm"], tc["damping"], tc["n_hvp_ratio"], _g(tc["load_average_before"][0], "%.2f")), ""]
        lines += _table(["test point", "plain cg products", "preconditioned", "rel. diff", "alone: Pearson",
                         "alone: Spearman"], rows)
        if c:
            lines += ["", "Condition numbers: G + λI %s; preconditioned by EK-FAC %s (%s); by the exact per-layer "
                      "blocks of G + λI %s, the best a block-diagonal approximation can do. Those exact blocks "
                      "alone: Spearman %s–%s." % (
                          _g(c["plain"], "%.0f"), _g(c["ekfac"], "%.0f"),
                          ", ".join("%s: %s" % (k.replace("ekfac_", "").replace("_", " "), _g(v, "%.0f"))
                                    for k, v in c.items() if k.startswith("ekfac_")),
                          _g(c["exact_blocks"], "%.0f"), _g(min(tc["blocks_alone_spearman"]), "%.2f"),
                          _g(max(tc["blocks_alone_spearman"]), "%.2f"))]
    return lines


RENDERERS["ekfac"] = render_ekfac
TITLES["ekfac"] = "EK-FAC: preconditioned cg and EK-FAC alone (bench_ekfac.py)"


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def render_generic(res):
    text = json.dumps(res, indent=2, sort_keys=True, default=_json_default)
    return ["```json"] + text.splitlines() + ["```"]


def summary_lines(entries):
    """The headline ratios of this run, one bullet each, for the benches that produced them."""
    by = {e["name"]: e.get("result") for e in entries if e.get("result")}
    out = []
    try:
        r = by["cluster_hvp"]
        out.append("cluster s_test, 2 vs 1 workers (n = {:,}): **%.2f×** end to end, %.2f× alternating products "
                   "(load average %.1f)".format(r["n"])
                   % (r["ratio_2_vs_1"], r.get("product_ratio_median", float("nan")), r["load_average_before"][0]))
    except (KeyError, TypeError):
        pass
    try:
        r = by["threads"]
        out.append("two `influence score` runs at once ÷ one alone, default `--threads 1`: **%.2f×** (idle), %.2f× "
                   "(loaded); with 2 threads %.2f× / %.2f×"
                   % (r["two_vs_one"]["idle, 1 thread"], r["two_vs_one"]["loaded, 1 thread"],
                      r["two_vs_one"]["idle, 2 threads"], r["two_vs_one"]["loaded, 2 threads"]))
    except (KeyError, TypeError):
        pass
    try:
        for r in by["hvp"]["hvp"]:
            out.append("HVP ÷ gradient (%s, %s parameters): **%.2f** (naive: %.2f)"
                       % (r["dtype"], "{:,}".format(r["n_params"]), r["ratio"], r["naive_ratio"]))
    except (KeyError, TypeError):
        pass
    try:
        for r in by["scores"]["scoring"]:
            out.append("forward vs gradient scoring (%s, n = %d): **%.1f×** faster, relative error %.1e"
                       % (r["dtype"], r["n"], r["speedup"], r["rel_err"]))
    except (KeyError, TypeError):
        pass
    try:
        for r in by["step"]["step"]:
            out.append("adaptive HVP step (%s): relative error %.1e" % (r["dtype"], r["adaptive_richardson"][1]))
    except (KeyError, TypeError):
        pass
    try:
        for key, part in sorted(by["solvers"].items()):
            rows = part.get("rows", [])
            cg = [r for r in rows if r["method"] == "cg" and r["setting"].startswith("rtol")]
            li = [r for r in rows if r["method"] == "lissa" and r["error"] == r["error"]]
            if cg and li:
                out.append("%s: cg %.1e error in %d HVPs; lissa %.1e in %d HVPs"
                           % (part["info"].get("problem", key), cg[-1]["error"], cg[-1]["n_hvp"],
                              li[-1]["error"], li[-1]["n_hvp"]))
    except (KeyError, TypeError):
        pass
    try:
        for name, part in by["stochastic"]["stochastic"].items():
            out.append("stochastic inverse-HVP, %s: " % name + "; ".join(
                "%s %.1e scores error in %.1f s (%.0f passes)" % (r["method"], r["error_scores"], r["seconds"],
                                                                  r["passes"]) for r in part["rows"]))
    except (KeyError, TypeError, AttributeError):
        pass
    try:
        rows = by["many_tests"]["rows"]
        top = max(r["m"] for r in rows)
        out.append("s_test for %d test points ÷ one, digits MLP: " % top + ", ".join(
            "%s %.2f×" % (r["solver"], r["ratio_vs_m1"]) for r in rows if r["m"] == top and r.get("ratio_vs_m1")))
    except (KeyError, TypeError, ValueError):
        pass
    try:
        r = by["pexgrads"]["pexgrads"]
        out.append("batched per-example gradients (784-100-10, %s, n = %d): **%.1f×** faster than the "
                   "per-row loop, %.1f× one grad_sum pass" % (r["dtype"], r["n"], r["speedup"],
                                                              r["batched_over_floor"]))
    except (KeyError, TypeError):
        pass
    try:
        for m, r in sorted(by["scores"]["digits_loo"].items()):
            out.append("leave-one-out on the digits (%s): Pearson %.3f" % (m, r["pearson"]))
    except (KeyError, TypeError, AttributeError):
        pass
    return out


def render(entries, info, quick):
    lines = ["# Performance", "",
             "<!-- GENERATED by `make bench` (bench/run_all.py) - do not edit by hand; rerun it instead. -->", "",
             "Written on %s: %s cores, %s; %s; Python %s, numpy %s, scipy %s, CNTK %s, influence %s. "
             "The table gives the date of each benchmark's run and the 1-minute load average just before it."
             % (info["date"], info["cores"], info["cpu"], info["os"], info["python"], info["numpy"],
                info["scipy"], info["cntk"], info["influence"]), ""]
    if quick:
        lines += ["**Quick run** (`--quick`): reduced sizes where a benchmark supports it; rerun `make bench` "
                  "for the full numbers.", ""]
    lines += ["Timings depend on the machine and its load; ratios (HVP ÷ gradient, speedups) and errors "
              "carry over better than seconds. Each section comes from one `bench/bench_*.py` "
              "(`python bench/bench_NAME.py` runs it alone).", ""]
    summary = summary_lines(entries)
    if summary:
        lines += ["## Summary", ""] + ["- " + s for s in summary] + [""]
    lines += ["| benchmark | seconds | status | measured | load before |", "|---|---|---|---|---|"]
    for e in entries:
        status = "ok" + (" (quick)" if e.get("quick") else "")
        if "error" in e:
            status = "FAILED: " + e["error"].replace("|", "\\|")
        elif "skipped" in e:
            status = "skipped: " + e["skipped"]
        lines.append("| `%s` | %.0f | %s | %s | %s |" % (e["path"], e["seconds"], status, e.get("measured", ""),
                                                      _g(e.get("load_before"), "%.2f")))
    lines.append("")
    for e in entries:
        if "result" not in e:
            continue
        lines += ["## %s" % TITLES.get(e["name"], "%s (%s)" % (e["name"], os.path.basename(e["path"]))), ""]
        renderer = RENDERERS.get(e["name"], render_generic)
        try:
            lines += renderer(e["result"])
        except Exception:  # a benchmark changed its output: show the raw numbers instead
            lines += render_generic(e["result"])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_atomic(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        os.makedirs(folder)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with io.open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def merged(entries, json_path):
    """``entries`` plus the entries of the earlier raw results at ``json_path`` for benchmarks not in
    ``entries`` (an entry without a date gets the earlier run's), in name order."""
    try:
        with io.open(json_path, encoding="utf-8") as f:
            earlier = json.load(f)
    except (OSError, IOError, ValueError):
        return entries
    now = {e["name"] for e in entries}
    kept = []
    for e in earlier.get("benchmarks", []):
        if e.get("name") in now:
            continue
        e.setdefault("measured", earlier.get("machine", {}).get("date", ""))
        e.setdefault("quick", bool(earlier.get("quick")))
        kept.append(e)
    return sorted(entries + kept, key=lambda e: e["name"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that support it")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these (NAME of bench_NAME.py)")
    p.add_argument("--bench-dir", default=HERE, help="folder of the bench_*.py modules (default: bench/)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"),
                   help="the page to write (default docs/performance.md)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="raw results (default: bench/results.json beside the default page only)")
    p.add_argument("--merge", action="store_true",
                   help="keep the sections of the benchmarks not run now from the raw results of earlier "
                        "runs (--json); each section states when it was measured")
    p.add_argument("--render", action="store_true",
                   help="run nothing: write the page again from the raw results (--json)")
    args = p.parse_args(argv)
    json_path = args.json
    if json_path is None and os.path.abspath(args.out) == os.path.join(ROOT, "docs", "performance.md"):
        json_path = os.path.join(HERE, "results.json")
    if (args.merge or args.render) and not json_path:
        print("run_all: --merge and --render need the raw results of the earlier runs; pass --json PATH",
              file=sys.stderr)
        return 2
    if args.render:
        entries = merged([], json_path)
        if not entries:
            print("run_all: no raw results in %s; run the benchmarks first" % json_path, file=sys.stderr)
            return 2
        write_atomic(args.out, render(entries, machine_info(), any(e.get("quick") for e in entries)))
        print("wrote %s from %s (%d benchmarks)" % (args.out, json_path, len(entries)))
        return 0
    benches = discover(args.bench_dir, args.only)
    if not benches:
        print("run_all: no bench_*.py%s in %s" % (" matching --only" if args.only else "", args.bench_dir),
              file=sys.stderr)
        return 2
    entries = []
    t_all = time.time()
    for name, path in benches:
        print("\n==> %s%s" % (os.path.basename(path), " --quick" if args.quick else ""), flush=True)
        entry = run_one(name, path, args.quick)
        print("<== %s: %s in %.0f s" % (os.path.basename(path),
                                       "FAILED" if "error" in entry else entry.get("skipped", "ok"),
                                       entry["seconds"]), flush=True)
        entries.append(entry)
    if args.merge:
        entries = merged(entries, json_path)
    info = machine_info()
    text = render(entries, info, args.quick or any(e.get("quick") for e in entries))
    write_atomic(args.out, text)
    if json_path:
        write_atomic(json_path, json.dumps({"machine": info, "quick": args.quick, "benchmarks": entries},
                                           indent=2, sort_keys=True, default=_json_default) + "\n")
    failed = [e["name"] for e in entries if "error" in e]
    print("\nwrote %s (%d benchmarks, %.0f s)%s" % (args.out, len(entries), time.time() - t_all,
                                                    "; FAILED: " + ", ".join(failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
