"""s_test on a Dask LocalCluster (influence.dask.hessian.DaskHessianOperator): products and solves equal
the single-process operator's to CLUSTER_RTOL in float64 (the same batches, the shards' sums added in
another order), a worker killed during a solve costs a retry and nothing else, the client's weights
never move. One 2-worker cluster per module."""
import os

import numpy as np
import pytest

import influence
from influence import dask as cluster, jobs
from influence.models import SoftmaxRegression

from conftest import die_if_claimed, make_classification, write_ctf

distributed = pytest.importorskip("distributed")
from influence.dask.hessian import DaskHessianOperator, _shard_bounds  # noqa: E402  (needs distributed)

#: Products and s_test vectors on the cluster vs one process, relative (2-norm), float64 models.
CLUSTER_RTOL = 1e-10
BATCH = 128


@pytest.fixture(scope="module")
def client():
    c = cluster.connect("local:2")
    try:
        c.wait_for_workers(2)
        yield c
    finally:
        c.close()


def _rel(a, b):
    return np.linalg.norm(np.ravel(a - b)) / np.linalg.norm(np.ravel(b))


def _grad_passes(client):
    counts = client.run(lambda: dict(__import__("influence.dask.hessian", fromlist=["GRAD_PASSES"]).GRAD_PASSES))
    return {w: sum(c.values()) for w, c in counts.items()}


class DyingModel(SoftmaxRegression):
    """A SoftmaxRegression whose worker process exits (os._exit) in the middle of a gradient pass when
    the file ``self.marker`` exists; the first process other than the client to claim it dies, once."""

    marker = None
    client_pid = None

    def _grad_sum(self, batch):
        die_if_claimed(self.marker, self.client_pid)
        return SoftmaxRegression._grad_sum(self, batch)


def _problem(tmp_path, n=2000, cls=SoftmaxRegression):
    x, y = make_classification(n, 6, 3, seed=4)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x, y=y)
    train = influence.load_npz(path)
    model = cls(6, 3, l2=1e-2)
    influence.fit(model, train)
    return model, train, (x[:3], y[:3])


def test_shard_bounds_start_on_batch_boundaries_and_cover_the_rows():
    bounds = [(a, min(a + 100, 1050)) for a in range(0, 1050, 100)]
    for k in (1, 2, 3, 5, 11, 50):
        shards = _shard_bounds(bounds, k)
        assert len(shards) == min(k, len(bounds))
        assert shards[0][0] == 0 and shards[-1][1] == 1050
        assert all(a == b for (_, a), (b, _) in zip(shards[:-1], shards[1:]))
        assert all(a % 100 == 0 for a, _ in shards)
        sizes = [b - a for a, b in shards]
        assert max(sizes) - min(sizes) <= 100
    seq = [(0, 3), (3, 4), (4, 9), (9, 10)]          # uneven batches (sequences): still on boundaries
    assert _shard_bounds(seq, 2) == [(0, 4), (4, 10)]


def test_products_and_s_test_equal_the_single_process_operator(client, tmp_path):
    model, train, test = _problem(tmp_path)
    w0 = model.get_params()
    before = _grad_passes(client)
    rng = np.random.RandomState(5)
    for stencil in ("central", "richardson"):
        local = influence.HessianOperator(model, train, batch_size=BATCH, stencil=stencil)
        with DaskHessianOperator(client, model, train, batch_size=BATCH, stencil=stencil) as H:
            assert len(H.shard_bounds) == 2 and H.shard_bounds[1][0] % BATCH == 0
            for _ in range(3):
                v = rng.standard_normal(model.n_params)
                assert _rel(H.matvec(v), local.matvec(v)) <= CLUSTER_RTOL, stencil
            assert H.rel_step == local.rel_step         # the same calibration, the same step
            assert not H.matvec(np.zeros(model.n_params)).any()
    assert np.array_equal(model.get_params(), w0)
    after = _grad_passes(client)
    assert all(after[w] > before.get(w, 0) for w in after), (before, after)    # both shards worked

    for solver in ("cg", "direct"):
        ref = influence.s_test(model, train, test, solver, damping=1e-3, batch_size=BATCH)
        with DaskHessianOperator(client, model, train, batch_size=BATCH) as H:
            got = influence.s_test(model, train, test, solver, damping=1e-3, batch_size=BATCH, hessian=H)
            assert H.n_grad > 0
        assert _rel(got.vectors, ref.vectors) <= CLUSTER_RTOL, solver
        assert all(s.converged for s in got.solutions)
    assert np.array_equal(model.get_params(), w0)


