"""``influence score``: one table per test point, or with many test points the score matrix (.npy)
and aggregate rankings over the test points (overall and per class)."""
from __future__ import print_function

import json
import os
import sys

import numpy as np

from ._common import (
    EXIT_OK, UsageError, Timer, Warnings, check_cluster, check_indices, cluster_executor, job_inputs, label_text,
    data_labels, load_model, load_split, log, out_extension, partial_folder, print_timing, solutions_json,
    solver_options, parse_test_indices)
from .curvature import check_converged, curvature_line, curvature_summary, write_provenance
from .factors import check_factor_flags, preconditioner_text, use_factors
from .plans import FORWARD_PASS_PER_HVP
from .preconditioning import plan_suffix, preconditioner_options


def _record(args, job, idx, result, not_converged):
    """How the scores were computed, for .json outputs and the .meta.json next to .csv/.npy ones."""
    record = {"test_index": [int(t) for t in idx], "solver": args.solver, "scoring": args.scoring,
              "plan": None if result.plan is None else dict(result.plan._asdict()),
              "converged": not not_converged, "not_converged": not_converged}
    record.update(curvature_summary(args, job))
    return record


def _write_scores(args, timer, idx, n, train, scores, curvature):
    from ..scoring.scores import predicted_loss_change
    from ..common.files import write_npy, write_table, write_json
    if not args.out:
        return
    delta = predicted_loss_change(scores, n)
    train_labels = data_labels(train)
    with timer("write"):
        if args.out.lower().endswith(".npy"):           # the (test points x training points) I_up,loss matrix
            write_npy(args.out, np.atleast_2d(np.asarray(scores, dtype=np.float64)))
            write_provenance(args, args.out, "I_up,loss = -g_test^T (C + damping I)^-1 g_i: row j the j-th "
                             "test point of test_index, column i the training point i (float64)", curvature)
        elif args.out.lower().endswith(".json"):
            write_json(args.out, {"test_index": idx, "n_train": n, "train_label": train_labels,
                                  "influence": scores, "predicted_loss_change": delta,
                                  "definition": "influence = I_up,loss = -g_test^T (C + damping I)^-1 g_i, "
                                  "C the curvature; predicted_loss_change = -influence / n_train",
                                  **curvature})
        else:
            rows = ((int(t), i, label_text(train_labels, i), scores[j, i], delta[j, i])
                    for j, t in enumerate(idx) for i in range(n))     # streamed, not a list
            write_table(args.out, ["test_index", "train_index", "train_label", "influence",
                                   "predicted_loss_change"], rows)
            write_provenance(args, args.out, "one row per (test point, training point): influence = I_up,loss = "
                             "-g_test^T (C + damping I)^-1 g_i, predicted_loss_change = -influence / n_train",
                             curvature)


