"""influence.data.ctf_reader: the CNTK Text Format reader. Parsing tests run everywhere; the comparison with CNTK's
own CTFDeserializer runs where CNTK is importable (.venv)."""
import os
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from influence.data.ctf_reader import CTFError, CTFReader, InputSpec, read_ctf

SEQ_TEXT = ("0 |x 1 2 |w 3:1.5 0:2 |y 1\n"
            "0 |x 3 4 |w\n"
            "1 |x 5 6 |w 1:1 |y 0 |# a comment\n"
            "2 |x -7.5 8e-2 |y 2\n"
            "2 |x 9 10 |w 4:-3\n"
            "2 |# comment only |x 11 12 |w 2:0.25\n")
SEQ_SPECS = {"x": InputSpec(2, is_sequence=True), "w": InputSpec(5, is_sparse=True, is_sequence=True),
             "y": InputSpec(1)}


def write(tmp_path, text, name="data.ctf", mode="w"):
    path = str(tmp_path / name)
    with open(path, mode) as f:
        f.write(text)
    return path


def dense(values):
    return values.toarray() if sp.issparse(values) else values


# ---------------------------------------------------------------------------------------- parsing
def test_dense_lines_without_ids_are_one_step_sequences(tmp_path):
    path = write(tmp_path, "|features 1 2 3 |labels 0 1\n|features 4 5 6 |labels 1 0\n")
    out = read_ctf(path, {"features": 3, "labels": 2})
    assert set(out) == {"features", "labels"}
    x, lx = out["features"]
    assert isinstance(x, np.ndarray) and x.dtype == np.float64
    np.testing.assert_array_equal(x, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(out["labels"][0], [[0, 1], [1, 0]])
    assert lx.dtype == np.int64
    np.testing.assert_array_equal(lx, [1, 1])


def test_sequences_sparse_and_per_sequence_labels(tmp_path):
    r = CTFReader(write(tmp_path, SEQ_TEXT), SEQ_SPECS)
    assert len(r) == 3 and r.has_ids
    out = r.read()
    x, lx = out["x"]
    np.testing.assert_array_equal(lx, [2, 1, 3])
    np.testing.assert_array_equal(x, [[1, 2], [3, 4], [5, 6], [-7.5, 0.08], [9, 10], [11, 12]])
    w, lw = out["w"]
    assert sp.isspmatrix_csr(w) and w.shape == (5, 5)
    np.testing.assert_array_equal(lw, [2, 1, 2])
    expect = np.zeros((5, 5))
    expect[0, 3], expect[0, 0], expect[2, 1], expect[3, 4], expect[4, 2] = 1.5, 2, 1, -3, 0.25
    np.testing.assert_array_equal(w.toarray(), expect)  # the empty sample '|w' is an all-zero step
    y, ly = out["y"]
    np.testing.assert_array_equal(y, [[1], [0], [2]])
    np.testing.assert_array_equal(ly, [1, 1, 1])


@pytest.mark.parametrize("size", [1, 2, 3])
def test_ranges_do_not_depend_on_chunk_size(tmp_path, size):
    r = CTFReader(write(tmp_path, SEQ_TEXT), SEQ_SPECS)
    whole = r.read(0, len(r))
    parts = [d for _, _, d in r.chunks(size)]
    for name in SEQ_SPECS:
        cat = sp.vstack if SEQ_SPECS[name].is_sparse else np.concatenate
        np.testing.assert_array_equal(dense(cat([p[name][0] for p in parts])), dense(whole[name][0]))
        np.testing.assert_array_equal(np.concatenate([p[name][1] for p in parts]), whole[name][1])
    one = r.read(1, 2)
    np.testing.assert_array_equal(one["x"][0], [[5, 6]])
    empty = r.read(2, 2)
    assert empty["x"][0].shape == (0, 2) and empty["w"][0].shape == (0, 5) and empty["y"][1].size == 0


def test_mapping_skip_bom_crlf_blank_lines_and_line_continuation(tmp_path):
    text = "\ufeff7 |feat 1 2 |lab 1 |weight 0.5\r\n|feat 3 4\r\n\r\n8 |feat 5 6 |lab 0 |weight 2\r\n"
    path = write(tmp_path, text.encode("utf-8"), mode="wb")
    specs = {"x": InputSpec((1, 2), is_sequence=True), "y": 1}
    r = CTFReader(path, specs, mapping={"feat": "x", "lab": "y"}, skip=["weight"], dtype=np.float32)
    out = r.read()
    assert out["x"][0].dtype == np.float32 and out["x"][0].shape == (3, 2)  # flat (steps, prod(shape))
    np.testing.assert_array_equal(out["x"][1], [2, 1])  # a line without an id continues the sequence
    np.testing.assert_array_equal(out["y"][0], [[1], [0]])


def test_skipped_streams_may_hold_anything(tmp_path):
    path = write(tmp_path, "|x 1 2 |text the cat_sat |w nan\n|x 3 4 |text inf |w 1_0\n")
    out = read_ctf(path, {"x": 2}, skip=["text", "w"])
    np.testing.assert_array_equal(out["x"][0], [[1, 2], [3, 4]])


def test_dense_input_accepts_sparse_notation_and_sparse_input_dense_notation(tmp_path):
    path = write(tmp_path, "|x 2:1 |s 0 0 3\n|x 0:-1 |s 1:4\n")
    out = read_ctf(path, {"x": 3, "s": InputSpec(3, is_sparse=True)})
    np.testing.assert_array_equal(out["x"][0], [[0, 0, 1], [-1, 0, 0]])
    np.testing.assert_array_equal(out["s"][0].toarray(), [[0, 0, 3], [0, 4, 0]])


def test_inputs_from_variables_duck_typed(tmp_path):
    class Var(object):
        def __init__(self, name, shape, is_sparse, n_axes):
            self.name, self.shape, self.is_sparse, self.dynamic_axes = name, shape, is_sparse, (None,) * n_axes
    r = CTFReader(write(tmp_path, SEQ_TEXT), [Var("x", (2,), False, 2), Var("w", (5,), True, 2), Var("y", (1,), False, 1)])
    assert r.specs["w"].is_sparse and r.specs["x"].is_sequence and not r.specs["y"].is_sequence


def test_reader_pickles_for_workers_and_index_is_16_bytes_per_sequence(tmp_path):
    r = CTFReader(write(tmp_path, SEQ_TEXT), SEQ_SPECS)
    assert r.index_nbytes == 16 * len(r) + 8
    r2 = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(r2.read(1, 3)["x"][0], r.read(1, 3)["x"][0])


# ---------------------------------------------------------------------------------------- bad input
BAD = [
    # (file text, specs, kwargs, the line, pieces the message must name)
    ("|x 1 2 |z 3\n", {"x": 2}, {}, 1, ["'z'", "'x'", "mapping=", "skip="]),
    ("|x 1 2\n|x 1 2 3\n", {"x": 2}, {}, 2, ["3 values", "dimension is 2", "write 2 values"]),
    ("|w 0:1\n|w 7:1\n", {"w": InputSpec(5, is_sparse=True)}, {}, 2, ["sparse index 7", "0..4"]),
    ("|x 0:1 9:1\n", {"x": 3}, {}, 1, ["sparse index 9", "0..2"]),
    ("|x 1 2\n|x 1 abc\n", {"x": 2}, {}, 2, ["malformed value 'abc'", "decimal numbers"]),
    ("|x 1 1_0\n", {"x": 2}, {}, 1, ["malformed value '1_0'"]),
    ("|w 1:2:3\n", {"w": InputSpec(5, is_sparse=True)}, {}, 1, ["malformed value '2:3'"]),
    ("|w 0:1 1:23:4\n", {"w": InputSpec(5, is_sparse=True)}, {}, 1, ["malformed value '23:4'"]),
    ("|w a:1\n", {"w": InputSpec(5, is_sparse=True)}, {}, 1, ["malformed sparse token 'a:1'", "index:value"]),
    ("|x 1 nan\n", {"x": 2}, {}, 1, ["non-finite value 'nan'", "finite"]),
    ("|x 1\n|x -inf\n", {"x": 1}, {}, 2, ["non-finite value '-inf'"]),
    ("|x 1e999\n", {"x": 1}, {}, 1, ["non-finite value '1e999'"]),
    ("0 |x 1 2 |y 1\n1 |x 3 4\n", {"x": 2, "y": 1}, {}, 2, ["sequence 1 has no values for input 'y'", "'x'"]),
    ("0 |x 1 |y 1\n0 |x 2 |y 0\n", {"x": InputSpec(1, is_sequence=True), "y": 1}, {}, 1,
     ["2 samples for input 'y'", "is_sequence=True"]),
    ("0 |x 1\n|x 2\n3 4 |x 3\n", {"x": 1}, {}, 3, ["malformed sequence id '3 4'"]),
    ("|x 1\n5 |x 2\n", {"x": 1}, {}, 2, ["sequence id '5'", "every sequence an id"]),
    ("|x 1\nhello\n", {"x": 1}, {}, 2, ["no stream on the line", "'hello'"]),
    ("|x 1 | y 2\n", {"x": 1}, {}, 1, ["not followed by a stream name"]),
]


@pytest.mark.parametrize("text,specs,kw,line,pieces", BAD)
def test_bad_input_is_one_line_naming_file_line_value_and_fix(tmp_path, text, specs, kw, line, pieces):
    path = write(tmp_path, text)
    with pytest.raises(CTFError) as e:
        CTFReader(path, specs, **kw).read()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("%s, line %d: " % (path, line)), msg
    for piece in pieces:
        assert piece in msg, (piece, msg)
    assert isinstance(e.value, ValueError)


def test_bad_value_in_a_later_chunk_names_its_line(tmp_path):
    lines = ["%d |x %d %d" % (i, i, i + 1) for i in range(50)]
    lines[37] = "37 |x 1 oops"
    r = CTFReader(write(tmp_path, "\n".join(lines) + "\n"), {"x": 2})
    r.read(0, 37)  # the rows before it read fine
    with pytest.raises(CTFError, match=r", line 38: malformed value 'oops'"):
        r.read(30, 40)


@pytest.mark.parametrize("text", ["", "\n  \n", "\ufeff"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text.encode("utf-8"), mode="wb")
    with pytest.raises(CTFError, match="the file is empty"):
        CTFReader(path, {"x": 1})


def test_usage_errors(tmp_path):
    path = write(tmp_path, "|x 1 2 |y 0\n")
    with pytest.raises(ValueError, match="no input 'nope'; inputs are 'x'"):
        CTFReader(path, {"x": 2}, mapping={"y": "nope"})
    with pytest.raises(ValueError, match="same input 'x'"):
        CTFReader(path, {"x": 2}, mapping={"y": "x", "z": "x"})
    with pytest.raises(CTFError, match="cannot open"):
        CTFReader(str(tmp_path / "missing.ctf"), {"x": 2})
    r = CTFReader(path, {"x": 2}, skip=["y"])
    with pytest.raises(ValueError, match="has 1 sequences; give 0 <= start <= stop <= 1"):
        r.read(0, 2)
    with pytest.raises(ValueError, match="shape"):
        InputSpec((0, 3))
    with open(path, "a") as f:
        f.write("|x 3 4 |y 1\n")
    with pytest.raises(CTFError, match="changed since it was indexed"):
        r.read(0, 1)


# ---------------------------------------------------------------------------------------- against CNTK
def cntk_read(C, path, specs):
    """Every sequence of ``path`` read by CNTK's own CTFDeserializer in file order:
    ``{name: list of per-sequence arrays}`` (dense ndarray or CSR)."""
    defs = C.io.StreamDefs(**{n: C.io.StreamDef(field=n, shape=s.dim, is_sparse=s.is_sparse) for n, s in specs.items()})
    source = C.io.MinibatchSource(C.io.CTFDeserializer(path, defs), randomize=False, max_sweeps=1)
    mb = source.next_minibatch(10 ** 6)
    assert not source.next_minibatch(10), "CNTK did not deliver the file in one minibatch"
    out = {}
    for n, s in specs.items():
        make = C.sequence.input_variable if s.is_sequence else C.input_variable
        var = make(s.dim, is_sparse=s.is_sparse)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "converting Value object to CSR")
            out[n] = mb[source.streams[n]].data.as_sequences(var)
    return out


def compare_with_cntk(C, path, specs):
    ours = CTFReader(path, specs, dtype=np.float32)
    theirs = cntk_read(C, path, specs)
    got = ours.read()
    for n, s in specs.items():
        values, lengths = got[n]
        assert len(theirs[n]) == len(ours) == len(lengths)
        np.testing.assert_array_equal(lengths, [a.shape[0] for a in theirs[n]])
        stacked = sp.vstack(theirs[n]).toarray() if s.is_sparse else np.concatenate(theirs[n]).reshape(-1, s.dim)
        assert sp.issparse(values) == s.is_sparse
        np.testing.assert_array_equal(dense(values), stacked)  # exact, float32


def test_matches_cntk_dense_two_streams(cntk, tmp_path):
    rng = np.random.RandomState(0)
    x = np.round(rng.standard_normal((20, 4)), 4)
    lines = ["|features %s |labels %s" % (" ".join("%g" % v for v in row), " ".join("%d" % (j == i % 3) for j in range(3)))
             for i, row in enumerate(x)]
    compare_with_cntk(cntk, write(tmp_path, "\n".join(lines) + "\n"), {"features": InputSpec(4), "labels": InputSpec(3)})


def test_matches_cntk_sparse_and_sequences_of_different_lengths(cntk, tmp_path):
    rng = np.random.RandomState(1)
    lines = []
    for seq, length in enumerate([1, 4, 2, 7, 3]):
        for t in range(length):
            words = " ".join("%d:%g" % (j, np.round(rng.uniform(-2, 2), 3)) for j in sorted(rng.choice(50, 3, replace=False)))
            feats = " ".join("%.3e" % v for v in rng.standard_normal(3))
            line = "%d |words %s |f %s" % (seq, words, feats)
            if t == 0:
                line += " |label %d" % (seq % 2)
            lines.append(line)
    specs = {"words": InputSpec(50, is_sparse=True, is_sequence=True), "f": InputSpec(3, is_sequence=True),
             "label": InputSpec(1)}
    compare_with_cntk(cntk, write(tmp_path, "\n".join(lines) + "\n"), specs)


def test_matches_cntk_on_the_mixed_file(cntk, tmp_path):
    compare_with_cntk(cntk, write(tmp_path, SEQ_TEXT), SEQ_SPECS)


def test_specs_from_a_cntk_models_arguments(cntk, tmp_path):
    C = cntk
    words = C.sequence.input_variable(5, is_sparse=True, name="w")
    x = C.sequence.input_variable(2, name="x")
    y = C.input_variable(1, name="y")
    z = C.sequence.last(C.layers.Dense(1)(C.splice(C.layers.Embedding(3)(words), x))) + y
    specs = {a.name: InputSpec.from_variable(a) for a in z.arguments}
    assert specs["w"].is_sparse and specs["w"].is_sequence and specs["w"].shape == (5,)
    assert specs["x"].is_sequence and not specs["x"].is_sparse
    assert not specs["y"].is_sequence
    r = CTFReader(write(tmp_path, SEQ_TEXT), z.arguments)
    np.testing.assert_array_equal(r.read()["w"][1], [2, 1, 2])
