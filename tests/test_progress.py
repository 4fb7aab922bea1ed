"""Progress bars: on stderr when asked for (tqdm), nothing when not (the library's default), stdout
untouched either way."""
import numpy as np

import influence
from influence.models import LogisticRegression
from conftest import make_classification


def _problem():
    x, y = make_classification(200, 4, 2, seed=7)
    m = LogisticRegression(4, l2=0.1)
    influence.fit(m, (x, y), gtol=1e-10)
    return m, (x, y)


def test_solver_progress_bar_on_stderr(capsys):
    m, data = _problem()
    b = np.linspace(-1.0, 1.0, m.n_params)
    quiet = influence.solve(influence.HessianOperator(m, data), b, method="cg")
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    loud = influence.solve(influence.HessianOperator(m, data), b, method="cg", progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    # the bar (its total is cg's default maxiter 10·d; the residual shows only on redraws, which
    # tqdm throttles to 0.1 s, so a fast solve may not display it)
    assert "cg:" in err and "/%d" % (10 * m.n_params) in err, repr(err)
    assert np.array_equal(loud.x, quiet.x)          # the bar changes nothing else


def test_chunked_scoring_progress_bar_on_stderr(capsys):
    m, data = _problem()
    quiet = influence.self_influence(m, data, chunk_size=50)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    loud = influence.self_influence(m, data, chunk_size=50, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "self-influence" in err and "/4" in err, repr(err)    # 200 rows in 4 chunks
    assert np.array_equal(loud, quiet)
