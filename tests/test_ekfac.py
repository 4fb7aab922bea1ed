"""EK-FAC on the NumPy reference models (softmax and logistic regression: one Dense layer each): the
factors, the eigenvalue correction, the inverse, labels, batch-size independence, weights untouched."""
import numpy as np
import pytest

import influence
from influence import EKFAC
from influence.curvature import self_influence_ekfac, ekfac_s_test
from influence.models import SoftmaxRegression, LogisticRegression
from conftest import badly_scaled_softmax

#: float64 sums of a few hundred products: agreement with brute force far below this.
FACTOR_TOL = 1e-10
#: Different batch sizes change only the order of float64 summation.
BATCH_TOL = 1e-12
#: ``solve`` is an exact inverse: relative error of solve(E v) − v.
INVERSE_TOL = 1e-10


def _problem(n=60, p=5, k=3, seed=0, l2=1e-2):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, p)
    y = rng.randint(0, k, n)
    model = SoftmaxRegression(p, k, l2=l2, random_state=seed + 1, scale=0.7)
    return model, x, y


def _augmented(x):
    return np.hstack([x, np.ones((len(x), 1))])


def _fisher_block(model, x, y):
    """(1/n) Σ vec(G_n) vec(G_n)ᵀ with G_n = [W, b] gradient matrices (row-major vec), brute force."""
    layer = model.kfac_plan()[0][0]
    mats = layer.to_matrix(model.per_example_grads((x, y)))
    flat = mats.reshape(len(x), -1)
    return flat.T @ flat / len(x), mats


def test_factors_equal_brute_force_expectations():
    model, x, y = _problem()
    e = EKFAC(model, (x, y), labels="true", damping=0.0)
    A, S = e.factors(0)
    xt = _augmented(x)
    r = model.per_example_grads((x, y))[:, -3:]          # bias gradients = g (pre-activation gradients)
    assert np.abs(A - xt.T @ xt / len(x)).max() <= FACTOR_TOL
    assert np.abs(S - r.T @ r / len(x)).max() <= FACTOR_TOL


def test_ekfac_eigenvalues_are_the_fisher_diagonal_in_the_kronecker_eigenbasis():
    model, x, y = _problem()
    e = EKFAC(model, (x, y), labels="true", damping=0.0)
    F, _ = _fisher_block(model, x, y)
    b = e.blocks[0]
    Q = np.kron(b.qs, b.qa)                 # vec(Q_Sᵀ G Q_A) = (Q_S ⊗ Q_A)ᵀ vec(G) for row-major vec
    expected = np.diag(Q.T @ F @ Q).reshape(e.eigenvalues(0).shape)
    assert np.abs(e.eigenvalues(0) - expected).max() <= FACTOR_TOL * max(1.0, expected.max())


def test_kfac_on_one_example_is_the_rank_one_fisher():
    model, x, y = _problem(n=1)
    e = EKFAC(model, (x, y), strategy="kfac", labels="true", damping=0.0)
    g = model.per_example_grads((x, y))[0]
    dense = e @ np.eye(model.n_params)
    expected = np.outer(g, g) + model.l2 * np.eye(model.n_params)
    assert np.abs(dense - expected).max() <= FACTOR_TOL


def test_ekfac_on_one_example_is_also_exact():
    model, x, y = _problem(n=1)
    e = EKFAC(model, (x, y), labels="true", damping=0.0)
    g = model.per_example_grads((x, y))[0]
    assert np.abs(e @ np.eye(model.n_params) - np.outer(g, g) - model.l2 * np.eye(model.n_params)).max() <= FACTOR_TOL


def test_diagonal_strategy_is_the_fisher_diagonal():
    model, x, y = _problem()
    e = EKFAC(model, (x, y), strategy="diagonal", labels="true", damping=0.5)
    g = model.per_example_grads((x, y))
    expected = (g * g).mean(axis=0) + model.l2 + 0.5
    assert np.abs(np.diag(e @ np.eye(model.n_params)) - expected).max() <= FACTOR_TOL
    assert all(b["treatment"] == "diagonal" for b in e.plan())
    assert sum(b["parameters"] for b in e.plan()) == model.n_params


