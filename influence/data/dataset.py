"""Datasets: features ``x`` with targets ``y``, n examples, validated and batched.

Every bad input raises :class:`ValueError` with one line that names the value and the fix.
Data may be NumPy arrays or read-only memory maps (``np.load(path, mmap_mode="r")``); batches are
views, so iterating never copies more than one batch.

What ``Dataset(x, y)`` holds (the constructor other readers, e.g. a CTF reader, convert into):

- ``x``: a NumPy array (n, ...) (one row per example, any static shape such as (n, C, H, W)); a
  ``scipy.sparse`` CSR matrix (n, dim) (for an ``is_sparse`` input; never densified as a whole); a
  :class:`Sequences` of n variable-length sequences (for an input with a sequence axis); or a dict
  ``{input name: any of those}`` for a model with several inputs.
- ``y``: None, a NumPy array (n,) or (n, ...), or a :class:`Sequences` of per-step targets (taggers).

``Sequences(values, lengths)``: ``values`` dense (total_steps, ...) or CSR (total_steps, dim), the
steps of all sequences concatenated; ``lengths`` int64 (n,), steps per sequence (each >= 1). A list of
(T_i, ...) arrays converts with :meth:`Sequences.from_list` (``Dataset`` does it for a ragged list).
A CTF stream read as ``(values, lengths)`` is ``Sequences(values, lengths)``; a stream with one step
per sample is ``values`` itself.

``.npz`` layout read by :func:`load_npz` (plain numeric members, no pickled objects):

- ``x`` (and ``y``): dense arrays, one row per example;
- ``x.<input name>``: one member per input of a model with several inputs;
- a ragged member ``<m>`` (``x``, ``x.<input name>`` or ``y``) is stored as ``<m>.steps`` (the
  concatenated steps, (total_steps, ...)) and ``<m>.lengths`` (int, (n,)), see :func:`save_npz`.
"""
import ctypes
import mmap
import sys

import numpy as np

from ..common.errors import InfluenceError, param

__all__ = ["Dataset", "Sequences", "as_dataset", "batch_bounds", "check_batch_size", "check_class_labels",
           "check_binary_labels", "first_bad", "is_sparse", "part_subset", "row_blocks", "release_rows"]

#: Rows checked at once for NaN/Inf, so validation of a memory-mapped file stays bounded in memory.
_CHECK_ROWS = 65536
#: ... or fewer, so that one block of a wide array stays below about this many bytes.
_CHECK_BYTES = 4 << 20
#: Rows per piece of an integer-array gather from a memory-mapped array (see _take).
_GATHER_ROWS = 16


def _check_numeric(a, what):
    """The dtype rule: features and labels must be real numbers, integer (signed or unsigned) or
    floating point; they are converted to the model's dtype batch by batch. bool, complex, object,
    string, datetime and structured arrays are refused."""
    kind = a.dtype.kind
    if kind not in "iuf":
        example = "np.float32" if "features" in what else "np.int64"
        raise ValueError("%s have dtype %s; pass real numbers (integer or floating point, e.g. "
                         "np.asarray(..., dtype=%s)): bool, complex, object and string arrays are refused"
                         % (what, a.dtype, example))


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        f = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    f.restype = ctypes.c_int
    return f


_MADVISE = _madvise()
_MADV_DONTNEED = 4


#: Pages the kernel maps around a page fault (fault-around, read-around of the readahead window) can
#: lie before a range already released, so each release reaches back this far (measured: 64 KiB is not
#: enough on Linux 5.x/6.x with the default readahead; 1 MiB leaves nothing behind).
_FAULT_AROUND = 1 << 20


def _mapped_root(a):
    """The array directly on a read-only file mapping that ``a`` is a view of (np.load(mmap_mode="r"),
    load_npz), or None."""
    base, root = a, None
    while base is not None:
        if isinstance(base, np.memmap) and getattr(base, "mode", None) not in (None, "r", "readonly"):
            return None
        if isinstance(base, mmap.mmap):
            return root
        root = base
        base = getattr(base, "base", None)
    return None


def _is_mapped(a):
    return _mapped_root(a) is not None


