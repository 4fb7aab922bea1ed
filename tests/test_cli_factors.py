"""EK-FAC at the command line: ``influence factors`` fits the factors once and saves them atomically;
``--factors`` reuses them (``--curvature ekfac`` without refitting, or ``--preconditioner ekfac``),
refuses stale ones in one line naming the file and the command that fits them again; and
``--preconditioner ekfac`` gives cg the same scores in fewer Hessian-vector products. On a small
tanh MLP (64-8-10, float64, 300 digits) fitted to an optimum by ``influence train``."""
import json
import os

import numpy as np
import pytest

from cli_process import run_fresh
from conftest import fail_chunks_from
from test_cli import run

#: Preconditioned cg stops on the residual of the same (unpreconditioned) system with the same rtol
#: (1e-6): its scores equal plain cg's to this relative error (max |difference| / max |score|;
#: measured 1.3e-6 on this model).
SCORE_RTOL = 1e-4
#: Preconditioned cg needs at most this share of plain cg's products on this model (measured for test
#: points 0 and 1: 111 of 218 with EK-FAC fitted at the Hessian's damping 0, 114 with the factors
#: file's damping "auto").
PRODUCT_RATIO = 0.7


@pytest.fixture(scope="module")
def files(tmp_path_factory, cntk):
    import influence
    from influence.cli import main
    d = tmp_path_factory.mktemp("factors")
    x, y = influence.load_digits()
    x = x.astype(np.float64)
    np.savez(str(d / "train.npz"), x=x[:300], y=y[:300])
    np.savez(str(d / "other.npz"), x=x[1:301], y=y[1:301])        # other training rows
    np.savez(str(d / "test.npz"), x=x[1500:1504], y=y[1500:1504])
    model, other = str(d / "mlp.cntk"), str(d / "other.cntk")
    common = ["--data", str(d / "train.npz"), "--arch", "mlp:8", "--l2", "1e-2", "--dtype", "float64", "--quiet"]
    assert main(["train"] + common + ["--gtol", "1e-7", "--out", model]) == 0
    assert main(["train"] + common + ["--lbfgs-maxiter", "10", "--out", other]) == 0      # other weights
    factors = str(d / "f.npz")
    assert main(["factors", "--model", model, "--train", str(d / "train.npz"), "--out", factors, "--quiet"]) == 0
    return d, model, other, factors


def _score(d, model, *extra, **kw):
    return ["score", "--model", model, "--train", str(d / kw.get("train", "train.npz")), "--test",
            str(d / "test.npz"), "--test-index", "0", "1", "--json"] + list(extra)


def _written(d):
    return sorted(os.listdir(str(d)))


# ------------------------------------------------------------------------------------ the command
def test_factors_command_plan_line_summary_and_file(files, tmp_path, capsys, monkeypatch):
    import influence.cli.plans
    d, model, _, _ = files
    out = str(tmp_path / "g.npz")
    monkeypatch.setattr(influence.cli.plans, "PLAN_SECONDS", 0.0)          # the plan line of long work,
    monkeypatch.setattr(influence.cli.plans, "FACTORS_PILOT_ROWS", 64)     # timed on a pilot of rows
    code, stdout, err = run(["factors", "--model", model, "--train", str(d / "train.npz"), "--out", out,
                             "--strategy", "kfac", "--labels", "true", "--damping", "0.01", "--json"], capsys)
    assert code == 0, err
    first = err.strip().splitlines()[0]
    assert first.startswith("influence: plan: EK-FAC factors (kfac, labels true) of 610 parameters: 1 pass") \
        and "(timed on 64 rows) (estimated ~" in first, err
    assert "EK-FAC factors" in err.split(first, 1)[1]                     # then the bar
    summary = json.loads(stdout)
    assert summary["out"] == out and summary["strategy"] == "kfac" and summary["labels"] == "true"
    assert summary["damping"] == 0.01 and summary["block_damping"] == [0.01, 0.01] and summary["passes"] == 1
    assert summary["size"] == os.path.getsize(out) and os.listdir(str(tmp_path)) == ["g.npz"]
    assert summary["estimated_seconds"] > 0
    assert [b["treatment"] for b in summary["blocks"]] == ["kfac", "kfac"]


