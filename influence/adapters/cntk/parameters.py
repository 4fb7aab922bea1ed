"""CNTK Parameters as one flat vector (:class:`ParameterVector`), the gradient of any CNTK Function with
respect to its Parameters (:class:`FunctionGradient`, what :func:`influence.hvp` differentiates), and
the feed checks and conversions the adapter shares."""
import numpy as np

from .graph import inference_graph, kinks
from .runtime import cntk_call, import_cntk

__all__ = ["ParameterVector", "FunctionGradient", "is_sequence", "owned", "StagingViews", "check_feed_array",
           "select_parameters"]


class ParameterVector(object):
    """A list of CNTK Parameters viewed as one flat vector (concatenated in list order).

    ``set_params(get_params())`` is exact: values are copied bit-for-bit in the parameters' dtype.
    """

    def __init__(self, parameters):
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("the CNTK Function has no trainable parameters; pass a model with at least "
                             "one Parameter (e.g. a Dense layer)")
        dtypes = {np.dtype(p.dtype) for p in self.parameters}
        if len(dtypes) != 1:
            raise ValueError("the model mixes parameter dtypes %s; build it with one dtype "
                             "(float32 or float64)" % sorted(str(d) for d in dtypes))
        self._dtype = dtypes.pop()
        self.shapes = [tuple(p.shape) for p in self.parameters]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.cumsum([0] + self.sizes)
        self._nd = import_cntk().NDArrayView
        self._staging = None

    @property
    def dtype(self):
        return self._dtype

    @property
    def n_params(self):
        return int(self.offsets[-1])

    def get_params(self):
        out = np.empty(self.n_params, dtype=self._dtype)
        for p, a, b in zip(self.parameters, self.offsets[:-1], self.offsets[1:]):
            out[a:b] = cntk_call(lambda: p.value).ravel()
        return out

    def set_params(self, w):
        w = np.asarray(w)
        if w.shape != (self.n_params,):
            raise ValueError("parameter vector has shape %s but the model has %d parameters; pass a flat "
                             "vector of length %d" % (w.shape, self.n_params, self.n_params))
        if self._staging is None:
            self._staging = StagingViews(self._nd, self.shapes, self._dtype)
        for p, buf, view, a, b in zip(self.parameters, self._staging.buffers, self._staging.views,
                                      self.offsets[:-1], self.offsets[1:]):
            np.copyto(buf, w[a:b].reshape(buf.shape), casting="unsafe")   # cast to the parameters' dtype
            cntk_call(lambda: p.set_value(view))  # copies the staging buffer synchronously

    def split(self, flat):
        """Flat vector -> list of arrays shaped like the parameters."""
        return [flat[a:b].reshape(s) for s, a, b in zip(self.shapes, self.offsets[:-1], self.offsets[1:])]

    def flatten_grads(self, grads):
        """``Function.grad``'s result (dict keyed by Parameter, or a bare array) -> flat float64."""
        if not isinstance(grads, dict):
            grads = {self.parameters[0]: grads}
        out = np.empty(self.n_params)               # one allocation; slices cast on assignment
        for p, a, b in zip(self.parameters, self.offsets[:-1], self.offsets[1:]):
            out[a:b] = np.asarray(grads[p]).ravel()
        return out


def is_sequence(var):
    """Does the Variable carry a dynamic sequence axis (besides the batch axis)?"""
    return len(var.dynamic_axes) >= 2


def owned(a, dtype):
    """``a`` as a NEW C-contiguous array of ``dtype`` that owns its memory. CNTK may keep or resize the
    buffer it is fed; a memory-mapped, read-only or non-contiguous slice of the caller's data (a view)
    is never handed to it (issue 10 item 6: "Resize: Cannot resize the matrix because it is a view").
    The copy is one batch, small next to CNTK's own work on it."""
    return np.array(a, dtype=dtype, order="C", copy=True)


class StagingViews(object):
    """One NumPy buffer per parameter and an ``NDArrayView`` borrowing it, made once: ``set_params``
    writes the new values into the buffers and hands the same views to ``Parameter.set_value`` (which
    copies), instead of creating a new NDArrayView per parameter per call."""

    def __init__(self, nd, shapes, dtype):
        self.buffers = [np.zeros(shape, dtype=dtype) for shape in shapes]
        self.views = [nd.from_dense(buf, borrow=True) for buf in self.buffers]


