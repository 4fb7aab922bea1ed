"""CNTK Text Format files as Datasets, read lazily in chunks with bounded memory.

:func:`load_ctf` indexes a ``.ctf`` file once (:class:`influence.data.ctf_reader.CTFReader`: a byte offset per
sequence), reads it once in chunks of :data:`LOAD_CHUNK` sequences to check every value against the
model and to keep what is small — the labels (n values, or one per step for a tagger) and the step
counts of the sequence inputs (n int64 each) — and returns a :class:`CTFDataset`. Its rows are read
from the file only when asked for: ``subset(slice(a, b))``, ``batches(size)`` and integer-array
subsets parse just those sequences (``CTFReader.read``), so scoring a training set chunk by chunk
never holds more than a chunk of features. Row ``i`` is the ``i``-th sequence of the file, always.

Streams map to the model's inputs by name: each feature input, and the model's label input (the
label Variable's name: ``labels`` for ``loss="cross_entropy"``/``"binary_cross_entropy"``,
``targets`` for ``"squared_error"``, the user's name for a loss Function); ``mapping={stream: input}``
renames, ``skip=[stream]`` ignores. Dimensions come from the model. Labels are converted to what the
adapter takes from ``.npz``: one-hot rows (``|labels 0 0 1`` or ``|labels 2:1``) become class
indices for cross_entropy, 0/1 values integers for binary_cross_entropy; other losses keep the
values (shape (n,) + the label input's shape). See docs/data-formats.md.
"""
import collections
import os
import threading

import numpy as np
import scipy.sparse as sp

from ..common.errors import param
from .ctf_reader import CTFError, CTFReader, InputSpec, as_specs
from .dataset import Dataset, Sequences, part_subset, batch_bounds, check_batch_size
from .npz import is_ctf_path, load_npz

__all__ = ["CTFDataset", "load_ctf", "load_data", "LOAD_CHUNK", "CACHE_ROWS"]

#: Sequences per read when the file is checked at load time (and by ``validate`` of another model).
LOAD_CHUNK = 2048
#: Rows of recent reads kept in memory (whole ranges, least recently used dropped first), so that the
#: passes of a solver over a small training set do not parse the file again; ranges longer than this
#: are never kept.
CACHE_ROWS = 4096


def _is_model(obj):
    return hasattr(obj, "inputs") and hasattr(obj, "labels") and hasattr(obj, "validate")


def _part(values, lengths, spec):
    """A reader output ``(values, lengths)`` as what a Dataset holds for that input."""
    if spec.is_sequence:
        return Sequences(values if sp.issparse(values) else values.reshape((-1,) + spec.shape), lengths)
    if sp.issparse(values):
        return values
    return values.reshape((len(lengths),) + spec.shape)


def _concat(outs):
    """Concatenate reader outputs ``{name: (values, lengths)}`` row-wise."""
    if len(outs) == 1:
        return outs[0]
    joined = {}
    for name in outs[0]:
        vals = [o[name][0] for o in outs]
        values = sp.vstack(vals, format="csr") if sp.issparse(vals[0]) else np.concatenate(vals)
        joined[name] = (values, np.concatenate([o[name][1] for o in outs]))
    return joined