@pytest.mark.parametrize("strategy", ["ekfac", "kfac", "diagonal"])
def test_solve_inverts_the_operator_plus_damping(strategy):
    model, x, y = _problem()
    e = EKFAC(model, (x, y), strategy=strategy, damping=1e-3)
    d = model.n_params
    dense = e @ np.eye(d)
    assert np.abs(dense - dense.T).max() <= 1e-12 * np.abs(dense).max()
    V = np.random.RandomState(3).randn(4, d)
    X = e.solve(V)
    assert X.shape == V.shape
    assert np.abs(X @ dense - V).max() <= INVERSE_TOL * np.abs(V).max()
    assert np.allclose(e.solve(V[1]), X[1], rtol=1e-13, atol=0)
    assert np.allclose(np.linalg.solve(dense, V[0]), X[0], rtol=1e-8, atol=1e-12)
    assert np.allclose(e.solve_sqrt(e.solve_sqrt(V)), X, rtol=1e-10, atol=0)      # the square root of solve


def test_results_do_not_depend_on_the_batch_size():
    model, x, y = _problem(n=97)
    a = EKFAC(model, (x, y), batch_size=7, random_state=4)
    b = EKFAC(model, (x, y), batch_size=1000, random_state=4)
    for p, q in zip((a.eigenvalues(0),) + a.factors(0), (b.eigenvalues(0),) + b.factors(0)):
        assert np.abs(p - q).max() <= BATCH_TOL * max(1.0, np.abs(q).max())
    assert a.block_damping == pytest.approx(b.block_damping, rel=1e-12)


def test_sampled_labels_estimate_the_gauss_newton_matrix():
    # the true Fisher of softmax cross-entropy is G = E[(diag p − p pᵀ) ⊗ x̃ x̃ᵀ]; many sampled
    # copies of the data make the sampled Fisher approach it (Monte Carlo error ~ 1/sqrt(copies))
    model, x, y = _problem(n=40)
    copies = 200
    xs, ys = np.tile(x, (copies, 1)), np.tile(y, copies)
    e = EKFAC(model, (xs, ys), strategy="diagonal", labels="sampled", random_state=0, damping=0.0)
    G = model.hessian((x, y)) - model.l2 * np.eye(model.n_params)   # linear model: Hessian = Gauss-Newton
    rel = np.abs(e.diagonal - np.diag(G)).max() / np.diag(G).max()
    assert rel < 0.05
    true = EKFAC(model, (xs, ys), strategy="diagonal", labels="true", damping=0.0)
    assert np.abs(true.diagonal - np.diag(G)).max() / np.diag(G).max() > 2 * rel


def test_sampled_labels_are_seeded():
    model, x, y = _problem()
    a, b = EKFAC(model, (x, y), random_state=5), EKFAC(model, (x, y), random_state=5)
    c = EKFAC(model, (x, y), random_state=6)
    assert np.array_equal(a.eigenvalues(0), b.eigenvalues(0))
    assert not np.array_equal(a.eigenvalues(0), c.eigenvalues(0))


def test_auto_damping_is_a_tenth_of_the_mean_eigenvalue_per_block():
    model, x, y = _problem()
    e = EKFAC(model, (x, y))
    assert e.damping_auto and e.block_damping == [pytest.approx(0.1 * e.eigenvalues(0).mean(), rel=1e-14)]
    v = np.random.RandomState(0).randn(model.n_params)
    manual = EKFAC(model, (x, y), damping=e.block_damping[0])
    assert np.allclose(e @ v, manual @ v, rtol=1e-14, atol=0)


def test_logistic_regression_has_one_output_layer():
    rng = np.random.RandomState(1)
    x, y = rng.randn(30, 4), rng.randint(0, 2, 30)
    model = LogisticRegression(4, l2=1e-2, random_state=2, scale=0.5)
    e = EKFAC(model, (x, y), labels="true", damping=0.0)
    g = model.per_example_grads((x, y))
    # one output: S is a scalar, Λ has one row, and Q_A diagonalises E[g gᵀ] exactly (F = s·A-weighted)
    F = g.T @ g / len(x) + model.l2 * np.eye(5)
    Qa = e.blocks[0].qa
    assert np.abs(np.diag(Qa.T @ (F - model.l2 * np.eye(5)) @ Qa) - e.eigenvalues(0)[0]).max() <= FACTOR_TOL


