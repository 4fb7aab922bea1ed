"""Scoring on a Dask LocalCluster (influence.dask.executor): identical to the single-process run to the
bit, resilient to a worker dying mid-run, resumable. One 2-worker cluster per module."""
import os

import numpy as np
import pytest

import influence
from influence import dask as cluster
from influence.jobs import Checkpoint
from influence.models import SoftmaxRegression

from conftest import die_if_claimed, make_classification, write_ctf

distributed = pytest.importorskip("distributed")

CHUNK = 250


@pytest.fixture(scope="module")
def client():
    c = cluster.connect("local:2")
    try:
        c.wait_for_workers(2)
        yield c
    finally:
        c.close()


class DyingModel(SoftmaxRegression):
    """A SoftmaxRegression whose worker process exits (os._exit) in the middle of a task when the
    file ``self.marker`` exists; the first process (other than the client, ``self.client_pid``) to
    claim the file (atomic rename) dies, once."""

    marker = None
    client_pid = None

    def _per_example_losses(self, batch):
        die_if_claimed(self.marker, self.client_pid)
        return SoftmaxRegression._per_example_losses(self, batch)


def _softmax_problem(tmp_path, n=1500, cls=SoftmaxRegression):
    x, y = make_classification(n, 5, 3, seed=1)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x, y=y)
    train = influence.load_npz(path)
    model = cls(5, 3, l2=1e-2)
    influence.fit(model, train)
    rng = np.random.RandomState(0)
    s = rng.standard_normal((2, model.n_params))
    return model, train, (x[:2], y[:2]), s


def test_numpy_model_bit_identical_forward_and_gradient(client, tmp_path):
    model, train, test, s = _softmax_problem(tmp_path)
    assert train.source == os.path.abspath(str(tmp_path / "train.npz"))
    w0 = model.get_params()
    for scoring in ("forward", "gradient"):
        ref = influence.influence_scores(model, train, test, s=s, scoring=scoring, chunk_size=CHUNK)
        got = influence.influence_scores(model, train, test, s=s, scoring=scoring, chunk_size=CHUNK,
                                         executor=cluster.DaskExecutor(client))
        assert got.shape == ref.shape == (2, len(train))
        assert np.array_equal(got, ref), scoring
    assert np.array_equal(model.get_params(), w0)
    # the full API (s_test solved on the client) on one test point
    ref = influence.influence_scores(model, train, (test[0][:1], test[1][:1]), damping=0.01, chunk_size=CHUNK)
    got = influence.influence_scores(model, train, (test[0][:1], test[1][:1]), damping=0.01, chunk_size=CHUNK,
                                     executor=cluster.DaskExecutor(client))
    assert np.array_equal(got, ref)
    # each worker loaded the model at most once per distinct model content, not once per task
    loads = client.run(lambda: dict(__import__("influence.dask.worker", fromlist=["LOADS"]).LOADS))
    assert all(count == 1 for per_worker in loads.values() for count in per_worker.values()), loads


def test_worker_killed_mid_run_loses_nothing(client, tmp_path):
    model, train, test, s = _softmax_problem(tmp_path, cls=DyingModel)
    ref = influence.influence_scores(model, train, test, s=s, chunk_size=CHUNK)
    before = set(client.scheduler_info()["workers"])
    model.marker, model.client_pid = str(tmp_path / "die"), os.getpid()
    open(model.marker, "w").close()
    got = influence.influence_scores(model, train, test, s=s, chunk_size=CHUNK, executor=cluster.DaskExecutor(client))
    claimed = [f for f in os.listdir(str(tmp_path)) if f.startswith("die.")]
    assert len(claimed) == 1 and not os.path.exists(model.marker)      # one worker did die mid-task
    assert np.array_equal(got, ref)
    client.wait_for_workers(2)     # the nanny restarted it (with a new address)
    assert set(client.scheduler_info()["workers"]) != before


def test_resume_with_cluster_never_recomputes_finished_chunks(client, tmp_path):
    model, train, test, s = _softmax_problem(tmp_path)
    folder = str(tmp_path / "ckpt")
    first = Checkpoint(folder, {"job": 1})
    ref = influence.influence_scores(model, train, test, s=s, chunk_size=CHUNK, checkpoint=first)
    assert first.release()                                     # the chunks are kept, the lock dropped
    ck = Checkpoint(folder, {"job": 1}, resume=True)
    sentinel = np.full((2, CHUNK), 7.0)
    ck.save_chunk(0, CHUNK, sentinel)                          # "finished" chunk with marked values
    os.remove(ck._chunk_path(CHUNK, 2 * CHUNK))                # an unfinished chunk
    got = influence.influence_scores(model, train, test, s=s, chunk_size=CHUNK, checkpoint=ck,
                                     executor=cluster.DaskExecutor(client))
    assert np.array_equal(got[:, :CHUNK], -sentinel)          # taken from the checkpoint, not recomputed
    assert np.array_equal(got[:, CHUNK:], ref[:, CHUNK:])     # recomputed on the cluster, to the bit
    assert np.array_equal(ck.load_chunk(CHUNK, 2 * CHUNK), -ref[:, CHUNK:2 * CHUNK])


