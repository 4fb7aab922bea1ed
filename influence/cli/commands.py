"""``influence info``, ``train``, ``hvp``, ``self`` and ``verify``: parse, call the library, print."""
from __future__ import print_function

import json
import os
import platform
import sys

import numpy as np

from .._version import __version__
from ._common import (
    EXIT_OK, META_SUFFIX, UsageError, Timer, Warnings, check_indices, existing_file, job_inputs, label_text,
    data_labels, load_data_file, load_model, load_split, log, out_extension, parse_arch, partial_folder)
from .curvature import curvature_line, curvature_record, curvature_summary, factors_summary, write_provenance
from .factors import check_factor_flags, preconditioner_text, use_factors
from .preconditioning import preconditioner_options
from .plans import FitProgress, retrain_passes, retrain_plan, self_plan


# ---------------------------------------------------------------------------------------- commands
def cmd_info(args):
    import scipy
    from ..common.threads import get_threads
    versions = {"influence": __version__, "python": platform.python_version(), "python_executable": sys.executable,
                "numpy": np.__version__, "scipy": scipy.__version__, "cntk": None, "cntk_error": None,
                "threads": get_threads()}
    try:
        from ..adapters.cntk import import_cntk
        versions["cntk"] = import_cntk().__version__
    except ImportError as e:
        versions["cntk_error"] = str(e).splitlines()[0]
    if args.json:
        print(json.dumps(versions, indent=2, sort_keys=True))
        return EXIT_OK
    print("influence  %s" % __version__)
    print("python     %s (%s)" % (versions["python"], sys.executable))
    print("numpy      %s" % np.__version__)
    print("scipy      %s" % scipy.__version__)
    print("cntk       %s" % (versions["cntk"] or "not available (%s)" % versions["cntk_error"]))
    print("threads    %s (--threads)" % versions["threads"])
    return EXIT_OK


def cmd_train(args):
    from ..adapters.cntk import CNTKModel, build_cnn, build_network
    from ..data import Sequences
    from ..fitting import fit
    from ..common.files import atomic_path, check_writable, write_json
    kind, sizes = parse_arch(args.arch)
    if args.l2 < 0:
        raise UsageError("--l2 %r is negative; pass a value >= 0" % args.l2)
    check_writable(args.out)
    timer = Timer()
    with timer("load data"):
        data = load_data_file(args.data)
    x, y = data.x, data.y
    if isinstance(x, (dict, Sequences)) or isinstance(y, Sequences):
        raise UsageError("--data %s holds %s; 'influence train' builds only dense MLP/CNN networks on one "
                         "array x: build and train that network with CNTK, then score it with --model"
                         % (args.data, "several inputs (x.<input name>)" if isinstance(x, dict)
                            else "variable-length sequences" if isinstance(x, Sequences) else "per-step labels"))
    if y is None:
        raise UsageError("--data %s has no 'y' array; save labels with np.savez(path, x=..., y=...)" % args.data)
    loss = args.loss
    if loss is None:
        loss = "cross_entropy" if np.issubdtype(y.dtype, np.integer) else "squared_error"
    if loss == "cross_entropy":
        if not np.issubdtype(y.dtype, np.integer):
            raise UsageError("--data %s: labels have dtype %s; cross_entropy needs integer class labels "
                             "(or pass --loss squared_error for regression targets)" % (args.data, y.dtype))
        if y.ndim != 1 or (y.size and y.min() < 0):
            raise UsageError("--data %s: labels must be integers 0..k-1 of shape (n,)" % args.data)
        n_out = int(args.classes or (int(y.max()) + 1))
        if n_out < 2:
            raise UsageError("--data %s has a single class; cross_entropy needs at least 2 (or --classes K)"
                             % args.data)
    elif loss == "binary_cross_entropy":
        n_out = 1
    else:
        n_out = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
    shape = tuple(x.shape[1:])
    if kind == "cnn" and len(shape) != 3:
        raise UsageError("--arch %s needs images of shape (n, C, H, W) but --data %s has x of shape %s; save "
                         "x reshaped (e.g. x.reshape(-1, 1, 8, 8)) or use --arch mlp:..."
                         % (args.arch, args.data, tuple(x.shape)))
    with timer("build"):
        if kind == "cnn":
            # max pooling has kinks like relu; with a smooth activation the whole network is kept smooth
            z = build_cnn(shape, n_out, channels=sizes, activation=args.activation,
                          pooling="max" if args.activation == "relu" else "average",
                          dtype=np.dtype(args.dtype), seed=args.seed)
        else:
            z = build_network(shape if len(shape) != 1 else shape[0], n_out, hidden=sizes,
                              activation=args.activation, dtype=np.dtype(args.dtype), seed=args.seed)
        model = CNTKModel(z, loss=loss, l2=args.l2, batch_size=args.batch_size)
        if loss == "squared_error" and y.ndim == 1:
            data.y = y.reshape(-1, 1)
    log(args, "training %s (%d parameters, %s) on %d examples with L-BFGS ..."
         % (args.arch, model.n_params, args.dtype, len(x)))
    with timer("fit (L-BFGS)"):
        with FitProgress(args, model, data) as callback:
            result = fit(model, data, gtol=args.gtol, maxiter=args.lbfgs_maxiter, callback=callback)
        grad_max = float(np.max(np.abs(model.grad(data))))      # what --gtol bounds (a max-norm)
    with timer("save"):
        with atomic_path(args.out) as tmp:
            model.save(tmp)
        meta = {"format": "cntk-influence/1", "arch": args.arch, "activation": args.activation,
                "dtype": args.dtype, "loss": loss, "l2": args.l2, "n_outputs": n_out,
                "input_shape": list(shape), "train_data": os.path.abspath(args.data),
                "recipe": "lbfgs",          # full-batch L-BFGS to --gtol: what --retrain scratch repeats
                "n_train": len(x), "fit": {"loss": result.loss, "grad_norm": result.grad_norm,
                                           "grad_max": grad_max, "gtol": args.gtol,
                                           "n_iter": result.n_iter, "converged": bool(result.converged)}}
        write_json(args.out + META_SUFFIX, meta)
    summary = dict(meta, model=os.path.abspath(args.out), seconds=timer.as_dict())
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print("trained %s: %d parameters, %d L-BFGS iterations, objective %.6g, max |∂R/∂w| = %.2e (--gtol %g)%s"
              % (args.arch, model.n_params, result.n_iter, result.loss, grad_max, args.gtol,
                 "" if result.converged else "  (NOT converged: raise --lbfgs-maxiter)"))
        print("saved %s and %s" % (args.out, args.out + META_SUFFIX))
        print("\n".join(timer.lines()))
    return EXIT_OK


