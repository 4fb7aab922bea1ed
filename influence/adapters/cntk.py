"""The CNTK model adapter (CNTK 2.7, Python 3.6).

CNTK facts this module relies on: ``Function.grad`` returns the SUM over the minibatch;
``Function.parameters`` lists the output layer first and names repeat ('W', 'b'), so parameters are
keyed by position; data of the wrong dtype would be cast silently, so the adapter casts explicitly
(float64 features into a float32 model are normal and converted per batch); ``grad`` with a
one-element ``wrt`` returns a bare array rather than a dict.
"""
import os
import sys
import warnings

import numpy as np

from ..data import check_binary_labels, check_class_labels
from .base import Model

__all__ = ["CNTKModel", "FunctionGradient", "ParameterVector", "import_cntk", "LOSSES"]

#: Loss names accepted by :class:`CNTKModel` for a network output (see its docstring).
LOSSES = ("cross_entropy", "binary_cross_entropy", "squared_error")


def import_cntk():
    """Import CNTK with its start-up warnings silenced; a clear error when it is unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cntk
    except ImportError as e:
        raise ImportError(
            "CNTK is not importable (%s); it needs Python 3.5/3.6 with cntk==2.7.post2 and OpenMPI: "
            "run 'make venv' and use .venv/bin/python (see docs/installing.md)" % e)
    return cntk


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
            out[a:b] = p.value.ravel()
        return out

    def set_params(self, w):
        w = np.asarray(w)
        if w.shape != (self.n_params,):
            raise ValueError("parameter vector has shape %s but the model has %d parameters; pass a flat "
                             "vector of length %d" % (w.shape, self.n_params, self.n_params))
        if self._staging is None:
            self._staging = _StagingViews(self._nd, self.shapes, self._dtype)
        for p, buf, view, a, b in zip(self.parameters, self._staging.buffers, self._staging.views,
                                      self.offsets[:-1], self.offsets[1:]):
            np.copyto(buf, w[a:b].reshape(buf.shape), casting="unsafe")   # cast to the parameters' dtype
            p.set_value(view)                      # copies the staging buffer synchronously

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


class _StagingViews(object):
    """One NumPy buffer per parameter and an ``NDArrayView`` borrowing it, made once: ``set_params``
    writes the new values into the buffers and hands the same views to ``Parameter.set_value`` (which
    copies), instead of creating a new NDArrayView per parameter per call."""

    def __init__(self, nd, shapes, dtype):
        self.buffers = [np.zeros(shape, dtype=dtype) for shape in shapes]
        self.views = [nd.from_dense(buf, borrow=True) for buf in self.buffers]


def _check_feed_array(name, a, var, dtype):
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
    return np.ascontiguousarray(a, dtype=dtype)


class FunctionGradient(ParameterVector):
    """Gradient of ``Σ_batch y`` w.r.t. all of ``y.parameters`` at a fixed feed, as a flat vector.

    Calling the object evaluates the gradient at the current weights (the ``f`` of the
    finite-difference routines in :mod:`influence.hvp`).
    """

    def __init__(self, y, x):
        super(FunctionGradient, self).__init__(y.parameters)
        self.y = y
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
        self.feed = {var: _check_feed_array(var.name or "x", val, var, self.dtype)
                     for var, val in feed.items()}

    def __call__(self):
        return self.flatten_grads(self.y.grad(self.feed, wrt=self.parameters))

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


class _Quiet(object):
    """Silence CNTK's C++ stderr noise (file descriptor 2) for the duration of a block."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)