def test_weights_are_restored_when_fitting_fails():
    model, x, y = _problem()

    class Failing(SoftmaxRegression):
        calls = 0

        def _kfac_statistics(self, batch, out):
            self.set_params(self.get_params() + 1.0)
            raise RuntimeError("injected failure")
    broken = Failing(5, 3, l2=1e-2, random_state=1, scale=0.7)
    before = broken.get_params()
    with pytest.raises(RuntimeError, match="injected"):
        EKFAC(broken, (x, y), labels="true")
    assert np.array_equal(broken.get_params(), before)
    w = model.get_params()
    EKFAC(model, (x, y))
    assert np.array_equal(model.get_params(), w)


def test_self_influence_and_s_test_match_the_dense_inverse():
    model, x, y = _problem()
    e = EKFAC(model, (x, y), damping=1e-3)
    Ainv = np.linalg.inv(e @ np.eye(model.n_params))
    g = model.per_example_grads((x, y))
    expected = np.einsum("ni,ij,nj->n", g, Ainv, g)
    got = self_influence_ekfac(model, (x, y), e, batch_size=11)
    assert np.allclose(got, expected, rtol=1e-9, atol=0)
    assert np.allclose(ekfac_s_test(e, g[:3]), g[:3] @ Ainv, rtol=1e-9, atol=1e-15)


def test_ekfac_is_a_better_approximation_than_kfac_of_the_fisher():
    model, x, y = _problem(n=200)
    F, _ = _fisher_block(model, x, y)
    layer = model.kfac_plan()[0][0]
    d = model.n_params
    order = layer.to_matrix(np.arange(d, dtype=float)[None])[0].ravel().astype(int)   # flat index of vec([W, b])
    err = {}
    for s in ("ekfac", "kfac"):
        e = EKFAC(model, (x, y), strategy=s, labels="true", damping=0.0)
        dense = (e @ np.eye(d) - model.l2 * np.eye(d))[np.ix_(order, order)]
        err[s] = np.linalg.norm(dense - F)
    assert err["ekfac"] < err["kfac"]


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "full"}, "strategy='full' is not one of"),
    ({"labels": "empirical"}, "labels='empirical' is not one of"),
    ({"damping": "big"}, "damping='big'"),
    ({"damping": -1.0}, "damping"),
    ({"random_state": "x"}, "random_state='x'"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, match):
    model, x, y = _problem()
    with pytest.raises(ValueError, match=match) as info:
        EKFAC(model, (x, y), **kwargs)
    assert "\n" not in str(info.value)