def test_in_memory_training_data_is_refused(client, tmp_path):
    model, train, test, s = _softmax_problem(tmp_path, n=300)
    with pytest.raises(ValueError, match="load_npz"):
        influence.influence_scores(model, (np.asarray(train.x), np.asarray(train.y)), test, s=s, executor=cluster.DaskExecutor(client))
    with pytest.raises(ValueError, match="load_npz"):      # a row subset is not the file any more
        influence.influence_scores(model, train.subset(np.arange(100)), test, s=s, executor=cluster.DaskExecutor(client))
    with pytest.raises(TypeError, match=r"executor=influence.dask.executor.DaskExecutor\(client\)"):
        influence.influence_scores(model, train, test, s=s, client=client)


def test_training_file_rewritten_after_the_fingerprint_is_refused_by_the_workers(client, tmp_path,
                                                                                 monkeypatch):
    """The file is rewritten with the same shape (same size) while s_test is solved, i.e. after the
    job took its fingerprint and before any worker reads a row: the workers refuse it, naming it."""
    model, train, test, _ = _softmax_problem(tmp_path, n=600)
    path = train.source
    x, y = np.load(path)["x"], np.load(path)["y"]
    real_s_test = influence.jobs.s_test

    def s_test_then_rewrite(*args, **kwargs):
        result = real_s_test(*args, **kwargs)
        np.savez(path, x=x[::-1].copy(), y=y[::-1].copy())
        return result
    monkeypatch.setattr(influence.jobs, "s_test", s_test_then_rewrite)
    size = os.path.getsize(path)
    job = influence.jobs.ScoreJob(model, train, test, chunk_size=CHUNK, executor=cluster.DaskExecutor(client),
                                  check_optimum=False)
    with pytest.raises(ValueError) as info:
        job.run()
    text = str(info.value)
    assert os.path.getsize(path) == size
    assert path in text and "changed while the job used it" in text and "worker pid" in text, text


def test_unreachable_scheduler_is_refused_fast():
    import time
    t0 = time.time()
    with pytest.raises(ValueError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        cluster.check_reachable("tcp://127.0.0.1:9")
    assert time.time() - t0 < 5
    cluster.check_reachable("local:2")         # nothing to reach


@pytest.mark.parametrize("spec", ["local", "local:0", "local:x", "8786", "http://h:1", "tcp://host", ""])
def test_bad_spec(spec):
    with pytest.raises(ValueError, match="local:N"):
        cluster.connect(spec)


def test_parse_spec():
    assert cluster.parse_spec("local:3") == ("local", 3)
    assert cluster.parse_spec("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")


def test_unreachable_scheduler():
    with pytest.raises(ValueError, match="dask-scheduler"):
        cluster.connect("tcp://127.0.0.1:9", timeout=1)


def test_missing_dask_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'dask\[distributed\]'"):
        cluster.connect("local:1")


def test_cntk_model_bit_identical(client, cntk, tmp_path):
    from influence.adapters.cntk import CNTKModel, build_network
    x, y = make_classification(1200, 6, 3, seed=2)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x.astype(np.float32), y=y)
    train = influence.load_npz(path)
    model = CNTKModel(build_network(6, 3, hidden=(8,)), loss="cross_entropy", l2=1e-3, batch_size=100)
    s = np.random.RandomState(0).standard_normal((2, model.n_params))
    test = (x[:2].astype(np.float32), y[:2])
    w0 = model.get_params()
    for scoring in ("forward", "gradient"):
        ref = influence.influence_scores(model, train, test, s=s, scoring=scoring, chunk_size=300,
                                         check_optimum=False)
        got = influence.influence_scores(model, train, test, s=s, scoring=scoring, chunk_size=300,
                                         check_optimum=False, executor=cluster.DaskExecutor(client))
        assert np.array_equal(got, ref), scoring
    assert np.array_equal(model.get_params(), w0)
    loads = client.run(lambda: dict(__import__("influence.dask.worker", fromlist=["LOADS"]).LOADS))
    assert all(count == 1 for per_worker in loads.values() for count in per_worker.values()), loads


def test_cntk_model_with_exclude_on_a_ctf_training_file(client, cntk, tmp_path):
    # the workers rebuild the model with the same exclude= names and reopen the .ctf file themselves
    from influence.adapters.cntk import CNTKModel, build_network
    x, y = make_classification(600, 6, 3, seed=3)
    path = str(tmp_path / "train.ctf")
    write_ctf(path, x, y, 3, label="label")
    model = CNTKModel(build_network(6, 3, hidden=(5,)), loss="cross_entropy", l2=1e-3, batch_size=100,
                      exclude=["b"])
    assert model.n_params == 6 * 5 + 5 * 3
    train = influence.load_ctf(path, model, mapping={"label": "labels"})
    s = np.random.RandomState(1).standard_normal((1, model.n_params))
    test = (x[:1].astype(np.float32), y[:1])
    ref = influence.influence_scores(model, train, test, s=s, chunk_size=200, check_optimum=False)
    got = influence.influence_scores(model, train, test, s=s, chunk_size=200, check_optimum=False,
                                     executor=cluster.DaskExecutor(client))
    assert np.array_equal(got, ref)
    pred = CNTKModel(build_network(6, 3, hidden=(5,)), exclude=lambda p: p.name == "b")
    with pytest.raises(ValueError, match="predicate exclude=.*cannot be sent to the cluster workers; build it "
                                         "with exclude= parameter names"):
        cluster.DaskExecutor(client).check(pred, influence.load_ctf(path, pred, mapping={"label": "labels"}))
