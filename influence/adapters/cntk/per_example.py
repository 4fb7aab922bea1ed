"""Per-example gradients of a CNTK loss in one forward/backward pass per block of rows (CNTK 2.7).

``Function.grad`` returns the SUM of the gradients over the minibatch, but the gradient with
respect to an INPUT that has a batch axis is returned per example. The plan rewrites the loss
(a clone sharing the Parameters) so that every parameter's per-example gradient is such an input
gradient or is computed from one:

- **layer** (Dense = ``times``, Convolution): the layer's bias Parameter b is replaced by b + E,
  where E is a new input with the layer's full pre-activation shape and a batch axis, fed zeros.
  Then ∂ℓ_i/∂E_i = δ_i, example i's gradient with respect to the pre-activation u = op(x, W) + b, and

  * Dense, u = x·W + b (x reshaped (p, k), W (k, o)):  ∂ℓ_i/∂W = x_iᵀ δ_i  (an outer product when
    p = 1), ∂ℓ_i/∂b = δ_i;
  * Convolution (cross-correlation; x (C, S₁..), W (O, C, K₁..), CNTK's padding geometry):
    ∂ℓ_i/∂W[o, c, u] = Σ_j δ_i[o, j] · x̃_i[c, base + j·stride + u] over the output positions j
    (x̃: x zero-padded), i.e. δ_i times the unfolded input patches; ∂ℓ_i/∂b = δ_i summed over the
    axes b is broadcast along.

  The layer's input x_i comes from the same pass (requested as an output of the gradient call, or
  the fed data itself for a first layer).
- **direct**: any other parameter p (BatchNormalization's scale and bias, a weight used twice, a
  Dense layer without bias, recurrent weights) is replaced by p + E_p, E_p an input of p's shape
  with a batch axis: ∂ℓ_i/∂E_p,i is the per-example gradient itself (memory: rows × |p|). CNTK
  refuses some ops on such operands (e.g. a convolution kernel with a batch axis); those
  parameters go to the loop.
- **loop**: one gradient call per row for the parameters left (the base adapter's method).

The plan is built once per model on a one-row trial feed of zeros; :class:`PerExamplePlan` names
the route of every parameter and why a parameter fell back to the loop.
"""
import numpy as np

from .runtime import cntk_call, import_cntk
from .graph import functions

__all__ = ["PerExamplePlan", "LAYER", "DIRECT", "LOOP", "BLOCK_BYTES", "conv_geometry", "conv_patches", "times_rank"]

LAYER, DIRECT, LOOP = "layer", "direct", "loop"

#: Bytes of intermediate arrays (unfolded patches, direct gradients) per block of rows: the rows of a
#: batch are processed in blocks so that these stay below it (the (rows, n_params) result aside).
BLOCK_BYTES = 64 * 2 ** 20


def _first_line(e, limit=160):
    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _scopes(f):
    """``[(graph, block)]``: the top-level graph of ``f`` (block None) and every block's inner graph,
    recursively, with the block node that owns it."""
    out, stack, seen = [], [(f, None)], set()
    while stack:
        g, owner = stack.pop()
        out.append((g, owner))
        for fn in functions(g):
            if fn.is_block and fn.uid not in seen:
                seen.add(fn.uid)
                stack.append((fn.block_root, fn))
    return out


def _uses(f):
    """{uid of a Parameter: number of primitive inputs it feeds} over all scopes of ``f``."""
    count = {}
    for g, _ in _scopes(f):
        for fn in functions(g):
            if fn.is_block:
                continue
            for i in fn.inputs:
                if i.is_parameter:
                    count[i.uid] = count.get(i.uid, 0) + 1
    return count


def _kernel_and_data(fn):
    """(kernel Parameter, data operand) of a Times or Convolution primitive, or None."""
    ins = list(fn.inputs)
    if fn.op_name == "Times" and len(ins) == 2 and ins[1].is_parameter and not ins[0].is_parameter:
        return ins[1], ins[0]
    if fn.op_name == "Convolution" and len(ins) == 2 and ins[0].is_parameter and not ins[1].is_parameter:
        return ins[0], ins[1]
    return None


