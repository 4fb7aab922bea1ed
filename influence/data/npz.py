"""``.npz`` files (arrays memory-mapped where the file allows it, ragged sequences, several inputs),
CTF path detection, and the bundled digits."""
import os
import struct
import zipfile

import numpy as np

from .dataset import Dataset, Sequences, is_sparse

__all__ = ["load_npz", "save_npz", "load_digits", "is_ctf_path"]


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

    Also reads the layouts for several inputs (``x.<input name>``) and ragged sequences
    (``<m>.steps`` + ``<m>.lengths``) described in the module docstring (written by :func:`save_npz`).
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
        if not any(k == "x" or k.startswith("x.") for k in members):
            raise ValueError("%s has arrays %s but no 'x'; save features as x (and labels as y), or "
                             "x.<input name> per input (see influence.data)" % (path, sorted(members)))
        for key in members:
            if not (key in ("x", "y") or key.startswith("x.") or key.startswith("y.")):
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
    x, y = _assemble(arrays, "x", path), _assemble(arrays, "y", path)
    data = Dataset(x, y, name)
    data.source = os.path.abspath(str(path))
    return data


def _ragged(arrays, base, path):
    steps, lengths = arrays.get(base + ".steps"), arrays.get(base + ".lengths")
    if (steps is None) != (lengths is None):
        raise ValueError("%s has %s but not %s; a ragged member is stored as <m>.steps and <m>.lengths"
                         % (path, base + (".steps" if lengths is None else ".lengths"),
                            base + (".lengths" if lengths is None else ".steps")))
    if steps is None:
        return None
    return Sequences(steps, np.asarray(lengths), "%s %s" % (path, base))


def _assemble(arrays, prefix, path):
    """Member ``prefix`` (array or ragged), or a dict of members ``prefix.<name>``, or None."""
    if prefix in arrays:
        return arrays[prefix]
    whole = _ragged(arrays, prefix, path)
    if whole is not None:
        return whole
    names = sorted({k[len(prefix) + 1:].rsplit(".", 1)[0] if k.endswith((".steps", ".lengths"))
                    else k[len(prefix) + 1:] for k in arrays if k.startswith(prefix + ".")})
    if not names:
        return None
    out = {}
    for nm in names:
        key = prefix + "." + nm
        out[nm] = arrays[key] if key in arrays else _ragged(arrays, key, path)
    return out


def save_npz(path, x, y=None):
    """Write ``x`` (and ``y``) in the layout :func:`load_npz` reads (see the module docstring):
    arrays as ``x``/``y``, dicts as ``x.<input name>``, :class:`Sequences` (or ragged lists) as
    ``<m>.steps`` + ``<m>.lengths``. Uncompressed, so that it is memory-mapped when read."""
    members = {}

    def put(key, a):
        if isinstance(a, (list, tuple)) and len({np.shape(q) for q in a}) > 1:
            a = Sequences.from_list(a, key)
        if isinstance(a, Sequences):
            if is_sparse(a.values):
                raise ValueError("%s: sparse sequences cannot be saved to .npz yet; save them dense or "
                                 "as CTF" % key)
            members[key + ".steps"] = np.asarray(a.values)
            members[key + ".lengths"] = a.lengths
        elif is_sparse(a):
            raise ValueError("%s: sparse matrices cannot be saved to .npz yet; save them as CTF" % key)
        else:
            members[key] = np.asarray(a)
    for prefix, value in (("x", x), ("y", y)):
        if value is None:
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                put(prefix + "." + str(k), v)
        else:
            put(prefix, value)
    np.savez(path, **members)


def is_ctf_path(path):
    """Is ``path`` named like a CNTK Text Format file (``.ctf`` or ``.txt``, any case)?"""
    return str(path).lower().endswith((".ctf", ".txt"))


def load_digits():
    """The 1,797 8×8 handwritten digits shipped with the package (see ``influence/data/datasets``).

    Returns ``(x, y)``: ``x`` float64 pixel counts scaled to [0, 1], shape (1797, 64); ``y`` int64 labels.
    """
    path = os.path.join(os.path.dirname(__file__), "datasets", "digits.npz")
    with np.load(path, allow_pickle=False) as f:
        x = f["x"].astype(np.float64) / 16.0
        y = f["y"].astype(np.int64)
    return x, y