def cmd_score(args):
    from ..jobs import ScoreJob
    from ..scoring.scores import predicted_loss_change
    out_extension(args)
    check_factor_flags(args)
    folder = partial_folder(args)
    check_cluster(args)
    timer = Timer()
    with timer("load model and data"):
        model, _ = load_model(args)
        train = load_split(args.train, "--train", model, args.ctf_options)
        test = load_split(args.test, "--test", model, args.ctf_options)
    if args.test_index:
        idx = parse_test_indices(args.test_index, test, model, args.batch_size)
    else:
        idx = check_indices(range(len(test)), len(test), "--test-index", "the test set")
    test_sel = test.subset(idx)
    curvature, damping, preconditioner = use_factors(args, model, train)
    options = solver_options(args)
    options.update(preconditioner_options(args, preconditioner, plan_line=True))
    n = len(train)
    many = args.matrix is not None or len(idx) > MATRIX_TEST_POINTS
    matrix_path = _matrix_path(args, len(idx)) if many else None
    groups = _class_labels(test_sel) if many else None
    if many and not args.test_index and args.solver != "auto":
        _cost_line(args, len(idx), n, matrix_path)
    with cluster_executor(args, timer) as executor:
        pre_line = preconditioner_text(args)
        if pre_line:
            log(args, pre_line)

        def on_plan(plan):
            log(args, "influence: " + str(plan) + ("; preconditioned by EK-FAC" if pre_line else plan_suffix(args)))
            if many and not args.test_index:
                _cost_line(args, len(idx), n, matrix_path, plan)
        with Warnings():
            job = ScoreJob(model, train, test_sel, folder=folder, resume=args.resume, solver=args.solver,
                           damping=damping, curvature=curvature,
                           on_curvature=lambda cur: curvature_line(args, cur),
                           scoring=args.scoring, batch_size=args.batch_size,
                           chunk_size=args.chunk_size, check_optimum=not args.no_optimum_check,
                           progress=not args.quiet, executor=executor,
                           inputs=job_inputs(args, {"test_index": idx.tolist()}),
                           solver_options=options, on_plan=on_plan,
                           aggregate=many, matrix=matrix_path, groups=groups)
            with job:
                result = job.run()
                not_converged = check_converged(args, result.solutions)
                solver_used = args.solver if result.plan is None else "auto: %s" % result.plan.method
                timer.steps.append(("test gradients + inverse HVP (%s)" % solver_used, job.seconds["s_test"]))
                timer.steps.append(("scoring (%s, %d training points)" % (args.scoring, n), job.seconds["scoring"]))
                scores, solutions, chunks = result.scores, result.solutions, result.chunks
                record = _record(args, job, idx, result, not_converged)
                if many:
                    _write_aggregates(args, timer, train, result.aggregates, record, matrix_path)
                else:
                    _write_scores(args, timer, idx, n, train, scores, record)
    if many:
        return _report_many(args, timer, model, train, test_sel, idx, result, matrix_path, job, not_converged)
    delta = predicted_loss_change(scores, n)
    train_labels = data_labels(train)
    plan = result.plan
    summary = {"n_train": n, "test_index": idx.tolist(), "solver": args.solver,
               "plan": None if plan is None else dict(plan._asdict()), "scoring": args.scoring, "seconds": timer.as_dict(), "out": args.out,
               "chunks": chunks, "solutions": solutions_json(solutions),
               "top": []}
    summary.update(curvature_summary(args, job))
    summary["not_converged"] = not_converged
    if not_converged and not args.json:
        print(not_converged)
    predicted = None
    if model.output is not None and model.n_classes:
        predicted = np.argmax(model.predict(test_sel.x, args.batch_size), axis=1)
    test_losses = model.per_example_losses(test_sel, args.batch_size)
    for j, t in enumerate(idx):
        order = np.argsort(-delta[j], kind="mergesort")
        helpful = [int(i) for i in order[:args.top] if delta[j, i] > 0]
        harmful = [int(i) for i in order[::-1][:args.top] if delta[j, i] < 0]
        summary["top"].append({"test_index": int(t), "test_loss": float(test_losses[j]),
                               "helpful": [[i, label_text(train_labels, i), float(delta[j, i])] for i in helpful],
                               "harmful": [[i, label_text(train_labels, i), float(delta[j, i])] for i in harmful]})
        if args.json:
            continue
        head = "test point %d: label %s" % (t, label_text(data_labels(test_sel), j))
        if predicted is not None:
            head += ", predicted %d" % predicted[j]
        print("%s, test loss %.4g" % (head, test_losses[j]))
        for title, chosen in (("most helpful (removing them would raise the test loss)", helpful),
                              ("most harmful (removing them would lower the test loss)", harmful)):
            print("  %s:" % title)
            print("    %5s %8s %7s %24s" % ("rank", "index", "label", "test-loss change if removed"))
            for r, i in enumerate(chosen):
                print("    %5d %8d %7s %+24.4e" % (r + 1, i, label_text(train_labels, i), delta[j, i]))
            if not chosen:
                print("    (none)")
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return EXIT_OK
    print_timing(timer, idx, solutions, plan)
    if _out_is_matrix(args):
        print("saved %s (%d x %d float64 I_up,loss: row j is the j-th selected test point, column i the "
              "training point i)" % (args.out, len(idx), n))
    elif args.out:
        print("saved %s (%d rows)" % (args.out, n * len(idx)))
    return EXIT_OK


