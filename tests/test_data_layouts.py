"""Dataset forms beyond one dense array: Sequences, CSR, several inputs, and their .npz layout (no CNTK)."""
import numpy as np
import pytest
import scipy.sparse

import influence
from influence.data import Dataset, Sequences, load_npz, save_npz


def _ragged(n=7, dim=2, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.standard_normal((t, dim)) for t in rng.randint(1, 6, n)]


def test_sequences_subset_views_and_gathers():
    seqs = _ragged()
    s = Sequences.from_list(seqs)
    assert len(s) == 7 and s.n_steps == sum(len(q) for q in seqs) and s.step_shape == (2,)
    part = s.subset(slice(2, 5))
    assert np.shares_memory(part.values, s.values)            # a view, no copy
    assert [q.tolist() for q in part.to_list()] == [q.tolist() for q in seqs[2:5]]
    picked = s.subset(np.array([6, 0, 3]))
    assert [q.tolist() for q in picked.to_list()] == [seqs[i].tolist() for i in (6, 0, 3)]
    with pytest.raises(ValueError, match="empty sequence"):
        Sequences(np.zeros((3, 2)), [3, 0])
    with pytest.raises(ValueError, match="add up to 4 steps but values have 3 rows"):
        Sequences(np.zeros((3, 2)), [2, 2])
    with pytest.raises(ValueError, match="steps of different shapes"):
        Sequences.from_list([np.zeros((2, 2)), np.zeros((2, 3))])


def test_batches_by_total_steps_cover_every_sequence_once():
    seqs = _ragged(40, seed=1)
    data = Dataset(seqs, np.arange(40))
    assert data.is_sequence
    batches = list(data.batches(9))
    assert sum(len(b) for b in batches) == 40
    assert all(b.x.n_steps <= 9 or len(b) == 1 for b in batches)
    order = np.concatenate([b.y for b in batches])
    assert np.array_equal(order, np.arange(40))


def test_dict_csr_and_ragged_npz_roundtrip(tmp_path):
    rng = np.random.RandomState(2)
    a, seqs, y = rng.standard_normal((7, 3)), _ragged(7, seed=3), rng.randint(0, 2, 7)
    path = str(tmp_path / "d.npz")
    save_npz(path, {"a": a, "s": seqs}, y)
    data = load_npz(path)
    assert sorted(data.x) == ["a", "s"] and isinstance(data.x["a"], np.memmap)
    assert isinstance(data.x["s"], Sequences) and isinstance(data.x["s"].values, np.memmap)
    assert [q.tolist() for q in data.x["s"].to_list()] == [q.tolist() for q in seqs]
    sub = data.subset(slice(1, 3))
    assert len(sub) == 2 and np.array_equal(sub.x["a"], a[1:3]) and np.array_equal(sub.y, y[1:3])
    with np.load(path) as f:
        assert sorted(f.files) == ["x.a", "x.s.lengths", "x.s.steps", "y"]
    csr = scipy.sparse.random(7, 11, density=0.3, format="csr", random_state=0)
    d = Dataset(csr, y)
    assert scipy.sparse.issparse(d.subset(slice(2, 5)).x) and len(d) == 7


def test_bad_layouts_are_refused_in_one_line(tmp_path):
    rng = np.random.RandomState(4)
    with pytest.raises(ValueError, match="different numbers of examples"):
        Dataset({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})
    path = str(tmp_path / "half.npz")
    np.savez(path, **{"x.steps": np.zeros((5, 2)), "y": np.zeros(2)})
    with pytest.raises(ValueError, match="x.steps but not x.lengths"):
        load_npz(path)
    np.savez(path, z=np.zeros(3))
    with pytest.raises(ValueError, match="no 'x'"):
        load_npz(path)
    with pytest.raises(ValueError, match="NumPy reference models take dense arrays"):
        influence.models.SoftmaxRegression(2, 2).loss((_ragged(3, seed=5), rng.randint(0, 2, 3)))