def test_influence_scores_with_the_executor_solves_s_test_on_the_cluster(client, tmp_path):
    model, train, test = _problem(tmp_path, n=1200)
    ref = influence.influence_scores(model, train, test, damping=1e-3, batch_size=BATCH, chunk_size=500)
    before = sum(_grad_passes(client).values())
    got = influence.influence_scores(model, train, test, damping=1e-3, batch_size=BATCH, chunk_size=500,
                                     executor=cluster.DaskExecutor(client))
    assert sum(_grad_passes(client).values()) > before        # the HVPs ran on the workers
    assert _rel(got, ref) <= CLUSTER_RTOL
    before = sum(_grad_passes(client).values())
    same = influence.influence_scores(model, train, test, damping=1e-3, batch_size=BATCH, chunk_size=500,
                                      executor=cluster.DaskExecutor(client, hessian=False))
    assert sum(_grad_passes(client).values()) == before       # s_test solved on the client
    assert np.array_equal(same, ref)
    # the resumable job solves there too
    job = jobs.ScoreJob(model, train, test, damping=1e-3, batch_size=BATCH, chunk_size=500,
                        executor=cluster.DaskExecutor(client))
    assert _rel(job.run().scores, ref) <= CLUSTER_RTOL


def test_worker_killed_during_a_solve_is_retried_and_the_solve_completes(client, tmp_path):
    model, train, test = _problem(tmp_path, cls=DyingModel)
    ref = influence.s_test(model, train, test, damping=1e-3, batch_size=BATCH)
    w0 = model.get_params()
    marker = str(tmp_path / "die")
    model.marker, model.client_pid = marker, os.getpid()

    class KillAfterThree(DaskHessianOperator):
        def _matvec(self, v):
            if self.n_hvp == 3:                      # the 4th product: one worker dies in its pass
                open(marker, "w").close()
            return DaskHessianOperator._matvec(self, v)

    before = set(client.scheduler_info()["workers"])
    with KillAfterThree(client, model, train, batch_size=BATCH) as H:
        got = influence.s_test(model, train, test, damping=1e-3, batch_size=BATCH, hessian=H)
    claimed = [f for f in os.listdir(str(tmp_path)) if f.startswith("die.")]
    assert len(claimed) == 1 and not os.path.exists(marker)          # a worker did die mid-solve
    assert _rel(got.vectors, ref.vectors) <= CLUSTER_RTOL
    assert all(s.converged for s in got.solutions)
    assert np.array_equal(model.get_params(), w0)
    client.wait_for_workers(2)            # the nanny restarted it, with a new address
    assert set(client.scheduler_info()["workers"]) != before


def test_failures_leave_the_client_weights_unchanged(client, tmp_path):
    model, train, test = _problem(tmp_path, n=800)
    w0 = model.get_params()
    H = DaskHessianOperator(client, model, train, batch_size=BATCH)
    v = np.random.RandomState(0).standard_normal(model.n_params)
    H.matvec(v)
    model.set_params(w0 + 1e-3)                           # weights moved after the operator was built
    with pytest.raises(ValueError, match="weights changed since this DaskHessianOperator was built"):
        H.matvec(v)
    model.set_params(w0)
    x, y = np.load(train.source)["x"], np.load(train.source)["y"]
    np.savez(train.source, x=x[::-1].copy(), y=y[::-1].copy())       # same size, other content
    with pytest.raises(ValueError) as info:
        H.matvec(v)
    assert train.source in str(info.value) and "worker pid" in str(info.value)
    assert np.array_equal(model.get_params(), w0)
    H.close()
    fresh = influence.load_npz(train.source)
    with pytest.raises(ValueError, match="shards=0 must be a positive integer"):
        DaskHessianOperator(client, model, fresh, shards=0)
    with pytest.raises(ValueError, match="load_npz"):
        DaskHessianOperator(client, model, (x, y))