def test_bad_vectors_are_refused():
    model, x, y = _problem()
    e = EKFAC(model, (x, y))
    with pytest.raises(ValueError, match="shape"):
        e.solve(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        e.solve(np.full(model.n_params, np.nan))
    zero = EKFAC(SoftmaxRegression(5, 3, l2=0.0), (x[:1], y[:1]), damping=0.0, strategy="kfac", labels="true")
    with pytest.raises(ValueError, match="no inverse; pass e.g. damping=0.001"):
        zero.solve(np.ones(zero.shape[0]))


def test_exported():
    assert influence.EKFAC is EKFAC and "EKFAC" in influence.__all__


# ---------------------------------------------------------------------------- EK-FAC as a preconditioner
#: cg's default tolerance: both solutions within a few times it of each other, relative to ‖x‖.
SAME_SOLUTION_TOL = 1e-5


def _hessian_problem():
    model, (x, y), rng = badly_scaled_softmax()
    return model, x, y, model.hessian((x, y)), rng.randn(model.n_params)


def test_preconditioned_cg_converges_to_the_plain_solution_in_fewer_products():
    model, x, y, H, b = _hessian_problem()
    ek = EKFAC(model, (x, y))
    plain = influence.cg(H, b)
    pre = influence.cg(H, b, preconditioner=ek)
    assert plain.converged and pre.converged
    exact = np.linalg.solve(H, b)
    assert np.linalg.norm(pre.x - plain.x) <= SAME_SOLUTION_TOL * np.linalg.norm(exact)
    # the residual reported and tested is the unpreconditioned system's
    assert pre.residual == pytest.approx(np.linalg.norm(H @ pre.x - b) / np.linalg.norm(b), rel=1e-6)
    assert pre.residual <= influence.solvers.CG_RTOL
    assert pre.n_hvp < plain.n_hvp


def test_any_linear_operator_preconditions_and_solve_and_solve_many_pass_it_on():
    model, x, y, H, b = _hessian_problem()
    exact = np.linalg.solve(H + 0.1 * np.eye(len(b)), b)
    jacobi = np.diag(1.0 / (np.diag(H) + 0.1))
    for sol in (influence.solve(H, b, "cg", damping=0.1, preconditioner=jacobi),
                influence.solvers.solve_many(H, np.stack([b, 2 * b]), damping=0.1, preconditioner=jacobi)[1]):
        scale = 2.0 if sol.x @ exact > 1.5 * exact @ exact else 1.0
        assert sol.converged and np.linalg.norm(sol.x - scale * exact) <= SAME_SOLUTION_TOL * np.linalg.norm(scale * exact)
    # a poor (random SPD diagonal) preconditioner still reaches the same solution: the true residual decides
    poor = np.diag(np.random.RandomState(1).uniform(0.01, 100.0, len(b)))
    sol = influence.cg(H, b, damping=0.1, preconditioner=poor)
    assert sol.converged and np.linalg.norm(sol.x - exact) <= SAME_SOLUTION_TOL * np.linalg.norm(exact)


@pytest.mark.parametrize("bad, match", [
    ("ekfac", "preconditioner='ekfac': a solver sees only the operator"),
    (np.eye(3), r"has shape \(3, 3\) but H is"),
    (object(), "has shape None"),
])
def test_bad_preconditioners_are_refused(bad, match):
    model, x, y, H, b = _hessian_problem()
    with pytest.raises(ValueError, match=match) as info:
        influence.cg(H, b, preconditioner=bad)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- saved factors
def test_saved_factors_load_identical_and_stale_ones_are_refused(tmp_path):
    model, x, y = _problem()
    e = EKFAC(model, (x, y), random_state=2)
    path = e.save(str(tmp_path / "f.npz"))
    back = EKFAC.load(path, model, (x, y))
    V = np.random.RandomState(0).randn(3, model.n_params)
    assert np.array_equal(back.solve(V), e.solve(V)) and np.array_equal(back @ V[0], e @ V[0])
    assert back.plan() == e.plan() and back.block_damping == e.block_damping
    fixed = EKFAC(model, (x, y), damping=0.01, strategy="diagonal")
    fixed.save(str(tmp_path / "d.npz"))
    assert np.array_equal(EKFAC.load(str(tmp_path / "d.npz"), model, (x, y)).solve(V), fixed.solve(V))
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 3
    with pytest.raises(ValueError, match="fitted on other training rows .* stale") as info:
        EKFAC.load(path, model, (x, y2))
    assert "\n" not in str(info.value)
    w = model.get_params()
    model.set_params(w + 1e-12)
    with pytest.raises(ValueError, match="fitted on other weights .* stale"):
        EKFAC.load(path, model, (x, y))
    model.set_params(w)
    with pytest.raises(ValueError, match="do not exist"):
        EKFAC.load(str(tmp_path / "none.npz"), model, (x, y))
    np.savez(str(tmp_path / "other.npz"), a=np.ones(2))
    with pytest.raises(ValueError, match="not an EK-FAC factor file"):
        EKFAC.load(str(tmp_path / "other.npz"), model, (x, y))
    with pytest.raises(ValueError, match="ending in .npz"):
        e.save(str(tmp_path / "f.txt"))


def test_preconditioned_refined_lissa_reaches_the_solution_in_far_fewer_steps():
    import warnings
    model, x, y, Hd, b = _hessian_problem()
    H = influence.HessianOperator(model, (x, y))
    exact = np.linalg.solve(Hd, b)
    ek = EKFAC(model, (x, y), damping=0.0)
    pre = influence.lissa(H, b, batch_size=64, preconditioner=ek, maxiter=5000)
    assert pre.converged and pre.residual <= influence.solvers.REFINED_RTOL
    assert pre.residual == pytest.approx(np.linalg.norm(Hd @ pre.x - b) / np.linalg.norm(b), rel=1e-3)
    assert np.linalg.norm(pre.x - exact) <= 10 * influence.solvers.REFINED_RTOL * np.linalg.norm(exact)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = influence.lissa(H, b, batch_size=64, maxiter=3 * pre.n_iter)
    assert not plain.converged and plain.residual > 3 * pre.residual


@pytest.mark.parametrize("options, match", [
    ({"preconditioner": "identity matrix"}, "symmetric square root"),
    ({"preconditioner": "ekfac"}, "sees only the operator"),
    ({"variant": "classic", "preconditioner": None}, None),
])
def test_lissa_refuses_preconditioners_it_cannot_use(options, match):
    model, x, y, Hd, b = _hessian_problem()
    if options.get("preconditioner") == "identity matrix":
        options = {"preconditioner": np.eye(len(b))}
    if match is None:       # the classic variant refuses an EKFAC too
        options = dict(options, preconditioner=EKFAC(model, (x, y)))
        match = "variant='refined'"
    with pytest.raises(ValueError, match=match) as info:
        influence.lissa(Hd, b, **options)
    assert "\n" not in str(info.value)


def test_a_model_without_declared_layers_gets_the_diagonal():
    from influence.adapters.base import Model

    class NoLayers(SoftmaxRegression):
        kfac_plan = Model.kfac_plan
        _kfac_statistics = Model._kfac_statistics
    model, x, y = _problem()
    bare = NoLayers(5, 3, l2=1e-2, random_state=1, scale=0.7)
    e = EKFAC(bare, (x, y), labels="true", damping=0.0)
    g = model.per_example_grads((x, y))
    assert np.abs(e.diagonal - (g * g).mean(axis=0)).max() <= FACTOR_TOL
    (entry,) = e.plan()
    assert entry["treatment"] == "diagonal" and "declares no Dense/Convolution layer" in entry["reason"]
    assert e.n_passes == 1


# ---------------------------------------------------------------------------- reuse: s_test and the jobs
def test_a_fitted_ekfac_is_a_curvature_and_ekfac_a_preconditioner_of_s_test(tmp_path):
    model, x, y, _, _ = _hessian_problem()
    train, test = (x, y), (x[:3], y[:3])
    path = EKFAC(model, train, random_state=5).save(str(tmp_path / "f.npz"))
    loaded = influence.s_test(model, train, test, curvature=EKFAC.load(path, model, train))
    refit = influence.s_test(model, train, test, curvature="ekfac", random_state=5)
    assert np.array_equal(loaded.vectors, refit.vectors) and "loaded from %s" % path in loaded.curvature_reason
    assert EKFAC.load(path, model, train, damping=0.01).block_damping == [0.01]
    with pytest.raises(ValueError, match="damping=0.1 with a fitted EKFAC"):
        influence.s_test(model, train, test, curvature=EKFAC.load(path, model, train), damping=0.1)
    with pytest.raises(ValueError, match="preconditioner='ekfac' preconditions an iterative solve"):
        influence.s_test(model, train, test, curvature="ekfac", preconditioner="ekfac")
    plain = influence.s_test(model, train, test, "cg", curvature="hessian", check_optimum=False)
    pre = influence.s_test(model, train, test, "cg", curvature="hessian", check_optimum=False, preconditioner="ekfac")
    assert pre.preconditioner.startswith("EK-FAC fitted on the training data") and plain.preconditioner is None
    assert np.abs(pre.vectors - plain.vectors).max() <= 1e-5 * np.abs(plain.vectors).max()
    assert sum(s.n_hvp for s in pre.solutions) < 0.7 * sum(s.n_hvp for s in plain.solutions)
    auto = influence.s_test(model, train, test, "auto", curvature="hessian", check_optimum=False,
                            preconditioner="ekfac")
    assert auto.plan.method == "cg"


def test_a_job_given_an_ekfac_fingerprints_its_factors():
    model, x, y, _, _ = _hessian_problem()
    fingerprints = [influence.jobs.ScoreJob(model, (x, y), (x[:2], y[:2]),
                                            curvature=EKFAC(model, (x, y), random_state=seed),
                                            solver_options={"preconditioner": EKFAC(model, (x, y))}).fingerprint()
                    for seed in (0, 0, 1)]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
    assert set(fingerprints[0]["curvature"]["ekfac"]) == {"strategy", "labels", "damping", "l2", "n_params", "sha256"}
    assert fingerprints[0]["solver_options"]["preconditioner"]["sha256"]
