"""Bad input, through the API and the command line: every refusal is one line naming the input and the
fix; the CLI exits 2 and writes nothing (no output file, no OUT.partial/ folder).

The dtype rule (docs/failure-modes.md): features and labels must be real numbers — integer (signed
or unsigned) or floating point — and are converted to the model's dtype batch by batch (float64 or
int features into a float32 model are normal). bool, complex, object, string and other arrays are
refused. A classifier (cross_entropy, binary_cross_entropy, the NumPy models) needs integer labels.

``python tests/test_bad_input.py`` (in .venv) triggers every CLI refusal and prints the Markdown
table of docs/failure-modes.md with the real messages.
"""
import os
import sys

import numpy as np
import pytest

import influence
from influence.data import Dataset, load_npz
from influence.models import SoftmaxRegression, LogisticRegression

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from conftest import make_classification   # noqa: E402


def _one_line(message):
    return "\n" not in message.strip() and message.strip() != ""


# ---------------------------------------------------------------------------------------- API: data
DATA_CASES = [
    # (id, x, y, needle)
    ("empty training set", np.zeros((0, 3)), np.zeros(0, np.int64), "empty (0 examples)"),
    ("NaN in features", np.array([[1.0, np.nan]]), np.zeros(1, np.int64), "NaN or Inf (first at row 0)"),
    ("Inf in features", np.array([[1.0, 2.0], [np.inf, 0.0]]), np.zeros(2, np.int64), "NaN or Inf (first at row 1)"),
    ("NaN in float targets", np.ones((2, 2)), np.array([0.0, np.nan]), "labels contains NaN or Inf"),
    ("rows/labels length mismatch", np.ones((3, 2)), np.zeros(2, np.int64), "one label per row"),
    ("complex features", np.ones((2, 2), np.complex128), np.zeros(2, np.int64), "dtype complex128"),
    ("bool features", np.ones((2, 2), bool), np.zeros(2, np.int64), "dtype bool"),
    ("object features", np.array([[1, "a"]], dtype=object), np.zeros(1, np.int64), "dtype object"),
    ("string features", np.array([["a", "b"]]), np.zeros(1, np.int64), "dtype <U1"),
    ("complex labels", np.ones((2, 2)), np.ones(2, np.complex64), "labels have dtype complex64"),
    ("bool labels", np.ones((2, 2)), np.ones(2, bool), "labels have dtype bool"),
    ("string labels", np.ones((2, 2)), np.array(["a", "b"]), "labels have dtype <U1"),
    ("scalar features", np.array(3.0), None, "scalar"),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_dataset_refusals(case):
    _, x, y, needle = case
    with pytest.raises(ValueError) as err:
        Dataset(x, y, "train")
    assert needle in str(err.value) and _one_line(str(err.value)) and "train" in str(err.value)


def test_non_array_inputs():
    with pytest.raises(ValueError, match="pass a NumPy array"):
        Dataset("x.npz", None, "train")
    with pytest.raises(ValueError, match="tuple"):
        influence.data.as_dataset({"features": 1}, "train")


def test_dtype_rule_integer_and_float64_features_are_converted():
    x, y = make_classification(40, 3, 2, seed=1)
    m = SoftmaxRegression(3, 2, l2=0.1)
    as_int = np.round(x * 10).astype(np.int32)
    assert np.isfinite(m.loss((as_int, y)))
    assert np.allclose(m.loss((as_int, y.astype(np.uint8))), m.loss((as_int.astype(np.float64), y)))
    m32 = SoftmaxRegression(3, 2, l2=0.1, dtype=np.float32)
    assert np.isfinite(m32.loss((x, y))) and np.isfinite(m32.loss((x.astype(np.float16), y)))


MODEL_CASES = [
    ("features of the wrong shape", lambda x, y: (x[:, :2], y), "features have shape (30, 2) but the model expects (n, 3)"),
    ("labels out of range", lambda x, y: (x, y + 5), "outside 0..2"),
    ("negative label", lambda x, y: (x, y - 1), "outside 0..2"),
    ("float labels for a classifier", lambda x, y: (x, y.astype(np.float64)), "labels have dtype float64"),
    ("2-D labels", lambda x, y: (x, y[:, None]), "labels have shape (30, 1)"),
    ("no labels", lambda x, y: (x,), "has no labels"),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_refusals_numpy(case):
    _, make, needle = case
    x, y = make_classification(30, 3, 3, seed=2)
    m = SoftmaxRegression(3, 3, l2=0.1)
    w = m.get_params()
    for call in (lambda d: m.loss(d), lambda d: influence.HessianOperator(m, d),
                 lambda d: influence.influence_scores(m, d, (x[:1], y[:1]), solver="direct"),
                 lambda d: influence.self_influence(m, d)):
        with pytest.raises(ValueError) as err:
            call(make(x, y))
        assert needle in str(err.value) and _one_line(str(err.value))
    assert np.array_equal(m.get_params(), w)


def test_logistic_labels_and_weights_refused():
    x, y = make_classification(20, 2, 3, seed=3)
    m = LogisticRegression(2, l2=0.1)
    with pytest.raises(ValueError, match="labels 0 or 1"):
        m.loss((x, y))
    w = m.get_params()
    for bad in (np.full(m.n_params, np.nan), np.full(m.n_params, np.inf)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            m.set_params(bad)
    with pytest.raises(ValueError, match="has shape"):
        m.set_params(np.ones(m.n_params + 1))
    assert np.array_equal(m.get_params(), w)


def test_numeric_arguments_refused():
    x, y = make_classification(30, 3, 3, seed=2)
    m = SoftmaxRegression(3, 3, l2=0.1)
    cases = [
        (lambda: influence.HessianOperator(m, (x, y), damping=-1.0), "damping=-1.0 must be"),
        (lambda: influence.s_test(m, (x, y), (x[:1], y[:1]), damping=float("nan")), "damping=nan"),
        (lambda: m.loss((x, y), batch_size=0), "batch_size=0"),
        (lambda: influence.self_influence(m, (x, y), chunk_size=0), "chunk_size=0"),
        (lambda: influence.verify_loo(m, (x, y), (x[:1], y[:1]), indices=[30], scores=np.zeros(30)),
         "indices must be"),
        (lambda: influence.HessianOperator(m, (x, y)) @ np.full(m.n_params, np.nan), "NaN or Inf"),
    ]
    for call, needle in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert needle in str(err.value) and _one_line(str(err.value))


# ---------------------------------------------------------------------------------------- API: files
def test_load_npz_refusals(tmp_path):
    d = str(tmp_path)
    x, y = np.random.RandomState(0).rand(4, 3), np.array([0, 1, 0, 1])
    np.savez(os.path.join(d, "pickled.npz"), x=np.array([{"a": 1}], dtype=object), y=y)
    np.savez_compressed(os.path.join(d, "pickled_z.npz"), x=np.array([{"a": 1}], dtype=object))
    np.savez(os.path.join(d, "nox.npz"), features=x)
    np.save(os.path.join(d, "plain.npy"), x)
    with open(os.path.join(d, "text.npz"), "w") as f:
        f.write("not a zip")
    with open(os.path.join(d, "truncated.npz"), "wb") as f:
        np.savez(os.path.join(d, "good.npz"), x=x, y=y)
        f.write(open(os.path.join(d, "good.npz"), "rb").read()[:200])
    os.mkdir(os.path.join(d, "folder.npz"))
    cases = [("missing.npz", "no such file"), ("folder.npz", "no such file"), ("text.npz", "not a readable .npz"),
             ("plain.npy", "not a readable .npz"), ("truncated.npz", "not a readable .npz"),
             ("pickled.npz", "pickled objects"), ("pickled_z.npz", "pickled objects"), ("nox.npz", "no 'x'")]
    for name, needle in cases:
        with pytest.raises(ValueError) as err:
            load_npz(os.path.join(d, name))
        assert needle in str(err.value) and _one_line(str(err.value)), (name, str(err.value))


# ---------------------------------------------------------------------------------------- API: CNTK
def test_cntk_model_refusals(cntk, tmp_path):
    from influence.adapters.cntk import CNTKModel, build_network
    C = cntk
    x = C.input_variable(3, dtype=np.float32, name="features")
    with pytest.raises(ValueError, match="no trainable parameters") as err:
        CNTKModel(C.reduce_sum(C.square(x)), loss=None)
    assert _one_line(str(err.value))
    with pytest.raises(ValueError, match="no trainable parameters"):
        influence.hvp(C.reduce_sum(C.square(x)), np.ones((2, 3), np.float32), np.ones(1))
    z = build_network(3, 4, seed=0)
    lab = C.input_variable(4, dtype=np.float32, name="labels")
    with pytest.raises(ValueError, match="scalar per example") as err:
        CNTKModel(C.square(z - lab), loss=None)
    assert _one_line(str(err.value))
    bad = build_network(3, 4, seed=0)
    bad.parameters[0].value = np.full(bad.parameters[0].shape, np.nan, np.float32)
    with pytest.raises(ValueError, match="weights contain NaN or Inf"):
        CNTKModel(bad)
    m = CNTKModel(build_network(3, 4, seed=0), l2=0.1)
    w = m.get_params()
    xs, ys = make_classification(20, 3, 4, seed=0)
    cases = [((xs[:, :2], ys), "features have shape (20, 2)"), ((xs, ys + 4), "outside 0..3"),
             ((xs, ys.astype(np.float32)), "labels have dtype float32"),
             ((xs.astype(np.complex64), ys), "dtype complex64"), ((xs > 0, ys), "dtype bool")]
    for data, needle in cases:
        with pytest.raises(ValueError) as err:
            m.loss(data)
        assert needle in str(err.value) and _one_line(str(err.value))
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.set_params(np.full(m.n_params, np.nan))
    assert np.array_equal(m.get_params(), w)
    # the dtype rule: float64 and integer features into a float32 model are converted
    assert np.isfinite(m.loss((xs, ys))) and np.isfinite(m.loss((np.round(xs).astype(np.int16), ys)))
    logit = CNTKModel(build_network(3, 1, seed=0), loss="binary_cross_entropy")
    with pytest.raises(ValueError, match="binary_cross_entropy needs integer labels"):
        logit.loss((xs, (ys > 1).astype(np.float32)))
    with pytest.raises(ValueError, match="not a CNTK model"):
        (tmp_path / "junk.cntk").write_bytes(b"\x00junk")
        CNTKModel.load(str(tmp_path / "junk.cntk"))


# ---------------------------------------------------------------------------------------- the CLI
def make_workdir(d, cntk):
    """Data and model files, good and bad, in folder ``d``; returns {name: path}."""
    from influence.adapters.cntk import CNTKModel, build_network
    from influence.cli import main
    C = cntk
    p = lambda name: os.path.join(d, name)   # noqa: E731
    x, y = influence.load_digits()
    x, y = x[:120], y[:120]
    np.savez(p("train.npz"), x=x, y=y)
    np.savez(p("test.npz"), x=x[:5], y=y[:5])
    assert main(["train", "--data", p("train.npz"), "--l2", "1e-2", "--out", p("model.cntk"), "--quiet",
                 "--lbfgs-maxiter", "200"]) == 0
    np.save(p("v.npy"), np.ones(650))
    np.save(p("v_short.npy"), np.ones(10))
    bad = {
        "wrong_shape.npz": dict(x=x[:, :10], y=y), "label_range.npz": dict(x=x, y=y + 5),
        "label_float.npz": dict(x=x, y=y.astype(np.float64)), "label_2d.npz": dict(x=x, y=y[:, None]),
        "nan.npz": dict(x=np.where(np.arange(120)[:, None] == 7, np.nan, x), y=y),
        "inf.npz": dict(x=np.where(np.arange(120)[:, None] == 3, np.inf, x), y=y),
        "empty.npz": dict(x=x[:0], y=y[:0]), "complex.npz": dict(x=x.astype(np.complex128), y=y),
        "bool.npz": dict(x=x > 0.5, y=y), "string.npz": dict(x=x.astype(str), y=y),
        "pickled.npz": dict(x=np.array([None] * 3, dtype=object), y=y[:3]), "nox.npz": dict(features=x),
        "noy.npz": dict(x=x), "mismatch.npz": dict(x=x, y=y[:100]),
    }
    for name, arrays in bad.items():
        np.savez(p(name), **arrays)
    with open(p("text.npz"), "w") as f:
        f.write("features,label\n1,2\n")
    os.mkdir(p("folder.npz"))
    inp = C.input_variable(64, dtype=np.float32, name="features")
    C.reduce_sum(C.square(inp)).save(p("noparams.cntk"))
    z = build_network(64, 10, seed=0)
    lab = C.input_variable(10, dtype=np.float32, name="labels")
    C.square(z - lab).save(p("vector_loss.cntk"))
    nan_model = CNTKModel.load(p("model.cntk"))
    nan_model.parameters[0].value = np.full(nan_model.parameters[0].shape, np.nan, np.float32)
    nan_model.save(p("nan_weights.cntk"))
    return {name: p(name) for name in os.listdir(d)}


#: (input, argv, needle): argv templates use {name} for the files of make_workdir and {out} for a fresh
#: output path. Every one must exit 2 with one line on stderr containing the needle.
CLI_CASES = [
    ("missing data file", "score --model {model.cntk} --train {missing.npz} --test {test.npz} --out {out}",
     "--train {missing.npz}: no such file"),
    ("a folder instead of a file", "score --model {model.cntk} --train {folder.npz} --test {test.npz} --out {out}",
     "is a folder"),
    ("data file that is not .npz", "score --model {model.cntk} --train {text.npz} --test {test.npz} --out {out}",
     "is not a readable .npz file"),
    ("data file with pickled objects", "self --model {model.cntk} --train {pickled.npz} --out {out}",
     "contains pickled objects"),
    ("data file without x", "self --model {model.cntk} --train {nox.npz} --out {out}", "no 'x'"),
    ("data file without y", "self --model {model.cntk} --train {noy.npz} --out {out}", "--train {noy.npz} has no labels"),
    ("x and y of different lengths", "self --model {model.cntk} --train {mismatch.npz} --out {out}",
     "one label per row"),
    ("model file missing", "self --model {missing.cntk} --train {train.npz} --out {out}", "no such file"),
    ("model file that is not a CNTK model", "self --model {train.npz} --train {train.npz} --out {out}",
     "is not a CNTK model file"),
    ("features of the wrong shape", "score --model {model.cntk} --train {wrong_shape.npz} --test {test.npz} --out {out}",
     "features have shape (120, 10)"),
    ("labels out of range", "self --model {model.cntk} --train {label_range.npz} --out {out}", "outside 0..9"),
    ("float labels for a classifier", "self --model {model.cntk} --train {label_float.npz} --out {out}",
     "labels have dtype float64"),
    ("2-D labels for a classifier", "self --model {model.cntk} --train {label_2d.npz} --out {out}",
     "labels have shape (120, 1)"),
    ("NaN in features", "self --model {model.cntk} --train {nan.npz} --out {out}", "NaN or Inf (first at row 7)"),
    ("Inf in test features", "score --model {model.cntk} --train {train.npz} --test {inf.npz} --out {out}",
     "NaN or Inf (first at row 3)"),
    ("empty training set", "self --model {model.cntk} --train {empty.npz} --out {out}", "empty (0 examples)"),
    ("complex features", "self --model {model.cntk} --train {complex.npz} --out {out}", "dtype complex128"),
    ("bool features", "self --model {model.cntk} --train {bool.npz} --out {out}", "dtype bool"),
    ("string features", "self --model {model.cntk} --train {string.npz} --out {out}", "dtype <U"),
    ("test index out of range", "score --model {model.cntk} --train {train.npz} --test {test.npz} "
     "--test-index 0 9 --out {out}", "--test-index 9 is out of range"),
    ("model with no trainable parameters", "self --model {noparams.cntk} --loss none --train {train.npz} --out {out}",
     "no trainable parameters"),
    ("loss not scalar per example", "self --model {vector_loss.cntk} --loss none --train {train.npz} --out {out}",
     "scalar per example"),
    ("non-finite weights", "score --model {nan_weights.cntk} --train {train.npz} --test {test.npz} --out {out}",
     "weights contain NaN or Inf"),
    ("negative damping", "score --model {model.cntk} --train {train.npz} --test {test.npz} --damping -1 --out {out}",
     "--damping -1.0 must be"),
    ("chunk size 0", "self --model {model.cntk} --train {train.npz} --chunk-size 0 --out {out}",
     "--chunk-size 0 is not a positive integer"),
    ("batch size 0", "hvp --model {model.cntk} --data {train.npz} --vector {v.npy} --batch-size 0 --out {out}",
     "--batch-size 0 is not a positive integer"),
    ("negative l2", "self --model {model.cntk} --train {train.npz} --l2 -1 --out {out}", "--l2 -1.0 is negative"),
    ("vector of the wrong length", "hvp --model {model.cntk} --data {train.npz} --vector {v_short.npy} --out {out}",
     "has shape (10,)"),
    ("vector file that is not .npy", "hvp --model {model.cntk} --data {train.npz} --vector {text.npz} --out {out}",
     "is not a .npy file"),
    ("output folder missing", "self --model {model.cntk} --train {train.npz} --out /no/such/folder/r.csv",
     "does not exist"),
    ("--resume without --out", "self --model {model.cntk} --train {train.npz} --resume", "--resume needs --out"),
    ("verify --retrainings 0", "verify --model {model.cntk} --train {train.npz} --test {test.npz} --test-index 0 --retrainings 0",
     "--retrainings 0"),
    ("unknown option", "self --model {model.cntk} --train {train.npz} --frobnicate", "unrecognized arguments"),
]


def run_cli_case(files, argv_template, out):
    import contextlib
    import io
    from influence.cli import main
    names = dict(files, out=out)
    names.setdefault("missing.npz", os.path.join(os.path.dirname(out), "missing.npz"))
    names.setdefault("missing.cntk", os.path.join(os.path.dirname(out), "missing.cntk"))
    argv = [a.format(**{k.replace(".", "_"): v for k, v in names.items()})
            for a in argv_template.replace(".npz}", "_npz}").replace(".cntk}", "_cntk}")
            .replace(".npy}", "_npy}").split()]
    err, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, err.getvalue(), names


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cntk):
    d = str(tmp_path_factory.mktemp("bad_input"))
    return d, make_workdir(d, cntk)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refusal(workdir, case, tmp_path):
    d, files = workdir
    _, argv, needle = case
    out = str(tmp_path / ("result.npy" if argv.startswith("hvp") else "result.csv"))   # a format it writes
    before = sorted(os.listdir(d))
    code, err, names = run_cli_case(files, argv, out)
    for key in ("missing.npz", "noy.npz"):
        needle = needle.replace("{%s}" % key, names[key])
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert lines[0].startswith("influence: error: ")
    assert os.listdir(str(tmp_path)) == []                       # no output, no OUT.partial/
    assert sorted(os.listdir(d)) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_cli_unreadable_file(workdir, tmp_path):
    d, files = workdir
    path = str(tmp_path / "locked.npz")
    np.savez(path, x=np.ones((2, 64)), y=np.zeros(2, np.int64))
    os.chmod(path, 0)
    try:
        code, err, _ = run_cli_case(dict(files, locked=path), "self --model {model.cntk} --train {locked} "
                                    "--out {out}", str(tmp_path / "r.csv"))
    finally:
        os.chmod(path, 0o600)
    assert code == 2 and "cannot be read" in err


def _markdown(d):
    """The table of docs/failure-modes.md, from real runs."""
    from influence.adapters.cntk import import_cntk
    files = make_workdir(d, import_cntk())
    rows = ["| bad input | command (abridged) | message (stderr, exit code 2) |", "|---|---|---|"]
    for name, argv, needle in CLI_CASES:
        out = os.path.join(d, "out", "result.csv")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        code, err, names = run_cli_case(files, argv, out)
        assert code == 2, (name, err)
        message = err.strip().replace(d + os.sep, "").replace("|", "\\|")
        command = "`influence %s`" % argv.split()[0]
        rows.append("| %s | %s | `%s` |" % (name, command, message))
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        print(_markdown(tmp))