# ------------------------------------------------------------------ score: many test points (matrix)
#: With more than this many test points (or with --matrix), ``score`` writes the whole score matrix
#: (test x train I_up,loss, float64) as a .npy file and reports aggregate rankings over the test
#: points (sum and mean per training point, overall and per class of the test points) instead of
#: one table per test point; the CSV/JSON --out then holds one row per training point.
MATRIX_TEST_POINTS = 10



def _matrix_path(args, m):
    """Where the (m x n) score matrix goes: --matrix, else --out with its extension replaced by .npy
    (scores.csv -> scores.npy); None without either (aggregates only)."""
    if args.matrix is not None:
        return args.matrix
    if not args.out:
        return None
    if _out_is_matrix(args):
        return args.out
    return os.path.splitext(args.out)[0] + ".npy"


def _out_is_matrix(args):
    """--out NAME.npy: the score matrix itself (no table file)."""
    return bool(args.out) and args.out.lower().endswith(".npy")


def _class_labels(test):
    """The test points' integer class labels (per-class aggregates), or None (regression, no labels)."""
    labels = data_labels(test)
    if labels is None or not np.issubdtype(np.asarray(labels).dtype, np.integer):
        return None
    return np.asarray(labels)


def _cost_line(args, m, n, matrix_path, plan=None):
    """One line on stderr before a matrix run over the default "all" test points (printed also with
    --quiet; the run proceeds, it never waits for input)."""
    from ..scoring.kernels import FORWARD_STENCIL
    text = "influence: cost: all %d test points (the default --test-index) x %d training points = %d scores" \
           % (m, n, m * n)
    if matrix_path:
        text += " (%.4g MB matrix in %s)" % (m * n * 8 / 1e6, matrix_path)
    if plan is not None:
        passes = 4 if "richardson" in FORWARD_STENCIL.values() else 2
        scoring = m * passes * FORWARD_PASS_PER_HVP * plan.hvp_seconds if args.scoring == "forward" else None
        text += "; estimated ~%.3g s for the inverse HVP (%s)" % (plan.seconds, plan.method)
        text += "" if scoring is None else " + ~%.3g s for scoring (%d forward passes per test point)" \
            % (scoring, passes)
    else:
        text += "; %d inverse-HVP solves with --solver %s" % (m, args.solver)
    print(text + "; proceeding (pass --test-index to explain fewer, e.g. --test-index misclassified)",
          file=sys.stderr)


def _aggregate_columns(agg):
    """(names, arrays) of the aggregate table: one row per training point."""
    delta_sum, delta_mean = agg.loss_change(agg.sum), agg.loss_change(agg.mean)
    rank = np.empty(agg.n_train, dtype=np.int64)
    rank[np.argsort(-delta_mean, kind="mergesort")] = np.arange(1, agg.n_train + 1)
    names = ["influence_sum", "influence_mean", "predicted_loss_change_sum", "predicted_loss_change_mean",
             "rank"]
    arrays = [agg.sum, agg.mean, delta_sum, delta_mean, rank]
    if agg.classes is not None:
        for c, label in enumerate(agg.classes):
            names += ["influence_mean_class_%s" % label, "predicted_loss_change_mean_class_%s" % label]
            arrays += [agg.class_mean[c], agg.loss_change(agg.class_mean[c])]
    return names, arrays


