"""CTF files wherever .npz is accepted: influence.load_ctf / load_data (a lazy CTFDataset), the same
scores as from the equivalent .npz, chunks read alone, the CLI end to end (needs CNTK)."""
import json
import os

import numpy as np
import pytest
import scipy.sparse

import influence
from influence.data import ctf_dataset as ctf_data
from influence.cli import main
from influence.data import Sequences, load_npz
from influence.scoring.kernels import chunk_scores, forward_steps

from conftest import ctf_number, write_ctf


@pytest.fixture(scope="module")
def digits():
    x, y = influence.load_digits()
    return x[:160], y[:160], x[1500:1510], y[1500:1510]


def _mlp(dtype=np.float32):
    from influence.adapters.cntk import build_network
    return influence.CNTKModel(build_network(64, 10, hidden=(4,), dtype=dtype, seed=1), l2=0.01, batch_size=64)


def test_mlp_scores_from_ctf_equal_npz_to_the_bit(cntk, digits, tmp_path):
    x, y, xt, yt = digits
    write_ctf(str(tmp_path / "train.ctf"), x, y, 10)
    np.savez(str(tmp_path / "train.npz"), x=x, y=y)
    model = _mlp()
    w0 = model.get_params()
    ctf = influence.load_data(str(tmp_path / "train.ctf"), model)
    npz = influence.load_data(str(tmp_path / "train.npz"))
    assert isinstance(ctf, ctf_data.CTFDataset) and len(ctf) == 160 and np.array_equal(ctf.y, y)
    assert model.validate(ctf) is ctf                  # checked chunk by chunk while loading
    assert ctf.source == str(tmp_path / "train.ctf") and ctf.subset(slice(None)).source == ctf.source
    test = (xt, yt)
    for scoring in ("forward", "gradient"):
        a = influence.influence_scores(model, npz, test, damping=2.0, scoring=scoring, check_optimum=False,
                                       chunk_size=50)
        b = influence.influence_scores(model, ctf, test, damping=2.0, scoring=scoring, check_optimum=False,
                                       chunk_size=50)
        assert np.array_equal(a, b), scoring
    np.testing.assert_array_equal(
        influence.self_influence(model, npz, method="lanczos", k=5, damping=2.0, check_optimum=False),
        influence.self_influence(model, ctf, method="lanczos", k=5, damping=2.0, check_optimum=False))
    # integer-array subsets (pilot rows, leave-one-out) read the right rows in the asked order
    idx = np.array([7, 3, 3, 159, 0])
    np.testing.assert_array_equal(ctf.subset(idx).x, x[idx].astype(np.float32))
    np.testing.assert_array_equal(ctf.subset(idx).y, y[idx])
    assert np.array_equal(model.get_params(), w0)


def test_chunked_scoring_reads_only_its_chunk(cntk, digits, tmp_path):
    x, y, xt, yt = digits
    path = str(tmp_path / "train.ctf")
    write_ctf(path, x, y, 10)
    model = _mlp()
    train = influence.load_ctf(path, model)
    s = np.random.RandomState(0).standard_normal((2, model.n_params))
    steps = forward_steps(model, train, s)
    rows = []
    read = train.reader.read
    train.reader.read = lambda a, b: rows.append((a, b)) or read(a, b)
    train._src.cache.clear()
    got = chunk_scores(model, train, s, "forward", steps, 50, 100, batch_size=20)
    assert rows == [(50, 100)]                  # one read of the chunk, however many passes over it
    np.testing.assert_array_equal(got, chunk_scores(model, influence.Dataset(x, y), s, "forward", steps,
                                                    50, 100, batch_size=20))
    # the job fingerprint is the .ctf file's content fingerprint (plus how it is read)
    from influence.jobs import ScoreJob
    from influence.common.files import file_fingerprint
    fp = ScoreJob(model, train, (xt, yt)).fingerprint()["train"]
    assert fp["sha256"] == file_fingerprint(path)["sha256"] and fp["rows"] == 160
    assert fp["options"]["mapping"] == {}


