"""The Kronecker-factored layers of a CNTK model (``Model.kfac_plan`` / ``Model._kfac_statistics``,
what :class:`influence.EKFAC` needs), from the batched per-example pass of :mod:`.per_example`.

A layer on the per-example plan's layer route (a Dense ``times`` or a Convolution followed by its
bias) whose kernel and bias both take that route becomes a :class:`~influence.adapters.base.KFACLayer`:

- Dense, u = x·W + b (x reshaped (J, n_in), W (n_in, n_out), bias of shape W's output axes): a = x's
  J rows, g = δ's J rows; the flat kernel is W (n_in, n_out) row by row (layout ``"in_out"``);
- Convolution (kernel (O, C, K..), bias (O, 1..)): a = the unfolded input patches (J output
  positions, C·K..), g = δ at those positions (J, O); the flat kernel is (O, C·K..) (``"out_in"``).

The inputs x and the pre-activation gradients δ come from the same forward/backward pass that gives
the per-example gradients (``PerExamplePlan.__call__(…, taps=…)``). Every other parameter is listed
with the reason it is not in such a layer (the plan's own reason, or the bias's shape).
"""
import numpy as np

from .per_example import conv_geometry, conv_patches, times_rank

__all__ = ["kfac_plan", "kfac_statistics"]


def _layer_geometry(block):
    """(n_in, n_out, layout) of a layer block of ``PerExamplePlan.layer_blocks``, or a reason string."""
    w, x, z, b = block["w_shape"], block["x_shape"], block["z_shape"], block["b_shape"]
    if block["kind"] == "Dense":
        k = times_rank(x, w, z)
        n_in, n_out = int(np.prod(w[:k])), int(np.prod(w[k:]))
        if tuple(b) != tuple(w[k:]):
            return "its bias has shape %s, not the layer's output shape %s" % (b, tuple(w[k:]))
        return n_in, n_out, "in_out"
    o = int(w[0])
    if int(np.prod(b)) != o or tuple(b)[0] != o:
        return "its bias has shape %s, not one per output channel (%d)" % (b, o)
    return int(np.prod(w[1:])), o, "out_in"


def kfac_plan(model):
    """``(layers, others)`` of :meth:`influence.adapters.base.Model.kfac_plan` for a CNTKModel."""
    from ..base import KFACLayer
    params = model._params
    offsets = params.offsets
    if model.per_example_method != "batched":
        blocks, reasons = [], {}
        plan = None
    else:
        plan = model.per_example_plan()
        blocks = plan.layer_blocks()
        reasons = {r["index"]: r["reason"] for r in plan.routes}
    layers, covered = [], {}
    for block in blocks:
        geo = _layer_geometry(block)
        if isinstance(geo, str):
            covered[block["kernel"]] = covered[block["bias"]] = "%s: %s" % (block["where"], geo)
            continue
        n_in, n_out, layout = geo
        i, j = block["kernel"], block["bias"]
        layer = KFACLayer("%s (parameter %d, kernel %s)" % (block["where"], i, block["w_shape"]), block["kind"], (offsets[i], offsets[i + 1]), (offsets[j], offsets[j + 1]),
                          n_in, n_out, layout)
        layer.key = block["key"]
        layer.function = block["function"]
        layer.shapes = (block["x_shape"], block["w_shape"], block["z_shape"])
        layers.append(layer)
        covered[i] = covered[j] = None
    others = []
    for i, p in enumerate(params.parameters):
        if i in covered and covered[i] is None:
            continue
        why = covered.get(i) or (reasons.get(i) if plan is not None else None)
        if why is None:
            why = ("per_example_method=%r (no batched pass)" % model.per_example_method if plan is None
                   else "its layer's kernel or bias is not on the batched layer route")
        others.append({"name": "parameter %d %r %s" % (i, p.name, tuple(p.shape)), "start": int(offsets[i]),
                       "stop": int(offsets[i + 1]), "reason": why})
    return layers, others


def _a_and_g(layer, x, delta):
    """(a (n, J, n_in), g (n, J, n_out)) of one layer from its inputs x and pre-activation gradients δ."""
    n = x.shape[0]
    if layer.kind == "Dense":
        return x.reshape(n, -1, layer.n_in), delta.reshape(n, -1, layer.n_out)
    x_shape, w_shape, z_shape = layer.shapes
    strides, starts = conv_geometry(layer.function)
    a = conv_patches(x, w_shape[2:], z_shape[1:], strides, starts)
    g = delta.reshape(n, layer.n_out, -1).transpose(0, 2, 1)
    return a, g


def kfac_statistics(model, batch, out):
    """``Model._kfac_statistics`` for a CNTKModel: one batched pass writes the per-example gradients
    into ``out`` and taps every layer's (x, δ); returns [(a, g)] in the order of :func:`kfac_plan`."""
    layers = model.kfac_plan()[0]
    if not layers:
        model._per_example_grads_into(batch, out)
        return []
    taps = {}
    model.per_example_plan()(batch, out, taps)
    stats = []
    for layer in layers:
        parts = [_a_and_g(layer, x, d) for x, d in taps[layer.key]]
        stats.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    return stats

