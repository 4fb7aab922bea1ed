"""Datasets: features ``x`` (n × ...) with targets ``y`` (n,) or (n × ...), validated and batched.

Every bad input raises :class:`ValueError` with one line that names the value and the fix.
Data may be NumPy arrays or read-only memory maps (``np.load(path, mmap_mode="r")``); batches are
views, so iterating never copies more than one batch.
"""
import ctypes
import mmap
import os
import struct
import sys
import zipfile

import numpy as np

__all__ = ["Dataset", "as_dataset", "load_npz", "load_digits"]

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


class Dataset(object):
    """A validated pair ``(x, y)`` of equal length ``n >= 1``.

    ``x`` must be numeric and finite; ``y`` (optional) numeric and finite. Model-specific checks
    (feature shape, label range) belong to the model adapter's ``validate``.

    ``source``: the absolute path of the ``.npz`` file the rows come from (set by :func:`load_npz`,
    kept by ``subset(slice(None))``, dropped by any other subset), so that workers of a cluster can
    read the same rows themselves (:mod:`influence.cluster`); None for in-memory data.
    """

    source = None

    def __init__(self, x, y=None, name="data", _checked=False):
        self.name = name
        if _checked:
            self.x, self.y = x, y
            return
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        if not isinstance(x, np.ndarray):
            raise ValueError("%s features are a %s; pass a NumPy array of shape (n, features)"
                             % (name, type(x).__name__))
        if x.ndim == 0:
            raise ValueError("%s features are a scalar; pass an array of shape (n, features)" % name)
        _check_numeric(x, "%s features" % name)
        if x.shape[0] == 0:
            raise ValueError("%s is empty (0 examples); pass at least one example" % name)
        _check_finite(x, "%s features" % name)
        if y is not None:
            if isinstance(y, (list, tuple)):
                y = np.asarray(y)
            if not isinstance(y, np.ndarray):
                raise ValueError("%s labels are a %s; pass a NumPy array of length %d"
                                 % (name, type(y).__name__, x.shape[0]))
            if y.ndim == 0 or y.shape[0] != x.shape[0]:
                raise ValueError("%s has %d feature rows but labels of shape %s; pass one label per row"
                                 % (name, x.shape[0], y.shape))
            _check_numeric(y, "%s labels" % name)
            _check_finite(y, "%s labels" % name)
        self.x, self.y = x, y

    def __len__(self):
        return self.x.shape[0]

    def __repr__(self):
        return "Dataset(%s: x %s %s, y %s)" % (
            self.name, self.x.shape, self.x.dtype,
            None if self.y is None else "%s %s" % (self.y.shape, self.y.dtype))

    def subset(self, index):
        """Rows ``index`` (a slice, or an integer array) as a new Dataset."""
        y = None if self.y is None else _take(self.y, index)
        out = Dataset(_take(self.x, index), y, self.name, _checked=True)
        if isinstance(index, slice) and index == slice(None):
            out.source = self.source
        return out

    def batches(self, batch_size=None):
        """Yield consecutive Datasets of at most ``batch_size`` rows (all rows when None). Pages of
        memory-mapped data are released after each batch (see :func:`release_rows`)."""
        n = len(self)
        size = n if batch_size is None else check_batch_size(batch_size)
        for start in range(0, n, size):
            stop = min(start + size, n)
            yield self.subset(slice(start, stop))
            release_rows(self.x, start, stop)
            release_rows(self.y, start, stop)


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
        raise ValueError("%s=%r is not a positive integer; pass e.g. %s=1000" % (name, batch_size, name))
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
    if isinstance(data, np.ndarray):
        return Dataset(data, None, name)
    raise ValueError("%s is a %s; pass a tuple (x, y) of NumPy arrays or an influence.data.Dataset"
                     % (name, type(data).__name__))


def _mmap_member(path, info):
    """Memory-map an uncompressed ``.npy`` member of a zip archive; None when it cannot be."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        if dtype.hasobject:
            raise ValueError("pickled")
        offset = f.tell()
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def _bad_file(path, why):
    return ValueError("%s is not a readable .npz file (%s); save it with np.savez(path, x=..., y=...)"
                      % (path, why))


def load_npz(path, name=None, mmap=True):
    """Read arrays ``x`` and ``y`` from an ``.npz`` file, refusing pickled objects.

    Members stored uncompressed (``np.savez``) are memory-mapped read-only when ``mmap`` is true, so
    a large training set is streamed batch by batch instead of read whole; compressed members
    (``np.savez_compressed``) are read into memory.
    """
    name = name or os.path.basename(str(path))
    if not os.path.isfile(path):
        raise ValueError("%s: no such file; check the path" % path)
    pickled = ValueError("%s contains pickled objects, which are refused for safety; save plain "
                         "numeric arrays with np.savez(path, x=..., y=...)" % path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, IOError) as e:
        raise _bad_file(path, e)
    arrays = {}
    with zf:
        members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        if "x" not in members:
            raise ValueError("%s has arrays %s but no 'x'; save features as x (and labels as y)"
                             % (path, sorted(members)))
        for key in ("x", "y"):
            if key not in members:
                continue
            try:
                a = _mmap_member(path, members[key]) if mmap else None
                if a is None:
                    with zf.open(members[key]) as f:
                        a = np.lib.format.read_array(f, allow_pickle=False)
            except ValueError as e:
                if "pickle" in str(e):
                    raise pickled
                raise _bad_file(path, e)
            except (OSError, IOError, zipfile.BadZipFile) as e:
                raise _bad_file(path, e)
            arrays[key] = a
    data = Dataset(arrays["x"], arrays.get("y"), name)
    data.source = os.path.abspath(str(path))
    return data


def load_digits():
    """The 1,797 8×8 handwritten digits shipped with the package (see ``influence/datasets``).

    Returns ``(x, y)``: ``x`` float64 pixel counts scaled to [0, 1], shape (1797, 64); ``y`` int64 labels.
    """
    path = os.path.join(os.path.dirname(__file__), "datasets", "digits.npz")
    with np.load(path, allow_pickle=False) as f:
        x = f["x"].astype(np.float64) / 16.0
        y = f["y"].astype(np.int64)
    return x, y
