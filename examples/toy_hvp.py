"""The notebook's toy Hessian-vector product, done right.

y = w2·w1·x with two bias-free Dense(1) layers, x = [[1.]], v = ones. The Hessian of y w.r.t.
(w1, w2) is [[0, x], [x, 0]], so H·v = (1, 1) exactly. The notebook's fixed step r = 1e-4 printed
1.00016594 (float32 rounding); influence.curvature.hessian chooses the step itself and restores the weights
bit-identically.

Run: .venv/bin/python examples/toy_hvp.py
"""
import time

import numpy as np


def main(argv=None):
    import influence
    from influence.adapters.cntk import import_cntk
    C = import_cntk()
    x = C.input_variable(1)
    h = C.layers.Dense(1, activation=None, init=C.uniform(1), bias=False)(x)
    y = C.layers.Dense(1, activation=None, init=C.uniform(1), bias=False)(h)
    before = [np.array(p.value) for p in y.parameters]
    v = {p: np.ones(p.shape) for p in y.parameters}
    feed = np.array([[1.0]], dtype=np.float32)

    t = time.perf_counter()
    hv = influence.hvp(y, feed, v)
    auto_s = time.perf_counter() - t
    fixed = influence.hvp(y, feed, v, r=1e-4)
    unchanged = all(np.array_equal(a, np.array(p.value)) for a, p in zip(before, y.parameters))

    print("toy HVP (exact answer 1, 1)")
    print("  automatic step : %s   (%.1f ms)" % (
        ", ".join("%.8f" % float(hv[p]) for p in y.parameters), 1e3 * auto_s))
    print("  fixed r = 1e-4 : %s   (the notebook's float32 rounding)" % (
        ", ".join("%.8f" % float(fixed[p]) for p in y.parameters)))
    print("  max |Hv - 1|   : %.2e" % max(abs(float(hv[p]) - 1) for p in y.parameters))
    print("  weights bit-identical afterwards: %s" % unchanged)
    return {p.uid: float(hv[p]) for p in y.parameters}


if __name__ == "__main__":
    main()
