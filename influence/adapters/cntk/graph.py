"""Rewriting a CNTK graph for influence computations (CNTK 2.7).

:func:`inference_graph` returns the network in INFERENCE mode as a new Function that shares the
user's Parameters (so setting the flat weight vector acts on the user's model):

- ``Dropout`` (a ``C.layers.Dropout`` block or the ``C.dropout`` primitive) becomes the identity;
- ``BatchNormalization`` (block or primitive) becomes the fixed affine map of its running statistics,
  ``scale·(x − aggregate_mean)/sqrt(aggregate_variance + ε) + bias``, with CNTK's own ε (the
  primitive's ``epsilon`` attribute, 1e-5 by default) and, for a spatial BN (``map_rank=1``), one
  mean/variance/scale/bias per channel broadcast over the spatial axes. The running statistics are
  the user's Constants, read but never written: no BatchNormalization node is left to update them.

``Function.grad`` runs CNTK's forward pass in training mode, where Dropout draws a new mask per call and
BatchNormalization uses and updates batch statistics; ``Function.eval`` runs in inference mode, which
is what the rewritten graph computes in every mode.

The substitution cuts the graph at a placeholder: ``g.clone(CloneMethod.share, {node.output: ph})``
then ``replace_placeholders({ph: expr})`` (measured on CNTK 2.7: substituting ``node.output`` by an
expression of nodes upstream of it directly is silently not applied). One node is rewritten per
clone, until none is left.

Refused, with a message naming the node: random ops (``C.random.*``: a new draw per evaluation) and
a Dropout or BatchNormalization inside another block (e.g. a user's ``@C.BlockFunction``), which
cannot be cut without opening the block.

:func:`constants_to_parameters` turns the weight Constants of a Function loaded from ONNX (CNTK
imports ONNX initializers as Constants) into Parameters, keeping the running statistics of
BatchNormalization as Constants.
"""
from .runtime import import_cntk

__all__ = ["inference_graph", "constants_to_parameters", "kinks", "TRAINING_OPS", "RANDOM_OPS", "KINK_OPS"]

#: Ops that behave differently in training and are rewritten by :func:`inference_graph`.
TRAINING_OPS = ("Dropout", "BatchNormalization")
#: Ops that draw random numbers at every evaluation: refused.
RANDOM_OPS = ("RandomDistribution",)

#: Ops whose derivative jumps (piecewise-linear networks): see :func:`kinks`.
KINK_OPS = ("ReLU", "Abs", "Clip", "Select", "LeakyReLU", "PReLU", "ElementMax", "ElementMin")

_BN_STATS = ("aggregate_mean", "aggregate_variance", "aggregate_count")


def _op(fn):
    """The op of a top-level node: the primitive's own, or for a block the root primitive's when the
    block is named after it (``C.layers.Dropout``/``BatchNormalization``), else the block's name."""
    if fn.is_block:
        root = fn.block_root.op_name
        return root if root == fn.op_name else fn.op_name
    return fn.op_name


def _describe(fn):
    return "%s node %r (uid %s)" % (fn.op_name, fn.name or fn.op_name, fn.uid)


def functions(f):
    """Every Function node of the graph of ``f`` reachable from its outputs, blocks NOT opened."""
    seen, out = set(), []
    stack = list(f.outputs)
    while stack:
        v = stack.pop()
        if not v.is_output:
            continue
        fn = v.owner
        if fn.uid in seen:
            continue
        seen.add(fn.uid)
        out.append(fn)
        stack.extend(fn.inputs)
    return out


def kinks(f):
    """Descriptions of the nodes of ``f`` (blocks opened) whose first derivative jumps: ReLU-like ops
    and max pooling (``reduce_max``/``reduce_min`` are not detected). A finite difference of the
    gradient that straddles such a kink picks up the jump divided by the step, so
    :mod:`influence.hvp` searches its whole step grid for such networks; float32 models reach only
    limited accuracy (see docs/your-network.md)."""
    found, stack, seen = [], [f], set()
    while stack:
        g = stack.pop()
        for fn in functions(g):
            if fn.uid in seen:
                continue
            seen.add(fn.uid)
            op = fn.op_name
            if fn.is_block:
                stack.append(fn.block_root)
            # attributes are read only where safe: on CNTK 2.7 reading them on some ops (a reduction
            # over all axes) aborts the process, so max/min reductions are not detected
            elif op in KINK_OPS or (op == "Pooling" and dict(fn.attributes).get("poolingType", 1) == 0):
                found.append(_describe(fn))
    return found


