"""``preconditioner="auto"`` (influence.scoring.preconditioning): the cost rule on numbers, the order of
its rules, and s_test with it on a NumPy softmax regression (no CNTK): the same vectors as the plain or
the explicitly preconditioned solve it chose, the choice heard before the solve."""
import types

import numpy as np
import pytest

import influence
from influence import EKFAC
from conftest import badly_scaled_softmax
from influence.scoring import preconditioning as pc
from influence.scoring.choice import Curvature


# ---------------------------------------------------------------------------- the cost rule on numbers
def test_saving_and_fit_estimates():
    # 4 solves of 302 products, 45 % of them saved, 0.1 s a product
    assert pc.saving_seconds_estimate(4, 302, 0.1) == pytest.approx(4 * 302 * 0.45 * 0.1)
    # labels' forward pass (0.5 products) + 2 passes (3.5 products each)
    assert pc.fit_seconds_estimate(0.1, 2) == pytest.approx(0.75)
    assert pc.fit_seconds_estimate(0.1, 1) == pytest.approx(0.4)
    # eigendecompositions: 9 k³ flops per factor at 5e9 flop/s
    assert pc.fit_seconds_estimate(0.0, 2, (1000, 1000)) == pytest.approx(2 * 9e9 / 5e9)
    assert pc.cg_iterations_estimate(610) == 302 and pc.cg_iterations_estimate(100) == 102


@pytest.mark.parametrize("saving,fit,pays,words", [
    (54.4, 0.75, True, "fitted: saving ~54 s >= 2 × fitting ~0.75 s"),
    (9.9, 0.01, False, "saving ~9.9 s < 10 s: a short solve"),
    (20.0, 10.0, True, "saving ~20 s >= 2 × fitting ~10 s"),        # exactly the margin: fits
    (20.0, 10.5, False, "fitting ~10 s > saving ~20 s / 2"),
])
def test_fit_pays_only_when_the_saving_clearly_exceeds_the_fit(saving, fit, pays, words):
    got, reason = pc.fit_pays(saving, fit)
    assert got is pays and words in reason, reason


def test_the_rule_on_measured_networks():
    """The numbers of docs/choosing-a-solver.md: the 64-8-10 test MLP, 2 test points (one product
    ~0.009 s): none; the digits MLP 64-32-10 (d = 2,410, a product ~0.016 s) with its 297 test points:
    EK-FAC (the saving, hundreds of seconds, dwarfs a fit of ~0.1 s)."""
    small = pc.saving_seconds_estimate(2, pc.cg_iterations_estimate(610), 0.009)
    assert not pc.fit_pays(small, pc.fit_seconds_estimate(0.009, 2, (65, 8, 9, 10)))[0]
    many = pc.saving_seconds_estimate(297, pc.cg_iterations_estimate(2410), 0.016)
    assert pc.fit_pays(many, pc.fit_seconds_estimate(0.016, 2, (65, 32, 33, 10)))[0] and many > 500


# ---------------------------------------------------------------------------- the order of the rules
def _problem():
    return badly_scaled_softmax()[:2]


def _cur(model, train, kind="hessian"):
    return Curvature(model.hessian(train), kind, 0.0, "test", kind)


def test_no_iterations_nothing_to_choose():
    model, train = _problem()
    for cur, method in ((_cur(model, train, "ekfac"), "cg"), (_cur(model, train), "direct"),
                        (_cur(model, train), "lanczos")):
        choice = pc.choose_preconditioner(model, cur, method, 1, len(train[0]))
        assert (choice.name, choice.considered) == ("none", False), choice
    choice = pc.choose_preconditioner(model, _cur(model, train), "lissa", 1, len(train[0]), variant="classic")
    assert choice.name == "none" and "classic variant takes none" in choice.reason


def test_given_factors_are_used_without_any_estimate():
    model, train = _problem()
    ek = EKFAC(model, train)
    choice = pc.choose_preconditioner(model, _cur(model, train), "cg", 1, len(train[0]), factors=ek)
    assert (choice.name, choice.source, choice.fit_seconds) == ("ekfac", "given", 0.0)
    assert str(choice) == "preconditioner ekfac (a given EK-FAC, fitted already)"


def test_a_model_without_kronecker_factored_layers_gets_none():
    model, train = _problem()
    flat = types.SimpleNamespace(kfac_plan=lambda: ([], []), n_params=model.n_params)
    choice = pc.choose_preconditioner(flat, _cur(model, train), "cg", 1000, 10 ** 9)
    assert choice.name == "none" and choice.reason == "no Dense/Convolution layer to factor"