def check_feed_array(name, a, var, dtype):
    a = np.asarray(a)
    if a.dtype.kind not in "iuf":
        raise ValueError("input %r got data of dtype %s; pass real numbers (integer or floating point): "
                         "bool, complex, object and string arrays are refused" % (name, a.dtype))
    shape = tuple(var.shape)
    if a.ndim < 1 or tuple(a.shape[1:]) != shape:
        raise ValueError("input %r expects shape (n,) + %s but got %s; reshape the data"
                         % (name, shape, a.shape))
    if a.shape[0] == 0:
        raise ValueError("input %r got 0 examples; pass at least one" % name)
    if not np.all(np.isfinite(a)):
        raise ValueError("input %r contains NaN or Inf; remove or impute those values" % name)
    return owned(a, dtype)


class FunctionGradient(ParameterVector):
    """Gradient of ``Σ_batch y`` w.r.t. all of ``y.parameters`` at a fixed feed, as a flat vector, in
    inference mode (Dropout off, BatchNormalization by its running statistics: see
    :func:`influence.adapters.cntk.graph.inference_graph`).

    Calling the object evaluates the gradient at the current weights (the ``f`` of the
    finite-difference routines in :mod:`influence.hvp`).
    """

    def __init__(self, y, x):
        super(FunctionGradient, self).__init__(y.parameters)
        self.y = y
        self.y_inference = inference_graph(y)[0]
        self.smooth = not kinks(self.y_inference)
        args = list(y.arguments)
        if isinstance(x, dict):
            by_name = {a.name: a for a in args}
            feed = {}
            for k, val in x.items():
                var = by_name.get(k, k) if isinstance(k, str) else k
                if var not in args:
                    raise ValueError("feed key %r is not an input of the Function (inputs: %s)"
                                     % (k, [a.name for a in args]))
                feed[var] = val
            missing = [a.name or str(a) for a in args if a not in feed]
            if missing:
                raise ValueError("no data for input(s) %s; add them to the feed dict" % missing)
        else:
            if len(args) != 1:
                raise ValueError("the Function has %d inputs %s; pass x as a dict {input: array}"
                                 % (len(args), [a.name for a in args]))
            feed = {args[0]: x}
        self.feed = {var: check_feed_array(var.name or "x", val, var, self.dtype)
                     for var, val in feed.items()}

    def __call__(self):
        return self.flatten_grads(cntk_call(lambda: self.y_inference.grad(self.feed, wrt=self.parameters)))

    def flatten_vector(self, v):
        """``v`` as {Parameter: array} (every parameter) or a flat vector -> flat float64."""
        if isinstance(v, dict):
            parts = []
            for i, p in enumerate(self.parameters):
                if p not in v:
                    raise ValueError("v has no entry for parameter %d (%s, shape %s); give one array per "
                                     "parameter of y.parameters" % (i, p.name, self.shapes[i]))
                a = np.asarray(v[p], dtype=np.float64)
                if a.shape != self.shapes[i]:
                    raise ValueError("v[%s] (parameter %d) has shape %s but the parameter has shape %s"
                                     % (p.name, i, a.shape, self.shapes[i]))
                parts.append(a.ravel())
            extra = [k for k in v if not any(k is p or k == p for p in self.parameters)]
            if extra:
                raise ValueError("v has entries for %d objects that are not parameters of y; remove them"
                                 % len(extra))
            flat = np.concatenate(parts)
        else:
            flat = np.asarray(v, dtype=np.float64)
            if flat.shape != (self.n_params,):
                raise ValueError("v has shape %s but y has %d parameters; pass a flat vector of length %d "
                                 "or a dict {Parameter: array}" % (flat.shape, self.n_params, self.n_params))
        if not np.all(np.isfinite(flat)):
            raise ValueError("v contains NaN or Inf; pass finite values")
        return flat

    def unflatten_like(self, flat, like):
        if isinstance(like, dict):
            return {p: a.copy() for p, a in zip(self.parameters, self.split(flat))}
        return flat


def select_parameters(parameters, exclude):
    """``parameters`` without those ``exclude`` names (a name or a collection of names) or selects (a
    predicate on the Parameter)."""
    parameters = list(parameters)
    if exclude is None:
        return parameters
    if callable(exclude):
        kept = [p for p in parameters if not exclude(p)]
        what = "the exclude predicate"
    else:
        names = {exclude} if isinstance(exclude, str) else set(exclude)
        known = {p.name for p in parameters}
        unknown = sorted(str(n) for n in names - known)
        if unknown:
            raise ValueError("exclude=%s names no parameter of the model (its parameter names: %s)"
                             % (unknown, sorted(known)))
        kept = [p for p in parameters if p.name not in names]
        what = "exclude=%s" % sorted(names)
    if not kept:
        raise ValueError("%s leaves out all %d parameters of the model; keep at least one"
                         % (what, len(parameters)))
    return kept
