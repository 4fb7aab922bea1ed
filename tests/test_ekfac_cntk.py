"""EK-FAC on CNTK networks (needs CNTK; skipped elsewhere): the factors of Dense and Convolution
layers against brute-force expectations, the eigenvalue correction against the Fisher block built from
per-example gradients (the per-row loop), batch-size independence, the plan (BatchNormalization's
scale and bias on the diagonal), weights and Constants bit-identical even when fitting fails."""
import numpy as np
import pytest

import influence
from influence import EKFAC
from influence.adapters.cntk import build_cnn, build_network
from cntk_nets import same_state, state

#: float64 sums over a few hundred rows: brute force and the batched pass agree far below this.
FACTOR_TOL = 1e-10
#: Different batch sizes only reorder float64 sums.
BATCH_TOL = 1e-10
L2 = 1e-2
N = 24


def _x(n=N, image=False):
    x, y = influence.load_digits()
    x = x[:n].astype(np.float64)
    return (x.reshape(-1, 1, 8, 8) if image else x), y[:n]


def _mlp():
    x, y = _x()
    z = build_network(64, 10, hidden=(6,), activation="tanh", dtype=np.float64, seed=1)
    return influence.CNTKModel(z, l2=L2), (x, y), z


def _cnn():
    x, y = _x(image=True)
    z = build_cnn((1, 8, 8), 10, channels=(2,), dropout=0.0, activation="tanh", pooling="average",
                  dtype=np.float64, seed=1)
    return influence.CNTKModel(z, l2=L2), (x, y), z


def _loop_grads(model, data):
    """Per-example gradients by one CNTK gradient call per row (independent of the batched taps)."""
    old = model.per_example_method
    model.per_example_method = "loop"
    try:
        return model.per_example_grads(data)
    finally:
        model.per_example_method = old