def _write_aggregates(args, timer, train, agg, record, matrix_path):
    """--out in matrix mode: one row per training point (streamed), written atomically; and the
    .meta.json of the score matrix the job wrote."""
    from ..common.files import write_table
    if matrix_path:
        write_provenance(args, matrix_path, "the score matrix I_up,loss = -g_test^T (C + damping I)^-1 g_i: row j "
                         "the j-th test point of test_index, column i the training point i (float64)", record)
    if not args.out or _out_is_matrix(args):
        return
    labels = data_labels(train)
    names, arrays = _aggregate_columns(agg)
    with timer("write"):
        write_table(args.out, ["train_index", "train_label"] + names,
                    ((i, label_text(labels, i)) + tuple(a[i] for a in arrays) for i in range(agg.n_train)))
        write_provenance(args, args.out, "one row per training point: sums and means over the test points of "
                         "influence (I_up,loss) and predicted_loss_change (-influence / n_train)", record)


def _ranked(agg, delta, labels, top):
    helpful, harmful = agg.ranking(delta, top)
    return {"helpful": [[i, label_text(labels, i), float(delta[i])] for i in helpful],
            "harmful": [[i, label_text(labels, i), float(delta[i])] for i in harmful]}


def _print_ranked(title, ranked):
    print(title)
    print("    %5s %8s %7s %20s   %8s %7s %20s" % ("rank", "helpful", "label", "mean change", "harmful",
                                                  "label", "mean change"))
    rows = max(len(ranked["helpful"]), len(ranked["harmful"]))
    for r in range(rows):
        left = ranked["helpful"][r] if r < len(ranked["helpful"]) else None
        right = ranked["harmful"][r] if r < len(ranked["harmful"]) else None
        print("    %5d %s   %s" % (r + 1, "%8d %7s %+20.4e" % tuple(left) if left else " " * 37,
                                    "%8d %7s %+20.4e" % tuple(right) if right else ""))
    if not rows:
        print("    (none)")


def _report_many(args, timer, model, train, test, idx, result, matrix_path, job, not_converged=None):
    """Print (or --json) the aggregate rankings of a matrix run."""
    agg, n, m = result.aggregates, len(train), len(idx)
    labels = data_labels(train)
    delta_mean = agg.loss_change(agg.mean)
    overall = _ranked(agg, delta_mean, labels, args.top)
    per_class = []
    if agg.classes is not None:
        for c, label in enumerate(agg.classes):
            entry = _ranked(agg, agg.loss_change(agg.class_mean[c]), labels, args.top)
            entry.update({"class": label.item(), "test_points": int(agg.counts[c])})
            per_class.append(entry)
    plan = result.plan
    summary = {"n_train": n, "test_index": idx.tolist(), "solver": args.solver,
               "plan": None if plan is None else dict(plan._asdict()), "scoring": args.scoring,
               "seconds": timer.as_dict(), "out": args.out, "matrix": matrix_path,
               "matrix_shape": [m, n], "matrix_dtype": "float64", "chunks": result.chunks,
               "solutions": solutions_json(result.solutions),
               "aggregate": {"helpful": overall["helpful"], "harmful": overall["harmful"],
                             "per_class": per_class if agg.classes is not None else None}}
    summary.update(curvature_summary(args, job))
    summary["not_converged"] = not_converged
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return EXIT_OK
    if not_converged:
        print(not_converged)
    print("%d test points: training points ranked by the mean over the test points of the test-loss change "
          "if removed (-I_up,loss/n; positive: it helped)" % m)
    _print_ranked("  overall:", overall)
    if agg.classes is None:
        print("  per class: skipped (the test labels are not integer classes)")
    for entry in per_class:
        _print_ranked("  test points of class %s (%d):" % (entry["class"], entry["test_points"]), entry)
    if matrix_path is None:
        print("  per test point: pass --out (or --matrix PATH) to save the whole score matrix")
    print_timing(timer, idx, result.solutions, plan)
    if args.out and not _out_is_matrix(args):
        print("saved %s (%d rows: sums and means over the test points per training point)" % (args.out, n))
    if matrix_path:
        print("saved %s (%d x %d float64 I_up,loss: row j is the j-th selected test point, column i the "
              "training point i)" % (matrix_path, m, n))
    return EXIT_OK
