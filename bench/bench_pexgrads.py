"""Per-example gradients on a 784-100-10 tanh MLP (CNTK, float32, n = 10,000): the batched path
(one forward/backward pass per block of rows) vs the per-row loop (one ``Function.grad`` per row) vs
one batched gradient pass over the same rows (``grad_sum``: the floor, it returns one sum instead of
n rows).

The output is float64 (n, d) with d = 79,510, 6.4 GB for all 10,000 rows, so both paths are timed as
callers use them (``gradient_blocks`` in scoring): ``per_example_grads`` on consecutive chunks of
``--chunk`` rows, each result dropped. The loop costs ~1 ms a row, so it is timed on the first
``--loop-rows`` rows and scaled to n (printed as such), in ``--repeats`` slices interleaved with the
``--repeats`` runs of the batched pass and the floor (median and minimum reported), so that changes of
the machine's load hit all alike. The load average is printed before and after.
"""
import argparse
import os
import time

import numpy as np


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run(n=10000, loop_rows=1000, chunk=1000, repeats=3, seed=0, dtype=np.float32):
    import influence
    from influence.adapters.cntk import build_network
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, 784)).astype(dtype)
    y = rng.randint(0, 10, n)
    model = influence.CNTKModel(build_network(784, 10, hidden=(100,), dtype=dtype, seed=seed))
    data = model.validate((x, y))
    chunks = [data.subset(slice(a, min(n, a + chunk))) for a in range(0, n, chunk)]
    load_before = _load()
    t = time.perf_counter()
    plan = model.per_example_plan()
    plan_s = time.perf_counter() - t

    def batched():
        for rows in chunks:
            model.per_example_grads(rows)

    def floor():
        model.grad_sum(data)

    def output_only():                              # allocate and write the float64 result, nothing else
        for rows in chunks:
            np.empty((len(rows), model.n_params)).fill(0.0)

    model.per_example_grads(chunks[0])              # warm-up (first touch of the output memory)
    floor()
    sub = data.subset(slice(0, loop_rows))
    got = model.per_example_grads(sub)
    model.per_example_method = "loop"
    model.per_example_grads(data.subset(slice(0, min(10, loop_rows))))          # warm-up
    model.per_example_method = "batched"
    # interleaved: each repeat times the batched pass, the floor, the output alone and one slice of
    # the loop's rows, so that a change of the machine's load hits all of them alike
    bounds = np.linspace(0, loop_rows, repeats + 1).astype(int)
    tb, tf, to, tl, parts = [], [], [], [], []
    for k in range(repeats):
        tb.append(_timed(batched))
        tf.append(_timed(floor))
        to.append(_timed(output_only))
        model.per_example_method = "loop"
        try:
            tl.append(_timed(lambda: parts.extend(
                model.per_example_grads(data.subset(slice(a, min(bounds[k + 1], a + chunk))))
                for a in range(bounds[k], bounds[k + 1], chunk))))
        finally:
            model.per_example_method = "batched"
    loop_s = float(np.sum(tl))
    reference = np.concatenate(parts)
    del parts
    # float32 rounding: both paths against the float64 gradients at the same weights
    model64 = influence.CNTKModel(build_network(784, 10, hidden=(100,), dtype=np.float64, seed=seed))
    model64.set_params(model.get_params().astype(np.float64))
    truth = model64.per_example_grads((x[:loop_rows].astype(np.float64), y[:loop_rows]))

    def row_err(a, b):
        return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))
    err = row_err(got, reference)
    err_fro = float(np.linalg.norm(got - reference) / np.linalg.norm(reference))
    loop_scaled = loop_s * n / float(loop_rows)
    med_b, med_f = float(np.median(tb)), float(np.median(tf))
    return {"dtype": np.dtype(dtype).name, "n": n, "d": model.n_params, "chunk": chunk,
            "loop_rows": loop_rows, "batched_s": med_b, "batched_min_s": float(np.min(tb)),
            "floor_s": med_f, "floor_min_s": float(np.min(tf)), "loop_s": loop_s,
            "loop_scaled_s": loop_scaled, "speedup": loop_scaled / med_b,
            "speedup_min": loop_scaled / float(np.min(tb)), "batched_over_floor": med_b / med_f,
            "loop_over_floor": loop_scaled / med_f, "max_row_rel_error": err, "rel_error": err_fro,
            "batched_vs_float64": row_err(got, truth), "loop_vs_float64": row_err(reference, truth),
            "output_s": float(np.median(to)), "batched_over_output": med_b / float(np.median(to)), "plan": str(plan),
            "fallback": plan.fallback, "plan_s": plan_s, "repeats": repeats,
            "load_before": load_before, "load_after": _load()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--loop-rows", type=int, default=1000, help="rows the loop is timed on (scaled to n)")
    parser.add_argument("--chunk", type=int, default=1000, help="rows per per_example_grads call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="n = 2000, loop on 200 rows, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.loop_rows, args.repeats = 2000, 200, 2
    r = run(n=args.n, loop_rows=args.loop_rows, chunk=args.chunk, repeats=args.repeats)
    print("Per-example gradients, 784-100-10 tanh MLP, %s, n = %d, d = %d (chunks of %d rows)"
          % (r["dtype"], r["n"], r["d"], r["chunk"]))
    print("  plan: %s" % r["plan"])
    print("  batched          %8.2f s  (min %.2f s; median of %d)" % (r["batched_s"], r["batched_min_s"], r["repeats"]))
    print("  loop             %8.2f s  (timed on %d rows: %.2f s, scaled to n)" % (r["loop_scaled_s"], r["loop_rows"],
                                                                               r["loop_s"]))
    print("  grad_sum (floor) %8.2f s  (min %.2f s)" % (r["floor_s"], r["floor_min_s"]))
    print("  loop / batched   %8.1f x  (with the fastest batched run: %.1f x)" % (r["speedup"], r["speedup_min"]))
    print("  batched / floor  %8.1f x;  loop / floor %.1f x" % (r["batched_over_floor"], r["loop_over_floor"]))
    print("  writing the float64 output alone %.2f s; batched / that %.1f x" % (r["output_s"], r["batched_over_output"]))
    print("  batched vs loop (%d rows): max row relative error %.1e, overall %.1e" % (
        r["loop_rows"], r["max_row_rel_error"], r["rel_error"]))
    print("  vs float64 gradients at the same weights (max row): batched %.1e, loop %.1e" % (
        r["batched_vs_float64"], r["loop_vs_float64"]))
    print("  load average before %s, after %s (2 cores, shared)" % (r["load_before"], r["load_after"]))
    return {"pexgrads": r}


if __name__ == "__main__":
    main()