def test_lstm_on_sparse_one_hot_sequences_from_ctf(cntk, tmp_path):
    C = cntk
    dtype = np.float64
    vocab, n = 12, 30
    rng = np.random.RandomState(3)
    lengths = rng.randint(1, 6, n)
    words = [rng.randint(0, vocab, t) for t in lengths]
    y = np.array([int(w[-1] % 2) for w in words])
    with open(str(tmp_path / "seq.ctf"), "w") as f:
        for i, w in enumerate(words):
            for t, j in enumerate(w):
                f.write("%d |words %d:1%s\n" % (i, j, " |label %d %d" % (1 - y[i], y[i]) if t == 0 else ""))
    with C.default_options(dtype=dtype):
        xv = C.sequence.input_variable(vocab, is_sparse=True, dtype=dtype, name="words")
        h = C.layers.Recurrence(C.layers.LSTM(3, init=C.glorot_uniform(seed=1)))(
            C.layers.Embedding(4, init=C.glorot_uniform(seed=2))(xv))
        z = C.layers.Dense(2, init=C.glorot_uniform(seed=3))(C.sequence.last(h))
    model = influence.CNTKModel(z, l2=0.01, batch_size=16)
    data = influence.load_ctf(str(tmp_path / "seq.ctf"), model, mapping={"label": "labels"})
    assert data.is_sequence and np.array_equal(data.y, y)
    part = data.subset(slice(0, 4)).x
    assert isinstance(part, Sequences) and scipy.sparse.issparse(part.values)
    csr = scipy.sparse.csr_matrix((np.ones(lengths.sum()), (np.arange(lengths.sum()), np.concatenate(words))),
                                  shape=(lengths.sum(), vocab))
    ref = influence.Dataset(Sequences(csr, lengths), y)
    np.testing.assert_array_equal(model.per_example_losses(data), model.per_example_losses(ref))
    assert [(len(b), b.x.n_steps) for b in data.batches(16)] == [(len(b), b.x.n_steps) for b in ref.batches(16)]
    a = influence.influence_scores(model, ref, ref.subset(np.array([0, 1])), damping=1.0, check_optimum=False,
                                   chunk_size=10)
    b = influence.influence_scores(model, data, ref.subset(np.array([0, 1])), damping=1.0, check_optimum=False,
                                   chunk_size=10)
    np.testing.assert_array_equal(a, b)


def test_labels_are_converted_or_refused_in_one_line(cntk, tmp_path):
    from influence.adapters.cntk import build_network
    x = np.random.RandomState(0).standard_normal((6, 3))
    model = influence.CNTKModel(build_network(3, 2, seed=0), l2=0.1)
    path = str(tmp_path / "soft.ctf")
    with open(path, "w") as f:
        for i in range(6):
            f.write("|features %s |labels %s\n" % (" ".join(map(str, x[i])), "0.3 0.7" if i == 4 else "1 0"))
    with pytest.raises(ValueError, match=r"soft.ctf, sequence 4: label stream 'labels' holds '0.3 0.7', not a "
                                         r"one-hot row; cross_entropy needs"):
        influence.load_ctf(path, model)
    binary = influence.CNTKModel(build_network(3, 1, seed=0), loss="binary_cross_entropy")
    path = str(tmp_path / "bin.ctf")
    with open(path, "w") as f:
        for i in range(6):
            f.write("|labels %d |features %s\n" % (i % 2, " ".join(map(str, x[i]))))
    data = influence.load_ctf(path, binary)
    assert data.y.dtype == np.int64 and data.y.tolist() == [0, 1, 0, 1, 0, 1]
    # without a model: {input: InputSpec}, labels named, kept as read
    raw = influence.load_ctf(path, {"features": 3, "labels": 1}, labels="labels")
    assert raw.y.shape == (6, 1) and np.array_equal(raw.subset(slice(0, 6)).x, x)
    with pytest.raises(ValueError, match="model has no input 'nosuch'"):
        influence.load_ctf(path, binary, mapping={"labels": "nosuch"})
    with pytest.raises(ValueError, match="not a CTF file.*mapping= and skip= apply to CTF streams only"):
        influence.load_data(str(tmp_path / "x.npz"), binary, skip=["w"])