@pytest.mark.parametrize("argv,needle", [
    (["--out", "{tmp}/f.npy"], "writes .npz files"),
    (["--out", "{tmp}/no/such/f.npz"], "does not exist"),
    (["--out", "{tmp}/f.npz", "--strategy", "exact"], "invalid choice"),
    (["--out", "{tmp}/f.npz", "--damping", "-1"], "--damping -1.0 must be a finite number >= 0"),
])
def test_factors_usage_errors_exit_2_and_write_nothing(files, tmp_path, capsys, argv, needle):
    d, model, _, _ = files
    argv = [a.format(tmp=str(tmp_path)) for a in argv]
    code, _, err = run(["factors", "--model", model, "--train", str(d / "train.npz")] + argv, capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(str(tmp_path)) == []


def test_a_library_refusal_is_worded_in_flags(tmp_path, capsys, cntk):
    from influence.cli import main
    rng = np.random.RandomState(0)
    x = rng.standard_normal((60, 3))
    np.savez(str(tmp_path / "reg.npz"), x=x, y=x @ rng.standard_normal(3))       # float targets: squared_error
    model = str(tmp_path / "reg.cntk")
    assert main(["train", "--data", str(tmp_path / "reg.npz"), "--arch", "mlp:2", "--lbfgs-maxiter", "5", "--out",
                 model, "--quiet"]) == 0
    code, _, err = run(["factors", "--model", model, "--train", str(tmp_path / "reg.npz"), "--out",
                        str(tmp_path / "f.npz")], capsys)
    assert code == 2 and err.startswith("influence: error: --labels sampled draws labels") \
        and "'squared_error' with labels of dtype float64; pass --labels true" in err, err
    assert not os.path.exists(str(tmp_path / "f.npz"))


@pytest.mark.parametrize("where", ["fit", "write"])
def test_ctrl_c_while_fitting_leaves_nothing_and_while_writing_keeps_the_chunks(files, tmp_path, capsys, monkeypatch,
                                                                                  where):
    import influence.curvature.ekfac_fit as fit_module
    import influence.curvature.ekfac_io as io_module
    d, model, _, _ = files
    out = str(tmp_path / "f.npz")
    argv = ["factors", "--model", model, "--train", str(d / "train.npz"), "--out", out, "--quiet"]
    if where == "fit":                            # in the first chunk: nothing finished
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(fit_module.FactorFit, "first_sums", interrupted)
    else:
        real = np.savez

        def interrupted(f, **arrays):             # half a file written, then Ctrl-C
            real(f, **dict(list(arrays.items())[:2]))
            raise KeyboardInterrupt
        monkeypatch.setattr(io_module.np, "savez", interrupted)
    code, _, err = run(argv, capsys)
    assert code == 130, err
    if where == "fit":
        assert err.strip().startswith("influence: interrupted before any work was finished"), err
        assert os.listdir(str(tmp_path)) == []
        return
    # both passes' chunks are kept; --resume writes the file without computing any chunk again
    assert "the finished work is kept in %s.partial/" % out in err and _written(tmp_path) == ["f.npz.partial"], err
    monkeypatch.undo()
    code, stdout, err = run(argv + ["--resume", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["chunks"] == {"chunks": 2, "computed": 0, "resumed": 2}
    assert _written(tmp_path) == ["f.npz"]


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "meta"}


def test_resume_with_other_settings_is_refused_naming_them_then_finishes(files, tmp_path, capsys, monkeypatch):
    import influence.curvature.ekfac_fit as fit_module
    d, model, _, _ = files
    out = str(tmp_path / "f.npz")
    argv = ["factors", "--model", model, "--train", str(d / "train.npz"), "--out", out, "--chunk-size", "100",
            "--seed", "2", "--quiet"]
    real, calls = fit_module.FactorFit.second_sums, []

    def second_sums(*args, **kwargs):                 # Ctrl-C in the second pass's second chunk
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(fit_module.FactorFit, "second_sums", second_sums)
    assert run(argv, capsys)[0] == 130
    monkeypatch.undo()
    folder = out + ".partial"
    kept = _written(folder)
    for change, differs in ((["--seed", "3"], "seed"), (["--strategy", "kfac"], "strategy"),
                            (["--chunk-size", "50"], "chunk_size")):
        code, _, err = run(argv + ["--resume"] + change, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "cannot resume from %s: the job differs in %s; rerun without --resume" % (folder, differs) in err, err
        assert _written(folder) == kept and not os.path.exists(out)
    code, stdout, err = run(argv + ["--resume", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["chunks"] == {"chunks": 6, "computed": 2, "resumed": 4}
    whole = str(tmp_path / "whole.npz")
    assert run(argv[:6] + [whole] + argv[7:], capsys)[0] == 0
    resumed, fresh = _arrays(out), _arrays(whole)
    assert sorted(resumed) == sorted(fresh) and all(np.array_equal(resumed[k], fresh[k]) for k in fresh)
    assert _written(tmp_path) == ["f.npz", "whole.npz"]


def test_cluster_fit_writes_the_factors_of_a_local_one(files, tmp_path, capsys):
    pytest.importorskip("distributed")
    d, model, _, _ = files
    argv = ["factors", "--model", model, "--train", str(d / "train.npz"), "--chunk-size", "120", "--quiet", "--out"]
    local, clustered = str(tmp_path / "local.npz"), str(tmp_path / "cluster.npz")
    # the local fit in a fresh process, as the worker is (this process's CNTK has run other networks:
    # its float sums differ in the last bits, tests/cli_process.py)
    code, _, err = run_fresh(argv + [local])
    assert code == 0, err
    code, stdout, err = run(argv + [clustered, "--cluster", "local:1", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["cluster"] == "local:1" and summary["chunks"] == {"chunks": 6, "computed": 6, "resumed": 0}
    a, b = _arrays(local), _arrays(clustered)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert _written(tmp_path) == ["cluster.npz", "local.npz"]


# ------------------------------------------------------------------------------------ --factors
def test_saved_factors_give_the_scores_of_a_refit(files, tmp_path, capsys):
    d, model, _, factors = files
    loaded, refit = str(tmp_path / "loaded.npy"), str(tmp_path / "refit.npy")
    code, stdout, err = run(_score(d, model, "--curvature", "ekfac", "--factors", factors, "--out", loaded), capsys)
    assert code == 0, err
    assert "loaded from %s, not refitted" % factors in err
    summary = json.loads(stdout)
    assert (summary["curvature"], summary["damping"], summary["preconditioner"], summary["factors"]) == \
        ("ekfac", "auto", "none", factors)
    assert run(_score(d, model, "--curvature", "ekfac", "--out", refit), capsys)[0] == 0
    assert np.array_equal(np.load(loaded), np.load(refit))
    # --seed reaches the sampled labels of both: factors fitted with --seed 3 = a refit with --seed 3
    seeded = str(tmp_path / "seed3.npz")
    assert run(["factors", "--model", model, "--train", str(d / "train.npz"), "--out", seeded, "--seed", "3",
                "--quiet"], capsys)[0] == 0
    a, b = str(tmp_path / "a3.npy"), str(tmp_path / "b3.npy")
    assert run(_score(d, model, "--curvature", "ekfac", "--factors", seeded, "--seed", "3", "--out", a), capsys)[0] == 0
    assert run(_score(d, model, "--curvature", "ekfac", "--seed", "3", "--out", b), capsys)[0] == 0
    assert np.array_equal(np.load(a), np.load(b)) and not np.array_equal(np.load(a), np.load(loaded))
    # self-influence from the file = refitted
    ranking = {}
    for name, extra in (("loaded", ["--factors", factors]), ("refit", [])):
        ranking[name] = str(tmp_path / ("self-%s.npy" % name))
        code, stdout, err = run(["self", "--model", model, "--train", str(d / "train.npz"), "--curvature", "ekfac",
                                 "--out", ranking[name], "--json", "--quiet"] + extra, capsys)
        assert code == 0, err
    assert np.array_equal(np.load(ranking["loaded"]), np.load(ranking["refit"]))
    assert json.loads(stdout)["curvature"] == "ekfac"


@pytest.mark.parametrize("command", ["score", "self", "evaluate loo"])
@pytest.mark.parametrize("stale", ["weights", "rows"])
def test_stale_factors_are_refused_naming_the_file_and_the_fix(files, tmp_path, capsys, command, stale):
    d, model, other, factors = files
    model_used, train = (other, "train.npz") if stale == "weights" else (model, "other.npz")
    out = str(tmp_path / ("out.json" if command == "evaluate loo" else "out.csv"))
    argv = command.split() + ["--model", model_used, "--train", str(d / train), "--factors", factors, "--out", out]
    if command == "self":
        argv += ["--curvature", "ekfac"]
    else:
        argv += ["--test", str(d / "test.npz"), "--test-index", "0", "--preconditioner", "ekfac", "--solver", "cg"]
    code, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("influence: error: --factors %s were fitted on other %s" % (
        factors, "weights" if stale == "weights" else "training rows")) and "stale" in lines[0]
    assert "rerun 'influence factors --model %s --train %s --out %s'" % (model_used, d / train, factors) in lines[0]
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("argv,needle", [
    (["--solver", "direct", "--preconditioner", "ekfac"],
     "not --solver direct (it factorises H exactly): pass --solver cg"),
    (["--solver", "lanczos", "--preconditioner", "ekfac"], "not --solver lanczos"),
    (["--curvature", "ekfac", "--preconditioner", "ekfac"], "--curvature ekfac has none"),
    (["--preconditioner", "none", "--factors", "{factors}"],
     "--factors {factors} is used by --curvature ekfac (instead of refitting) or --preconditioner ekfac"),
    (["--solver", "direct", "--factors", "{factors}"],          # the default --preconditioner auto
     "--factors {factors} is used by --curvature ekfac (instead of refitting) or by the preconditioner of an "
     "iterative solve, not by --solver direct; drop --factors, or pass --solver cg"),
    (["--curvature", "ekfac", "--factors", "{tmp}/none.npz"], "no such file"),
    (["--curvature", "ekfac", "--factors", "{train}"], "not an EK-FAC factor file"),
])
def test_preconditioner_and_factors_refusals(files, tmp_path, capsys, argv, needle):
    d, model, _, factors = files
    fill = dict(factors=factors, tmp=str(tmp_path), train=str(d / "train.npz"))
    argv = [a.format(**fill) for a in argv]
    code, _, err = run(_score(d, model, "--out", str(tmp_path / "s.csv"), *argv), capsys)
    assert code == 2 and needle.format(**fill) in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(str(tmp_path)) == []


def test_verify_and_evaluate_refuse_the_preconditioner_with_other_solvers(files, tmp_path, capsys):
    d, model, _, _ = files
    base = ["--model", model, "--train", str(d / "train.npz"), "--test", str(d / "test.npz"), "--test-index", "0",
            "--preconditioner", "ekfac"]
    code, _, err = run(["verify"] + base + ["--solver", "direct"], capsys)
    assert code == 2 and "pass --solver cg" in err, err
    code, _, err = run(["evaluate", "lds"] + base + ["--solver", "lanczos", "--out", str(tmp_path / "r.json")], capsys)
    assert code == 2 and "pass --solver cg" in err and os.listdir(str(tmp_path)) == [], err


# ------------------------------------------------------------------------------------ --preconditioner
def test_preconditioned_cg_gives_the_same_scores_in_fewer_products(files, tmp_path, capsys):
    d, model, _, factors = files
    runs = {"plain": [], "fitted": ["--preconditioner", "ekfac"],
            "file": ["--preconditioner", "ekfac", "--factors", factors]}
    scores, hvps, summaries = {}, {}, {}
    for name, extra in runs.items():
        out = str(tmp_path / ("%s.npy" % name))
        code, stdout, err = run(_score(d, model, "--curvature", "hessian", "--solver", "cg", "--out", out,
                                       *extra), capsys)
        assert code == 0, err
        assert ("influence: preconditioner: " in err) == (name != "plain")
        summaries[name] = s = json.loads(stdout)
        assert all(sol["converged"] for sol in s["solutions"])
        scores[name], hvps[name] = np.load(out), sum(sol["n_hvp"] for sol in s["solutions"])
    for name in ("fitted", "file"):
        error = np.abs(scores[name] - scores["plain"]).max() / np.abs(scores["plain"]).max()
        assert error <= SCORE_RTOL, (name, error)
        assert hvps[name] <= PRODUCT_RATIO * hvps["plain"], hvps
    assert (summaries["plain"]["preconditioner"], summaries["plain"]["factors"]) == ("none", None)
    assert (summaries["fitted"]["preconditioner"], summaries["fitted"]["factors"]) == ("ekfac", None)
    assert (summaries["file"]["preconditioner"], summaries["file"]["factors"]) == ("ekfac", factors)
    assert summaries["file"]["curvature"] == "hessian" and summaries["file"]["damping"] == 0.0
    # --solver auto with a preconditioner plans cg, and the plan line says so
    code, stdout, err = run(_score(d, model, "--curvature", "hessian", *runs["file"]), capsys)
    assert code == 0 and json.loads(stdout)["plan"]["method"] == "cg", err
    assert "direct was excluded by the options given; preconditioned by EK-FAC" in err


def test_resume_refuses_another_preconditioner_or_factors_file(files, tmp_path, capsys, monkeypatch):
    d, model, _, factors = files
    other = str(tmp_path / "seed1.npz")
    assert run(["factors", "--model", model, "--train", str(d / "train.npz"), "--out", other, "--seed", "1",
                "--quiet"], capsys)[0] == 0
    out = str(tmp_path / "s.csv")

    def score(*extra):
        return _score(d, model, "--curvature", "hessian", "--solver", "cg", "--chunk-size", "100", "--out", out,
                      *extra)
    with monkeypatch.context() as m:
        fail_chunks_from(m, 1, "disk on fire")
        code, _, err = run(score("--preconditioner", "ekfac", "--factors", factors), capsys)
    assert code == 1 and os.path.isdir(out + ".partial"), err
    for extra, differs in ((["--resume"], "preconditioner"),
                           (["--resume", "--preconditioner", "ekfac", "--factors", other], "factors")):
        code, _, err = run(score(*extra), capsys)
        assert code == 2 and "cannot resume" in err and differs in err, err
    code, stdout, err = run(score("--resume", "--preconditioner", "ekfac", "--factors", factors), capsys)
    assert code == 0, err
    assert json.loads(stdout)["chunks"]["resumed"] == 1 and not os.path.exists(out + ".partial")


# ------------------------------------------------------------------------------------ --preconditioner auto
def test_auto_uses_matching_factors_for_the_scores_of_explicit_ekfac(files, tmp_path, capsys):
    d, model, _, factors = files
    outs = {}
    for name, extra in (("auto", []), ("explicit", ["--preconditioner", "ekfac"])):
        outs[name] = str(tmp_path / ("%s.npy" % name))
        code, stdout, err = run(_score(d, model, "--curvature", "hessian", "--solver", "cg", "--factors", factors,
                                       "--out", outs[name], *extra), capsys)
        assert code == 0, err
        summary = json.loads(stdout)
        assert (summary["preconditioner"], summary["factors"]) == ("ekfac", factors)
        if name == "auto":
            assert "influence: preconditioner ekfac (%s, fitted already), for the cg solves" % factors in err, err
            assert summary["preconditioner_reason"] == "auto: %s, fitted already" % factors
            meta = json.load(open(outs[name] + ".meta.json"))
            assert (meta["preconditioner"], meta["preconditioner_reason"]) == \
                ("ekfac", summary["preconditioner_reason"])
            hvps = sum(sol["n_hvp"] for sol in summary["solutions"])
        else:
            assert summary["preconditioner_reason"] == "asked for"
    assert np.array_equal(np.load(outs["auto"]), np.load(outs["explicit"]))
    assert hvps <= PRODUCT_RATIO * 218                 # plain cg's products on these two test points
    # --solver auto: the plan line says it (and plans cg with the cheaper, preconditioned products)
    code, stdout, err = run(_score(d, model, "--curvature", "hessian", "--factors", factors), capsys)
    assert code == 0, err
    plan = [line for line in err.splitlines() if line.startswith("influence: plan: solver")]
    assert len(plan) == 1 and plan[0].endswith("; preconditioner ekfac (%s, fitted already)" % factors), err
    assert json.loads(stdout)["preconditioner"] == "ekfac"


def test_auto_without_factors_on_a_small_model_chooses_none_and_says_why(files, tmp_path, capsys):
    d, model, _, _ = files
    runs = {}
    for name, extra in (("auto", []), ("none", ["--preconditioner", "none"])):
        out = str(tmp_path / ("%s.npy" % name))
        code, stdout, err = run(_score(d, model, "--curvature", "hessian", "--solver", "cg", "--test-index", "0",
                                       "--out", out, *extra), capsys)        # one test point: ~1 s of products
        assert code == 0, err
        runs[name] = (np.load(out), json.loads(stdout), err)
    scores, summary, err = runs["auto"]
    line = [x for x in err.splitlines() if x.startswith("influence: preconditioner")]
    assert len(line) == 1 and line[0].startswith("influence: preconditioner none (saving ~") \
        and "< 10 s: a short solve), for the cg solves" in line[0], err
    assert summary["preconditioner"] == "none" and summary["preconditioner_reason"].startswith("auto: saving ~")
    assert "preconditioner" not in runs["none"][2]
    assert np.array_equal(scores, runs["none"][0])                    # the plain solve, as before
    assert [s["n_hvp"] for s in summary["solutions"]] == [s["n_hvp"] for s in runs["none"][1]["solutions"]]
    # --solver direct: nothing to choose, nothing said; the record says why
    code, stdout, err = run(_score(d, model, "--curvature", "hessian", "--solver", "direct"), capsys)
    assert code == 0 and "preconditioner" not in err, err
    assert json.loads(stdout)["preconditioner_reason"] == "auto: solver direct: no iterations to save"


def test_auto_fits_when_the_saving_clears_the_rule(files, tmp_path, capsys, monkeypatch):
    import influence.scoring.preconditioning as pc
    d, model, _, _ = files
    monkeypatch.setattr(pc, "MIN_SAVING_SECONDS", 0.0)        # this small solve now pays
    code, stdout, err = run(_score(d, model, "--curvature", "hessian", "--solver", "cg"), capsys)
    assert code == 0, err
    assert "influence: preconditioner ekfac (fitted: saving ~" in err and " >= 2 × fitting ~" in err, err
    summary = json.loads(stdout)
    assert summary["preconditioner"] == "ekfac" and summary["factors"] is None
    assert sum(sol["n_hvp"] for sol in summary["solutions"]) <= PRODUCT_RATIO * 218
