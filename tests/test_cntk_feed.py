"""What the CNTK adapter feeds (issue 10 item 6, "Resize: Cannot resize the matrix because it is a
view"): memory-mapped, non-contiguous and partial slices, batch sizes that change between calls, and
several threads on one model all give the same numbers as in-memory data (needs CNTK)."""
import threading

import numpy as np

import influence
from influence.adapters.cntk import build_network
from influence.adapters.cntk.parameters import owned as _owned

N, P, K = 203, 7, 3


def _model(dtype):
    return influence.CNTKModel(build_network(P, K, hidden=(5,), dtype=dtype, seed=4), l2=0.01)


def test_owned_is_a_new_c_contiguous_array_of_the_model_dtype(tmp_path):
    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(str(tmp_path / "a.npy"), a)
    mm = np.load(str(tmp_path / "a.npy"), mmap_mode="r")
    for view in (mm[3:7], a[::2], a.T, mm[-1:]):
        out = _owned(view, np.float32)
        assert out.flags.c_contiguous and out.flags.owndata and out.flags.writeable
        assert not np.shares_memory(out, view) and np.array_equal(out, view)


def test_mmap_noncontiguous_partial_and_changing_batches_match_in_memory(cntk, tmp_path):
    rng = np.random.RandomState(0)
    x = rng.standard_normal((N, P)).astype(np.float32)
    y = rng.randint(0, K, N)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x, y=y)
    mapped = influence.load_npz(path)
    assert isinstance(mapped.x, np.memmap)
    model = _model(np.float32)
    ref_losses = model.per_example_losses((x, y))
    ref_grad = model.grad_sum((x, y), batch_size=N)
    s = rng.standard_normal((1, model.n_params))
    for batch_size in (64, 1, 203, 50, 7, 4096):          # changes between calls, partial last batch
        assert np.array_equal(model.per_example_losses(mapped, batch_size), ref_losses)
        np.testing.assert_allclose(model.grad_sum(mapped, batch_size), ref_grad, rtol=1e-5, atol=1e-5)
        last = mapped.subset(slice(N - 17, N))             # the last rows of a memory-mapped file
        assert np.array_equal(model.per_example_losses(last, batch_size), ref_losses[-17:])
    strided = (x[::3], y[::3])                              # non-contiguous views of the caller's data
    assert np.array_equal(model.per_example_losses(strided, 16), ref_losses[::3])
    d1 = influence.directional_derivatives(model, mapped.subset(slice(100, 150)), s, rel_step=1e-2)
    d2 = influence.directional_derivatives(model, (x[100:150], y[100:150]), s, rel_step=1e-2)
    assert np.array_equal(d1, d2)
    # float64 data into a float32 model and a transposed (Fortran-ordered) copy
    assert np.array_equal(model.per_example_losses((np.asfortranarray(x.astype(np.float64)), y), 32),
                          ref_losses)


def test_one_model_used_from_several_threads(cntk):
    # CNTK 2.7 fails when one Function is evaluated from two threads at once ("This Value object is
    # invalid ..."); the adapter serializes its CNTK calls
    rng = np.random.RandomState(1)
    x, y = rng.standard_normal((400, P)), rng.randint(0, K, 400)
    model = _model(np.float32)
    ref = model.per_example_losses((x, y), 64)
    errors, results = [], {}

    def work(i, batch_size):
        try:
            for _ in range(5):
                results[i] = model.per_example_losses((x, y), batch_size)
                model.grad_sum((x[:100], y[:100]), batch_size)
        except Exception as e:     # noqa: BLE001 - any failure in a thread is the test failing
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i, b)) for i, b in enumerate((64, 37, 9, 400))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for out in results.values():
        np.testing.assert_allclose(out, ref, rtol=1e-6)