# ---------------------------------------------------------------------------------------- CLI
def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, digits, cntk):
    d = tmp_path_factory.mktemp("ctfcli")
    x, y, xt, yt = digits
    np.savez(str(d / "train.npz"), x=x, y=y)
    np.savez(str(d / "test.npz"), x=xt, y=yt)
    # the label stream is called 'label' (mapped with --ctf-map) and a 'weight' stream is skipped
    write_ctf(str(d / "train.ctf"), x, y, 10, label="label", extra="weight")
    write_ctf(str(d / "test.ctf"), xt, yt, 10, label="label", extra="weight")
    model = str(d / "model.cntk")
    assert main(["train", "--data", str(d / "train.npz"), "--l2", "1e-2", "--out", model, "--quiet"]) == 0
    return d, model


def _ctf_argv(d):
    return ["--ctf-map", "label=labels", "--ctf-skip", "weight"]


def test_cli_score_self_verify_on_ctf_match_npz(cli_files, capsys):
    d, model = cli_files
    for ext in ("npz", "ctf"):
        extra = _ctf_argv(d) if ext == "ctf" else []
        code, out, err = run(["score", "--model", model, "--train", str(d / ("train." + ext)), "--test",
                              str(d / ("test." + ext)), "--test-index", "0", "3", "--chunk-size", "40",
                              "--out", str(d / ("scores-%s.csv" % ext)), "--quiet"] + extra, capsys)
        assert code == 0, err
        code, out, err = run(["self", "--model", model, "--train", str(d / ("train." + ext)),
                              "--out", str(d / ("self-%s.csv" % ext)), "--quiet"] + extra, capsys)
        assert code == 0, err
        code, out, err = run(["verify", "--model", model, "--train", str(d / ("train." + ext)), "--test",
                              str(d / ("test." + ext)), "--test-index", "1", "--retrainings", "3", "--json",
                              "--quiet"] + extra, capsys)
        assert code == 0, err
        verify = json.loads(out)
        if ext == "npz":
            ref = verify
    for name in ("scores", "self"):
        with open(str(d / ("%s-npz.csv" % name))) as a, open(str(d / ("%s-ctf.csv" % name))) as b:
            assert a.read() == b.read(), name
    assert verify["predicted"] == ref["predicted"] and verify["actual"] == ref["actual"]
    np.save(str(d / "v.npy"), np.ones(650))
    hv = {}
    for ext in ("npz", "ctf"):
        code, out, err = run(["hvp", "--model", model, "--data", str(d / ("train." + ext)), "--vector",
                              str(d / "v.npy"), "--out", str(d / ("hv-%s.npy" % ext)), "--quiet"]
                             + (_ctf_argv(d) if ext == "ctf" else []), capsys)
        assert code == 0, err
        hv[ext] = np.load(str(d / ("hv-%s.npy" % ext)))
    np.testing.assert_array_equal(hv["npz"], hv["ctf"])