class _NoProducts(object):
    """A curvature operator that fails when used: the rule must not time a product."""

    def __getattr__(self, name):
        raise AssertionError("the preconditioner rule used the operator's %s" % name)


def test_the_cost_rule_decides_from_the_sizes_without_timing_a_product():
    model, train = _problem()
    d = model.n_params
    assert pc.product_seconds_estimate(d, 10 ** 7) == pytest.approx(12.0 * d * 1e7 / 5e9)
    cur = Curvature(_NoProducts(), "hessian", 0.0, "test", "hessian")   # a product would raise
    many_rows = pc.choose_preconditioner(model, cur, "cg", 3, 10 ** 7)
    assert (many_rows.name, many_rows.source) == ("ekfac", "fitted")
    assert many_rows.saving_seconds > 2 * many_rows.fit_seconds
    assert many_rows.saving_seconds == pytest.approx(
        pc.saving_seconds_estimate(3, pc.cg_iterations_estimate(d), pc.product_seconds_estimate(d, 10 ** 7)))
    assert str(many_rows).startswith("preconditioner ekfac (fitted: saving ~")
    few_rows = pc.choose_preconditioner(model, cur, "lissa", 3, len(train[0]))
    assert few_rows.name == "none" and "a short solve" in few_rows.reason
    assert few_rows.saving_seconds < pc.MIN_SAVING_SECONDS
    assert pc.choose_preconditioner(model, cur, "cg", 3, 10 ** 7) == many_rows


# ---------------------------------------------------------------------------- s_test with it
def _s_test(model, train, solver="cg", **options):
    return influence.s_test(model, train, (train[0][:3], train[1][:3]), solver, curvature="hessian",
                            check_optimum=False, random_state=5, **options)


def test_s_test_auto_on_a_short_solve_is_the_plain_solve_and_says_why():
    model, train = _problem()
    heard = []
    auto = pc.AutoPreconditioner(on_choice=heard.append)
    got, plain = _s_test(model, train, preconditioner=auto), _s_test(model, train)
    assert np.array_equal(got.vectors, plain.vectors) and got.preconditioner is None
    assert [c.name for c in heard] == ["none"] and auto.choice is heard[0] and "short solve" in heard[0].reason
    assert np.array_equal(_s_test(model, train, preconditioner="auto").vectors, plain.vectors)
    # solver="auto" stays free to plan direct (an explicit preconditioner forces cg)
    planned = _s_test(model, train, "auto", preconditioner=auto)
    assert planned.plan.method == "direct" and (auto.choice.name, auto.choice.considered) == ("none", False)
    # --curvature ekfac: nothing to precondition, no refusal
    ek = influence.s_test(model, train, (train[0][:3], train[1][:3]), curvature="ekfac", preconditioner=auto)
    assert ek.curvature == "ekfac" and auto.choice.reason == "EK-FAC curvature: no iterations"


def test_s_test_auto_when_it_pays_is_the_explicit_ekfac_solve(monkeypatch):
    model, train = _problem()
    monkeypatch.setattr(pc, "MIN_SAVING_SECONDS", 0.0)        # this tiny solve now "pays"
    auto = pc.AutoPreconditioner()
    got = _s_test(model, train, preconditioner=auto)
    explicit, plain = _s_test(model, train, preconditioner="ekfac"), _s_test(model, train)
    assert auto.choice.name == "ekfac" and got.preconditioner.startswith("EK-FAC fitted on the training data")
    assert np.array_equal(got.vectors, explicit.vectors)
    assert sum(s.n_hvp for s in got.solutions) < sum(s.n_hvp for s in plain.solutions)


def test_s_test_auto_with_given_factors_is_the_solve_preconditioned_by_them():
    model, train = _problem()
    ek = EKFAC(model, train, random_state=1)
    auto = pc.AutoPreconditioner(factors=ek)
    got, explicit = _s_test(model, train, preconditioner=auto), _s_test(model, train, preconditioner=ek)
    assert np.array_equal(got.vectors, explicit.vectors) and auto.choice.source == "given"
    assert auto.fingerprint() == {"auto": ek.fingerprint()}
    with pytest.raises(ValueError, match="pass a fitted influence.EKFAC"):
        pc.AutoPreconditioner(factors="f.npz")
