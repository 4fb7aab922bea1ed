"""CNTK Text Format (CTF) files: the format of CNTK's ``CTFDeserializer`` / ``MinibatchSource``.

One sample per line, optionally prefixed by a sequence id; consecutive lines with the same id form one
sequence (a line without an id continues the current sequence)::

    0 |x 0.1 0.2 0.3 |label 0 1
    0 |x 0.4 0.5 0.6
    1 |x 0.7 0.8 0.9 |label 1 0 |# a comment, up to the next '|' or the end of the line
    2 |words 3:1 17:1 |label 1:1        <- sparse: index:value pairs, indices 0-based

A file whose first line starts with ``|`` has no ids: every line is a sequence of one step.

:class:`CTFReader` indexes the file once (one pass, byte offset and line number of every sequence's
first line: 16 bytes per sequence, in memory) and then reads any range of sequences ``[start, stop)``
by seeking, so memory is bounded by the range, not the file, and row ``i`` is always the ``i``-th
sequence in file order (chunked and resumable scoring, cluster workers). Streams are mapped to the
model's inputs by name; dimensions come from the caller (the model's input shapes), never from the
file. The output of a read is, per input, ``(values, lengths)``: ``values`` a dense ndarray
``(total_steps, dim)`` or a ``scipy.sparse.csr_matrix`` ``(total_steps, dim)``, ``lengths`` an int64
array with the number of steps of each sequence (all ones for a non-sequence input).

Every problem in a file is a :class:`CTFError` (a ``ValueError``) naming the file, the line, the value
and the fix. See docs/data-formats.md.
"""
import os
import re
from array import array

import numpy as np
import scipy.sparse as sp

from ..common.errors import InfluenceError, param

__all__ = ["CTFError", "InputSpec", "CTFReader", "read_ctf"]

# Characters a value field may hold besides digits, signs, '.', 'e'/'E', ':' and whitespace. A chunk
# containing one is checked token by token (catches what Python's float() would accept but CNTK would
# not, e.g. '1_000', 'nan', 'inf').
_SUSPECT = re.compile(r"[^0-9eE.+\-:\s]")


class CTFError(InfluenceError):
    """A problem in a CTF file or in how its streams map to the model's inputs (one line)."""


class InputSpec(object):
    """What the model expects for one input: ``shape`` (the static sample shape; the file holds
    ``prod(shape)`` values per sample), ``is_sparse`` (return CSR instead of a dense array) and
    ``is_sequence`` (a dynamic sequence axis: a sequence may have any number of steps >= 1; a
    non-sequence input takes exactly one sample per sequence)."""
    __slots__ = ("shape", "is_sparse", "is_sequence")

    def __init__(self, shape, is_sparse=False, is_sequence=False):
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError("InputSpec shape %r: give the sample shape with positive sizes, e.g. (784,) "
                             "or (1, 28, 28) (a sequence axis is is_sequence=True, not a shape entry)"
                             % (shape,))
        self.shape = shape
        self.is_sparse = bool(is_sparse)
        self.is_sequence = bool(is_sequence)

    @property
    def dim(self):
        return int(np.prod(self.shape))

    @classmethod
    def from_variable(cls, var):
        """From a CNTK input ``Variable`` (duck-typed: ``shape``, ``is_sparse``, ``dynamic_axes``; a
        sequence input has two dynamic axes, batch and sequence)."""
        return cls(tuple(var.shape), bool(getattr(var, "is_sparse", False)),
                   len(getattr(var, "dynamic_axes", ())) > 1)

    def __repr__(self):
        return "InputSpec(shape=%r, is_sparse=%r, is_sequence=%r)" % (self.shape, self.is_sparse, self.is_sequence)


def as_specs(inputs):
    """``{input name: InputSpec}`` from a dict (values InputSpec, int, shape tuple or CNTK Variable) or
    a list of CNTK input Variables (keyed by their names)."""
    if isinstance(inputs, dict):
        items = list(inputs.items())
    else:
        items = []
        for v in inputs:
            name = getattr(v, "name", None)
            if not name:
                raise ValueError("an input Variable has no name (%r); pass inputs as a dict "
                                 "{name: InputSpec.from_variable(v)} to name it" % (v,))
            items.append((name, v))
    specs = {}
    for name, s in items:
        if name in specs:
            raise ValueError("two inputs are named %r; pass inputs as a dict with distinct names" % (name,))
        if isinstance(s, InputSpec):
            specs[name] = s
        elif hasattr(s, "dynamic_axes"):
            specs[name] = InputSpec.from_variable(s)
        else:
            specs[name] = InputSpec(s)
    if not specs:
        raise ValueError("no inputs given: pass {input name: InputSpec(shape, is_sparse, is_sequence)}")
    return specs