def cmd_hvp(args):
    from ..common.files import check_writable, write_npy
    if args.out:
        out_extension(args)
        check_writable(args.out)
    timer = Timer()
    with timer("load model"):
        model, _ = load_model(args)
    with timer("load data"):
        data = load_split(args.data, "--data", model, args.ctf_options)
    existing_file(args.vector, "--vector")
    with open(args.vector, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"PK":
        raise UsageError("--vector %s is an .npz archive; save the vector with np.save(path, v)" % args.vector)
    if magic != b"\x93NUMPY":
        raise UsageError("--vector %s is not a .npy file; save the vector with np.save(path, v)" % args.vector)
    try:
        v = np.load(args.vector, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UsageError("--vector %s is not a readable .npy file without pickled objects (%s)" % (args.vector, e))
    if v.shape != (model.n_params,) or not np.issubdtype(v.dtype, np.number):
        raise UsageError("--vector %s has shape %s, dtype %s; the model has %d parameters: pass a flat "
                         "numeric vector of that length" % (args.vector, v.shape, v.dtype, model.n_params))
    from ..scoring.choice import choose_curvature
    with timer("curvature (%s)" % args.curvature):
        cur = choose_curvature(model, data, args.curvature, args.damping, args.batch_size,
                               check_optimum=args.curvature == "auto")
    curvature_line(args, cur)
    op = cur.operator
    with timer("calibrate step (first product)"):
        op @ v
    with timer("HVP"):
        hv = op @ v
        if cur.damping:
            hv = hv + cur.damping * v.astype(np.float64)
    record = curvature_record(cur)
    if args.out:
        write_npy(args.out, hv)
        write_provenance(args, args.out, "(C + damping I) v for the --vector v (float64)",
                         dict(record, vector=os.path.abspath(args.vector)))
    summary = {"n_params": model.n_params, "norm_v": float(np.linalg.norm(v)),
               "norm_hv": float(np.linalg.norm(hv)), "vHv": float(v @ hv), "rel_step": op.rel_step,
               "gradients": getattr(op, "n_grad", None), "forward_passes": getattr(op, "n_forward", None),
               "backward_passes": getattr(op, "n_backward", None), "curvature": cur.kind,
               "damping": record["damping"], "curvature_reason": cur.reason, "seconds": timer.as_dict(), "out": args.out}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print("H·v for %d parameters: ‖v‖ = %.6g, ‖Hv‖ = %.6g, vᵀHv = %.6g (relative step %.3g)"
              % (model.n_params, summary["norm_v"], summary["norm_hv"], summary["vHv"], op.rel_step))
        if args.out:
            print("saved %s" % args.out)
        print("\n".join(timer.lines()))
    return EXIT_OK


def cmd_self(args):
    from ..jobs import SelfInfluenceJob
    from ..common.files import write_npy, write_table
    out_format = out_extension(args)
    check_factor_flags(args)
    folder = partial_folder(args)
    timer = Timer()
    with timer("load model and data"):
        model, _ = load_model(args)
        train = load_split(args.train, "--train", model, args.ctf_options)
    n = len(train)
    curvature, damping, _ = use_factors(args, model, train)
    if args.curvature != "ekfac":
        self_plan(args, model, train)
    options = {"k": args.rank, "random_state": args.seed} if args.method == "lanczos" else {}
    if args.curvature == "ekfac" and not args.factors:
        options["random_state"] = args.seed          # the seed of EK-FAC's sampled labels
    labels = data_labels(train)
    # what was asked for, until the job says what it chose (a resumed job may not choose again)
    record = curvature_summary(args, None)

    def on_curvature(cur):
        record.update(curvature_record(cur))
        curvature_line(args, cur)
    with Warnings():
        job = SelfInfluenceJob(model, train, folder=folder, resume=args.resume, method=args.method,
                               damping=damping, curvature=curvature, on_curvature=on_curvature,
                               batch_size=args.batch_size, chunk_size=args.chunk_size,
                               check_optimum=not args.no_optimum_check, progress=not args.quiet,
                               inputs=job_inputs(args, {}), **options)
        with job:
            with timer("self-influence (%s)" % args.method):
                values = job.run()
            chunks = job.stats
            with timer("training losses"):
                losses = model.per_example_losses(train, args.batch_size)
            order = np.argsort(-values, kind="mergesort")
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(1, n + 1)
            record["method"] = args.method
            if out_format == ".npy":
                with timer("write"):
                    write_npy(args.out, np.asarray(values, dtype=np.float64))
                    write_provenance(args, args.out, "self-influence g_i^T (C + damping I)^-1 g_i of training point "
                                     "i (float64)", record)
            elif args.out:
                with timer("write"):
                    write_table(args.out, ["train_index", "label", "self_influence", "rank", "training_loss"],
                                ((i, label_text(labels, i), values[i], int(rank[i]), losses[i])
                                 for i in range(n)))
                    write_provenance(args, args.out, "one row per training point: self_influence = g_i^T "
                                     "(C + damping I)^-1 g_i, its rank (1 = largest) and training_loss", record)
    top = [[int(i), label_text(labels, i), float(values[i]), float(losses[i])] for i in order[:args.top]]
    if args.json:
        print(json.dumps(dict(record, n_train=n, method=args.method, top=top, seconds=timer.as_dict(),
                              out=args.out, chunks=chunks),
                         indent=2, sort_keys=True))
        return EXIT_OK
    print("most likely mislabeled training points (highest self-influence g_iᵀ H⁻¹ g_i):")
    print("  %5s %8s %7s %16s %14s" % ("rank", "index", "label", "self-influence", "training loss"))
    for r, (i, lab, v, l) in enumerate(top):
        print("  %5d %8d %7s %16.4e %14.4g" % (r + 1, i, lab, v, l))
    print("timing:")
    print("\n".join(timer.lines()))
    if args.out:
        print("saved %s (%d rows)" % (args.out, n))
    return EXIT_OK


def cmd_verify(args):
    from ..evaluate.leave_one_out import LOO_GTOL, verify_loo
    from .retraining import damping_text, retrain_options, retrain_text
    from ..common.files import check_writable, write_table
    out_extension(args)
    if args.out:
        check_writable(args.out)
    check_factor_flags(args)
    timer = Timer()
    with timer("load model and data"):
        model, meta = load_model(args)
        retraining = retrain_options(args, meta, model)
        train = load_split(args.train, "--train", model, args.ctf_options)
        test = load_split(args.test, "--test", model, args.ctf_options)
    idx = check_indices(args.test_index, len(test), "--test-index", "the test set")
    if args.retrainings < 1:
        raise UsageError("--retrainings %d: pass at least 1 training point to retrain without" % args.retrainings)
    k = min(args.retrainings, len(train))
    curvature, damping, preconditioner = use_factors(args, model, train)
    pre_line = preconditioner_text(args)
    # + 1: the reference, re-tightened (warm) or trained on all the data by the same seeds (scratch)
    count = (k + 1) * args.seeds if args.retrain == "scratch" else k + (args.retrain != "proximal")
    retrain_plan(args, model, train, count, "verify" + (" (cg preconditioned by EK-FAC)" if pre_line else ""),
                 m=len(idx), how=retrain_text(args),
                 passes=retrain_passes(args.retrain, retraining.get("recipe"), 1.0, retraining.get("train_fn")))
    if pre_line:
        log(args, pre_line)
    options = dict(retraining)
    options.update(preconditioner_options(args, preconditioner))
    with Warnings():
        with timer("influence + %d leave-one-out retrainings" % k):
            res = verify_loo(model, train, test.subset(idx), k=args.retrainings, damping=damping,
                             curvature=curvature,
                             random_state=args.seed, solver=args.solver, batch_size=args.batch_size,
                             progress=not args.quiet, **options)
    err = np.abs(res.predicted - res.actual)
    worst = np.argsort(-err, kind="mergesort")[:args.top]
    noise = res.noise if res.noise is not None else np.full(len(res.indices), np.nan)
    above = np.abs(res.actual) > noise                  # False where the noise is unknown (NaN)
    rows = [[int(res.indices[i]), float(res.predicted[i]), float(res.actual[i]), float(noise[i])] for i in worst]
    if args.out:
        with timer("write"):
            write_table(args.out, ["train_index", "predicted", "actual", "noise", "above_noise"],
                        ((int(i), float(p), float(a), float(e), "" if not np.isfinite(e) else bool(b))
                         for i, p, a, e, b in zip(res.indices, res.predicted, res.actual, noise, above)))
    if args.json:
        summary = {"pearson": res.pearson, "spearman": res.spearman, "k": len(res.indices),
                   "indices": res.indices, "predicted": res.predicted, "actual": res.actual,
                   "noise": res.noise, "above_noise": None if res.noise is None else above,
                   "note": res.note, "reference_moved": res.reference_moved, "retrain": res.retrain,
                   "seeds": args.seeds, "curvature": args.curvature,
                   "damping": res.damping if np.isfinite(res.damping) else args.damping, "out": args.out,
                   "seconds": timer.as_dict()}
        summary.update(factors_summary(args))
        print(json.dumps(summary, indent=2, sort_keys=True,
                         default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
        return EXIT_OK
    print("leave-one-out check on %d training points (test points %s), %s retraining (%s), %d seed%s each:"
          % (len(res.indices), idx.tolist(), res.retrain,
             damping_text(res.retrain, res.damping), args.seeds, "" if args.seeds == 1 else "s"))
    print("  Pearson %.4f, Spearman %.4f between predicted and actual test-loss change" % (res.pearson, res.spearman))
    if res.reference_moved:
        print("  predicted and measured at the same weights: the model's, re-tightened to max |∂R/∂w| <= %g "
              "(moved %.3g), where the retrainings start" % (LOO_GTOL, res.reference_moved))
    if res.note:
        print("  note: %s" % res.note)
    if res.noise is not None:
        print("  %d of %d measured changes are above their retraining noise (the change still to come if each "
              "retraining were finished: |s·r| from the gradient it leaves)" % (int(above.sum()), len(above)))
    print("  worst disagreements:")
    print("    %8s %16s %16s %12s" % ("index", "predicted", "actual", "noise"))
    for i, p, a, e in rows:
        print("    %8d %+16.4e %+16.4e %12s" % (i, p, a, "%.2e" % e if np.isfinite(e) else "-"))
    print("timing:")
    print("\n".join(timer.lines()))
    if args.out:
        print("saved %s (%d rows)" % (args.out, len(res.indices)))
    return EXIT_OK
