"""The CNTK model adapter (CNTK 2.7, Python 3.6).

CNTK facts this module relies on: ``Function.grad`` returns the SUM over the minibatch;
``Function.parameters`` lists the output layer first and names repeat ('W', 'b'), so parameters are
keyed by position; data of the wrong dtype would be cast silently, so the adapter casts explicitly
(float64 features into a float32 model are normal and converted per batch); ``grad`` with a
one-element ``wrt`` returns a bare array rather than a dict.
"""
import json
import os
import threading
import warnings

import numpy as np

from ...data import (Dataset, Sequences, is_sparse, check_binary_labels, check_class_labels,
                    first_bad)
from ...common.errors import InfluenceError, param
from ..base import Model

from .onnx import is_onnx, load_onnx
from .parameters import FunctionGradient, ParameterVector, is_sequence, owned, select_parameters  # noqa: F401
from .runtime import Quiet, cntk_call, first_line, import_cntk
from .builders import build_cnn, build_network  # noqa: F401 (public here too)
from .graph import inference_graph, kinks

__all__ = ["CNTKModel", "FunctionGradient", "ParameterVector", "import_cntk", "LOSSES", "build_network",
           "build_cnn", "load_onnx"]

#: Loss names accepted by :class:`CNTKModel` for a network output (see its docstring).
LOSSES = ("cross_entropy", "binary_cross_entropy", "squared_error")



#: The metadata file beside a model (``MODEL.json``): what ``influence train`` records about it.
METADATA_SUFFIX = ".json"
_FROM_METADATA = object()