class CNTKModel(Model):
    """A CNTK network as a :class:`~influence.adapters.base.Model`.

    Two ways to give the loss:

    - ``function`` is the network OUTPUT and ``loss`` names the per-example loss ℓ; the adapter
      creates the label input:

      * ``"cross_entropy"``: softmax cross entropy of the k outputs (logits) with integer labels 0..k-1;
      * ``"binary_cross_entropy"``: one output, a logit s; ℓ = log(1 + eˢ) − y·s for labels y ∈ {0, 1};
      * ``"squared_error"``: ℓ = Σ_j (z_j − y_j)² (CNTK's ``squared_error``; no ½) for float targets
        shaped like the output.
    - ``function`` is already a per-example LOSS (scalar per sample) with a feature input and a
      label input; ``loss=None``. Name the inputs with ``features=``/``labels=`` (names or Variables)
      when it is ambiguous.

    ``l2`` adds (l2/2)·‖w‖² to the objective (and l2·I to the Hessian). Features are cast to the
    parameters' dtype batch by batch (float64 data into a float32 model is normal).
    """

    def __init__(self, function, loss="cross_entropy", l2=0.0, batch_size=None, features=None, labels=None):
        C = import_cntk()
        self._C = C
        if not isinstance(function, C.Function):
            raise ValueError("expected a CNTK Function, got %s; pass the network output (or use "
                             "CNTKModel.load(path))" % type(function).__name__)
        if l2 < 0 or not np.isfinite(l2):
            raise ValueError("l2=%r must be a finite number >= 0" % (l2,))
        self.l2 = float(l2)
        if batch_size is not None:
            self.batch_size = int(batch_size)
        self._params = ParameterVector(function.parameters)
        w = self._params.get_params()
        if not np.all(np.isfinite(w)):
            raise ValueError("the model's weights contain NaN or Inf; retrain or reload a healthy model")
        self.loss_name = loss
        if loss is None:
            self.output = None
            self.loss_function = function
            self.features, self.labels = self._find_inputs(function, features, labels)
        else:
            if loss not in LOSSES:
                raise ValueError("loss=%r is not one of %s (or None for a Function that is already a loss)"
                                 % (loss, ", ".join(LOSSES)))
            args = list(function.arguments)
            if len(args) != 1:
                raise ValueError("the network output has %d inputs %s; pass a Function with one feature "
                                 "input, or a loss Function with loss=None" % (len(args), [a.name for a in args]))
            self.output = function
            self.features = args[0]
            self.labels, self.loss_function = self._build_loss(function, loss)
        shape = tuple(self.loss_function.output.shape)
        if int(np.prod(shape)) != 1:
            raise ValueError("the loss Function's output has shape %s per example; it must be a scalar per "
                             "example (reduce it, e.g. with C.reduce_sum)" % (shape,))
        self.n_classes = None
        if self.output is not None and loss == "cross_entropy":
            self.n_classes = int(np.prod(self.output.shape))

    # ------------------------------------------------------------------ construction helpers
    def _find_inputs(self, function, features, labels):
        args = list(function.arguments)

        def pick(spec, role):
            for a in args:
                # a name, or a Variable (compared by uid: CNTK returns new wrapper objects and its
                # Variable.__eq__ with other types raises)
                if (a.name == spec) if isinstance(spec, str) else (a.uid == getattr(spec, "uid", None)):
                    return a
            raise ValueError("%s=%r is not an input of the loss Function (inputs: %s)"
                             % (role, spec, [a.name for a in args]))

        if len(args) not in (1, 2):
            raise ValueError("the loss Function has %d inputs %s; it needs a feature input and at most one "
                             "label input" % (len(args), [a.name for a in args]))
        if features is not None:
            f = pick(features, "features")
        elif labels is not None:
            lab = pick(labels, "labels")
            f = [a for a in args if a is not lab][0]
        elif len(args) == 1:
            f = args[0]
        else:
            named = [a for a in args if a.name.lower() in ("labels", "label", "y", "target", "targets")]
            if len(named) != 1:
                raise ValueError("cannot tell the feature input from the label input among %s; pass "
                                 "features=NAME and labels=NAME" % [a.name for a in args])
            f = [a for a in args if a is not named[0]][0]
        rest = [a for a in args if a is not f]
        lab = pick(labels, "labels") if labels is not None else (rest[0] if rest else None)
        return f, lab

    def _build_loss(self, z, loss):
        C = self._C
        dtype = self._params.dtype
        out_shape = tuple(z.output.shape)
        if loss == "cross_entropy":
            if int(np.prod(out_shape)) < 2:
                raise ValueError("cross_entropy needs a network with k >= 2 outputs, this one has shape %s; "
                                 "use loss='binary_cross_entropy' for a single logit" % (out_shape,))
            y = C.input_variable(out_shape, dtype=dtype, name="labels")
            return y, C.cross_entropy_with_softmax(z, y)
        if loss == "binary_cross_entropy":
            if int(np.prod(out_shape)) != 1:
                raise ValueError("binary_cross_entropy needs one output (a logit), this network has shape "
                                 "%s; use loss='cross_entropy'" % (out_shape,))
            y = C.input_variable(out_shape, dtype=dtype, name="labels")
            zero = C.constant(0, shape=out_shape, dtype=dtype)
            return y, C.reduce_sum(C.log_add_exp(zero, z) - y * z)
        y = C.input_variable(out_shape, dtype=dtype, name="targets")
        return y, C.squared_error(z, y)

    @classmethod
    def load(cls, path, loss="cross_entropy", output=None, **kwargs):
        """Load a file written by ``Function.save``. ``output`` names the node to use (the network
        output, or a loss node with ``loss=None``) when the saved Function is not that node itself."""
        C = import_cntk()
        if not os.path.isfile(path):
            raise ValueError("%s: no such model file; check the path" % path)
        try:
            with _Quiet():
                f = C.Function.load(path)
        except Exception as e:  # CNTK raises RuntimeError/ValueError with C++ stack traces
            raise ValueError("%s is not a CNTK model file saved with Function.save (%s)"
                             % (path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
        if output is not None:
            node = f.find_by_name(output)
            if node is None:
                raise ValueError("the model has no node named %r; check --output / output=" % output)
            f = C.combine([node.output]) if not isinstance(node, C.Function) else node
            if len(f.outputs) != 1:
                f = C.combine([f.outputs[0]])
        elif len(f.outputs) != 1:
            raise ValueError("%s has %d outputs %s; name the one to use with output=NAME"
                             % (path, len(f.outputs), [o.name for o in f.outputs]))
        return cls(f, loss=loss, **kwargs)

    def save(self, path):
        """Save the network output (or the loss Function when built from one) with ``Function.save``."""
        (self.output if self.output is not None else self.loss_function).save(path)

    # ------------------------------------------------------------------ Model interface
    @property
    def parameters(self):
        return self._params.parameters

    @property
    def n_params(self):
        return self._params.n_params

    @property
    def dtype(self):
        return self._params.dtype

    def get_params(self):
        return self._params.get_params()

    def set_params(self, w):
        self._params.set_params(self._check_vector(w))

    def _validate(self, dataset):
        shape = tuple(self.features.shape)
        if tuple(dataset.x.shape[1:]) != shape:
            raise ValueError("%s features have shape %s but the model's input expects (n,) + %s; reshape "
                             "the data or pick the matching model" % (dataset.name, dataset.x.shape, shape))
        if self.labels is None:
            return
        y = dataset.y
        if y is None:
            raise ValueError("%s has no labels but the loss needs them; pass (x, y)" % dataset.name)
        if self.loss_name == "cross_entropy":
            check_class_labels(dataset, self.n_classes, "cross_entropy")
        elif self.loss_name == "binary_cross_entropy":
            check_binary_labels(dataset, "binary_cross_entropy")
        else:
            shape = tuple(self.labels.shape)
            if tuple(y.shape[1:]) != shape and not (shape == (1,) and y.ndim == 1):
                raise ValueError("%s targets have shape %s but the loss expects (n,) + %s"
                                 % (dataset.name, y.shape, shape))

    # ------------------------------------------------------------------ prepared feeds
    # A batch of PreparedData (adapters/base.py) carries its feed already converted to CNTK Values, so
    # repeated gradient passes over it (every Hessian-vector product) skip the NumPy -> Value copy.
    def _prepare_batch(self, batch):
        return (self, {var: self._C.Value(batch=a) for var, a in self._feed(batch).items()})

    def _feed(self, batch):
        prepared = getattr(batch, "prepared", None)
        if prepared is not None and prepared[0] is self:
            return prepared[1]
        feed = {self.features: np.ascontiguousarray(batch.x, dtype=self.dtype)}
        if self.labels is not None:
            y = batch.y
            if self.loss_name == "cross_entropy":
                onehot = np.zeros((len(batch), self.n_classes), dtype=self.dtype)
                onehot[np.arange(len(batch)), y] = 1
                feed[self.labels] = onehot
            else:
                feed[self.labels] = np.ascontiguousarray(y, dtype=self.dtype).reshape(
                    (len(batch),) + tuple(self.labels.shape))
        return feed

    def _per_example_losses(self, batch):
        out = self.loss_function.eval(self._feed(batch))
        return np.asarray(out, dtype=np.float64).reshape(len(batch))

    def _loss_sum(self, batch):
        return float(self._per_example_losses(batch).sum())

    def _grad_sum(self, batch):
        g = self.loss_function.grad(self._feed(batch), wrt=self._params.parameters)
        return self._params.flatten_grads(g)

    def _loss_and_grad_sum(self, batch):
        # one forward and one backward pass: grad() also returns the per-example losses it computed
        f = self.loss_function
        g, losses = f.grad(self._feed(batch), wrt=self._params.parameters, outputs=[f.output])
        return float(np.sum(np.asarray(losses, dtype=np.float64))), self._params.flatten_grads(g)

    def predict(self, x, batch_size=None):
        """Network outputs for features ``x`` (float64, shape (n,) + output shape)."""
        if self.output is None:
            raise ValueError("this model was built from a loss Function; it has no separate output to predict")
        from ..data import Dataset
        x = Dataset(x, None, "x").x
        if tuple(x.shape[1:]) != tuple(self.features.shape):
            raise ValueError("x has shape %s but the model's input expects (n,) + %s; reshape the data"
                             % (x.shape, tuple(self.features.shape)))
        size = batch_size or self.batch_size
        outs = []
        for start in range(0, x.shape[0], size):
            xb = np.ascontiguousarray(x[start:start + size], dtype=self.dtype)
            outs.append(np.asarray(self.output.eval({self.features: xb}), dtype=np.float64))
        return np.concatenate(outs).reshape((x.shape[0],) + tuple(self.output.shape))


ACTIVATIONS = ("tanh", "relu", "sigmoid", "softplus")


def build_network(n_features, n_outputs, hidden=(), activation="tanh", dtype=np.float32, seed=0):
    """A CNTK multilayer perceptron: an input of ``n_features`` (an int, or a shape tuple such as
    (8, 8) — the first Dense layer consumes the whole tensor), Dense hidden layers of sizes ``hidden``
    with ``activation``, and a linear output layer of ``n_outputs`` (logits). ``hidden=()`` is
    softmax/logistic regression. Weights are Glorot-uniform with the given ``seed``."""
    C = import_cntk()
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError("dtype=%s is not supported by the CNTK adapter; pass float32 or float64" % dtype)
    if activation not in ACTIVATIONS:
        raise ValueError("activation=%r is not one of %s" % (activation, ", ".join(ACTIVATIONS)))
    act = getattr(C, activation)
    with C.default_options(dtype=dtype):
        shape = tuple(int(s) for s in n_features) if isinstance(n_features, (tuple, list)) else int(n_features)
        x = C.input_variable(shape, dtype=dtype, name="features")
        h = x
        for i, width in enumerate(hidden):
            h = C.layers.Dense(int(width), activation=act, init=C.glorot_uniform(seed=seed + i),
                               name="hidden%d" % (i + 1))(h)
        z = C.layers.Dense(int(n_outputs), activation=None, init=C.glorot_uniform(seed=seed + len(hidden)),
                           name="output")(h)
    return z