def _layers(f, kept_uids, uses):
    """The Dense/Convolution layers of ``f`` with a bias: ``{kernel uid: (kind, kernel, bias,
    description)}``; and ``{kernel uid: reason}`` for kernels of the kept parameters not matched."""
    found, why = {}, {}
    for g, owner in _scopes(f):
        fns = functions(g)
        consumers = {}
        for fn in fns:
            for i in fn.inputs:
                consumers.setdefault(i.uid, []).append(fn)
        for fn in fns:
            kd = None if fn.is_block else _kernel_and_data(fn)
            if kd is None:
                continue
            kernel, data = kd
            where = ("%s %r" % (owner.op_name, owner.name) if owner is not None and owner.name
                     else "%s node %r" % (fn.op_name, fn.name or fn.uid) if owner is None
                     else "%s block" % owner.op_name)
            nxt = consumers.get(fn.output.uid, [])
            bias = None
            if len(nxt) == 1 and nxt[0].op_name == "Plus":
                others = [i for i in nxt[0].inputs if i.uid != fn.output.uid]
                if len(others) == 1 and others[0].is_parameter:
                    bias = others[0]
            if owner is not None and not data.is_placeholder:
                problem = "its input is computed inside the block"
            elif len(data.dynamic_axes) != 1:
                problem = "its input has a sequence axis"
            elif uses.get(kernel.uid, 0) != 1:
                problem = "its weight is used %d times" % uses.get(kernel.uid, 0)
            elif bias is None:
                problem = "no bias Parameter is added right after it"
            elif uses.get(bias.uid, 0) != 1:
                problem = "its bias is used %d times" % uses.get(bias.uid, 0)
            elif tuple(nxt[0].output.shape) != tuple(fn.output.shape):
                problem = "its bias changes the output shape"
            elif fn.op_name == "Convolution":
                problem = _conv_problem(fn, kernel, data)
            else:
                problem = _times_problem(kernel, data, fn.output)
            if problem:
                why[kernel.uid] = "%s: %s" % (where, problem)
                if bias is not None:
                    why.setdefault(bias.uid, why[kernel.uid])
                continue
            kind = "Convolution" if fn.op_name == "Convolution" else "Dense"
            found[kernel.uid] = (kind, kernel, bias, where)
    return ({k: v for k, v in found.items() if v[1].uid in kept_uids or v[2].uid in kept_uids},
            {k: v for k, v in why.items() if k in kept_uids})


def times_rank(x_shape, w_shape, z_shape):
    """k, the number of trailing axes of x that ``times`` contracts with W's leading axes."""
    twice = len(x_shape) + len(w_shape) - len(z_shape)
    return twice // 2 if twice % 2 == 0 else -1


def _times_problem(kernel, data, out):
    x, w, z = tuple(data.shape), tuple(kernel.shape), tuple(out.shape)
    k = times_rank(x, w, z)
    if k <= 0 or k > len(x) or w[:k] != x[len(x) - k:] or z != x[:len(x) - k] + w[k:]:
        return "times of shapes %s and %s -> %s is not x·W" % (x, w, z)
    return None