@pytest.mark.parametrize("extra, message", [
    (["--ctf-map", "label=nosuch", "--ctf-skip", "weight"],
     "--ctf-map label=nosuch: the model has no input 'nosuch'; its inputs are 'features', 'labels'"),
    (["--ctf-map", "label", "--ctf-skip", "weight"], "--ctf-map 'label' is not STREAM=INPUT"),
    (["--ctf-skip", "weight"], "stream 'label' matches no input (the model's inputs are 'features', "
                               "'labels'); name the stream after an input, map it with --ctf-map label=INPUT "
                               "or ignore it with --ctf-skip label"),
    (["--ctf-map", "label=labels"], "ignore it with --ctf-skip weight"),
    (["--ctf-map", "label=labels", "--ctf-skip", "label"], "--ctf-skip label: the stream is also mapped"),
    (["--ctf-map", "label=labels", "--ctf-skip", "weight", "--ctf-skip", "features"],
     "--ctf-skip features: stream 'features' feeds the model's input 'features'; drop it from skip"),
])
def test_cli_bad_ctf_mapping_is_one_line_exit_2(cli_files, capsys, extra, message):
    d, model = cli_files
    code, out, err = run(["self", "--model", model, "--train", str(d / "train.ctf"), "--quiet"] + extra, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("influence: error: --")


def test_cli_ctf_flags_without_ctf_data_and_train_on_ctf_are_refused(cli_files, capsys):
    d, model = cli_files
    code, out, err = run(["self", "--model", model, "--train", str(d / "train.npz"), "--ctf-skip", "w"], capsys)
    assert code == 2 and "--ctf-skip apply to CTF data (.ctf or .txt files) only" in err
    code, out, err = run(["train", "--data", str(d / "train.ctf"), "--out", str(d / "m2.cntk")], capsys)
    assert code == 2 and "--data" in err and "reads .npz files only" in err and not os.path.exists(str(d / "m2.cntk"))


def test_ctf_dataset_rows_and_batches_without_cntk(tmp_path, monkeypatch):
    # runs on modern Python too: the lazy rows and batch bounds are the in-memory Dataset's
    from influence.data.ctf_reader import InputSpec
    rng = np.random.RandomState(5)
    lengths = rng.randint(1, 5, 25)
    steps = [rng.standard_normal((t, 2)) for t in lengths]
    y = rng.randint(0, 2, 25)
    path = str(tmp_path / "s.txt")
    with open(path, "w") as f:
        for i, s in enumerate(steps):
            for t, row in enumerate(s):
                f.write("%d |x %s%s\n" % (i, " ".join(ctf_number(v) for v in row), " |y %d" % y[i] if t == 0 else ""))
    data = influence.load_data(path, {"x": InputSpec(2, is_sequence=True), "y": 1}, labels="y")
    ref = influence.Dataset(steps, y.reshape(-1, 1).astype(float))
    assert len(data) == 25 and data.is_sequence and np.array_equal(data.y, ref.y)
    got = [(len(b), b.x.n_steps) for b in data.batches(7)]
    assert got == [(len(b), b.x.n_steps) for b in ref.batches(7)] and sum(n for n, _ in got) == 25
    for b, r in zip(data.batches(7), ref.batches(7)):
        np.testing.assert_array_equal(b.x.values, r.x.values)
    idx = np.array([24, 0, 5, 5, 6, 7])
    read, reads = data.reader.read, []
    monkeypatch.setattr(data.reader, "read", lambda a, b: reads.append((a, b)) or read(a, b))
    for cache_rows in (ctf_data.CACHE_ROWS, 2):     # one read of the span, or one read per run of rows
        monkeypatch.setattr(ctf_data, "CACHE_ROWS", cache_rows)
        data._src.cache.clear()
        del reads[:]
        np.testing.assert_array_equal(data.subset(idx).x.values, ref.subset(idx).x.values)
        np.testing.assert_array_equal(data.subset(idx).x.lengths, lengths[idx])
        np.testing.assert_array_equal(data.subset(idx).y, ref.y[idx])
        assert reads[0] == ((0, 25) if cache_rows > 2 else (0, 1))
        assert cache_rows > 2 or reads[:3] == [(0, 1), (5, 8), (24, 25)]
    del reads[:]
    assert data.nbytes == ref.x.values.nbytes + ref.y.nbytes and reads == []     # sized without reading
    copy = data.subset(slice(None))
    assert isinstance(copy, ctf_data.CTFDataset) and copy.source == data.source and len(copy) == 25
    np.testing.assert_array_equal(data.x.values, ref.x.values)        # x: the whole file, on request
    with pytest.raises(IndexError, match="row 25 is out of range"):
        data.subset(np.array([25]))
    with pytest.raises(ValueError, match="is a CTF file: its dimensions come from the model"):
        influence.load_data(path)


def test_cli_on_ctf_for_a_cnn_and_a_sparse_lstm(cntk, tmp_path, capsys):
    # Trainer-trained models, far from an optimum: the Gauss-Newton matrix (issue 19: CTF data, a CNN and
    # a sparse-input LSTM), the same from .ctf as from .npz. A fixed damping keeps the test short (the
    # defaults, auto curvature and auto damping, are tested on a Trainer-trained network in
    # test_cli_curvature.py; with them this test took 218 s on the loaded machine)
    from influence.adapters.cntk import build_cnn
    C = cntk
    x, y = influence.load_digits()
    images = x[:40].reshape(-1, 1, 8, 8)
    np.savez(str(tmp_path / "img.npz"), x=images, y=y[:40])
    write_ctf(str(tmp_path / "img.ctf"), images, y[:40], 10)      # 64 values per sample, shaped by the model
    cnn = build_cnn((1, 8, 8), 10, channels=(2,), activation="tanh", pooling="average", dtype=np.float64, seed=1)
    from cntk_nets import train_with_trainer
    train_with_trainer(cnn, {cnn.arguments[0]: images}, y[:40], epochs=2)
    cnn.save(str(tmp_path / "cnn.model"))
    vocab = 9
    rng = np.random.RandomState(7)
    with open(str(tmp_path / "seq.ctf"), "w") as f:
        for i in range(20):
            label = i % 2
            for t in range(1 + i % 4):
                f.write("%d |words %d:1%s\n" % (i, rng.randint(vocab), " |labels %d %d" % (1 - label, label)
                                                 if t == 0 else ""))
    with C.default_options(dtype=np.float64):
        words = C.sequence.input_variable(vocab, is_sparse=True, name="words")
        h = C.layers.Recurrence(C.layers.LSTM(3, init=C.glorot_uniform(seed=1)))(
            C.layers.Embedding(3, init=C.glorot_uniform(seed=2))(words))
        C.layers.Dense(2, init=C.glorot_uniform(seed=3))(C.sequence.last(h)).save(str(tmp_path / "lstm.model"))
    outputs = {}
    for model, train in (("cnn.model", "img.npz"), ("cnn.model", "img.ctf"), ("lstm.model", "seq.ctf")):
        for cmd in ("score", "self"):
            out = str(tmp_path / ("%s-%s-%s.csv" % (model, train, cmd)))
            argv = [cmd, "--model", str(tmp_path / model), "--train", str(tmp_path / train),
                    "--curvature", "gauss-newton", "--damping", "0.5", "--l2", "0.01", "--out", out, "--quiet"]
            if cmd == "score":
                argv += ["--test", str(tmp_path / train), "--test-index", "0", "5"]
            assert main(argv) == 0, (model, train, cmd, capsys.readouterr().err)
            with open(out) as f:
                outputs[model, train, cmd] = f.read()
            with open(out + ".meta.json") as f:
                meta = json.load(f)
            assert meta["curvature"] == "gauss-newton" and meta["damping"] == 0.5, (model, train, cmd, meta)
    for cmd in ("score", "self"):
        assert outputs["cnn.model", "img.npz", cmd] == outputs["cnn.model", "img.ctf", cmd], cmd
    assert len(outputs["lstm.model", "seq.ctf", "self"].splitlines()) == 21


def test_job_fingerprint_of_in_memory_sequences_sparse_and_dicts():
    # ScoreJob fingerprints in-memory test rows (e.g. --test-index rows of a .ctf file): every kind of x
    from influence.jobs import data_identity
    seqs = influence.Dataset(Sequences(np.arange(10.0).reshape(5, 2), [2, 3]), np.array([0, 1]))
    other = influence.Dataset(Sequences(np.arange(10.0).reshape(5, 2), [3, 2]), np.array([0, 1]))
    assert data_identity(seqs) != data_identity(other) and data_identity(seqs) == data_identity(seqs.subset(slice(None)))
    csr = influence.Dataset(scipy.sparse.csr_matrix(np.eye(3)), np.arange(3))
    assert data_identity(csr)["x"]["shape"] == [3, 3]
    both = influence.Dataset({"a": np.zeros((2, 1)), "b": np.ones((2, 2))}, np.arange(2))
    assert set(data_identity(both)["x"]) == {"a", "b"}