class _Labels(object):
    """Converts the label stream of a chunk into the labels the adapter takes (see the module doc)."""

    def __init__(self, path, name, stream, spec, loss):
        self.path, self.name, self.stream, self.spec, self.loss = path, name, stream, spec, loss

    def _fail(self, row, what, fix):
        raise CTFError("%s, sequence %d: %s; %s" % (self.path, row, what, fix))

    def __call__(self, values, lengths, start):
        if sp.issparse(values):
            values = values.toarray()
        values = np.asarray(values)
        seq_of_step = np.repeat(np.arange(start, start + len(lengths)), lengths)
        if self.loss == "cross_entropy":
            ok = ((values == 0) | (values == 1)).all(axis=1) & (values.sum(axis=1) == 1)
            if not ok.all():
                i = int(np.argmin(ok))
                self._fail(int(seq_of_step[i]), "label stream %r holds %s, not a one-hot row"
                           % (self.stream, _show(values[i])),
                           "cross_entropy needs one 1 among %d zeros/ones per label, e.g. '|%s 0 0 1' or "
                           "'|%s 2:1'" % (values.shape[1], self.stream, self.stream))
            out = np.argmax(values, axis=1).astype(np.int64)
        elif self.loss == "binary_cross_entropy":
            flat = values.reshape(-1)
            bad = (flat != 0) & (flat != 1)
            if bad.any():
                i = int(np.argmax(bad))
                self._fail(int(seq_of_step[i]), "label stream %r holds %r" % (self.stream, float(flat[i])),
                           "binary_cross_entropy needs labels 0 or 1")
            out = flat.astype(np.int64)
        else:
            out = values.reshape((-1,) + self.spec.shape)
        return Sequences(out, lengths) if self.spec.is_sequence else out


def _show(row):
    text = " ".join("%g" % v for v in row[:6])
    return "'%s%s'" % (text, " ..." if len(row) > 6 else "")


class _Source(object):
    """What a CTF dataset and its lazy copies share: the reader, the feature inputs, the cache."""

    def __init__(self, reader, features):
        self.reader = reader
        self.features = features          # feature input names, in the model's order
        self.cache = collections.OrderedDict()
        self.cached_rows = 0
        self.lock = threading.Lock()

    def x(self, out):
        specs = self.reader.specs
        parts = {name: _part(out[name][0], out[name][1], specs[name]) for name in self.features}
        return parts[self.features[0]] if len(self.features) == 1 else parts

    def read(self, start, stop):
        """x of rows [start, stop), from the cache or the file."""
        key = (start, stop)
        with self.lock:
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
                return hit
        x = self.x(self.reader.read(start, stop))
        if stop - start <= CACHE_ROWS:
            with self.lock:
                self.cache[key] = x
                self.cached_rows += stop - start
                while self.cached_rows > CACHE_ROWS:
                    (a, b), _ = self.cache.popitem(last=False)
                    self.cached_rows -= b - a
        return x