def _unfold_same_3x3(x):
    """Patches (n, 64, C·9) of a zero-padded ('same') 3×3 convolution on (n, C, 8, 8), by loops."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2, w + 2))
    xp[:, :, 1:-1, 1:-1] = x
    out = np.empty((n, h * w, c * 9))
    for i in range(h):
        for j in range(w):
            out[:, i * w + j, :] = xp[:, :, i:i + 3, j:j + 3].reshape(n, -1)
    return out


def test_dense_factors_equal_brute_force(cntk):
    model, (x, y), _ = _mlp()
    e = EKFAC(model, (x, y), labels="true", damping=0.0)
    layers = [b.layer for b in e.blocks]
    assert [L.kind for L in layers] == ["Dense", "Dense"] and e.diagonal_index.size == 0
    g = _loop_grads(model, (x, y))
    w = model.get_params()
    first = [i for i, L in enumerate(layers) if L.n_in == 64][0]
    hidden = layers[first].to_matrix(w[None])[0]                  # [W1ᵀ, b1] (6, 65)
    xt = np.hstack([x, np.ones((N, 1))])
    h = np.hstack([np.tanh(xt @ hidden.T), np.ones((N, 1))])
    for i, (L, a) in enumerate(zip(layers, (xt, h) if first == 0 else (h, xt))):
        A, S = e.factors(i)
        gb = g[:, L.bias[0]:L.bias[1]]                            # bias gradient = pre-activation gradient
        assert np.abs(A - a.T @ a / N).max() <= FACTOR_TOL
        assert np.abs(S - gb.T @ gb / N).max() <= FACTOR_TOL


def test_convolution_factors_and_eigenvalues_equal_brute_force(cntk):
    model, (x, y), z = _cnn()
    before = state(z)
    e = EKFAC(model, (x, y), labels="true", damping=0.0, batch_size=10)
    assert same_state(before, state(z))
    conv = [i for i, b in enumerate(e.blocks) if b.layer.kind == "Convolution"]
    assert len(conv) == 1 and len(e.blocks) == 2
    A, _ = e.factors(conv[0])
    patches = _unfold_same_3x3(x)
    at = np.concatenate([patches, np.ones(patches.shape[:2] + (1,))], axis=2).reshape(-1, 10)
    assert np.abs(A - at.T @ at / N).max() <= FACTOR_TOL
    # every layer: Λ = diag(Qᵀ F Q) of its Fisher block, F from the per-row loop's per-example gradients
    g = _loop_grads(model, (x, y))
    for i, block in enumerate(e.blocks):
        mats = block.layer.to_matrix(g)
        rot = np.matmul(np.matmul(block.qs.T, mats), block.qa)
        assert np.abs(e.eigenvalues(i) - (rot ** 2).mean(axis=0)).max() <= FACTOR_TOL * max(1.0, e.eigenvalues(i).max())
        # and S is the mean outer product of the tapped pre-activation gradients, whose Σ_j g ãᵀ is G_n
        stats = model._kfac_statistics(model.validate((x, y)), np.empty((N, model.n_params)))[i]
        a_, g_ = stats
        at_ = np.concatenate([a_, np.ones(a_.shape[:2] + (1,))], axis=2)
        assert np.abs(np.einsum("njo,nji->noi", g_, at_) - mats).max() <= FACTOR_TOL * np.abs(mats).max()
        gg = g_.reshape(-1, g_.shape[2])
        assert np.abs(e.factors(i)[1] - gg.T @ gg / (N * g_.shape[1])).max() <= FACTOR_TOL
    # BatchNormalization's scale and bias get the diagonal, by name, with the reason
    diag = [b for b in e.plan() if b["treatment"] == "diagonal"]
    assert len(diag) == 2 and all(b["reason"] for b in diag)
    assert np.allclose(e.diagonal[e.diagonal_index], (g[:, e.diagonal_index] ** 2).mean(axis=0), rtol=1e-10, atol=0)


def test_batch_size_independence_and_inverse_on_the_cnn(cntk):
    model, (x, y), _ = _cnn()
    a = EKFAC(model, (x, y), batch_size=5, random_state=3)
    b = EKFAC(model, (x, y), batch_size=1000, random_state=3)
    for i in range(len(a.blocks)):
        for p, q in zip((a.eigenvalues(i),) + a.factors(i), (b.eigenvalues(i),) + b.factors(i)):
            assert np.abs(p - q).max() <= BATCH_TOL * max(1.0, np.abs(q).max())
    V = np.random.RandomState(0).randn(3, model.n_params)
    assert np.allclose(a @ a.solve(V).T, V.T, rtol=0, atol=1e-10 * np.abs(V).max())


def test_kfac_on_one_example_is_the_rank_one_fisher(cntk):
    model, (x, y), _ = _mlp()
    e = EKFAC(model, (x[:1], y[:1]), strategy="kfac", labels="true", damping=0.0)
    g = _loop_grads(model, (x[:1], y[:1]))[0]
    dense = e @ np.eye(model.n_params) - L2 * np.eye(model.n_params)
    expected = np.zeros_like(dense)                  # block diagonal: each layer's block is exactly rank one
    for block in e.blocks:
        i = block.layer.indices
        expected[np.ix_(i, i)] = np.outer(g[i], g[i])
    assert np.abs(dense - expected).max() <= FACTOR_TOL * max(1.0, (g * g).max())


def test_weights_and_constants_restored_when_fitting_fails(cntk):
    model, (x, y), z = _cnn()
    before = state(z)
    real = model._kfac_statistics
    calls = []

    def failing(batch, out):
        calls.append(1)
        stats = real(batch, out)
        model.set_params(model.get_params() * 1.5)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return stats
    model._kfac_statistics = failing
    with pytest.raises(RuntimeError, match="injected"):
        EKFAC(model, (x, y), batch_size=10, labels="true")
    assert same_state(before, state(z))


def test_self_influence_matches_the_dense_inverse_on_the_cnn(cntk):
    from influence.curvature import self_influence_ekfac
    model, (x, y), _ = _cnn()
    e = EKFAC(model, (x, y), damping=1e-3)
    Ainv = np.linalg.inv(e @ np.eye(model.n_params))
    g = _loop_grads(model, (x, y))
    expected = np.einsum("ni,ij,nj->n", g, Ainv, g)
    assert np.allclose(self_influence_ekfac(model, (x, y), e, batch_size=7), expected, rtol=1e-8, atol=0)