def release_rows(a, start, stop):
    """Drop the resident pages of rows ``start:stop`` of a READ-ONLY memory-mapped array ``a`` from
    this process (madvise MADV_DONTNEED: they are read again from the file if touched), so that a
    pass over a large memory-mapped training set does not keep the whole file resident. A no-op for
    ordinary arrays, writable maps and where madvise is unavailable (not Linux)."""
    if _MADVISE is None or a is None or not isinstance(a, np.ndarray) or a.ndim == 0 or stop <= start:
        return
    root = _mapped_root(a)
    if root is None:
        return
    view = a[start:stop]
    if not view.flags.c_contiguous or view.nbytes == 0:
        return
    ptr = view.__array_interface__["data"][0]
    first = root.__array_interface__["data"][0]
    first -= first % mmap.PAGESIZE                     # inside the mapping (it starts page-aligned)
    begin = max(first, ptr - _FAULT_AROUND)
    begin -= begin % mmap.PAGESIZE
    _MADVISE(begin, ptr + view.nbytes - begin, _MADV_DONTNEED)


def row_blocks(a, rows=None):
    """Yield ``(start, block)`` over the rows of ``a`` in blocks (of at most ``_CHECK_ROWS`` rows and
    about ``_CHECK_BYTES``); pages of a memory-mapped ``a`` are released after each block (bounded
    resident memory for a pass over a large file)."""
    if rows is None:
        row_bytes = max(1, a.itemsize * int(np.prod(a.shape[1:])))
        rows = max(1, min(_CHECK_ROWS, _CHECK_BYTES // row_bytes))
    for start in range(0, a.shape[0], rows):
        stop = min(start + rows, a.shape[0])
        yield start, np.asarray(a[start:stop])
        release_rows(a, start, stop)


def _take(a, index):
    """``a[index]``; an integer-array gather from a memory-mapped ``a`` goes piece by piece and
    releases the file pages it touched (the kernel maps up to 64 KiB around every page fault, so even
    a few hundred scattered rows can touch the whole file), so only the copied result stays resident."""
    if isinstance(index, slice) or not isinstance(a, np.ndarray) or not _is_mapped(a):
        return a[index]
    index = np.asarray(index)
    if index.dtype == np.bool_ or index.ndim != 1 or index.size == 0:
        return a[index]
    out = np.empty((index.size,) + a.shape[1:], dtype=a.dtype)
    n = a.shape[0]
    rows = np.where(index < 0, index + n, index)
    order = np.argsort(rows, kind="mergesort")     # gather in file order: each page released once
    ordered = rows[order]
    if ordered.size and (ordered[0] < 0 or ordered[-1] >= n):
        return a[index]                            # let NumPy raise its IndexError
    for i in range(0, index.size, _GATHER_ROWS):
        piece = ordered[i:i + _GATHER_ROWS]
        out[order[i:i + _GATHER_ROWS]] = a[piece]
        release_rows(a, int(piece[0]), int(piece[-1]) + 1)
    return out


def _check_finite(a, what):
    if not np.issubdtype(a.dtype, np.inexact):
        return
    for start, block in row_blocks(a):
        ok = np.isfinite(block)
        if not ok.all():
            row = start + int(np.argwhere(~ok)[0][0])
            raise ValueError("%s contains NaN or Inf (first at row %d); remove or impute those rows"
                             % (what, row))


def is_sparse(a):
    return hasattr(a, "tocsr") and hasattr(a, "nnz")


class Sequences(object):
    """n variable-length sequences stored ragged: ``values`` (total_steps, ...) dense array or scipy
    CSR matrix, the steps of all sequences one after the other, and ``lengths`` (n,) steps per
    sequence. ``len()`` is the number of sequences; ``subset(slice)`` is a view (no copy)."""

    def __init__(self, values, lengths, name="sequences"):
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError("%s lengths have shape %s and dtype %s; pass one integer length per sequence"
                             % (name, lengths.shape, lengths.dtype))
        if lengths.size and lengths.min() < 1:
            raise ValueError("%s has an empty sequence (length %d at index %d); every sequence needs at "
                             "least one step" % (name, lengths.min(), int(np.argmin(lengths))))
        if not is_sparse(values):
            values = np.asarray(values) if not isinstance(values, np.ndarray) else values
        elif values.format != "csr":
            values = values.tocsr()
        total = int(lengths.sum())
        if values.ndim < 1 or values.shape[0] != total:
            raise ValueError("%s lengths add up to %d steps but values have %d rows; pass the concatenated "
                             "steps of all sequences" % (name, total, values.shape[0] if values.ndim else 0))
        self.values = values
        self.lengths = lengths.astype(np.int64, copy=False)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    @classmethod
    def from_list(cls, seqs, name="sequences"):
        """From a list of (T_i, ...) arrays (or CSR matrices (T_i, dim))."""
        if len(seqs) == 0:
            raise ValueError("%s is an empty list; pass at least one sequence" % name)
        if all(is_sparse(q) for q in seqs):
            import scipy.sparse
            values = scipy.sparse.vstack([q.tocsr() for q in seqs], format="csr")
            return cls(values, [q.shape[0] for q in seqs], name)
        arrays = [np.asarray(q) for q in seqs]
        if any(a.ndim == 0 for a in arrays):
            raise ValueError("%s holds a scalar; each sequence is an array of shape (steps, ...)" % name)
        tails = {a.shape[1:] for a in arrays}
        if len(tails) != 1:
            raise ValueError("%s has steps of different shapes %s; every step of every sequence needs the "
                             "same shape" % (name, sorted(tails)))
        return cls(np.concatenate(arrays), [a.shape[0] for a in arrays], name)

    def __len__(self):
        return self.lengths.shape[0]

    @property
    def step_shape(self):
        return tuple(self.values.shape[1:])

    @property
    def n_steps(self):
        return int(self.offsets[-1])

    def __getitem__(self, i):
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def to_list(self):
        return [self[i] for i in range(len(self))]

    def subset(self, index):
        """Sequences ``index`` (a slice: a view of the values, or an integer array: a copy)."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                stop = max(stop, start)
                out = Sequences.__new__(Sequences)
                out.values = self.values[self.offsets[start]:self.offsets[stop]]
                out.lengths = self.lengths[start:stop]
                out.offsets = self.offsets[start:stop + 1] - self.offsets[start]
                return out
            index = np.arange(start, stop, step)
        index = np.asarray(index).reshape(-1)
        if index.dtype == np.bool_:
            index = np.flatnonzero(index)
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in index]) \
            if index.size else np.zeros(0, np.int64)
        return Sequences(_take(self.values, rows) if not is_sparse(self.values) else self.values[rows],
                         self.lengths[index])

    def __repr__(self):
        return "Sequences(%d sequences, %d steps of shape %s)" % (len(self), self.n_steps, self.step_shape)


def _part_len(a):
    return len(a) if isinstance(a, Sequences) else a.shape[0]


def _part_nbytes(a):
    if isinstance(a, Sequences):
        return _part_nbytes(a.values) + a.lengths.nbytes
    if is_sparse(a):
        return a.data.nbytes + a.indices.nbytes + a.indptr.nbytes
    return np.asarray(a).nbytes


def part_subset(a, index):
    if isinstance(a, Sequences):
        return a.subset(index)
    if is_sparse(a):
        return a[index]
    return _take(a, index)


def _check_part(a, what):
    """One component of x (or y): a NumPy array, a CSR matrix or Sequences, validated."""
    if isinstance(a, Sequences):
        _check_part(a.values, what)
        return a
    if is_sparse(a):
        a = a.tocsr() if a.format != "csr" else a
        _check_numeric(a.data, what)
        _check_finite(a.data, what)
        return a
    if isinstance(a, (list, tuple)):
        arrays = [np.asarray(q) if not is_sparse(q) else q for q in a]
        ragged = len({q.shape for q in arrays}) > 1 if arrays else False
        if ragged:
            return _check_part(Sequences.from_list(arrays, what), what)
        a = np.asarray(a)
    if not isinstance(a, np.ndarray):
        raise ValueError("%s are a %s; pass a NumPy array of shape (n, ...), a scipy.sparse CSR matrix "
                         "or influence.data.Sequences" % (what, type(a).__name__))
    if a.ndim == 0:
        raise ValueError("%s are a scalar; pass an array of shape (n, features)" % what)
    _check_numeric(a, what)
    _check_finite(a, what)
    return a


class Dataset(object):
    """A validated pair ``(x, y)`` of equal length ``n >= 1``.

    ``x`` must be numeric and finite; ``y`` (optional) numeric and finite. Model-specific checks
    (feature shape, label range) belong to the model adapter's ``validate``.

    ``source``: the absolute path of the ``.npz`` or ``.ctf`` file the rows come from (set by
    :func:`load_npz` and :func:`influence.data.ctf_dataset.load_ctf`, kept by ``subset(slice(None))``, dropped
    by any other subset), so that workers of a cluster can read the same rows themselves
    (:mod:`influence.cluster`); None for in-memory data. ``source_options``: the keywords of
    :func:`influence.data.ctf_dataset.load_data` that read it again the same way (a CTF file's ``mapping``, ``skip``, ``labels``).
    """

    source = None
    source_options = None

    def __init__(self, x, y=None, name="data", _checked=False):
        self.name = name
        if _checked:
            self.x, self.y = x, y
            return
        if isinstance(x, dict):
            if not x:
                raise ValueError("%s features are an empty dict; pass {input name: array}" % name)
            x = {str(k): _check_part(v, "%s features %r" % (name, k)) for k, v in x.items()}
            sizes = {k: _part_len(v) for k, v in x.items()}
            if len(set(sizes.values())) != 1:
                raise ValueError("%s inputs have different numbers of examples %s; pass one row (or "
                                 "sequence) per example for every input" % (name, sizes))
            n = next(iter(sizes.values()))
        else:
            if isinstance(x, (list, tuple)) and len(x) == 0:
                raise ValueError("%s is empty (0 examples); pass at least one example" % name)
            x = _check_part(x, "%s features" % name)
            n = _part_len(x)
        if n == 0:
            raise ValueError("%s is empty (0 examples); pass at least one example" % name)
        if y is not None:
            if isinstance(y, (list, tuple)):
                ragged = len({np.shape(q) for q in y}) > 1
                y = Sequences.from_list(y, "%s labels" % name) if ragged else np.asarray(y)
            if isinstance(y, Sequences):
                _check_part(y, "%s labels" % name)
                if len(y) != n:
                    raise ValueError("%s has %d examples but %d label sequences; pass one per example"
                                     % (name, n, len(y)))
            else:
                if not isinstance(y, np.ndarray):
                    raise ValueError("%s labels are a %s; pass a NumPy array of length %d"
                                     % (name, type(y).__name__, n))
                if y.ndim == 0 or y.shape[0] != n:
                    raise ValueError("%s has %d feature rows but labels of shape %s; pass one label per row"
                                     % (name, n, y.shape))
                _check_numeric(y, "%s labels" % name)
                _check_finite(y, "%s labels" % name)
        self.x, self.y = x, y

    def __len__(self):
        x = self.x
        if isinstance(x, dict):
            x = next(iter(x.values()))
        return _part_len(x)

    def _parts(self):
        return list(self.x.values()) if isinstance(self.x, dict) else [self.x]

    @property
    def nbytes(self):
        """Bytes held by the inputs and labels (of the file, for memory-mapped arrays)."""
        parts = self._parts() + ([] if self.y is None else [self.y])
        return int(sum(_part_nbytes(p) for p in parts))

    @property
    def is_sequence(self):
        """True when some input holds :class:`Sequences` (batches are then formed by total steps)."""
        return any(isinstance(p, Sequences) for p in self._parts())

    def __repr__(self):
        def desc(a):
            if isinstance(a, Sequences):
                return repr(a)
            return "%s %s%s" % (a.shape, a.dtype, " sparse" if is_sparse(a) else "")
        xs = ({k: desc(v) for k, v in self.x.items()} if isinstance(self.x, dict) else desc(self.x))
        return "Dataset(%s: x %s, y %s)" % (self.name, xs, None if self.y is None else desc(self.y))

    def subset(self, index):
        """Rows ``index`` (a slice, or an integer array) as a new Dataset."""
        y = None if self.y is None else part_subset(self.y, index)
        if isinstance(self.x, dict):
            x = {k: part_subset(v, index) for k, v in self.x.items()}
        else:
            x = part_subset(self.x, index)
        out = Dataset(x, y, self.name, _checked=True)
        if isinstance(index, slice) and index == slice(None):
            out.source = self.source
        return out

    def batches(self, batch_size=None):
        """Yield consecutive Datasets of at most ``batch_size`` rows (all rows when None); with
        sequence inputs, of at most ``batch_size`` total steps (the steps of the longest input; at
        least one sequence per batch). Pages of memory-mapped data are released after each batch
        (see :func:`release_rows`)."""
        n = len(self)
        size = n if batch_size is None else check_batch_size(batch_size)
        for start, stop in self._batch_bounds(size):
            yield self.subset(slice(start, stop))
            for part in self._parts() + [self.y]:
                if isinstance(part, np.ndarray):
                    release_rows(part, start, stop)

    def _batch_bounds(self, size):
        return batch_bounds(len(self), [p.lengths for p in self._parts() if isinstance(p, Sequences)], size)


def batch_bounds(n, lengths, size):
    """[(start, stop), ...] of the batches of :meth:`Dataset.batches` over ``n`` rows: ``size`` rows per
    batch, or, when ``lengths`` (the step counts of each sequence input, a list of (n,) arrays) is not
    empty, at most ``size`` total steps (of the longest input) per batch, at least one sequence each."""
    if not lengths or size >= sum(int(np.sum(a)) for a in lengths):
        return [(a, min(a + size, n)) for a in range(0, n, size)] if not lengths else [(0, n)]
    steps = np.max(lengths, axis=0)
    ends = np.cumsum(steps)
    bounds, start = [], 0
    while start < n:
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + size, side="right"))
        stop = max(stop, start + 1)
        bounds.append((start, stop))
        start = stop
    return bounds


def first_bad(y, is_bad):
    """The first offending labels (an empty array when none), checked block by block so that a
    memory-mapped label array is never held whole (see :func:`row_blocks`)."""
    for _, block in row_blocks(y):
        bad = block[is_bad(block)]
        if bad.size:
            return bad
    return np.zeros(0, dtype=y.dtype)


def check_class_labels(dataset, n_classes, who):
    """Labels of ``dataset`` must be integers 0..n_classes-1, one per example; ``who`` names the loss
    or model in the message."""
    y = dataset.y
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError("%s labels have dtype %s; %s needs integer class labels 0..%d (y.astype(int))"
                         % (dataset.name, y.dtype, who, n_classes - 1))
    if y.ndim != 1:
        raise ValueError("%s labels have shape %s; pass one integer label per example, shape (n,)"
                         % (dataset.name, y.shape))
    bad = first_bad(y, lambda b: (b < 0) | (b >= n_classes))
    if bad.size:
        raise ValueError("%s has label %d outside 0..%d; the model has %d classes"
                         % (dataset.name, bad[0], n_classes - 1, n_classes))


def check_binary_labels(dataset, who):
    """Labels of ``dataset`` must be integers 0 or 1; ``who`` names the loss or model in the message."""
    y = dataset.y
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError("%s labels have dtype %s; %s needs integer labels 0 or 1 (y.astype(int))"
                         % (dataset.name, y.dtype, who))
    bad = first_bad(y, lambda b: (b != 0) & (b != 1))
    if bad.size:
        raise ValueError("%s has label %r; %s needs labels 0 or 1" % (dataset.name, bad.ravel()[0], who))


def check_batch_size(batch_size, name="batch_size"):
    """Validate a positive integer batch or chunk size and return it as ``int``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InfluenceError("%s is not a positive integer; pass e.g. %s" % (param(name, batch_size), param(name, 1000)),
                             parameter=name, suggestion=1000)
    return int(batch_size)


def as_dataset(data, name="data"):
    """Accept a :class:`Dataset`, a tuple ``(x, y)``, a tuple ``(x,)``, a dict with keys ``x``/``y``,
    or a bare feature array, and return a validated :class:`Dataset`."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, dict) and "x" in data:
        return Dataset(data["x"], data.get("y"), name)
    if isinstance(data, tuple) and len(data) in (1, 2):
        return Dataset(data[0], data[1] if len(data) == 2 else None, name)
    if isinstance(data, (np.ndarray, Sequences)) or is_sparse(data):
        return Dataset(data, None, name)
    raise ValueError("%s is a %s; pass a tuple (x, y) of NumPy arrays or an influence.data.Dataset"
                     % (name, type(data).__name__))