class CTFDataset(Dataset):
    """A :class:`~influence.data.Dataset` whose features stay in a CTF file (made by :func:`load_ctf`).

    ``y`` (labels) and the step counts of sequence inputs are in memory; features are read from the
    file by ``subset``/``batches`` for just the rows asked for (the result is an in-memory Dataset,
    except ``subset(slice(None))``, a lazy copy). Reading ``x`` itself reads the whole file into
    memory (avoid it on a large file). ``reads`` counts the rows read from the file so far (tests)."""

    def __init__(self, source, y, lengths, name, path, options):
        self.name = name
        self.y = y
        self._src = source
        self._lengths = lengths           # {sequence input name: (n,) int64}
        self.source = path
        self.source_options = options

    def __len__(self):
        return len(self._src.reader)

    @property
    def reader(self):
        return self._src.reader

    @property
    def x(self):
        """All features, read from the file into memory."""
        return self._src.read(0, len(self))

    @property
    def is_sequence(self):
        return bool(self._lengths)

    @property
    def nbytes(self):
        """Bytes the rows take once read, without reading them (what a caller weighs before holding
        the data in memory): exact for dense inputs and the labels; for a sparse input a bound, 4×
        the file's size (a nonzero takes at least 4 characters of text, ``3:1 ``, and at most 16
        bytes once read)."""
        itemsize = self.reader.dtype.itemsize
        total = 0
        for name in self._src.features:
            spec = self.reader.specs[name]
            if spec.is_sparse:
                total += 4 * os.path.getsize(self.source)
            else:
                steps = int(self._lengths[name].sum()) if name in self._lengths else len(self)
                total += steps * spec.dim * itemsize
        y = self.y
        if isinstance(y, Sequences):
            total += y.values.nbytes + y.lengths.nbytes
        elif y is not None:
            total += y.nbytes
        return int(total)

    def __repr__(self):
        return "CTFDataset(%s: %d rows from %s, inputs %s, y %s)" % (
            self.name, len(self), self.source, ", ".join(self._src.features),
            None if self.y is None else type(self.y).__name__)

    def _rows(self, start, stop):
        y = None if self.y is None else part_subset(self.y, slice(start, stop))
        return Dataset(self._src.read(start, stop), y, self.name, _checked=True)

    def subset(self, index):
        """Rows ``index`` read from the file as an in-memory Dataset; ``slice(None)``: a lazy copy."""
        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if index == slice(None):
                out = CTFDataset(self._src, self.y, self._lengths, self.name, self.source, self.source_options)
                return out
            if step == 1:
                return self._rows(start, max(start, stop))
            index = np.arange(start, stop, step)
        index = np.asarray(index).reshape(-1)
        if index.dtype == np.bool_:
            index = np.flatnonzero(index)
        if index.size and not np.issubdtype(index.dtype, np.integer):
            raise IndexError("rows of %s are addressed by integers or a slice, not %s" % (self.name, index.dtype))
        index = np.where(index < 0, index + n, index).astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= n):
            raise IndexError("row %d is out of range: %s has %d rows" % (
                int(index[(index < 0) | (index >= n)][0]), self.name, n))
        rows = np.unique(index)
        if rows.size and rows[-1] + 1 - rows[0] <= CACHE_ROWS:
            # a short span (pilot rows, a stochastic solver's random batches on a small set): read it
            # whole, through the cache, and pick the rows in memory
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            return self._rows(lo, hi).subset(index - lo)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        outs = [self._src.reader.read(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, cuts) if run.size]
        if not outs:
            outs = [self._src.reader.read(0, 0)]
        y = None if self.y is None else part_subset(self.y, rows)
        whole = Dataset(self._src.x(_concat(outs)), y, self.name, _checked=True)
        if rows.size == index.size and np.array_equal(rows, index):
            return whole
        return whole.subset(np.searchsorted(rows, index))

    def batches(self, batch_size=None):
        """Consecutive in-memory Datasets read from the file, bounded as :meth:`Dataset.batches`."""
        n = len(self)
        size = n if batch_size is None else check_batch_size(batch_size)
        for start, stop in batch_bounds(n, list(self._lengths.values()), size):
            yield self._rows(start, stop)

    def validate_chunks(self, check):
        """Call ``check(chunk)`` on every chunk of :data:`LOAD_CHUNK` rows (a model's ``_validate``)."""
        for a in range(0, len(self), LOAD_CHUNK):
            b = min(a + LOAD_CHUNK, len(self))
            y = None if self.y is None else part_subset(self.y, slice(a, b))
            check(Dataset(self._src.x(self._src.reader.read(a, b)), y, self.name, _checked=True))