def conv_geometry(fn):
    """(strides, starts) per spatial axis of a Convolution primitive in Python axis order (CNTK's
    ConvolveGeometry: output position j reads input cells start + j·stride − (K−1)//2 + u, u < K;
    start = (in − ((out − 1)·stride + 1)) // 2 with auto padding, (K − 1)//2 − lowerPad without)."""
    a = dict(fn.attributes)
    x_shape = tuple(fn.inputs[1].shape)
    k_shape = tuple(fn.inputs[0].shape)[1:]
    z_shape = tuple(fn.output.shape)
    rank = len(x_shape)

    def per_axis(v, i):
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return v[0] if len(v) == 1 else v[i]
    strides, starts = [], []
    for i in range(1, rank):
        s = int(per_axis(a["strides"], i))
        n_in, n_out, kk = x_shape[i], z_shape[i], k_shape[i]
        if bool(per_axis(a["autoPadding"], i)):
            start = (n_in - ((n_out - 1) * s + 1)) // 2
        else:
            start = (kk - 1) // 2 - int(per_axis(a["lowerPad"], i))
        strides.append(s)
        starts.append(start - (kk - 1) // 2)
    return strides, starts


def _conv_problem(fn, kernel, data):
    a = dict(fn.attributes)
    x, w, z = tuple(data.shape), tuple(kernel.shape), tuple(fn.output.shape)
    if a.get("transpose", False):
        return "a transposed convolution"
    if int(a.get("groups", 1)) != 1:
        return "a grouped convolution (groups=%s)" % a.get("groups")
    if not all(a.get("sharing", [True])):
        return "a convolution without weight sharing"
    if any(int(d) != 1 for d in a.get("dilation", (1,))):
        return "a dilated convolution"
    if len(w) != len(x) + 1 or w[1] != x[0] or len(z) != len(x) or z[0] != w[0]:
        return "kernel %s on input %s -> %s is not (O, C, K..) on (C, S..)" % (w, x, z)
    if bool(list(a.get("autoPadding", [False]))[0]):
        return "padding along the channel axis"
    if "strides" not in a or "lowerPad" not in a or "autoPadding" not in a:
        return "attributes %s lack strides/padding" % sorted(a)
    return None


def _reduce_to(d, shape):
    """Per-example ``d`` (n,) + z_shape summed over the axes a bias of ``shape`` is broadcast along."""
    lead = d.ndim - 1 - len(shape)
    if lead:
        d = d.sum(axis=tuple(range(1, 1 + lead)))
    axes = tuple(1 + i for i, s in enumerate(shape) if s == 1 and d.shape[1 + i] != 1)
    if axes:
        d = d.sum(axis=axes, keepdims=True)
    return d.reshape((d.shape[0], -1))


def conv_patches(x, k_sp, out_sp, strides, starts):
    """(n, J, C·K..) unfolded input patches of inputs x (n, C, S..) for a kernel of spatial shape
    ``k_sp`` at the J = prod(out_sp) output positions (CNTK's geometry: :func:`conv_geometry`)."""
    n, c = x.shape[:2]
    pads = []
    for s, st, m, kk, n_in in zip(strides, starts, out_sp, k_sp, x.shape[2:]):
        lo = max(0, -st)
        hi = max(0, (m - 1) * s + st + kk - n_in)
        pads.append((lo, hi))
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, mode="constant") if any(p != (0, 0) for p in pads) else x
    xp = np.ascontiguousarray(xp)
    base = tuple(st + lo for st, (lo, _) in zip(starts, pads))
    view = xp[(slice(None), slice(None)) + tuple(slice(b, None) for b in base)]
    sp_strides = view.strides[2:]
    patches = np.lib.stride_tricks.as_strided(
        view, shape=(n, c) + tuple(out_sp) + tuple(k_sp),
        strides=view.strides[:2] + tuple(t * s for t, s in zip(sp_strides, strides)) + tuple(sp_strides),
        writeable=False)
    r = len(out_sp)
    # (n, J, C·K): output positions × unfolded patch
    order = (0,) + tuple(range(2, 2 + r)) + (1,) + tuple(range(2 + r, 2 + 2 * r))
    return patches.transpose(order).reshape(n, int(np.prod(out_sp)), c * int(np.prod(k_sp)))


def _conv_weight_grads(x, delta, w_shape, strides, starts):
    """(n, O·C·K..) per-example kernel gradients from inputs x (n, C, S..) and δ (n, O, S'..)."""
    n, o = delta.shape[:2]
    cols = conv_patches(x, w_shape[2:], delta.shape[2:], strides, starts)
    # δ (n, O, J) @ patches (n, J, C·K) -> (n, O, C·K)
    g = np.matmul(delta.reshape(n, o, -1), cols)
    return g.reshape(n, -1)


