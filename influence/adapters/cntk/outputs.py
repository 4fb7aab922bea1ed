"""The output-space primitives of :class:`~influence.adapters.cntk.CNTKModel` (CNTK 2.7), for the
Gauss-Newton and Fisher curvatures of :mod:`influence.curvature`.

Every function takes the model and one validated batch and runs on the model's INFERENCE graph
(``model._inference_output`` for the network output, ``model.loss_function`` for the loss: Dropout
off, BatchNormalization by its running statistics, the user's Parameters shared, its Constants
never written):

- :func:`outputs`: the network outputs z, float64 (rows, K), by ``Function.eval`` (forward only);
- :func:`jt_sum`: Σ_rows J_rowᵀ r_row by ``Function.forward(feed, [z], keep_for_backward={z})``
  then ``Function.backward(state, {z: r}, parameters)`` — the root gradient r is the backward pass's
  seed, so this is one forward and one backward pass, no double backprop. ``r`` may be a callable of
  the outputs of that same forward pass (what the Gauss-Newton product does: r = H_ℓ(z)·J v). A
  state serves ONE backward pass (a second fails with "incorrect memory sharing", measured), so
  every call runs its own forward;
- :func:`weighted_grad_sum`: Σ_i c_i ∇ℓ_i, the same forward/backward on the per-example loss with
  root gradients c.

An output ROW is one example's output flattened to K = prod(output shape) numbers, or for a sequence
tagger (an output with a sequence axis, the loss summed over steps) one step's output; rows follow
the examples, then the steps.
"""
import numpy as np

from .runtime import cntk_call

__all__ = ["outputs", "jt_sum", "weighted_grad_sum", "n_output_rows", "output_loss"]


def _is_sequence(var):
    return len(var.dynamic_axes) >= 2


def output_loss(model):
    """The loss name whose output Hessian has a closed form (the ``loss=`` given), or None for a
    model built from a loss Function (no separate output)."""
    return model.loss_name if model.output is not None else None


def _output_function(model):
    f = model._inference_output
    if f is None:
        raise ValueError("this model was built from a loss Function (loss=None), so it has no separate "
                         "network output for the Gauss-Newton curvature; use curvature=\"fisher\" "
                         "(influence.FisherOperator), or build the model from the network output and loss=NAME")
    return f


def _output_feed(model, f, batch):
    """The batch's feed restricted to the inputs of ``f`` (no label input)."""
    feed = model._feed(batch)
    uids = {a.uid for a in f.arguments}
    return {var: value for var, value in feed.items() if var.uid in uids}


def _k(f):
    return int(np.prod(f.output.shape))


def _rows(value, k):
    """A forward result (an array, or per-sequence arrays) as float64 (rows, k)."""
    if isinstance(value, list):
        if not value:
            return np.zeros((0, k))
        return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, k) for v in value])
    return np.asarray(value, dtype=np.float64).reshape(-1, k)


def _like(r, value, shape, dtype):
    """Rows ``r`` (rows, k) in the layout of the forward result ``value`` (root gradients)."""
    if isinstance(value, list):
        out, a = [], 0
        for v in value:
            steps = np.shape(v)[0]
            out.append(np.array(r[a:a + steps], dtype=dtype, order="C").reshape((steps,) + shape))
            a += steps
        return out
    return np.array(r, dtype=dtype, order="C").reshape((-1,) + shape)


def n_output_rows(model, batch):
    f = model._inference_output
    if f is not None and _is_sequence(f.output):
        return int(batch.y.n_steps) if batch.y is not None else int(len(_rows(outputs(model, batch), _k(f))))
    return len(batch)


def outputs(model, batch):
    """Network outputs z of the batch, float64 (rows, K), inference mode (forward pass only)."""
    f = _output_function(model)
    feed = _output_feed(model, f, batch)
    with model._lock:
        out = cntk_call(lambda: f.eval(feed))
    return _rows(out, _k(f))


def _forward_backward(model, f, feed, make_root, root_shape):
    """forward(keep_for_backward) then backward with the root gradients ``make_root(value)``: the
    parameters' gradient sums as a flat float64 vector. One call = one state = one backward."""
    out_var = f.output
    dtype = model.dtype

    def run():
        state, outs = f.forward(feed, [out_var], keep_for_backward={out_var})
        value = outs[out_var]
        root = _like(make_root(value), value, root_shape, dtype)
        return f.backward(state, {out_var: root}, model.parameters)
    with model._lock:
        grads = cntk_call(run)          # a retry redoes the forward pass too (a fresh state)
    return model._params.flatten_grads(grads)


def jt_sum(model, batch, r):
    """Σ_rows J_rowᵀ r_row (float64 (n_params,)) with J = ∂z/∂w of the network output; ``r`` is
    (rows, K) or a callable ``r(z)`` of the outputs of the same forward pass."""
    f = _output_function(model)
    k = _k(f)
    feed = _output_feed(model, f, batch)

    def make_root(value):
        rr = r(_rows(value, k)) if callable(r) else r
        rr = np.asarray(rr, dtype=np.float64)
        if rr.shape != (len(_rows(value, k)), k):
            raise ValueError("root gradients have shape %s but the batch has %d output rows of %d numbers; pass "
                             "one row per output row (see Model.outputs)"
                             % (rr.shape, len(_rows(value, k)), k))
        return rr
    return _forward_backward(model, f, feed, make_root, tuple(f.output.shape))


def weighted_grad_sum(model, batch, c):
    """Σ_i c_i ∇ℓ(z_i, w) over the batch (float64 (n_params,)): forward of the per-example loss, then
    one backward pass with root gradients c."""
    f = model.loss_function
    feed = model._feed(batch)
    c = np.asarray(c, dtype=np.float64).reshape(-1, 1)
    if len(c) != len(batch):
        raise ValueError("c has %d weights but the batch has %d examples" % (len(c), len(batch)))
    return _forward_backward(model, f, feed, lambda value: c, tuple(f.output.shape))
