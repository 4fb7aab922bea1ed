"""GaussNewtonOperator and FisherOperator on CNTK networks as users train them (needs CNTK; skipped
elsewhere): G·v against an explicit Σ J_iᵀ H_ℓ J_i built from one CNTK gradient per output unit per
example, symmetry and positive semi-definiteness, weights and Constants bit-identical, batch-size
independence, and the solvers on a Trainer-trained CNN whose Hessian is indefinite."""
import numpy as np
import pytest

import influence
from influence.adapters.cntk import build_cnn, build_network
from influence.curvature import FisherOperator, GaussNewtonOperator
from cntk_nets import same_state, state, train_with_trainer, two_input_network

#: ‖G·v − explicit‖ / ‖explicit‖. float32: 1e-3, as for every float32 product, also for the
#: ReLU/max-pooling CNN: J·v is a difference of the OUTPUTS, which are continuous across a ReLU or
#: max-pool kink, so a difference that straddles one errs by the slope's jump times the straddled
#: fraction of the step (not jump/step as a difference of gradients does). Measured on this CNN:
#: 2.5e-4 at the calibrated step (2.4e-4); on a grid of fixed steps the error is 7.8e-3 at 3e-3 and
#: 3.8e-4 at 1e-3 (kinks), 6.5e-5 at 3e-4, 5.2e-4 at 1e-4 (float32 rounding of the outputs). The
#: smooth networks in float32 measure 1e-5 or less.
GV_TOL = {np.float64: 1e-8, np.float32: 1e-3}
#: Smallest eigenvalue of the dense float64 G may undershoot l2 by this.
PSD_TOL = 1e-10
#: |uᵀGv − vᵀGu| / (‖u‖‖Gv‖) in float64.
SYMMETRY_TOL = 1e-10
#: The same product at two batch sizes (CNTK blocks its float64 sums differently).
BATCH_TOL = 1e-10
#: ‖F·v − (1/n)Pᵀ(P v) − l2 v‖ / ‖F·v‖, float64.
FISHER_TOL = 1e-7
#: cg's relative residual on the Gauss-Newton operator of the CNN.
CG_RTOL = 1e-6

L2 = 0.01
N = 30


def _digits(n=N, image=False):
    x, y = influence.load_digits()
    x = x[:n]
    return (x.reshape(-1, 1, 8, 8) if image else x), y[:n]


def _sequences(n, dim, seed):
    rng = np.random.RandomState(seed)
    return [rng.standard_normal((t, dim)) for t in rng.randint(2, 6, n)]


def _net(cntk, kind, dtype, channels=(2,)):
    """(model, data, the Function whose Parameters and Constants must not change)."""
    C = cntk
    if kind == "softmax":
        x, y = _digits()
        z = build_network(64, 10, dtype=dtype, seed=1)
        train_with_trainer(z, {z.arguments[0]: x.astype(dtype)}, y, epochs=2)
        return influence.CNTKModel(z, l2=L2), (x, y), z
    if kind == "mlp":
        x, y = _digits()
        z = build_network(64, 10, hidden=(6,), activation="tanh", dtype=dtype, seed=1)
        train_with_trainer(z, {z.arguments[0]: x.astype(dtype)}, y, epochs=3)
        return influence.CNTKModel(z, l2=L2), (x, y), z
    if kind == "cnn":
        x, y = _digits(image=True)
        z = build_cnn((1, 8, 8), 10, channels=channels, dropout=0.3, dtype=dtype, seed=1)
        train_with_trainer(z, {z.arguments[0]: x.astype(dtype)}, y, epochs=4)
        return influence.CNTKModel(z, l2=L2), (x, y), z
    if kind == "lstm":
        seqs = _sequences(N, 3, seed=1)
        y = np.array([int(s[:, 0].sum() > 0) for s in seqs])
        with C.default_options(dtype=dtype):
            xs = C.sequence.input_variable(3, dtype=dtype, name="steps")
            h = C.layers.Recurrence(C.layers.LSTM(3, init=C.glorot_uniform(seed=1)))(xs)
            z = C.layers.Dense(2, init=C.glorot_uniform(seed=2))(C.sequence.last(h))
        train_with_trainer(z, {xs: [s.astype(dtype) for s in seqs]}, y, epochs=2, minibatch=8)
        return influence.CNTKModel(z, l2=L2), (seqs, y), z
    assert kind == "regression"
    rng = np.random.RandomState(2)
    x = rng.standard_normal((N, 4))
    t = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    z = build_network(4, 2, hidden=(5,), activation="tanh", dtype=dtype, seed=3)
    return influence.CNTKModel(z, loss="squared_error", l2=L2), (x, t), z