class PerExamplePlan(object):
    """How :class:`~influence.adapters.cntk.CNTKModel` computes per-example gradients.

    ``routes``: one dict per parameter, in the flat-vector order: ``index``, ``name``, ``shape``,
    ``route`` (``"layer"``, ``"direct"`` or ``"loop"``), ``layer`` (the Dense/Convolution layer for
    the layer route) and ``reason`` (why a parameter is not on the layer route). ``fallback`` lists
    the parameters computed by the per-row loop, with the reason; ``batched`` is True when at least
    one parameter is computed in the batched pass. ``str(plan)`` is a one-line summary."""

    def __init__(self, model):
        self.model = model
        self._C = import_cntk()
        params = model._params.parameters
        kept = {p.uid: i for i, p in enumerate(params)}
        f = model.loss_function
        uses = _uses(f)
        layers, why = _layers(f, set(kept), uses)
        route = {}
        self._layer_of = {}
        for kuid, (kind, kernel, bias, where) in layers.items():
            for p in (kernel, bias):
                if p.uid in kept:
                    route[p.uid] = LAYER
                    self._layer_of[p.uid] = where
        reasons = {}
        for p in params:
            if p.uid not in route:
                reasons[p.uid] = why.get(p.uid) or "not the weight or bias of a Dense/Convolution layer"
                route[p.uid] = DIRECT
        self._params = params
        self._layers = layers
        direct = [u for u, r in route.items() if r == DIRECT]
        error = self._try(route)
        layer_only = dict((u, LOOP if r == DIRECT else r) for u, r in route.items())
        if error is not None and direct and self._try(layer_only) is None:
            # find the parameters CNTK refuses a per-example copy of, one trial each
            for u in direct:
                alone = dict(layer_only)
                alone[u] = DIRECT
                why_not = self._try(alone)
                if why_not is not None:
                    route[u] = LOOP
                    reasons[u] = "%s; CNTK refuses a per-example copy of it (%s)" % (reasons[u], why_not)
            error = self._try(route)
        if error is not None:
            for u in route:
                if route[u] != LOOP:
                    reasons[u] = "the batched graph failed (%s)" % error
                route[u] = LOOP
            self._try(route)
        self.routes = []
        for i, p in enumerate(params):
            self.routes.append({"index": i, "name": p.name, "shape": tuple(p.shape), "route": route[p.uid],
                                "layer": self._layer_of.get(p.uid) if route[p.uid] == LAYER else None,
                                "reason": reasons.get(p.uid)})
        self._route = route

    def _try(self, route):
        """Build the batched graph for ``route`` and run the trial: None, or CNTK's error (first line)."""
        from .runtime import Quiet
        try:
            with Quiet():
                self._build(route)
                self._trial()
            return None
        except Exception as e:      # CNTK refuses a batch-axis operand somewhere
            return _first_line(e)

    # ------------------------------------------------------------------ description
    @property
    def fallback(self):
        """``["parameter 3 'W' (8, 8): reason", ...]`` for the parameters computed row by row."""
        return ["parameter %d %r %s: %s" % (r["index"], r["name"], r["shape"], r["reason"])
                for r in self.routes if r["route"] == LOOP]

    @property
    def batched(self):
        return any(r["route"] != LOOP for r in self.routes)

    @property
    def layers(self):
        """Descriptions of the layers on the layer route."""
        return sorted({r["layer"] for r in self.routes if r["layer"]})

    def __str__(self):
        count = {k: sum(r["route"] == k for r in self.routes) for k in (LAYER, DIRECT, LOOP)}
        text = ("per-example gradients: %d parameters by layer (%s), %d direct, %d by the per-row loop"
                % (count[LAYER], ", ".join(self.layers) or "none", count[DIRECT], count[LOOP]))
        if count[LOOP]:
            text += " (%s)" % "; ".join(self.fallback)
        return text

    # ------------------------------------------------------------------ graph
    def _build(self, route):
        C, f, model = self._C, self.model.loss_function, self.model
        dtype = model.dtype
        subs, self._inputs = {}, {}
        for var in f.arguments:                  # fresh inputs so the clone's are known by uid
            new = C.input_variable(var.shape, dtype=var.dtype, dynamic_axes=var.dynamic_axes, name=var.name)
            subs[var] = new
            self._inputs[var.uid] = new
        self._deltas = {}                        # kernel uid -> E (pre-activation) input
        for kuid, (kind, kernel, bias, where) in self._layers.items():
            if route.get(kernel.uid) != LAYER and route.get(bias.uid) != LAYER:
                continue
            shape = tuple(self._plus_shape(kernel))
            e = C.input_variable(shape, dtype=dtype, needs_gradient=True, name="per_example_delta")
            subs[bias] = bias + e
            self._deltas[kuid] = e
        self._direct = {}
        for p in self._params:
            if route[p.uid] == DIRECT:
                e = C.input_variable(p.shape, dtype=dtype, needs_gradient=True, name="per_example_" + (p.name or "p"))
                subs[p] = p + e
                self._direct[p.uid] = e
        self._loop = [p for p in self._params if route[p.uid] == LOOP]
        if not self._deltas and not self._direct:
            self._graph = None
            return
        g = f.clone(C.CloneMethod.share, subs)
        self._graph = g
        # the layer inputs x in the clone: a block's placeholder -> the variable bound to it outside
        self._operands = {}
        for scope, owner in _scopes(g):
            for fn in functions(scope):
                kd = None if fn.is_block else _kernel_and_data(fn)
                if kd is None or kd[0].uid not in self._deltas:
                    continue
                data = kd[1]
                if owner is not None:
                    bound = dict((ph.uid, outer) for ph, outer in owner.block_arguments_mapping)
                    data = bound[data.uid]
                self._operands[kd[0].uid] = (fn, data)
        missing = [k for k in self._deltas if k not in self._operands]
        if missing:
            raise RuntimeError("layer input not found in the rewritten graph")
        self._fetch = []
        arg_uids = {v.uid for v in g.arguments}
        for kuid, (fn, data) in self._operands.items():
            if data.uid not in arg_uids and all(data.uid != v.uid for v in self._fetch):
                self._fetch.append(data)
        self._wrt = list(self._deltas.values()) + list(self._direct.values())
        # intermediate outputs are fetched from a combine of the loss and them (asking the loss's own
        # Function for them fails in CNTK 2.7: "GetEvalOrder: Called without prior call to FormEvalOrder")
        self._root = g.output
        self._combined = C.combine([g.output] + self._fetch) if self._fetch else g

    def _plus_shape(self, kernel):
        for g, _ in _scopes(self.model.loss_function):
            for fn in functions(g):
                if fn.op_name == "Plus" and any(i.uid == self._layers[kernel.uid][2].uid for i in fn.inputs):
                    return fn.output.shape
        raise RuntimeError("bias not found")

    def _trial(self):
        """One row of zeros through the batched graph (raises what CNTK raises)."""
        if self._graph is None:
            return
        feed = {}
        for v in self._graph.arguments:
            z = np.zeros((1,) + tuple(v.shape), dtype=self.model.dtype)
            feed[v] = [z] if len(v.dynamic_axes) >= 2 else z
        self._run(feed)

    def _run(self, feed):
        g = self._combined
        if self._fetch:
            grads, outs = cntk_call(lambda: g.grad(feed, wrt=self._wrt, outputs=self._fetch,
                                                    grad_root=self._root))
            if not isinstance(outs, dict):
                outs = {self._fetch[0]: outs}
        else:
            grads, outs = cntk_call(lambda: g.grad(feed, wrt=self._wrt)), {}
        if not isinstance(grads, dict):
            grads = {self._wrt[0]: grads}
        return grads, outs

    # ------------------------------------------------------------------ evaluation
    def row_bytes(self):
        """Bytes of intermediates per row: layer inputs and pre-activation gradients (float64
        copies), unfolded convolution patches, per-example copies of the direct parameters."""
        if self._graph is None:
            return 8 * sum(int(np.prod(p.shape)) for p in self._loop)
        size = sum(int(np.prod(p.shape)) for p in self._params if self._route[p.uid] == DIRECT)
        for kuid, e in self._deltas.items():
            fn, data = self._operands[kuid]
            kind, kernel = self._layers[kuid][:2]
            size += 2 * (int(np.prod(data.shape)) + int(np.prod(e.shape)))
            if kind == "Convolution":
                size += 2 * int(np.prod(fn.output.shape[1:])) * int(np.prod(kernel.shape[1:]))
        return 8 * max(size, 1)

    def rows_per_block(self):
        """Rows per batched pass so that the intermediates stay under :data:`BLOCK_BYTES`."""
        return max(1, BLOCK_BYTES // self.row_bytes())

    def layer_blocks(self):
        """The layers whose kernel and bias both take the layer route, by kernel position: dicts
        ``{"key", "kind", "where", "kernel", "bias"`` (positions in the parameter list)``, "x_shape",
        "w_shape", "z_shape", "b_shape", "function"}`` (the Times/Convolution primitive)."""
        if self._graph is None:
            return []
        index = {p.uid: i for i, p in enumerate(self._params)}
        out = []
        for kuid in self._deltas:
            kind, kernel, bias, where = self._layers[kuid]
            if self._route.get(kernel.uid) != LAYER or self._route.get(bias.uid) != LAYER:
                continue
            fn, data = self._operands[kuid]
            out.append({"key": kuid, "kind": kind, "where": where, "kernel": index[kernel.uid],
                        "bias": index[bias.uid], "x_shape": tuple(data.shape), "w_shape": tuple(kernel.shape),
                        "z_shape": tuple(self._deltas[kuid].shape), "b_shape": tuple(bias.shape), "function": fn})
        return sorted(out, key=lambda b: b["kernel"])

    def __call__(self, batch, out=None, taps=None):
        """(len(batch), n_params) float64 per-example gradients of a validated batch (written into
        ``out`` when given). ``taps``: a dict that receives, for every layer of :meth:`layer_blocks`,
        ``taps[key] = [(x, δ), ...]`` per block of rows: its inputs (rows,) + x_shape and the gradients
        with respect to its pre-activation output (rows,) + z_shape, float64, from the same pass."""
        model = self.model
        n = len(batch)
        if out is None:
            out = np.empty((n, model.n_params))
        offsets = model._params.offsets
        index = {p.uid: i for i, p in enumerate(self._params)}
        if self._graph is not None:
            step = self.rows_per_block()
            for a in range(0, n, step):
                rows = batch if (a == 0 and step >= n) else batch.subset(slice(a, min(n, a + step)))
                self._fill(rows, out[a:a + len(rows)], index, offsets, taps)
        if self._loop:
            loss = model.loss_function
            for i in range(n):
                feed = model._feed(batch.subset(slice(i, i + 1)))
                with model._lock:
                    g = cntk_call(lambda: loss.grad(feed, wrt=self._loop))
                if not isinstance(g, dict):
                    g = {self._loop[0]: g}
                for p in self._loop:
                    j = index[p.uid]
                    out[i, offsets[j]:offsets[j + 1]] = np.asarray(g[p]).ravel()
        return out

    def _fill(self, rows, out, index, offsets, taps=None):
        model = self.model
        n = len(rows)
        feed = {}
        given = model._feed(rows)
        for var, value in given.items():
            feed[self._inputs[var.uid]] = value
        for e in self._wrt:
            feed[e] = np.zeros((n,) + tuple(e.shape), dtype=model.dtype)
        with model._lock:
            grads, outs = self._run(feed)
            outs = {v.uid: np.asarray(a) for v, a in outs.items()}
        by_uid = {v.uid: v for v in self._inputs.values()}
        for kuid, e in self._deltas.items():
            kind, kernel, bias, where = self._layers[kuid]
            delta = np.asarray(grads[e], dtype=np.float64).reshape((n,) + tuple(e.shape))
            if bias.uid in index:
                j = index[bias.uid]
                out[:, offsets[j]:offsets[j + 1]] = _reduce_to(delta, tuple(bias.shape))
            if kernel.uid not in index:
                continue
            fn, data = self._operands[kuid]
            if data.uid in outs:
                x = outs[data.uid]
            else:
                x = feed[by_uid[data.uid]]
                if not isinstance(x, np.ndarray):
                    x = x.asarray()
            x = np.asarray(x, dtype=np.float64).reshape((n,) + tuple(data.shape))
            if taps is not None:
                taps.setdefault(kuid, []).append((x, delta))
            j = index[kernel.uid]
            target = out[:, offsets[j]:offsets[j + 1]]
            w_shape = tuple(kernel.shape)
            if kind == "Dense":
                k = times_rank(tuple(data.shape), w_shape, tuple(fn.output.shape))
                kk = int(np.prod(w_shape[:k]))
                oo = int(np.prod(w_shape[k:]))
                xs = x.reshape(n, -1, kk)
                ds = delta.reshape(n, -1, oo)
                if xs.shape[1] == 1:
                    np.einsum("ni,nj->nij", xs[:, 0, :], ds[:, 0, :], out=target.reshape(n, kk, oo))
                else:
                    target[...] = np.matmul(xs.transpose(0, 2, 1), ds).reshape(n, -1)
            else:
                strides, starts = conv_geometry(fn)
                target[...] = _conv_weight_grads(x, delta, w_shape, strides, starts)
        for p_uid, e in self._direct.items():
            j = index[p_uid]
            out[:, offsets[j]:offsets[j + 1]] = np.asarray(grads[e]).reshape(n, -1)
