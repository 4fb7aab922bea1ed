"""EK-FAC fitted in chunks (influence.curvature.ekfac_fit.FactorFit, influence.EKFAC.from_sums,
influence.jobs.FactorJob): the same factors as the in-process fit whatever the chunk and batch sizes,
a resumed fit after an interruption the same bits as an uninterrupted one, the second pass's chunks
reused only with the first pass they were computed after, a resume with other settings refused,
and the same bits from 1 and 2 Dask workers. The weights are unchanged afterwards."""
import os

import numpy as np
import pytest

import influence
from influence import EKFAC
from influence.curvature.ekfac_fit import FactorFit
from influence.jobs import FactorJob
from influence.models import SoftmaxRegression

from conftest import make_classification

#: Chunked sums only reorder float64 additions (measured up to 4e-15 relative on the CNTK MLP below,
#: including the eigendecompositions and the second pass in their eigenbases).
CHUNK_RTOL = 1e-12
N = 90


def _rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300)


def _assert_same_factors(got, ref, rtol):
    """Every stored part of two EKFACs agrees to ``rtol`` (relative to each part's largest entry), and
    so do the operator and its inverse on random vectors (what does not depend on the eigenvectors'
    signs)."""
    assert got.plan() == ref.plan() and got.n_passes == ref.n_passes
    assert _rel(got.diagonal, ref.diagonal) <= rtol
    for b, r in zip(got.blocks, ref.blocks):
        for part in ("A", "S", "la", "ls", "eig"):
            assert _rel(getattr(b, part), getattr(r, part)) <= rtol, part
    assert got.block_damping == pytest.approx(ref.block_damping, rel=rtol, abs=0)
    V = np.random.RandomState(7).randn(3, ref.shape[0])
    assert _rel(got @ V.T, ref @ V.T) <= rtol
    assert _rel(got.solve(V), ref.solve(V)) <= rtol


def _same_bits(a, b):
    return (np.array_equal(a.diagonal, b.diagonal) and a.block_damping == b.block_damping
            and all(np.array_equal(getattr(p, k), getattr(q, k))
                    for p, q in zip(a.blocks, b.blocks) for k in ("A", "S", "qa", "qs", "eig")))


@pytest.fixture(scope="module")
def mlp(cntk):
    from influence.adapters.cntk import build_network
    x, y = influence.load_digits()
    z = build_network(64, 10, hidden=(6,), activation="tanh", dtype=np.float64, seed=1)
    return influence.CNTKModel(z, l2=1e-2), (x[:N].astype(np.float64), y[:N]), z


# ------------------------------------------------------------------------------------ the curvature layer
@pytest.mark.parametrize("strategy", ["ekfac", "kfac", "diagonal"])
def test_sums_of_chunks_in_any_order_give_the_in_process_factors(mlp, strategy):
    from cntk_nets import same_state, state
    model, data, z = mlp
    before = state(z)
    ref = EKFAC(model, data, strategy=strategy, random_state=3, batch_size=16)
    fit = FactorFit(model, data, strategy, "sampled", 3, batch_size=5)
    bounds = [(a, min(a + 13, N)) for a in range(0, N, 13)][::-1]          # the last chunk first
    first = sum(fit.first_sums(a, b) for a, b in bounds)
    second = None
    if fit.passes == 2:
        bases = fit.eigen(first).bases
        second = sum(fit.second_sums(bases, a, b) for a, b in bounds)
    _assert_same_factors(EKFAC.from_sums(fit, first, second, damping="auto"), ref, CHUNK_RTOL)
    assert same_state(before, state(z))


def test_from_sums_refuses_sums_that_miss_rows_or_the_second_pass(mlp):
    model, data, _ = mlp
    fit = FactorFit(model, data, "ekfac", "true")
    first = fit.first_sums(0, 50)
    with pytest.raises(ValueError, match="cover 50 rows but the data have 90; add the sums of every chunk"):
        EKFAC.from_sums(fit, first)
    first = first + fit.first_sums(50, N)
    with pytest.raises(ValueError, match="strategy='ekfac' needs the sums of the second pass"):
        EKFAC.from_sums(fit, first)
    with pytest.raises(ValueError, match="rows 80..100 are not a range of the 90 training rows"):
        fit.first_sums(80, 100)


# ------------------------------------------------------------------------------------ the job
@pytest.mark.parametrize("chunk_size,batch_size", [(7, 5), (31, 40), (N, 16), (1000, 3)])
def test_chunked_job_equals_the_in_process_fit(mlp, chunk_size, batch_size):
    from cntk_nets import same_state, state
    model, data, z = mlp
    before = state(z)
    ref = EKFAC(model, data, random_state=3, batch_size=16)
    got = FactorJob(model, data, random_state=3, batch_size=batch_size, chunk_size=chunk_size).run()
    _assert_same_factors(got, ref, CHUNK_RTOL)
    assert same_state(before, state(z))
    if chunk_size >= N and batch_size == 16:           # one chunk of all rows: the in-process code
        assert _same_bits(got, ref)