def test_cntk_float64_network_equal_to_the_single_process_operator(client, cntk, tmp_path):
    from influence.adapters.cntk import CNTKModel, build_network
    from cntk_nets import train_with_trainer
    x, y = make_classification(900, 6, 3, seed=6)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x, y=y)
    train = influence.load_npz(path)
    net = build_network(6, 3, hidden=(8,), dtype=np.float64)
    train_with_trainer(net, {net.arguments[0]: x}, y, epochs=2)
    saved = str(tmp_path / "net.model")
    net.save(saved)
    model = CNTKModel.load(saved, l2=1e-2, batch_size=BATCH)
    assert model.dtype == np.float64
    w0 = model.get_params()
    local = influence.HessianOperator(model, train)       # not at a minimum: damped to be positive definite
    with DaskHessianOperator(client, model, train) as H:
        v = np.random.RandomState(1).standard_normal(model.n_params)
        assert _rel(H.matvec(v), local.matvec(v)) <= CLUSTER_RTOL
        got = influence.s_test(model, train, (x[:2], y[:2]), damping=1.0, hessian=H, check_optimum=False)
    ref = influence.s_test(model, train, (x[:2], y[:2]), damping=1.0, check_optimum=False)
    assert _rel(got.vectors, ref.vectors) <= CLUSTER_RTOL
    assert np.array_equal(model.get_params(), w0)


def test_score_command_solves_s_test_on_the_cluster(client, cntk, tmp_path, capsys, monkeypatch):
    """`influence score --cluster local:2` with batches small enough for two shards: the same table
    as one process (s_test to CLUSTER_RTOL, then scoring to the bit for that s_test)."""
    import json
    from influence.cli import main
    x, y = influence.load_digits()
    np.savez(str(tmp_path / "train.npz"), x=x[:600], y=y[:600])
    np.savez(str(tmp_path / "test.npz"), x=x[1500:1505], y=y[1500:1505])
    trained = str(tmp_path / "model.cntk")
    assert main(["train", "--data", str(tmp_path / "train.npz"), "--arch", "softmax", "--l2", "1e-2",
                 "--out", trained, "--quiet"]) == 0
    base = ["score", "--model", trained, "--train", str(tmp_path / "train.npz"), "--test",
            str(tmp_path / "test.npz"), "--test-index", "1", "--batch-size", "100", "--quiet", "--json",
            "--curvature", "hessian", "--solver", "cg"]   # the Hessian on the cluster (Gauss-Newton: its own
    # test), and one solver for both runs (auto plans from a timed product, which differs on the cluster;
    # --preconditioner auto decides from the sizes alone, so both runs choose alike)
    capsys.readouterr()
    rounds = []
    real = DaskHessianOperator._grad_sums

    def counted(self, weights):
        rounds.append(len(self.shard_bounds))
        return real(self, weights)
    monkeypatch.setattr(DaskHessianOperator, "_grad_sums", counted)
    tables = []
    import subprocess
    import sys
    for extra in ([], ["--cluster", "local:2"]):
        out = str(tmp_path / ("scores%d.csv" % len(extra)))
        if extra:
            assert main(base + ["--out", out] + extra) == 0
            summary = json.loads(capsys.readouterr().out)
        else:   # one process as the workers are, fresh (this process's CNTK has run other networks)
            proc = subprocess.run([sys.executable, "-m", "influence"] + base + ["--out", out],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                  env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                                      os.path.abspath(__file__)))))
            assert proc.returncode == 0, proc.stderr
            summary = json.loads(proc.stdout)
        assert summary["solutions"][0]["converged"]
        tables.append(np.genfromtxt(out, delimiter=",", names=True))
    single, clustered = tables
    assert rounds and set(rounds) == {2}             # the products ran on two shards
    assert np.array_equal(single["train_index"], clustered["train_index"])
    assert _rel(clustered["influence"], single["influence"]) <= CLUSTER_RTOL