def _check_block_inside(block):
    """Refuse a block that hides a training-dependent or random op inside."""
    for inner in functions(block.block_root):
        op = _op(inner)
        if op in TRAINING_OPS or op in RANDOM_OPS:
            raise ValueError("%s contains a %s op inside it (%s), which cannot be switched to inference mode "
                             "without opening the block; build the network with C.layers.%s applied "
                             "outside the block" % (_describe(block), op, _describe(inner), op))
        if inner.is_block:
            _check_block_inside(inner)


def _data_input(fn):
    data = [i for i in fn.inputs if not (i.is_parameter or i.is_constant)]
    if len(data) != 1:
        raise ValueError("%s has %d non-parameter inputs; cannot tell which one is the data"
                         % (_describe(fn), len(data)))
    return data[0]


def _batch_norm_inference(C, fn):
    """scale·(x − mean)/sqrt(var + ε) + bias for a BatchNormalization node (block or primitive)."""
    root = fn.block_root if fn.is_block else fn
    attrs = dict(root.attributes)
    x = _data_input(fn)
    ins = list(fn.inputs)
    if fn.is_block:
        named = {i.name: i for i in ins}
        missing = [k for k in ("scale", "bias") + _BN_STATS if k not in named]
        if missing:
            raise ValueError("%s has no input named %s; expected the inputs of C.layers.BatchNormalization"
                             % (_describe(fn), missing))
        scale, bias, mean, var = named["scale"], named["bias"], named["aggregate_mean"], named["aggregate_variance"]
    else:   # primitive: (x, scale, bias, running_mean, running_inv_std/variance, running_count)
        others = [i for i in ins if i.uid != x.uid]
        scale, bias, mean, var = others[0], others[1], others[2], others[3]
    eps = float(attrs.get("epsilon", 1e-5))
    spatial = bool(attrs.get("spatial", False))
    x_shape = tuple(x.shape)
    n = 1
    for s in scale.shape:
        n *= s
    if spatial:
        shape = (n,) + (1,) * (len(x_shape) - 1)
    else:
        shape = x_shape

    def r(v):
        return v if tuple(v.shape) == shape else C.reshape(v, shape)
    return (x - r(mean)) * C.element_divide(r(scale), C.sqrt(r(var) + eps)) + r(bias)


def _replacement(C, fn):
    op = _op(fn)
    if op == "Dropout":
        return _data_input(fn)
    return _batch_norm_inference(C, fn)


def _next_node(g):
    """The first top-level node of ``g`` to rewrite, or None; raises on refused ops."""
    for fn in functions(g):
        op = _op(fn)
        if op in RANDOM_OPS:
            raise ValueError("%s draws random numbers at every evaluation, so gradients and Hessian-vector "
                             "products would be noise; remove it from the network given to influence"
                             % _describe(fn))
        if op in TRAINING_OPS:
            return fn
        if fn.is_block:
            _check_block_inside(fn)
    return None


def inference_graph(f):
    """``f`` with Dropout as the identity and BatchNormalization as its running-statistics affine map
    (see the module docstring). Returns ``(g, rewritten)``: the new Function (``f`` itself when there
    is nothing to rewrite) and the descriptions of the nodes rewritten. ``g`` shares ``f``'s
    Parameters, inputs and Constants."""
    C = import_cntk()
    g, rewritten = f, []
    while True:
        fn = _next_node(g)
        if fn is None:
            return g, rewritten
        if len(rewritten) > 10000:
            raise RuntimeError("inference_graph: %s was not rewritten" % _describe(fn))
        expr = _replacement(C, fn)
        ph = C.placeholder()
        t = g.clone(C.CloneMethod.share, {fn.output: ph})
        t.replace_placeholders({ph: expr})
        rewritten.append(_describe(fn))
        g = t


def constants_to_parameters(f):
    """``f`` with every floating-point Constant that is not a scalar turned into a Parameter holding the same value (clone with substitutions), so that it can be
    differentiated. The running statistics of BatchNormalization nodes stay Constants. Returns the new
    Function (``f`` when it has no such Constant)."""
    C = import_cntk()
    keep = set()
    for fn in functions(f):
        if _op(fn) == "BatchNormalization":
            ins = [i for i in fn.inputs if i.is_constant]
            named = [i for i in ins if i.name in _BN_STATS]
            # ONNX-imported BN: (x, scale, bias, mean, var[, count]); keep the statistics (4th input on)
            keep.update(i.uid for i in (named or list(fn.inputs)[3:]))
    subs = {}
    for c in f.constants:
        if c.uid in keep or c.name in _BN_STATS or len(c.shape) == 0:      # scalars: epsilons and other op constants
            continue
        value = c.value
        if value.dtype.kind != "f":
            continue
        subs[c] = C.parameter(shape=c.shape, init=value, dtype=value.dtype, name=c.name or "W")
    if not subs:
        return f
    return f.clone(C.CloneMethod.share, subs)