def load_ctf(path, model_or_inputs, mapping=None, skip=(), name=None, labels=None):
    """A :class:`CTFDataset` over the CTF file ``path`` (rows read lazily, see the module docstring).

    ``model_or_inputs``: a :class:`~influence.CNTKModel` (its feature inputs and its label input give
    the streams' names and dimensions; labels are converted for its loss and every chunk is checked
    with the model, so the dataset comes back already validated for it), or
    ``{input name: InputSpec | shape}`` / a list of CNTK input Variables, with ``labels`` naming the
    input that holds the labels (kept as read). ``mapping={stream: input}`` and ``skip=[stream]`` as
    in :class:`influence.data.ctf_reader.CTFReader`."""
    path = os.path.abspath(os.fspath(path))
    mapping = dict(mapping or {})
    skip = sorted(set(skip))
    name = name or os.path.basename(path)
    model = model_or_inputs if _is_model(model_or_inputs) else None
    if model is not None:
        if not hasattr(model.inputs[0], "dynamic_axes"):
            raise ValueError("load_ctf needs a CNTK model (its inputs give the streams' dimensions); "
                             "got %s" % type(model).__name__)
        specs = collections.OrderedDict((v.name, InputSpec.from_variable(v)) for v in model.inputs)
        features = list(specs)
        label_name, loss = None, None
        if model.labels is not None:
            label_name, loss = model.labels.name, model.loss_name
            specs[label_name] = InputSpec(tuple(model.labels.shape), False, len(model.labels.dynamic_axes) > 1)
        dtype = np.dtype(model.dtype)
    else:
        specs = as_specs(model_or_inputs)
        if labels is not None and labels not in specs:
            raise ValueError("labels=%r is not one of the inputs %s; name the input that holds the labels"
                             % (labels, sorted(specs)))
        features = [k for k in specs if k != labels]
        if not features:
            raise ValueError("labels=%r leaves no feature input; give the feature inputs too" % (labels,))
        label_name, loss, dtype = labels, None, np.float64
    renamed = {v: k for k, v in mapping.items()}
    for stream in skip:
        fed = [k for k in specs if renamed.get(k, k) == stream]
        if fed:
            raise CTFError("%s: stream %r feeds the model's input %r; drop it from skip (or map "
                           "another stream to %r)" % (param("skip", [stream]), stream, fed[0], fed[0]))
    reader = CTFReader(path, specs, mapping=mapping, skip=skip, dtype=dtype)
    convert = None
    if label_name is not None:
        stream = {v: k for k, v in mapping.items()}.get(label_name, label_name)
        convert = _Labels(path, label_name, stream, specs[label_name], loss)
    src = _Source(reader, features)
    seq_inputs = [k for k in features if specs[k].is_sequence]
    ys, lengths = [], {k: [] for k in seq_inputs}
    for a, b, out in reader.chunks(LOAD_CHUNK):
        y = None if convert is None else convert(out[label_name][0], out[label_name][1], a)
        for k in seq_inputs:
            lengths[k].append(out[k][1])
        if y is not None:
            ys.append(y)
        if model is not None:
            model._validate(Dataset(src.x(out), y, name, _checked=True))
    y = None
    if ys:
        if isinstance(ys[0], Sequences):
            y = Sequences(np.concatenate([q.values for q in ys]), np.concatenate([q.lengths for q in ys]))
        else:
            y = np.concatenate(ys)
    lengths = {k: np.concatenate(v) for k, v in lengths.items()}
    options = {"mapping": mapping, "skip": skip, "labels": labels}
    data = CTFDataset(src, y, lengths, name, path, options)
    if model is not None:
        data._valid_for = model
    return data


def load_data(path, model_or_inputs=None, mapping=None, skip=(), name=None, labels=None):
    """A Dataset from a data file, by its extension: ``.ctf``/``.txt`` (CNTK Text Format) is read
    lazily with :func:`influence.data.ctf_dataset.load_ctf` (``model_or_inputs``, ``mapping``, ``skip`` and
    ``labels`` as there; dimensions from the model), anything else with :func:`load_npz` (then
    ``mapping``/``skip`` must not be given; ``model_or_inputs`` is not needed)."""
    if is_ctf_path(path):
        if model_or_inputs is None:
            raise ValueError("%s is a CTF file: its dimensions come from the model; pass the model (or "
                             "{input name: InputSpec}) as model_or_inputs" % (path,))
        return load_ctf(path, model_or_inputs, mapping=mapping, skip=skip, name=name, labels=labels)
    if mapping or skip:
        raise ValueError("%s is not a CTF file (.ctf or .txt): mapping= and skip= apply to CTF streams "
                         "only; drop them" % (path,))
    return load_npz(path, name=name)