def test_cntk_model_on_a_ctf_training_file(client, cntk, tmp_path):
    """The workers reopen the .ctf file with the client's mapping and read their shard themselves."""
    from influence.adapters.cntk import CNTKModel, build_network
    x, y = make_classification(700, 6, 3, seed=7)
    path = str(tmp_path / "train.ctf")
    write_ctf(path, x, y, 3, label="label")
    model = CNTKModel(build_network(6, 3, hidden=(5,), dtype=np.float64), loss="cross_entropy", l2=1e-2,
                      batch_size=100)
    train = influence.load_ctf(path, model, mapping={"label": "labels"})
    local = influence.HessianOperator(model, train)
    with DaskHessianOperator(client, model, train) as H:
        assert H.shard_bounds == [(0, 300), (300, 700)] or H.shard_bounds == [(0, 400), (400, 700)]
        v = np.random.RandomState(2).standard_normal(model.n_params)
        assert _rel(H.matvec(v), local.matvec(v)) <= CLUSTER_RTOL


def test_products_run_when_no_worker_is_listed_yet(client, tmp_path, monkeypatch):
    """A cluster still starting (or a stale scheduler listing) names no worker: the shard tasks are then
    submitted without a placement instead of failing (Dask refuses allow_other_workers without workers)."""
    model, train, _ = _problem(tmp_path, n=600)
    local = influence.HessianOperator(model, train, batch_size=BATCH)
    with DaskHessianOperator(client, model, train, batch_size=BATCH, shards=2) as H:
        monkeypatch.setattr(H, "_workers", lambda: [])
        v = np.random.RandomState(1).standard_normal(model.n_params)
        assert _rel(H.matvec(v), local.matvec(v)) <= CLUSTER_RTOL


# ------------------------------------------------------------------------------------ Gauss-Newton
def test_gauss_newton_on_the_cluster_equals_one_process(client, tmp_path):
    """DaskGaussNewtonOperator: the shards' Jᵀ H_ℓ J v on the workers, summed on the client, equal the
    single-process GaussNewtonOperator (same calibrated step, same batches) to CLUSTER_RTOL; with
    damping="auto" the probes run on the workers and give the same damping; s_test with
    curvature="gauss-newton" through the executor equals the single-process one."""
    from influence.dask import DaskGaussNewtonOperator
    model, train, test = _problem(tmp_path)
    model.set_params(model.get_params() + 0.3)          # off the optimum: where Gauss-Newton is used
    local = influence.GaussNewtonOperator(model, train, batch_size=BATCH)
    v = np.random.RandomState(1).standard_normal(model.n_params)
    expected = local @ v
    w = model.get_params().copy()
    with DaskGaussNewtonOperator(client, model, train, batch_size=BATCH, rel_step=local.rel_step) as op:
        assert len(op.shard_bounds) == 2
        assert _rel(op @ v, expected) <= CLUSTER_RTOL
        assert op.n_backward == 1
    with DaskGaussNewtonOperator(client, model, train, damping="auto", batch_size=BATCH) as op:
        auto = influence.GaussNewtonOperator(model, train, damping="auto", batch_size=BATCH)
        assert op.damping == pytest.approx(auto.damping, rel=1e-10)
    assert np.array_equal(model.get_params(), w)
    executor = cluster.DaskExecutor(client)
    st = influence.s_test(model, train, test, curvature="gauss-newton", damping=0.01, rtol=1e-10,
                          hessian=executor.hessian_operator(model, train, BATCH))
    one = influence.s_test(model, train, test, curvature="gauss-newton", damping=0.01, rtol=1e-10,
                           batch_size=BATCH)
    assert st.curvature == "gauss-newton" and _rel(st.vectors, one.vectors) <= 1e-8