def _explicit_gv(cntk, model, data, v):
    """(1/n) Σ_i J_iᵀ H_ℓ(z_i) J_i v + l2·v with J_i from one CNTK gradient per output unit per example."""
    C = cntk
    out = model._inference_output
    k = int(np.prod(out.output.shape))
    units = [C.reduce_sum(C.slice(C.reshape(out, (k,)), 0, j, j + 1)) for j in range(k)]
    dataset = model.validate(data)
    Z = model.outputs(dataset)
    total = np.zeros(model.n_params)
    for i in range(len(dataset)):
        feed = model._feed(dataset.subset(slice(i, i + 1)))
        feed = {a: feed[a] for a in feed if any(a.uid == b.uid for b in out.arguments)}
        J = np.stack([model._params.flatten_grads(u.grad(feed, wrt=model.parameters)) for u in units])
        if model.loss_name == "cross_entropy":
            p = np.exp(Z[i] - Z[i].max())
            p /= p.sum()
            H = np.diag(p) - np.outer(p, p)
        else:
            H = 2.0 * np.eye(k)
        total += J.T @ (H @ (J @ v))
    return total / len(dataset) + model.l2 * v


KINDS = ["softmax", "mlp", "cnn", "lstm", "regression"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_gv_equals_explicit_jacobian_products(cntk, kind, dtype):
    model, data, f = _net(cntk, kind, dtype)
    before = state(f)
    G = GaussNewtonOperator(model, data)
    v = np.random.RandomState(0).standard_normal(model.n_params)
    gv = G @ v
    assert same_state(before, state(f))
    exact = _explicit_gv(cntk, model, data, v)
    rel = np.linalg.norm(gv - exact) / np.linalg.norm(exact)
    print("%s %s: relative error %.2e" % (kind, np.dtype(dtype).name, rel))
    assert rel <= GV_TOL[dtype], rel
    assert np.array_equal(gv, G @ v)                 # repeatable to the bit
    assert same_state(before, state(f))
    assert G.n_hvp == 2 and G.n_forward == 4 and G.n_backward == 2


@pytest.fixture(scope="module")
def cnn64(cntk):
    return _net(cntk, "cnn", np.float64, channels=(1,))    # d = 182: dense G and H stay cheap


def test_cnn_gauss_newton_is_symmetric_psd_where_the_hessian_is_indefinite(cntk, cnn64):
    model, data, f = cnn64
    assert any("BatchNormalization" in r for r in model.rewritten) and any("Dropout" in r for r in model.rewritten)
    before = state(f)
    G = GaussNewtonOperator(model, data)
    A = np.column_stack([G @ e for e in np.eye(model.n_params)])
    assert np.abs(A - A.T).max() <= SYMMETRY_TOL * np.abs(A).max()
    assert np.linalg.eigvalsh(0.5 * (A + A.T))[0] >= L2 - PSD_TOL
    H = influence.HessianOperator(model, data)
    Hd = np.column_stack([H @ e for e in np.eye(model.n_params)])
    assert np.linalg.eigvalsh(0.5 * (Hd + Hd.T))[0] < -1e-3          # this CNN is off its optimum
    assert same_state(before, state(f))
    # the solvers run on G (auto damping) and converge
    Ga = GaussNewtonOperator(model, data, damping="auto")
    assert 0 < Ga.damping < Ga.mean_eigenvalue
    b = model.grad((data[0][:1], data[1][:1]))
    for method in ("cg", "direct"):
        sol = influence.solve(Ga, b, method=method, rtol=CG_RTOL)
        assert sol.converged and sol.residual <= CG_RTOL, (method, sol.residual)
        assert np.linalg.norm((A + Ga.damping * np.eye(len(b))) @ sol.x - b) <= 10 * CG_RTOL * np.linalg.norm(b)
    assert same_state(before, state(f))


def test_products_do_not_depend_on_the_batch_size(cntk, cnn64):
    model, data, _ = cnn64
    v = np.random.RandomState(1).standard_normal(model.n_params)
    G = GaussNewtonOperator(model, data)
    ref = G @ v
    got = GaussNewtonOperator(model, data, batch_size=7, rel_step=G.rel_step) @ v
    assert np.linalg.norm(got - ref) <= BATCH_TOL * np.linalg.norm(ref)
    F = FisherOperator(model, data)
    fref = F @ v
    fgot = FisherOperator(model, data, batch_size=7, rel_step=F.rel_step) @ v
    assert np.linalg.norm(fgot - fref) <= BATCH_TOL * np.linalg.norm(fref)
    Pg = model.per_example_grads(data)
    exact = Pg.T @ (Pg @ v) / len(Pg) + L2 * v
    assert np.linalg.norm(fref - exact) <= FISHER_TOL * np.linalg.norm(exact)


class Boom(Exception):
    pass


@pytest.mark.parametrize("primitive, fail_at", [("_outputs", 2), ("_jt_sum", 1), ("_weighted_grad_sum", 1)])
def test_injected_failures_leave_weights_and_constants_bit_identical(cntk, cnn64, primitive, fail_at):
    model, data, f = cnn64
    before = state(f)
    op = (FisherOperator if primitive == "_weighted_grad_sum" else GaussNewtonOperator)(model, data, rel_step=1e-4)
    original, calls = getattr(model, primitive), [0]

    def failing(*args):
        calls[0] += 1
        if calls[0] == fail_at:
            raise (KeyboardInterrupt if primitive == "_jt_sum" else Boom)("injected")
        return original(*args)
    model.__dict__[primitive] = failing
    try:
        with pytest.raises((Boom, KeyboardInterrupt)):
            op @ np.ones(model.n_params)
    finally:
        del model.__dict__[primitive]
    assert calls[0] == fail_at and same_state(before, state(f))


def test_tagger_and_loss_function_models(cntk):
    C = cntk
    dtype = np.float64
    seqs = _sequences(12, 3, seed=3)
    tags = [(s[:, 0] > 0).astype(np.int64) for s in seqs]
    with C.default_options(dtype=dtype):
        xs = C.sequence.input_variable(3, dtype=dtype, name="steps")
        z = C.layers.Dense(2, init=C.glorot_uniform(seed=2))(
            C.layers.Recurrence(C.layers.LSTM(3, init=C.glorot_uniform(seed=1)))(xs))
    model = influence.CNTKModel(z, l2=L2)
    before = state(z)
    G = GaussNewtonOperator(model, (seqs, tags))
    u, v = np.random.RandomState(2).standard_normal((2, model.n_params))
    gv = G @ v
    assert abs(u @ gv - v @ (G @ u)) <= SYMMETRY_TOL * np.linalg.norm(u) * np.linalg.norm(gv)
    # per step, summed as the loss is: the same as sequence by sequence
    ds = influence.Dataset(seqs, tags)
    one = sum(GaussNewtonOperator(model, ds.subset(slice(i, i + 1)), rel_step=G.rel_step) @ v - L2 * v
              for i in range(len(seqs)))
    assert np.linalg.norm(one / len(seqs) + L2 * v - gv) <= BATCH_TOL * np.linalg.norm(gv)
    # the public primitives: ∇ℓ = Jᵀ(p − y) per step, and Σ 1·∇ℓ_i = Σ ∇ℓ_i
    Z = model.outputs(ds)
    p = np.exp(Z - Z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    residual = p - np.eye(2)[np.concatenate(tags)]
    g = model.grad_sum(ds)
    assert np.linalg.norm(model.jt_sum(ds, residual, batch_size=9) - g) <= BATCH_TOL * np.linalg.norm(g)
    assert np.linalg.norm(model.weighted_grad_sum(ds, np.ones(len(seqs)), batch_size=9) - g) <= BATCH_TOL * np.linalg.norm(g)
    with pytest.raises(ValueError, match="one row per output row"):
        model.jt_sum(ds, residual[:3])
    assert same_state(before, state(z))
    # a model built from a loss Function: Gauss-Newton refused naming the Fisher, which works
    with C.default_options(dtype=dtype):
        lab = C.input_variable(2, dtype=dtype, name="labels")
        x = C.input_variable(4, dtype=dtype, name="features")
        out = C.layers.Dense(2, init=C.glorot_uniform(seed=4))(x)
    loss_model = influence.CNTKModel(C.cross_entropy_with_softmax(out, lab), loss=None, l2=L2)
    data = (np.random.RandomState(0).standard_normal((10, 4)), np.eye(2)[np.arange(10) % 2])
    with pytest.raises(ValueError, match='curvature="fisher"'):
        GaussNewtonOperator(loss_model, data)
    assert np.all(np.isfinite(FisherOperator(loss_model, data) @ np.ones(loss_model.n_params)))


def test_several_inputs_and_sparse_inputs(cntk):
    """Issue 19 item 6: G·v on a two-input network (x as a dict of named inputs) and on a sparse
    embedding (CSR rows, never densified), both Trainer-trained, against the explicit Σ J_iᵀ H_ℓ J_i;
    the weights and Constants bit-identical afterwards; cg on G converges on the true residual."""
    import scipy.sparse
    C = cntk
    dtype = np.float64
    two, a, b, y = two_input_network(N, dtype)
    rng = np.random.RandomState(0)
    vocab = 30
    idx = rng.randint(0, vocab, N)
    csr = scipy.sparse.csr_matrix((np.ones(N), (np.arange(N), idx)), shape=(N, vocab))
    with C.default_options(dtype=dtype):
        word = C.input_variable(vocab, is_sparse=True, dtype=dtype, name="word")
        emb = C.layers.Dense(3, init=C.glorot_uniform(seed=2))(
            C.layers.Embedding(4, init=C.glorot_uniform(seed=1))(word))
    train_with_trainer(emb, {word: csr}, idx % 3, epochs=2, lr=0.1, learner="sgd")
    for z, data in ((two, ({"a": a, "b": b}, y)), (emb, (csr, idx % 3))):
        model = influence.CNTKModel(z, l2=L2)
        before = state(z)
        v = np.random.RandomState(1).standard_normal(model.n_params)
        G = GaussNewtonOperator(model, data)
        gv = G @ v
        expected = _explicit_gv(cntk, model, data, v)
        assert np.linalg.norm(gv - expected) <= GV_TOL[dtype] * np.linalg.norm(expected)
        sol = influence.solvers.cg(G, expected, rtol=CG_RTOL)
        assert sol.converged and np.linalg.norm(G @ sol.x - expected) <= CG_RTOL * np.linalg.norm(expected)
        assert same_state(before, state(z))