def read_metadata(path):
    """The dict in ``path + METADATA_SUFFIX`` ({} when there is no such file); a file that is not a
    JSON object is refused in one line."""
    meta_path = path + METADATA_SUFFIX
    if not os.path.isfile(meta_path):
        return {}
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:
        raise ValueError("%s is not valid JSON (%s); delete it or pass loss= and l2= explicitly" % (meta_path, e))
    if not isinstance(meta, dict):
        raise ValueError("%s holds no JSON object; delete it or pass loss= and l2= explicitly" % meta_path)
    return meta


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

    Everything is evaluated in INFERENCE mode: the adapter differentiates a rewritten copy of the
    network (:func:`influence.adapters.cntk.graph.inference_graph`) in which Dropout is the identity
    and BatchNormalization the fixed affine map of its running statistics; the copy shares the user's
    Parameters, and the running statistics (Constants) are never updated. ``loss_function`` is that
    inference-mode loss; ``rewritten`` lists the nodes rewritten. The BatchNormalization ``scale`` and
    ``bias`` stay parameters of the influence computation (they are trained weights); ``exclude``
    leaves parameters out of w, H and the gradients: parameter names (e.g. ``["scale", "bias"]``;
    names repeat, every parameter of that name is excluded) or a predicate ``exclude(parameter)``.

    ``per_example_grads`` runs one forward/backward pass per block of rows (see
    :meth:`per_example_plan`; exact, the same numbers as one gradient call per row up to rounding);
    set ``per_example_method = "loop"`` for one gradient call per row.
    """

    #: ``"batched"`` (default): per-example gradients from one pass per block of rows (see
    #: :meth:`per_example_plan`); ``"loop"``: one CNTK gradient call per row.
    per_example_method = "batched"

    def __init__(self, function, loss="cross_entropy", l2=0.0, batch_size=None, features=None, labels=None,
                 exclude=None):
        C = import_cntk()
        self._C = C
        if not isinstance(function, C.Function):
            raise ValueError("expected a CNTK Function, got %s; pass the network output (or use "
                             "CNTKModel.load(path))" % type(function).__name__)
        if l2 < 0 or not np.isfinite(l2):
            raise InfluenceError("%s must be a finite number >= 0" % param("l2", l2), parameter="l2")
        self.l2 = float(l2)
        if batch_size is not None:
            self.batch_size = int(batch_size)
        # one CNTK evaluation at a time per model: a Function evaluated from two threads at once fails
        # in CNTK 2.7 ("This Value object is invalid ...", measured), see owned for the other half
        self._lock = threading.RLock()
        self._pex_plan = None
        self._params = ParameterVector(select_parameters(function.parameters, exclude))
        #: ``exclude=`` as given (names or a predicate; the cluster ships names to its workers)
        self.exclude = exclude
        self.excluded = [p for p in function.parameters
                         if not any(p.uid == q.uid for q in self._params.parameters)]
        w = self._params.get_params()
        if not np.all(np.isfinite(w)):
            raise ValueError("the model's weights contain NaN or Inf; retrain or reload a healthy model")
        self.loss_name = loss
        if loss is None:
            self.output = None
            self._inference_output = None
            self._user_function = function
            self.inputs, self.labels = self._find_inputs(function, features, labels)
            net, self.rewritten = inference_graph(function)
            self.loss_function = self._dense_inputs(net)
        else:
            if loss not in LOSSES:
                raise ValueError("loss=%r is not one of %s (or None for a Function that is already a loss)"
                                 % (loss, ", ".join(LOSSES)))
            self.output = self._user_function = function
            self.inputs = list(function.arguments)
            net, self.rewritten = inference_graph(function)
            self._inference_output = self._dense_inputs(net)
            self.labels, self.loss_function = self._build_loss(self._inference_output, loss)
        self.features = self.inputs[0]
        if is_sequence(self.loss_function.output):
            # per-step losses (a tagger): the example's loss is the sum over its steps
            self.loss_function = C.sequence.reduce_sum(self.loss_function)
        self.smooth = not kinks(self.loss_function)
        shape = tuple(self.loss_function.output.shape)
        if int(np.prod(shape)) != 1:
            raise ValueError("the loss Function's output has shape %s per example; it must be a scalar per "
                             "example (reduce it, e.g. with C.reduce_sum)" % (shape,))
        self.n_classes = None
        if self.output is not None and loss == "cross_entropy":
            self.n_classes = int(np.prod(self.output.shape))

    # ------------------------------------------------------------------ construction helpers
    def _dense_inputs(self, net):
        """``net`` with each ``is_sparse`` input replaced by a dense input of the same name and axes:
        CNTK 2.7 returns the gradient of a weight that multiplies a sparse input (an Embedding) as a
        sparse matrix its Python API cannot convert, so sparse data are densified batch by batch (the
        dataset itself stays sparse)."""
        C = self._C
        subs = {}
        self._feed_vars = {}
        for var in self.inputs:
            if var.is_sparse:
                make = C.sequence.input_variable if is_sequence(var) else C.input_variable
                dense = make(var.shape, dtype=var.dtype, name=var.name)
                subs[var] = dense
                self._feed_vars[var.uid] = dense
            else:
                self._feed_vars[var.uid] = var
        return net.clone(C.CloneMethod.share, subs) if subs else net

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

        if labels is not None:
            lab = pick(labels, "labels")
        elif features is not None:
            specs = features if isinstance(features, (list, tuple)) else [features]
            chosen = [pick(f, "features").uid for f in specs]
            rest = [a for a in args if a.uid not in chosen]
            if len(rest) > 1:
                raise ValueError("the loss Function has inputs %s besides features=%s; name the label input "
                                 "with labels=NAME" % ([a.name for a in rest], features))
            lab = rest[0] if rest else None
        elif len(args) == 1:
            lab = None
        else:
            named = [a for a in args if a.name.lower() in ("labels", "label", "y", "target", "targets")]
            if len(named) != 1:
                raise ValueError("cannot tell the feature inputs from the label input among %s; pass "
                                 "labels=NAME (and features=NAME)" % [a.name for a in args])
            lab = named[0]
        feats = [a for a in args if lab is None or a.uid != lab.uid]
        if not feats:
            raise ValueError("the loss Function has no feature input besides labels=%r" % (labels,))
        return feats, lab

    def _build_loss(self, z, loss):
        C = self._C
        dtype = self._params.dtype
        out_shape = tuple(z.output.shape)
        make = C.sequence.input_variable if is_sequence(z.output) else C.input_variable
        if loss == "cross_entropy":
            if int(np.prod(out_shape)) < 2:
                raise ValueError("cross_entropy needs a network with k >= 2 outputs, this one has shape %s; "
                                 "use loss='binary_cross_entropy' for a single logit" % (out_shape,))
            y = make(out_shape, dtype=dtype, name="labels")
            return y, C.cross_entropy_with_softmax(z, y)
        if loss == "binary_cross_entropy":
            if int(np.prod(out_shape)) != 1:
                raise ValueError("binary_cross_entropy needs one output (a logit), this network has shape "
                                 "%s; use loss='cross_entropy'" % (out_shape,))
            y = make(out_shape, dtype=dtype, name="labels")
            zero = C.constant(0, shape=out_shape, dtype=dtype)
            return y, C.reduce_sum(C.log_add_exp(zero, z) - y * z)
        y = make(out_shape, dtype=dtype, name="targets")
        return y, C.squared_error(z, y)

    @classmethod
    def load(cls, path, loss="auto", output=None, **kwargs):
        """Load a file written by ``Function.save`` (CNTK's format) or an ONNX file (``.onnx``, or
        recognised by its first bytes; read with ``ModelFormat.ONNX``, its weight Constants turned
        into Parameters and its fixed batch of one replaced by a batch axis, see :func:`load_onnx`).
        ``output`` names the node to use (the network output, or a loss node with ``loss=None``) when
        the saved Function is not that node itself.

        The objective comes from ``PATH.json`` when that file exists (what ``influence train`` writes
        and the command line reads: ``loss`` and ``l2``), so the API and the CLI score the same model
        the same way: ``loss="auto"`` and no ``l2=`` take them from there (else ``"cross_entropy"`` and
        0). An explicit ``loss=``/``l2=`` wins; one that disagrees with the file warns naming both
        values."""
        C = import_cntk()
        if not os.path.isfile(path):
            raise ValueError("%s: no such model file; check the path" % path)
        meta = read_metadata(path)
        for name, default in (("loss", "cross_entropy"), ("l2", 0.0)):
            given = (_FROM_METADATA if loss == "auto" else loss) if name == "loss" else kwargs.get("l2", _FROM_METADATA)
            stored = meta.get(name)
            if given is _FROM_METADATA:
                value = default if stored is None else (float(stored) if name == "l2" else stored)
            else:
                value = given
                if stored is not None and stored != given and not (name == "l2" and float(stored) == float(given)):
                    warnings.warn("%s=%r was given, but %s%s says %s=%r (written by influence train); using %r"
                                  % (name, given, path, METADATA_SUFFIX, name, stored, given), UserWarning,
                                  stacklevel=2)
            if name == "loss":
                loss = None if value == "none" else value
            else:
                kwargs["l2"] = value
        if is_onnx(path):
            f = load_onnx(path)
        else:
            try:
                with Quiet():
                    f = C.Function.load(path)
            except Exception as e:  # CNTK raises RuntimeError/ValueError with C++ stack traces
                raise ValueError("%s is not a CNTK model file saved with Function.save nor an ONNX file (%s)"
                                 % (path, first_line(e)))
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
        """Save the user's network output (or the loss Function when built from one), as given (training
        ops included), with ``Function.save``."""
        self._user_function.save(path)

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

    def _part(self, dataset, var):
        """The component of ``dataset.x`` fed to input ``var``."""
        x = dataset.x
        if isinstance(x, dict):
            if var.name not in x:
                raise ValueError("%s has no data for input %r (it has %s); add x[%r] (in .npz: member "
                                 "x.%s)" % (dataset.name, var.name, sorted(x), var.name, var.name))
            return x[var.name]
        if len(self.inputs) != 1:
            raise ValueError("the model has %d inputs %s; pass x as a dict {input name: array} (in .npz: "
                             "members x.<input name>)" % (len(self.inputs), [v.name for v in self.inputs]))
        return x

    def _validate_inputs(self, dataset):
        if isinstance(dataset.x, dict):
            extra = sorted(set(dataset.x) - {v.name for v in self.inputs})
            if extra:
                raise ValueError("%s has data for %s, which are not inputs of the model (inputs: %s); "
                                 "rename or drop them" % (dataset.name, extra, [v.name for v in self.inputs]))
        for var in self.inputs:
            _check_input(dataset.name, var, self._part(dataset, var))

    def _validate(self, dataset):
        self._validate_inputs(dataset)
        if self.labels is None:
            return
        y = dataset.y
        if y is None:
            raise ValueError("%s has no labels but the loss needs them; pass (x, y)" % dataset.name)
        if is_sequence(self.labels):
            self._check_step_labels(dataset)
            return
        if isinstance(y, Sequences):
            raise ValueError("%s has per-step labels (sequences) but the model's output has no sequence "
                             "axis; pass one label per example" % dataset.name)
        if self.loss_name == "cross_entropy":
            check_class_labels(dataset, self.n_classes, "cross_entropy")
        elif self.loss_name == "binary_cross_entropy":
            check_binary_labels(dataset, "binary_cross_entropy")
        else:
            shape = tuple(self.labels.shape)
            if tuple(y.shape[1:]) != shape and not (shape == (1,) and y.ndim == 1):
                raise ValueError("%s targets have shape %s but the loss expects (n,) + %s"
                                 % (dataset.name, y.shape, shape))

    def _check_step_labels(self, dataset):
        y = dataset.y
        if not isinstance(y, Sequences):
            raise ValueError("%s labels have shape %s but the model's loss has a label per step; pass a "
                             "list of per-sequence label arrays (or influence.data.Sequences)"
                             % (dataset.name, np.shape(y)))
        seqs = [p for p in ([self._part(dataset, v) for v in self.inputs]) if isinstance(p, Sequences)]
        if seqs and not np.array_equal(seqs[0].lengths, y.lengths):
            i = int(np.argmax(seqs[0].lengths != y.lengths))
            raise ValueError("%s sequence %d has %d steps but %d labels; pass one label per step"
                             % (dataset.name, i, seqs[0].lengths[i], y.lengths[i]))
        if self.loss_name == "cross_entropy":
            labels = Dataset(np.zeros(y.n_steps), np.asarray(y.values), dataset.name, _checked=True)
            check_class_labels(labels, self.n_classes, "cross_entropy")

    def _input_value(self, var, part):
        """What CNTK is fed for input ``var``: owned arrays of the model dtype (a list of per-sequence
        arrays for a sequence input), sparse data and index arrays densified for this batch only."""
        dtype = self.dtype
        dim = int(np.prod(var.shape))

        def dense(a):
            if is_sparse(a):
                return owned(a.toarray(), dtype).reshape((a.shape[0],) + tuple(var.shape))
            a = np.asarray(a)
            if var.is_sparse and np.issubdtype(a.dtype, np.integer) and a.ndim == 1:
                out = np.zeros((a.shape[0], dim), dtype=dtype)
                out[np.arange(a.shape[0]), a] = 1
                return out.reshape((a.shape[0],) + tuple(var.shape))
            return owned(a, dtype)
        if isinstance(part, Sequences):
            return [dense(part[i]) for i in range(len(part))]
        if is_sequence(var):
            return [dense(part[i]) for i in range(part.shape[0])]
        return dense(part)

    def _labels_value(self, batch):
        y = batch.y
        if self.loss_name == "cross_entropy":
            def onehot(labels):
                out = np.zeros((len(labels), self.n_classes), dtype=self.dtype)
                out[np.arange(len(labels)), np.asarray(labels)] = 1
                return out
            if isinstance(y, Sequences):
                return [onehot(y[i]) for i in range(len(y))]
            return onehot(y)
        if isinstance(y, Sequences):
            return [owned(y[i], self.dtype).reshape((-1,) + tuple(self.labels.shape)) for i in range(len(y))]
        return owned(y, self.dtype).reshape((len(batch),) + tuple(self.labels.shape))

    # ------------------------------------------------------------------ prepared feeds
    # A batch of PreparedData (adapters/base.py) carries its feed already converted to CNTK Values, so
    # repeated gradient passes over it (every Hessian-vector product) skip the NumPy -> Value copy.
    def _prepare_batch(self, batch):
        return (self, {var: self._C.Value(batch=a) if isinstance(a, np.ndarray) else a
                       for var, a in self._feed(batch).items()})     # sequences stay lists of arrays

    def _feed(self, batch):
        prepared = getattr(batch, "prepared", None)
        if prepared is not None and prepared[0] is self:
            return prepared[1]
        feed = {self._feed_vars[v.uid]: self._input_value(v, self._part(batch, v)) for v in self.inputs}
        if self.labels is not None:
            feed[self.labels] = self._labels_value(batch)
        return feed

    def _per_example_losses(self, batch):
        feed = self._feed(batch)
        with self._lock:
            out = cntk_call(lambda: self.loss_function.eval(feed))
        return np.asarray(out, dtype=np.float64).reshape(len(batch))

    def _loss_sum(self, batch):
        return float(self._per_example_losses(batch).sum())

    # ------------------------------------------------------------------ per-example gradients
    def per_example_plan(self):
        """How :meth:`per_example_grads` computes each parameter's per-example gradient (built once):
        a :class:`~influence.adapters.cntk.per_example.PerExamplePlan` whose ``routes`` give every
        parameter's route (``"layer"``: Dense/Convolution weights and biases from one batched
        forward/backward pass; ``"direct"``: other parameters from the same pass; ``"loop"``: one
        gradient call per row) and whose ``fallback`` names the parameters left to the loop and why.
        ``str()`` of it is a one-line summary. With ``per_example_method = "loop"`` every parameter
        takes the loop."""
        with self._lock:
            if self._pex_plan is None:
                from .per_example import PerExamplePlan
                self._pex_plan = PerExamplePlan(self)
        return self._pex_plan

    def _per_example_grads(self, batch, out=None):
        if self.per_example_method == "loop":
            return super(CNTKModel, self)._per_example_grads(batch)
        if self.per_example_method != "batched":
            raise ValueError("per_example_method=%r is not 'batched' or 'loop'; set one of them"
                             % (self.per_example_method,))
        return self.per_example_plan()(batch, out)

    def _per_example_grads_into(self, batch, out):
        g = self._per_example_grads(batch, out)      # the batched plan writes into ``out`` itself
        if g is not out:
            out[...] = g

    # ------------------------------------------------------------------ Kronecker-factored layers
    # (influence.EKFAC); implemented in kfac.py from the batched per-example pass.
    def kfac_plan(self):
        from . import kfac as cntk_kfac
        key = self.per_example_method
        cache = getattr(self, "_kfac_cache", None)
        if cache is None or cache[0] != key:
            cache = self._kfac_cache = (key, cntk_kfac.kfac_plan(self))
        return cache[1]

    def _kfac_statistics(self, batch, out):
        from . import kfac as cntk_kfac
        return cntk_kfac.kfac_statistics(self, batch, out)

    def _grad_sum(self, batch):
        feed = self._feed(batch)
        with self._lock:
            g = cntk_call(lambda: self.loss_function.grad(feed, wrt=self._params.parameters))
        return self._params.flatten_grads(g)

    def _loss_and_grad_sum(self, batch):
        # one forward and one backward pass: grad() also returns the per-example losses it computed
        f = self.loss_function
        feed = self._feed(batch)
        with self._lock:
            g, losses = cntk_call(lambda: f.grad(feed, wrt=self._params.parameters, outputs=[f.output]))
        return float(np.sum(np.asarray(losses, dtype=np.float64))), self._params.flatten_grads(g)

    def predict(self, x, batch_size=None):
        """Network outputs (inference mode) for features ``x`` (any form a Dataset holds): float64 of
        shape (n,) + output shape, or for an output with a sequence axis a :class:`Sequences` of the
        per-step outputs."""
        if self.output is None:
            raise ValueError("this model was built from a loss Function; it has no separate output to predict")
        data = x if isinstance(x, Dataset) else Dataset(x, None, "x")
        self._validate_inputs(data)
        size = batch_size or self.batch_size
        out_var = self._inference_output
        outs = []
        for batch in data.batches(size):
            feed = {self._feed_vars[v.uid]: self._input_value(v, self._part(batch, v)) for v in self.inputs}
            with self._lock:
                out = cntk_call(lambda: out_var.eval(feed))
            if is_sequence(out_var.output):
                outs.extend(np.asarray(o, dtype=np.float64) for o in out)
            else:
                outs.append(np.asarray(out, dtype=np.float64))
        if is_sequence(out_var.output):
            return Sequences.from_list(outs)
        return np.concatenate(outs).reshape((len(data),) + tuple(out_var.output.shape))

    # ------------------------------------------------------------------ output-space primitives
    # The Gauss-Newton and Fisher curvatures (influence.curvature); implemented in outputs.py.
    @property
    def output_loss(self):
        from . import outputs as cntk_outputs
        return cntk_outputs.output_loss(self)

    def _n_output_rows(self, batch):
        from . import outputs as cntk_outputs
        return cntk_outputs.n_output_rows(self, batch)

    def _outputs(self, batch):
        from . import outputs as cntk_outputs
        return cntk_outputs.outputs(self, batch)

    def _jt_sum(self, batch, r):
        from . import outputs as cntk_outputs
        return cntk_outputs.jt_sum(self, batch, r)

    def _weighted_grad_sum(self, batch, c):
        from . import outputs as cntk_outputs
        return cntk_outputs.weighted_grad_sum(self, batch, c)


def _check_input(name, var, part):
    """One-line errors for data that do not fit input ``var`` (shape, sequence axis, sparse indices)."""
    shape = tuple(var.shape)
    dim = int(np.prod(shape))
    if isinstance(part, Sequences):
        if not is_sequence(var):
            raise ValueError("%s input %r got variable-length sequences but the input has no sequence axis; "
                             "pass one array row per example, or build the model with "
                             "C.sequence.input_variable" % (name, var.name))
        values = part.values
        if is_sparse(values) or (var.is_sparse and values.ndim == 1):
            _check_sparse(name, var, values, dim)
        elif tuple(values.shape[1:]) != shape:
            raise ValueError("%s input %r has steps of shape %s but the model expects %s; reshape the steps"
                             % (name, var.name, tuple(values.shape[1:]), shape))
        return
    if is_sparse(part) or (var.is_sparse and np.ndim(part) == 1):
        if is_sequence(var):
            raise ValueError("%s input %r is a sequence input; pass a list of per-sequence arrays (or "
                             "influence.data.Sequences)" % (name, var.name))
        _check_sparse(name, var, part, dim)
        return
    if is_sequence(var):
        if part.ndim != 2 + len(shape) or tuple(part.shape[2:]) != shape:
            raise ValueError("%s input %r is a sequence input with steps of shape %s but got an array of shape "
                             "%s; pass a list of (steps,) + %s arrays" % (name, var.name, shape, part.shape, shape))
        return
    if tuple(part.shape[1:]) != shape:
        raise ValueError("%s features have shape %s but the model's input %r expects (n,) + %s; reshape "
                         "the data or pick the matching model" % (name, part.shape, var.name, shape))


def _check_sparse(name, var, values, dim):
    if is_sparse(values):
        if values.shape[1] != dim:
            raise ValueError("%s input %r has sparse rows of width %d but the input has dimension %d; pass "
                             "a CSR matrix with %d columns" % (name, var.name, values.shape[1], dim, dim))
        return
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError("%s input %r got indices of dtype %s; pass integer indices 0..%d or a CSR matrix"
                         % (name, var.name, values.dtype, dim - 1))
    bad = first_bad(values, lambda b: (b < 0) | (b >= dim))
    if bad.size:
        raise ValueError("%s input %r has index %d outside 0..%d (the input's dimension is %d); fix the "
                         "indices or the vocabulary size" % (name, var.name, bad[0], dim - 1, dim))

