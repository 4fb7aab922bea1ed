"""Dataset validation and file loading."""
import numpy as np
import pytest

from influence.data import Dataset, as_dataset, load_npz, load_digits


def test_dataset_rejects_bad_input_with_one_line_messages():
    cases = [
        ((np.zeros((0, 3)), np.zeros(0, int)), "empty"),
        ((np.array([["a", "b"]]), np.zeros(1, int)), "dtype"),
        ((np.array([[1.0, np.nan]]), np.zeros(1, int)), "NaN or Inf"),
        ((np.ones((3, 2)), np.zeros(2, int)), "one label per row"),
        ((np.ones((2, 2)), np.array([0.0, np.inf])), "labels contains NaN"),
    ]
    for (x, y), needle in cases:
        with pytest.raises(ValueError) as err:
            Dataset(x, y, "train")
        assert needle in str(err.value) and "\n" not in str(err.value)
        assert "train" in str(err.value)


def test_as_dataset_forms_and_batches():
    x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    for form in [(x, y), {"x": x, "y": y}, Dataset(x, y)]:
        ds = as_dataset(form)
        assert len(ds) == 5
        sizes = [len(b) for b in ds.batches(2)]
        assert sizes == [2, 2, 1]
        np.testing.assert_array_equal(np.concatenate([b.y for b in ds.batches(2)]), y)
    with pytest.raises(ValueError, match="batch_size=0"):
        list(as_dataset((x, y)).batches(0))
    with pytest.raises(ValueError, match="tuple"):
        as_dataset("train.npz")


def test_load_npz(tmp_path):
    x, y = np.random.RandomState(0).rand(4, 3), np.array([0, 1, 0, 1])
    np.savez(str(tmp_path / "d.npz"), x=x, y=y)
    ds = load_npz(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    assert isinstance(ds.x, np.memmap)  # uncompressed archives are memory-mapped

    np.savez(str(tmp_path / "p.npz"), x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        load_npz(str(tmp_path / "p.npz"))
    np.savez(str(tmp_path / "nox.npz"), features=x)
    with pytest.raises(ValueError, match="no 'x'"):
        load_npz(str(tmp_path / "nox.npz"))
    (tmp_path / "t.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(str(tmp_path / "t.npz"))
    with pytest.raises(ValueError, match="no such file"):
        load_npz(str(tmp_path / "missing.npz"))


def test_bundled_digits():
    x, y = load_digits()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert x.min() == 0.0 and x.max() == 1.0
    assert sorted(set(y.tolist())) == list(range(10))