def _clip(s, n=40):
    s = s.strip()
    return s if len(s) <= n else s[:n - 3] + "..."


class _Stream(object):
    """Per-input buffers of one chunk."""
    __slots__ = ("name", "spec", "dim", "sparse", "tokens", "indices", "nnz", "counts", "count", "lines")

    def __init__(self, name, spec):
        self.name, self.spec, self.dim, self.sparse = name, spec, spec.dim, spec.is_sparse
        self.tokens = []   # value strings (dense: dim per sample; sparse: one per nonzero)
        self.indices = []  # sparse only: index strings, one per nonzero
        self.nnz = []      # sparse only: nonzeros per sample
        self.counts = []   # samples per sequence
        self.count = 0     # samples in the current sequence
        self.lines = []    # line of each sample, only when locating an error


class CTFReader(object):
    """Index a CTF file once; read any range of its sequences ``[start, stop)`` by seeking.

    Parameters
    ----------
    path : str
    inputs : dict ``{input name: InputSpec | int | shape tuple | CNTK Variable}`` or a list of named
        CNTK input Variables (e.g. ``model.arguments``). Dimensions come from here, not the file.
    mapping : dict ``{CTF stream name: input name}``, optional. A stream not in ``mapping`` maps to the
        input of the same name.
    skip : CTF stream names to ignore (e.g. a weight column the model has no input for). Any other
        stream that maps to no input is an error.
    dtype : dtype of the values (default float64; cast to the model's dtype downstream).

    ``len(reader)`` is the number of sequences (rows). The constructor reads the first sequence so a
    name mismatch fails at once; later problems are reported by the ``read`` that meets them.
    """

    def __init__(self, path, inputs, mapping=None, skip=(), dtype=np.float64):
        self.path = os.fspath(path)
        self.specs = as_specs(inputs)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError("dtype %s: CTF values are read as floating point; pass np.float32 or np.float64"
                             % self.dtype)
        self.skip = frozenset(skip)
        mapping = dict(mapping or {})
        for stream, name in mapping.items():
            if name not in self.specs:
                raise ValueError("mapping %r -> %r: the model has no input %r; inputs are %s"
                                 % (stream, name, name, self._input_list()))
        self.mapping = mapping
        targets = {}
        for stream, name in mapping.items():
            if name in targets:
                raise ValueError("mapping sends streams %r and %r to the same input %r; map one stream per input"
                                 % (targets[name], stream, name))
            targets[name] = stream
        self._build_index()
        self.read(0, 1)

    # ------------------------------------------------------------------------------------ index
    def _fail(self, line, what, fix):
        raise CTFError("%s, line %d: %s; %s" % (self.path, line, what, fix))

    def _input_list(self):
        return ", ".join(repr(n) for n in sorted(self.specs))

    def _build_index(self):
        """One pass over the file: the byte offset and the line number of every sequence's first line."""
        offsets, first_lines = array("q"), array("q")
        try:
            st = os.stat(self.path)
            f = open(self.path, "rb")
        except (IOError, OSError) as e:
            raise CTFError("%s: cannot open (%s); check the path" % (self.path, e.strerror or e))
        with f:
            off = 0
            if f.read(3) == b"\xef\xbb\xbf":  # UTF-8 byte order mark
                off = 3
            f.seek(off)
            has_ids = None
            prev = None
            lineno = 0
            for line in f:
                lineno += 1
                bar = line.find(b"|")
                if bar < 0:
                    if line.strip():
                        self._fail(lineno, "no stream on the line (%r)" % _clip(line.decode("utf-8", "replace")),
                                   "each sample is '[ID] |name values ...'")
                    off += len(line)
                    continue
                key = line[:bar].strip()
                if has_ids is None:
                    has_ids = bool(key)
                if has_ids:
                    if key and key != prev:
                        if len(key.split()) != 1:
                            self._fail(lineno, "malformed sequence id %r" % key.decode("utf-8", "replace"),
                                       "a sequence id is one token (CNTK wants digits) before the first '|'")
                        offsets.append(off)
                        first_lines.append(lineno)
                        prev = key
                elif key:
                    self._fail(lineno, "sequence id %r but the file's first sample line has none"
                               % key.decode("utf-8", "replace"),
                               "give every sequence an id, or none (then each line is one sequence)")
                else:
                    offsets.append(off)
                    first_lines.append(lineno)
                off += len(line)
        if not offsets:
            raise CTFError("%s: the file is empty (no sample lines); write one sample per line as "
                           "'[ID] |name v1 v2 ...'" % self.path)
        offsets.append(off)
        self._offsets = np.frombuffer(offsets, dtype=np.int64)  # shares the array's buffer: no copy
        self._first_lines = np.frombuffer(first_lines, dtype=np.int64)
        self._stamp = (st.st_size, st.st_mtime)
        self.has_ids = bool(has_ids)

    def __len__(self):
        return len(self._first_lines)

    @property
    def index_nbytes(self):
        """Bytes held by the index (16 per sequence)."""
        return self._offsets.nbytes + self._first_lines.nbytes

    # ------------------------------------------------------------------------------------ reading
    def _check_range(self, start, stop):
        n = len(self)
        stop = n if stop is None else stop
        try:
            start, stop = int(start), int(stop)
        except (TypeError, ValueError):
            raise ValueError("read(%r, %r): give integer sequence positions 0 <= start <= stop <= %d"
                             % (start, stop, n))
        if not 0 <= start <= stop <= n:
            raise ValueError("read(%d, %d): %s has %d sequences; give 0 <= start <= stop <= %d"
                             % (start, stop, self.path, n, n))
        return start, stop

    def _raw(self, start, stop):
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise CTFError("%s: cannot open (%s); the file was indexed but is gone" % (self.path, e.strerror))
        if (st.st_size, st.st_mtime) != self._stamp:
            raise CTFError("%s changed since it was indexed (size %d -> %d bytes); create a new CTFReader "
                           "(rows would no longer be the same sequences)" % (self.path, self._stamp[0], st.st_size))
        a, b = int(self._offsets[start]), int(self._offsets[stop])
        with open(self.path, "rb") as f:
            f.seek(a)
            data = f.read(b - a)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = int(self._first_lines[start]) + data[:e.start].count(b"\n")
            self._fail(line, "bytes that are not UTF-8 (%r)" % data[e.start:e.start + 8],
                       "save the file as UTF-8 (or ASCII)")

    def read(self, start=0, stop=None):
        """Sequences ``[start, stop)`` in file order: ``{input name: (values, lengths)}``.

        ``values``: ndarray ``(sum(lengths), dim)`` of ``dtype``, or ``scipy.sparse.csr_matrix`` of the
        same shape for a sparse input; ``lengths``: int64 ``(stop - start,)``, steps per sequence (ones
        for a non-sequence input). Memory is bounded by the range read."""
        start, stop = self._check_range(start, stop)
        if start == stop:
            return {name: (sp.csr_matrix((0, s.dim), dtype=self.dtype) if s.is_sparse
                           else np.zeros((0, s.dim), dtype=self.dtype), np.zeros(0, dtype=np.int64))
                    for name, s in self.specs.items()}
        text = self._raw(start, stop)
        try:
            return self._convert(self._parse(text, start, stop, locate=False))
        except _Locate:
            pass
        # slow path: every token checked as it is met; raises a CTFError naming the line of the first
        # bad value (or converts, when the fast test was a false alarm)
        streams = self._parse(text, start, stop, locate=True)
        try:
            return self._convert(streams)
        except _Locate:
            raise CTFError("%s, lines %d-%d: a value could not be converted; check these sequences' values"
                           % (self.path, self._first_lines[start], self._first_lines[stop - 1]))

    def chunks(self, size, start=0, stop=None):
        """Yield ``(start, stop, read(start, stop))`` over ``[start, stop)`` in ranges of ``size`` sequences."""
        size = int(size)
        if size < 1:
            raise ValueError("chunks(size=%r): give a positive number of sequences per chunk" % (size,))
        start, stop = self._check_range(start, stop)
        for a in range(start, stop, size):
            b = min(a + size, stop)
            yield a, b, self.read(a, b)

    def _parse(self, text, start, stop, locate):
        """Split the text of sequences [start, stop) into per-input buffers; with ``locate`` every value
        is checked as it is met (slow path that names the line of the first bad value)."""
        streams = {name: _Stream(name, s) for name, s in self.specs.items()}
        by_stream = {}
        for stream_name in self.mapping:
            by_stream[stream_name] = streams[self.mapping[stream_name]]
        for name in self.specs:
            if name not in by_stream and name not in self.mapping.values():
                by_stream[name] = streams[name]
        skip = self.skip
        first = self._first_lines
        line0 = int(first[start])
        bounds = [int(first[i]) for i in range(start + 1, stop)] + [None]
        seq, next_first = start, bounds[0]
        seq_k, seq_key = 0, None
        ordered = list(streams.values())
        if not locate and _SUSPECT.search(self._values_only(text)):
            raise _Locate()
        lines = text.split("\n")
        sparse_field = _SPARSE_FIELD.match
        for k, line in enumerate(lines):
            if next_first is not None and line0 + k == next_first:
                self._end_sequence(ordered, line0 + seq_k, seq_key, lines[seq_k:k])
                seq += 1
                next_first = bounds[seq - start]
                seq_k, seq_key = k, None
            bar = line.find("|")
            if bar < 0:
                continue  # blank line (the index refused anything else)
            if seq_key is None:
                seq_key = line[:bar].strip() or "(no id)"
            for piece in line[bar + 1:].split("|"):
                if piece[:1] == "#":
                    continue  # comment up to the next '|'
                parts = piece.split(None, 1)
                if not parts or piece[0].isspace():
                    self._fail(line0 + k, "a '|' not followed by a stream name (%r)" % _clip(line),
                               "write '|name values' with no space after '|' ('|#' starts a comment)")
                st = by_stream.get(parts[0])
                if st is None:
                    name = parts[0]
                    if name in skip:
                        continue
                    self._fail(line0 + k, "stream %r matches no input (the model's inputs are %s)"
                               % (name, self._input_list()),
                               "name the stream after an input, map it with %s or ignore it with %s"
                               % (param("mapping", {name: "INPUT"}), param("skip", [name])))
                rest = parts[1] if len(parts) > 1 else ""
                if not locate:  # fast paths for the two usual notations
                    if st.sparse:
                        if ":" in rest and sparse_field(rest):
                            pairs = rest.replace(":", " ").split()
                            st.indices.extend(pairs[0::2])
                            st.tokens.extend(pairs[1::2])
                            st.nnz.append(len(pairs) >> 1)
                            st.count += 1
                            continue
                    elif ":" not in rest:
                        toks = rest.split()
                        if len(toks) == st.dim:
                            st.tokens.extend(toks)
                            st.count += 1
                            continue
                self._sample(st, rest, line0 + k, locate)
        self._end_sequence(ordered, line0 + seq_k, seq_key, lines[seq_k:])
        return streams

    @staticmethod
    def _values_only(text):
        """The chunk with sequence ids, comments and stream names removed: what is left must be
        numbers, ':' and whitespace (a fast suspicion test, one regex pass each)."""
        text = _COMMENT.sub("|", text)
        text = _ID.sub("", text)
        return _NAME.sub(" ", text)

    def _sample(self, st, rest, lineno, locate):
        spec, dim = st.spec, st.dim
        toks = rest.split()
        sparse_notation = ":" in rest
        if locate:
            for t in toks:
                self._check_token(t, st, lineno, sparse_notation)
        if spec.is_sparse:
            if sparse_notation:
                n0 = len(st.tokens)
                for t in toks:
                    i, _, v = t.partition(":")
                    st.indices.append(i)
                    st.tokens.append(v)
                st.nnz.append(len(st.tokens) - n0)
            elif len(toks) == dim or not toks:
                st.indices.extend(str(i) for i in range(len(toks)))  # dense notation / empty sample
                st.tokens.extend(toks)
                st.nnz.append(len(toks))
            else:
                self._fail(lineno, "sparse stream for input %r has %d plain values (%r), expected %d or "
                           "index:value pairs" % (st.name, len(toks), _clip(rest), dim),
                           "write the nonzeros as index:value (0-based) or all %d values" % dim)
        else:
            if sparse_notation:
                row = ["0"] * dim
                for t in toks:
                    i, _, v = t.partition(":")
                    try:
                        j = int(i)
                    except ValueError:
                        raise _Locate()
                    if not 0 <= j < dim:
                        if locate:
                            self._range_error(st, j, lineno)
                        raise _Locate()
                    row[j] = v
                st.tokens.extend(row)
            elif len(toks) == dim:
                st.tokens.extend(toks)
            else:
                self._fail(lineno, "stream for input %r has %d values (%r), its dimension is %d"
                           % (st.name, len(toks), _clip(rest), dim),
                           "write %d values per sample (shape %s) or fix the input's shape"
                           % (dim, "x".join(map(str, st.spec.shape))))
        st.count += 1
        if locate:
            st.lines.append(lineno)

    def _range_error(self, st, j, lineno):
        self._fail(lineno, "sparse index %d of input %r is out of range for dimension %d"
                   % (j, st.name, st.dim), "indices are 0-based: use 0..%d or fix the input's shape" % (st.dim - 1))

    def _check_token(self, t, st, lineno, sparse_notation):
        if sparse_notation:
            i, sep, v = t.partition(":")
            if not sep or not _INT.match(i):
                self._fail(lineno, "malformed sparse token %r for input %r" % (_clip(t), st.name),
                           "write index:value with a 0-based integer index, e.g. 3:1")
            j = int(i)
            if not 0 <= j < st.dim:
                self._range_error(st, j, lineno)
            t = v
        if not _FLOAT.match(t):
            try:
                bad = not np.isfinite(float(t))
            except ValueError:
                bad = False
            if bad:
                self._fail(lineno, "non-finite value %r for input %r" % (t, st.name),
                           "replace NaN/inf by finite numbers (or drop the sample)")
            self._fail(lineno, "malformed value %r for input %r" % (_clip(t), st.name),
                       "write decimal numbers such as -1.5, 2 or 3e-4")
        if not np.isfinite(float(t)):
            self._fail(lineno, "non-finite value %r for input %r (overflows float64)" % (t, st.name),
                       "rescale the data to finite numbers")

    def _end_sequence(self, streams, line, key, lines):
        for st in streams:
            if st.count == 0:
                seen = sorted(set(m.group(1) for l in lines for m in _STREAM_NAME.finditer(l)))
                self._fail(line, "sequence %s has no values for input %r (streams on its lines: %s)"
                           % (key, st.name, ", ".join(repr(s) for s in seen) or "none"),
                           "add a '|%s ...' sample to every sequence, or map a stream to it with %s"
                           % (st.name, param("mapping", {"STREAM": st.name})))
            if st.count > 1 and not st.spec.is_sequence:
                self._fail(line, "sequence %s has %d samples for input %r, which is not a sequence input"
                           % (key, st.count, st.name),
                           "give it one sample per sequence, or declare it InputSpec(..., is_sequence=True)")
            st.counts.append(st.count)
            st.count = 0

    def _convert(self, streams):
        out = {}
        for name, st in streams.items():
            lengths = np.asarray(st.counts, dtype=np.int64)
            total = int(lengths.sum())
            try:
                vals = np.array(st.tokens, dtype=np.float64)
            except ValueError:
                raise _Locate()
            if not np.isfinite(vals).all():
                raise _Locate()
            if st.spec.is_sparse:
                try:
                    idx = np.array(st.indices, dtype=np.int64)
                except ValueError:
                    raise _Locate()
                if idx.size and (idx.min() < 0 or idx.max() >= st.dim):
                    raise _Locate()
                indptr = np.zeros(total + 1, dtype=np.int64)
                np.cumsum(st.nnz, out=indptr[1:])
                m = sp.csr_matrix((vals.astype(self.dtype), idx, indptr), shape=(total, st.dim))
                m.sum_duplicates()
                out[name] = (m, lengths)
            else:
                out[name] = (vals.astype(self.dtype, copy=False).reshape(total, st.dim), lengths)
            st.tokens = st.indices = None
        return out


class _Locate(Exception):
    """Internal: the fast path met a bad value; reparse the chunk checking every token."""


_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_SPARSE_FIELD = re.compile(r"\s*(?:[^\s:]+:[^\s:]+(?:\s+|\Z))*\Z")
_STREAM_NAME = re.compile(r"\|([^#\s|][^\s|]*)")
_COMMENT = re.compile(r"\|#[^|\n]*")
_NAME = re.compile(r"\|\S*")
_ID = re.compile(r"^[^|\n]*", re.M)


def read_ctf(path, inputs, start=0, stop=None, mapping=None, skip=(), dtype=np.float64):
    """``{input name: (values, lengths)}`` for sequences ``[start, stop)`` of a CTF file (indexes the
    file first; keep a :class:`CTFReader` to read several ranges)."""
    return CTFReader(path, inputs, mapping=mapping, skip=skip, dtype=dtype).read(start, stop)
