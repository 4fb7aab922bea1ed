"""``score --test-index`` lists, inclusive ranges and 'misclassified'; ``--solver auto`` prints its plan."""
import json

import numpy as np
import pytest

from influence.cli import UsageError, parse_test_indices, main
from influence.data import Dataset
from test_cli import trained, workdir  # noqa: F401 - the tiny trained model of the CLI tests


class _Classifier(object):
    """predict: class = x[:, 0] (a fake model: only what --test-index misclassified reads)."""
    output, n_classes = object(), 3

    def predict(self, x, batch_size=None):
        return np.eye(3)[x[:, 0].astype(int)]


def _test_set():
    x = np.zeros((12, 2))
    x[:, 0] = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    y = x[:, 0].astype(np.int64)
    y[[4, 9]] = [0, 2]                          # rows 4 and 9 are misclassified
    return Dataset(x, y)


@pytest.mark.parametrize("items,expected", [
    (["3"], [3]),
    (["3", "7", "1-3"], [3, 7, 1, 2]),          # inclusive range; repeats kept once, first order
    (["10-11", "misclassified"], [10, 11, 4, 9]),
    (["misclassified", "0"], [4, 9, 0]),
    (["5-5"], [5]),
])
def test_test_index_grammar(items, expected):
    assert parse_test_indices(items, _test_set(), _Classifier(), None).tolist() == expected


@pytest.mark.parametrize("items,needle", [
    (["abc"], "--test-index 'abc' is not an index, an inclusive range A-B or 'misclassified'; pass e.g."),
    (["7-3"], "--test-index 7-3 is an empty range (ranges are inclusive, low-high); pass 3-7"),
    (["3-12"], "--test-index 12 is out of range: the test set has 12 points (0..11)"),
    (["-1"], "--test-index -1 is out of range"),
    (["1.5"], "'1.5' is not an index"),
])
def test_test_index_errors_name_the_item_and_the_fix(items, needle):
    with pytest.raises(UsageError) as e:
        parse_test_indices(items, _test_set(), _Classifier(), None)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_misclassified_needs_a_classifier_and_finds_something():
    regression = Dataset(np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(UsageError, match="needs a classifier and integer class labels"):
        parse_test_indices(["misclassified"], regression, _Classifier(), None)
    correct = _test_set()
    correct.y[:] = correct.x[:, 0].astype(np.int64)
    with pytest.raises(UsageError, match="selects nothing.*pass indices"):
        parse_test_indices(["misclassified"], correct, _Classifier(), None)


def test_score_auto_with_ranges_and_misclassified(trained, workdir, capsys):
    import influence
    d, model = workdir, trained
    base = ["score", "--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz")]
    code = main(base + ["--test-index", "0", "2-4", "misclassified", "--solver", "auto", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    cnn = influence.CNTKModel.load(model, l2=1e-2)
    test = influence.load_npz(str(d / "test.npz"))
    wrong = np.flatnonzero(np.argmax(cnn.predict(test.x), axis=1) != test.y).tolist()
    expected = [0, 2, 3, 4] + [i for i in wrong if i not in (0, 2, 3, 4)]
    assert summary["test_index"] == expected
    plan = summary["plan"]
    assert plan["method"] == "direct" and plan["d"] == 650 and plan["m"] == len(expected)   # small d
    assert "influence: plan: solver direct for %d test points (d=650, n=300)" % len(expected) in err
    assert sum(s["n_hvp"] for s in summary["solutions"]) == 650            # one factorisation for all
    code = main(base + ["--test-index", "0", "x-y"])
    _, err = capsys.readouterr()
    assert code == 2 and err.strip().splitlines() == [
        "influence: error: --test-index 'x-y' is not an index, an inclusive range A-B or 'misclassified'; "
        "pass e.g. --test-index 3 7 10-20 misclassified"]