def _interrupt_second_pass_after(monkeypatch, calls_ok):
    real = FactorFit.second_sums
    calls = {"n": 0}

    def second_sums(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > calls_ok:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(FactorFit, "second_sums", second_sums)


def test_a_resumed_fit_gives_the_bits_of_an_uninterrupted_one(mlp, tmp_path, monkeypatch):
    from cntk_nets import same_state, state
    model, data, z = mlp
    before = state(z)
    whole = FactorJob(model, data, random_state=3, chunk_size=20).run()
    folder = str(tmp_path / "f.partial")
    _interrupt_second_pass_after(monkeypatch, 2)         # pass 1 (5 chunks) and 2 chunks of pass 2 finish
    with pytest.raises(KeyboardInterrupt):
        FactorJob(model, data, folder=folder, random_state=3, chunk_size=20).run()
    monkeypatch.undo()
    assert same_state(before, state(z))
    kept = sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
    assert len(kept) == 7 and sum(f.startswith("first-") for f in kept) == 5, kept
    job = FactorJob(model, data, folder=folder, resume=True, random_state=3, chunk_size=20)
    resumed = job.run()
    assert job.chunks == {"chunks": 10, "computed": 3, "resumed": 7}
    assert _same_bits(resumed, whole) and not os.path.exists(folder)
    assert same_state(before, state(z))


def test_second_pass_chunks_are_reused_only_after_the_same_first_pass(mlp, tmp_path, monkeypatch):
    model, data, _ = mlp
    folder = str(tmp_path / "f.partial")
    _interrupt_second_pass_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        FactorJob(model, data, folder=folder, random_state=3, chunk_size=20).run()
    monkeypatch.undo()
    path = os.path.join(folder, "first-00000000-00000020.npy")     # the first pass's sums change ...
    first = np.load(path)
    first[1:] *= 1.5
    np.save(path, first)
    job = FactorJob(model, data, folder=folder, resume=True, random_state=3, chunk_size=20)
    job.run()
    assert job.chunks == {"chunks": 10, "computed": 5, "resumed": 5}    # ... so all of pass 2 is recomputed


@pytest.mark.parametrize("change,differs", [({"random_state": 4}, "seed"), ({"strategy": "kfac"}, "strategy"),
                                           ({"batch_size": 7}, "batch_size"), ({"chunk_size": 30}, "chunk_size")])
def test_a_resume_with_other_settings_is_refused_naming_them(mlp, tmp_path, monkeypatch, change, differs):
    model, data, _ = mlp
    folder = str(tmp_path / "f.partial")
    settings = dict(random_state=3, chunk_size=20)
    _interrupt_second_pass_after(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        FactorJob(model, data, folder=folder, **settings).run()
    monkeypatch.undo()
    kept = sorted(os.listdir(folder))
    with pytest.raises(ValueError, match="cannot resume from .*: the job differs in %s;" % differs):
        FactorJob(model, data, folder=folder, resume=True, **dict(settings, **change)).run()
    assert sorted(os.listdir(folder)) == kept                   # the refusal leaves the folder alone
    # the damping is no setting of the chunks: resuming with another one finishes the fit
    job = FactorJob(model, data, folder=folder, resume=True, damping=0.5, **settings)
    assert job.run().block_damping == [0.5, 0.5] and job.chunks["resumed"] == 5


def test_bad_job_arguments_are_refused_in_one_line(mlp):
    model, data, _ = mlp
    for kwargs, needle in [({"random_state": np.random.RandomState(0)}, "random_state=RandomState"),
                           ({"chunk_size": 0}, "chunk_size=0"), ({"strategy": "exact"}, "strategy='exact'"),
                           ({"executor": object()}, "cannot fit EK-FAC factors; pass influence.dask.DaskExecutor")]:
        with pytest.raises(ValueError, match=needle) as info:
            FactorJob(model, data, **kwargs)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ Dask
def test_one_and_two_dask_workers_give_the_same_bits(tmp_path):
    pytest.importorskip("distributed")
    from influence import dask as cluster
    x, y = make_classification(400, 6, 3, seed=2)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x, y=y)
    train = influence.load_npz(path)
    model = SoftmaxRegression(6, 3, l2=1e-2, random_state=1, scale=0.7)
    w0 = model.get_params().copy()
    here = FactorJob(model, train, random_state=5, chunk_size=50).run()
    got = {}
    with cluster.connect("local:2") as client:
        client.wait_for_workers(2)
        got[2] = FactorJob(model, train, random_state=5, chunk_size=50, executor=cluster.DaskExecutor(client),
                           folder=str(tmp_path / "f.partial")).run()
        client.retire_workers(workers=sorted(client.scheduler_info()["workers"])[:1])
        assert len(client.scheduler_info()["workers"]) == 1
        got[1] = FactorJob(model, train, random_state=5, chunk_size=50, executor=cluster.DaskExecutor(client)).run()
    assert _same_bits(got[1], got[2]) and _same_bits(got[2], here)
    _assert_same_factors(got[1], EKFAC(model, train, random_state=5), CHUNK_RTOL)
    assert np.array_equal(model.get_params(), w0) and not os.path.exists(str(tmp_path / "f.partial"))
